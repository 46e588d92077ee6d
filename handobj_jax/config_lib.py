"""Config pieces shared by the experiment files in `configs/`, and the validation of every config value.

Experiment configs stay one file each (`get_config(arg)` with variants); the blocks that must be identical
across experiments (data sources, pseudo-labelling, checkpointing, COHESIV evaluation settings) are built
here, once.

`validate(config)` checks every value a job will read, before any work starts (no data build, no compile),
and raises `ConfigError` with one line naming the key, the value and what is expected. The rules are keyed
by dotted path and apply wherever the key exists, so every experiment file is covered by the same table.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import ml_collections

from handobj_jax import errors


class ConfigError(errors.InputError):
  """A config value that no job can use: one line naming `config.<key>`, the value and the expectation."""


# ---------------------------------------------------------------------------------------------------------
# Shared blocks.


def synthetic_video_data(builder_config: str = "small") -> ml_collections.ConfigDict:
  """The embedded default: `synthetic_handobj` clips, built offline on first use."""
  data = ml_collections.ConfigDict()
  data.name = "synthetic_handobj"
  data.builder_config = builder_config
  data.data_dir = ""           # '' -> $HANDOBJ_DATA_DIR or ~/tensorflow_datasets
  data.manual_dir = ""         # real datasets: where the user put the downloaded files
  data.shuffle_buffer = 512
  # Several processes: True = the same batches whatever the process count (every host decodes every example;
  # see input_pipeline/pipeline.train_dataset), False = each host reads its own shard.
  data.global_order = False
  return data


def pseudo_labelling(size: str = "small") -> ml_collections.ConfigDict:
  """COHESIV pseudo-labelling settings (Sec. 3.1); `size` 'tiny' uses 2-clip shards (tests).

  The labels stored on disk record these settings; reusing labels made with different ones is refused.
  """
  p = ml_collections.ConfigDict()
  p.source = "tfds"            # 'tfds' (config.data via input_pipeline.datasets) or 'generator'.
  p.temperature = 2.0          # Eq. 1 temperature t (paper: 2).
  p.robust = True              # RANSAC + IRLS homography fits (False: plain DLT as in the paper).
  p.robust_threshold = 3.0     # Inlier threshold of the robust fit, pixels.
  p.object_threshold = 0.5     # object = sum_k R_k > this, minus person.
  p.shard_clips = 2 if size == "tiny" else 16   # Clips per output shard (the unit of resumption).
  p.batch_clips = 2 if size == "tiny" else 8    # Clips per device batch (x 4 middle frames).
  p.num_clips = ml_collections.ConfigDict({"train": -1, "validation": -1, "test": -1})  # -1: all.
  return p


def checkpointing() -> ml_collections.ConfigDict:
  ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 200
  ckpt.keep = 3
  return ckpt


def cohesiv_eval(batch_size: int = 10) -> ml_collections.ConfigDict:
  """Settings of the COHESIV evaluation job (`--config.job=eval`); see handobj_jax/jobs/evaluate.py."""
  s = ml_collections.ConfigDict()
  s.fit_split = "validation"   # Thresholds are fitted here and frozen for test_split.
  s.test_split = "test"
  s.fit_task = "pair"
  s.fit_statistic = "pooled"
  s.max_images = 0             # 0: the whole split.
  s.batch_size = batch_size
  s.num_figures = 8
  s.saliency_width = 64
  s.center_threshold = 0.1     # Predicted-query peaks (the :cpu head peaks at ~0.2).
  s.nms_radius = 0             # 0: max(2, min(H, W) // 16) pixels.
  s.max_peaks = 4
  s.match_distance = 0.0       # 0: 2 x the NMS radius.
  s.detections_file = ""       # Supervised-box baseline from a detector's JSON output.
  s.extra_checkpoints = ""     # More workdirs evaluated as rows (e.g. the :resnet ablation).
  s.refit = False              # Refit thresholds even if thresholds.json matches.
  return s


def parse_variant(arg: str | None, known: tuple[str, ...]) -> str:
  """`arg` of `get_config(arg)`: '' / None -> 'default'; anything unknown is an error naming the choices."""
  variant = arg or "default"
  if variant not in known:
    raise ValueError(f"unknown config variant {variant!r}; choose one of {', '.join(known)}")
  return variant


# ---------------------------------------------------------------------------------------------------------
# Validation.

Check = Callable[[Any], str | None]   # value -> None if fine, else what is expected.


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
  def check(v):
    if not _is_int(v):
      return "an integer"
    if lo is not None and v < lo:
      return f"an integer >= {lo}"
    if hi is not None and v > hi:
      return f"an integer <= {hi}"
    return None
  return check


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
  """A finite number in [lo, hi] ((lo, hi] with lo_open)."""
  def check(v):
    bounds = (f"{'(' if lo_open or lo is None else '['}{'-inf' if lo is None else lo}, "
              f"{'inf)' if hi is None else f'{hi}]'}")
    if not _is_real(v) or not math.isfinite(float(v)):
      return f"a finite number in {bounds}"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"a finite number in {bounds}"
    if hi is not None and v > hi:
      return f"a finite number in {bounds}"
    return None
  return check


def choice(*options: str) -> Check:
  def check(v):
    return None if v in options else f"one of {', '.join(repr(o) for o in options)}"
  return check


def int_tuple(length: int | None = None, lo: int = 1) -> Check:
  def check(v):
    ok = isinstance(v, (tuple, list)) and all(_is_int(x) and x >= lo for x in v)
    ok = ok and (length is None or len(v) == length)
    if ok:
      return None
    n = f"{length} " if length is not None else ""
    return f"a tuple of {n}integers >= {lo}, written like '(64, 32, 16)'"
  return check


def string() -> Check:
  return lambda v: None if isinstance(v, str) else "a string"


def boolean() -> Check:
  return lambda v: None if isinstance(v, bool) else "true or false"


def multiple_of(n: int, lo: int = 1) -> Check:
  def check(v):
    return None if _is_int(v) and v >= lo and v % n == 0 else f"a multiple of {n} >= {lo}"
  return check


def _trunks() -> tuple[str, ...]:
  from handobj_jax.models import encoders  # pylint: disable=g-import-not-at-top
  return tuple(encoders.ARCHS)


def _cr_variants() -> tuple[str, ...]:
  from handobj_jax.models import hand_object  # pylint: disable=g-import-not-at-top
  return hand_object.CR_VARIANTS


def _encoders() -> tuple[str, ...]:
  from handobj_jax.models import cohesiv  # pylint: disable=g-import-not-at-top
  return tuple(cohesiv.ENCODER_ARCHS)


def _grouped_conv_impls() -> tuple[str, ...]:
  from handobj_jax.models import grouped_conv  # pylint: disable=g-import-not-at-top
  return grouped_conv.IMPLS


def lazy_choice(options: Callable[[], tuple[str, ...]]) -> Check:
  return lambda v: choice(*options())(v)


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
FRACTION = real(0.0, 1.0)
POSITIVE_REAL = real(0.0, None, lo_open=True)
NON_NEGATIVE_REAL = real(0.0)

# Dotted key -> check. A key that a config lacks is not checked (each experiment has its own blocks).
RULES: dict[str, Check] = {
    "job": string(),
    "seed": integer(0),
    "batch_size": POSITIVE,
    "num_epochs": POSITIVE,
    "num_steps": NON_NEGATIVE,
    "log_every_steps": POSITIVE,
    "checkpoint.every_steps": POSITIVE,
    "checkpoint.keep": POSITIVE,
    "data.name": string(),
    "data.builder_config": string(),
    "data.data_dir": string(),
    "data.manual_dir": string(),
    "data.shuffle_buffer": POSITIVE,
    "data.cache": boolean(),
    "pseudo.source": choice("tfds", "generator"),
    "pseudo.temperature": POSITIVE_REAL,
    "pseudo.robust": boolean(),
    "pseudo.robust_threshold": POSITIVE_REAL,
    "pseudo.object_threshold": FRACTION,
    "pseudo.shard_clips": POSITIVE,
    "pseudo.batch_clips": POSITIVE,
    "pseudo.num_clips.train": integer(-1),
    "pseudo.num_clips.validation": integer(-1),
    "pseudo.num_clips.test": integer(-1),
    "augment.flip_prob": FRACTION,
    "model.encoder": lazy_choice(_encoders),
    "model.decoder_channels": int_tuple(5),
    "model.embed_dim": POSITIVE,
    "model.attn_dim": POSITIVE,
    "model.center_head": boolean(),
    "model.pretrained": string(),
    "model.tiny_stem_width": POSITIVE,
    "model.tiny_stage_planes": int_tuple(4),
    "model.grouped_conv": lazy_choice(_grouped_conv_impls),
    "model.compute_dtype": choice("float32", "bfloat16"),
    # The pose network (configs/handobj_pose.py).
    "data.crop_scale": POSITIVE_REAL,
    "data.hand_box_scale": POSITIVE_REAL,
    "augment.enabled": boolean(),
    "augment.scale": real(0.0, 0.9),
    "augment.rotation_deg": real(0.0, 180.0),
    "augment.translation": real(0.0, 1.0),
    "augment.color": real(0.0, 0.9),
    "model.image_size": multiple_of(32, 32),
    "model.trunk": lazy_choice(_trunks),
    "model.channels": POSITIVE,
    "model.roi_size": integer(4),
    "model.sampling_ratio": POSITIVE,
    "model.cr": lazy_choice(_cr_variants),
    "model.cr_heads": POSITIVE,
    "model.cr_mlp_ratio": POSITIVE_REAL,
    "model.hourglass_depth": integer(1, 6),
    "model.mesh_stage_channels": int_tuple(4),
    "model.mesh_blocks_per_stage": POSITIVE,
    "model.mesh_hidden": int_tuple(),
    "model.pose_repr": choice("axis_angle", "rot6d"),
    "model.object_channels": POSITIVE,
    "model.object_shared_layers": POSITIVE,
    "model.offset_scale": POSITIVE_REAL,
    "mano.model_path": string(),
    "mano.side": choice("right", "left"),
    "mano.fingertips": choice("ho3d", "alternative"),
    "mano.flat_hand_mean": boolean(),
    "loss.hand_2d": choice("heatmap", "joints2d"),
    "loss.heatmap_weight": NON_NEGATIVE_REAL,
    "loss.heatmap_sigma": POSITIVE_REAL,
    "loss.joints2d_weight": NON_NEGATIVE_REAL,
    "loss.pose_space": choice("axis_angle", "rotmat"),
    "loss.mano_joints_weight": NON_NEGATIVE_REAL,
    "loss.mano_verts_weight": NON_NEGATIVE_REAL,
    "loss.mano_pose_weight": NON_NEGATIVE_REAL,
    "loss.mano_shape_weight": NON_NEGATIVE_REAL,
    "loss.object_weight": NON_NEGATIVE_REAL,
    "loss.lambda_p": NON_NEGATIVE_REAL,
    "loss.lambda_c": NON_NEGATIVE_REAL,
    "loss.cell_reduction": choice("grid_mean", "mask_mean", "sum"),
    "loss.conf_outside_mask": choice("ignore", "zero"),
    "loss.conf_norm": choice("l2", "l1"),
    "eval.split": string(),
    "eval.num_votes": POSITIVE,
    "eval.vote_threshold": FRACTION,
    "eval.compare": string(),
    "eval.label": string(),
    "loss.attention_weight": NON_NEGATIVE_REAL,
    "loss.embedding_weight": NON_NEGATIVE_REAL,
    "loss.beta": POSITIVE_REAL,
    "loss.attention_gradient": choice("clamp", "straight_through"),
    "loss.eps": POSITIVE_REAL,
    "loss.stop_gradient_means": boolean(),
    "loss.center_weight": NON_NEGATIVE_REAL,
    "loss.center_sigma": POSITIVE_REAL,
    "optim.name": choice("adamw", "adam"),
    "optim.schedule": choice("plateau", "step"),
    "optim.decay_every_epochs": POSITIVE,
    "optim.decay_factor": real(0.0, 1.0, lo_open=True),
    "optim.learning_rate": POSITIVE_REAL,
    "optim.weight_decay": NON_NEGATIVE_REAL,
    "optim.grad_clip_norm": NON_NEGATIVE_REAL,
    "optim.lr_factor": real(0.0, 1.0, lo_open=True),
    "optim.lr_patience": POSITIVE,
    "optim.stop_patience": POSITIVE,
    "viz.num_examples": NON_NEGATIVE,
    "viz.tile": POSITIVE,
    "eval.fit_split": string(),
    "eval.test_split": string(),
    "eval.fit_task": choice("all", "pair", "hand", "obj"),
    "eval.fit_statistic": choice("pooled", "per_example"),
    "eval.max_images": NON_NEGATIVE,
    "eval.batch_size": POSITIVE,
    "eval.num_figures": NON_NEGATIVE,
    "eval.saliency_width": POSITIVE,
    "eval.center_threshold": real(),
    "eval.nms_radius": NON_NEGATIVE,
    "eval.max_peaks": POSITIVE,
    "eval.match_distance": NON_NEGATIVE_REAL,
    "eval.detections_file": string(),
    "eval.extra_checkpoints": string(),
    "eval.refit": boolean(),
    "inference_stats.min_pixels": POSITIVE,
    "inference_stats.min_images": POSITIVE,
    "baseline.num_thresholds": integer(2),
    # Semi-supervised stage (configs/handobj_pose_semi.py; config.semi of configs/handobj_pose.py).
    "semi.pseudo_workdir": string(),
    "semi.pseudo_ratio": real(hi=0.99),
    "semi.pseudo_fraction": real(0.0, 1.0, lo_open=True),
    "semi.use_spatial": boolean(),
    "semi.use_temporal": boolean(),
    "teacher_workdir": string(),
    "max_clips": NON_NEGATIVE,
    "chunk_clips": POSITIVE,
    "tta.transforms": string(),
    "filters.require_camera": boolean(),
    "filters.min_iou": FRACTION,
    "filters.box_scale": POSITIVE_REAL,
    "filters.max_reproj": NON_NEGATIVE_REAL,
    "filters.min_bone": NON_NEGATIVE_REAL,
    "filters.angle_min_deg": real(),
    "filters.angle_tol_deg": NON_NEGATIVE_REAL,
    "filters.angle_max_deg": real(),
    "filters.max_j2d": NON_NEGATIVE_REAL,
    "filters.max_theta": NON_NEGATIVE_REAL,
    "filters.shape_sigmas": POSITIVE_REAL,
    "report.num_figures": NON_NEGATIVE,
    "ablation.pose_config": string(),
    "ablation.teachers": string(),
    "ablation.fractions": string(),
    "ablation.filter_ablations": boolean(),
    "ablation.eval_data": string(),
}


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def validate(config: ml_collections.ConfigDict, rules: dict[str, Check] | None = None) -> None:
  """Raises `ConfigError` for the first value that breaks a rule (see the module docstring)."""
  for key, check in (RULES if rules is None else rules).items():
    present, value = _lookup(config, key)
    if not present:
      continue
    expected = check(value)
    if expected is not None:
      raise ConfigError(f"config.{key}={value!r}: expected {expected}")
  present, model = _lookup(config, "model")
  if present and "hourglass_depth" in model and "roi_size" in model:
    if 2 ** model.hourglass_depth > model.roi_size:
      raise ConfigError(f"config.model.hourglass_depth={model.hourglass_depth} halves the RoI "
                        f"{model.hourglass_depth} times: config.model.roi_size={model.roi_size} must be >= "
                        f"{2 ** model.hourglass_depth}")
  present, loss = _lookup(config, "loss")
  if present and "attention_weight" in loss and "embedding_weight" in loss:
    if loss.attention_weight == 0 and loss.embedding_weight == 0:
      raise ConfigError("config.loss.attention_weight and config.loss.embedding_weight are both 0: "
                        "nothing to train")
