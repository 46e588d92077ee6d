r"""Semi-Hand-Object's semi-supervised stage (Liu et al., CVPR 2021, Sec. 5): hand pseudo-labels from unlabelled
video by a test-time-augmentation ensemble of a trained pose model, selected by spatial and temporal
consistency; and the runner of its ablations (Tables 3-4, Fig. 9).

  python -m handobj_jax.main --config=configs/handobj_pose_semi.py \
      --config.teacher_workdir=SUPERVISED_WORKDIR --workdir=DIR
  python -m handobj_jax.main --config=configs/handobj_pose.py:cpu --config.semi.pseudo_workdir=DIR \
      --workdir=RETRAINED_WORKDIR
  python -m handobj_jax.main --config=configs/handobj_pose_semi.py:cpu_ablation \
      [--config.ablation.teachers='w/ CR=DIR;w/o CR=DIR'] --workdir=ABLATION_DIR

`teacher_workdir` is a `pose_train` workdir (configs/handobj_pose.py); its config.json and best checkpoint
give the model. Data: unlabelled clips with per-frame hand and object boxes; by default the embedded
synthetic video world in its shifted domain (`synthetic_ho3d_video/small_shifted`: 200 clips x 16 frames at
128 px; darker, farther, tighter grasps of larger objects than the labelled `synthetic_ho3d/small`), whose
hidden ground truth is used only to score the pseudo-labels. Real video: `--config.data.name=something_else
--config.data.manual_dir=DIR` (Something-Something v2 with Something-Else boxes,
`input_pipeline/tfds_something_else.py`). The job writes `<workdir>/pseudo_labels/`: `pseudo_labels.npz`
(per-frame predictions, each filter's mask, `keep`), `report.md` / `report.json` (frames removed by each
filter in order; pseudo-label errors against the hidden truth before and after each filter) and
`contact_sheet.png`.

Variants:
  default        Pseudo-labels of `synthetic_ho3d_video/small_shifted` (train split; 128 px frames, the size of
                 the :cpu recipe's labelled data; `default_shifted`: 1000 clips x 32 frames at 256 px).
  smoke          Tests: the tiny video build (2 clips x 8 frames), one clip per chunk.
  ablation       Job pose_semi_ablation with the paper-sized recipe (configs/handobj_pose.py): teachers with and
                 without CR (trained in the workdir unless given by `ablation.teachers`), their pseudo-labels,
                 retraining (semi w/ and w/o CR), the filter ablations (w/o spatial, w/o temporal) and the
                 pseudo-label fractions; every model evaluated on the source and the shifted test sets
                 (256 px: `synthetic_ho3d_video/default_shifted`, `synthetic_ho3d/default_shifted`).
  cpu_ablation   The same with configs/handobj_pose.py:cpu (about 9 minutes per training run on 2 cores).
  smoke_ablation Tests.

Thresholds (`config.filters`, module `handobj_jax.semi.filters` defines each quantity): the paper's values
where its quantity is defined (IoU 0.6, t_p 0.65, minimum bone 0.1, angles (0, 90) degrees, 2 sigma for the
shape). The two smoothness thresholds are the paper's numbers without units (t_j = 0.5, t_theta = 0.01); in
this project's units (per-joint RMS change of the centred 2D pose / box side; RMS change of the 45
articulation angles, radians) the ground-truth motion of the synthetic videos is 0.009 / 0.015 at the
median and 0.017 / 0.023 at the 95th percentile, so 0.5 would never reject a frame and 0.01 would reject half
of the true motion. The defaults, 0.1 and 0.05, are several times the true motion's 95th percentile.
"""

import ml_collections

from handobj_jax import config_lib

VARIANTS = ("default", "smoke", "ablation", "cpu_ablation", "smoke_ablation")


def filters() -> ml_collections.ConfigDict:
  """The pseudo-label filters' thresholds (`handobj_jax.semi.filters`); the one home of their defaults."""
  f = ml_collections.ConfigDict()
  f.require_camera = True  # Reject frames whose weak-perspective fit fails (scale <= 0: a mirrored pose).
  f.min_iou = 0.6          # IoU of the re-projected mesh's box and the given box (Sec. 5.1.1).
  f.box_scale = 1.0        # The given boxes' enlargement of the tight mesh box (synthetic video: tight, 1.0).
  f.max_reproj = 0.65      # t_p: normalised 2D distance between J2D and Pi* J3D.
  f.min_bone = 0.1         # Minimum bone length / palm length.
  f.angle_min_deg = 0.0    # Flexion range of the MCP and PIP joints (paper: (0, 90)) ...
  f.angle_tol_deg = 15.0   # ... less this much hyper-extension.
  f.angle_max_deg = 90.0   # Maximum flexion of every finger joint.
  f.max_j2d = 0.1          # Smoothness of the centred 2D pose between neighbouring frames (box sides).
  f.max_theta = 0.05       # Smoothness of the articulation (RMS radians).
  f.shape_sigmas = 2.0     # Shape filter: |beta - mean| <= this x sigma_C.
  return f


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg, VARIANTS)
  config = ml_collections.ConfigDict()
  config.job = "pose_pseudolabel"
  config.seed = 0
  config.teacher_workdir = ""
  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic_ho3d_video"
  config.data.builder_config = "small_shifted"
  config.data.split = "train"
  config.data.data_dir = ""        # '' -> $HANDOBJ_DATA_DIR or ~/tensorflow_datasets
  config.data.manual_dir = ""
  config.batch_size = 16           # Frames per step (times the number of transforms through the network).
  config.max_clips = 0             # 0: every clip of the split.
  config.chunk_clips = 8           # Clips per resumable chunk file.
  config.tta = ml_collections.ConfigDict()
  config.tta.transforms = "id,r15,r-15,r30,r-30,r180,s0.85,s1.15"  # Sec. 5.1: 8 augmentations.
  config.filters = filters()
  config.report = ml_collections.ConfigDict()
  config.report.num_figures = 16
  # The runner of Tables 3-4 and Fig. 9 (job pose_semi_ablation): its training recipe, supervised teachers
  # to reuse ('w/ CR=DIR;w/o CR=DIR'; trained in the workdir when missing), the fractions of Fig. 9, and
  # the test sets (NAME=builder config of config.data.name's labelled twin, synthetic_ho3d).
  config.ablation = ml_collections.ConfigDict()
  config.ablation.pose_config = "configs/handobj_pose.py"
  config.ablation.teachers = ""
  config.ablation.fractions = "0.2,0.4,0.6,0.8"
  config.ablation.filter_ablations = True
  config.ablation.eval_data = "source=default;shifted=default_shifted"
  if variant.endswith("ablation"):
    config.job = "pose_semi_ablation"
  if variant == "ablation":  # The paper-sized recipe's labelled data are 256 px: so are its videos.
    config.data.builder_config = "default_shifted"
  if variant.startswith("cpu"):
    config.ablation.pose_config = "configs/handobj_pose.py:cpu"
    config.ablation.eval_data = "source=small;shifted=small_shifted"
  if variant.startswith("smoke"):
    config.data.builder_config = "tiny" if variant == "smoke" else "tiny_shifted"
    config.batch_size = 4
    config.chunk_clips = 1
    config.report.num_figures = 4
    config.ablation.pose_config = "configs/handobj_pose.py:smoke"
    config.ablation.fractions = "0.5"
    config.ablation.eval_data = "source=tiny;shifted=tiny_shifted"
  return config
