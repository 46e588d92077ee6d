"""TFDS builder `ho3d`: HO-3D v2 / v3 (Hampali et al., CVPR 2020), read from a user's download.

Nothing is downloaded (HO-3D is licence-gated). `config.data.manual_dir` holds the published layout:

  manual_dir/
    train.txt, evaluation.txt      'SEQ/FRAME' per line (the official lists; evaluation.txt fixes the order of
                                   the submission). Without train.txt every train/*/meta/*.pkl is used.
    train/<SEQ>/rgb/<FRAME>.png    640x480 RGB (.png in v2, .jpg in v3; either is read)
    train/<SEQ>/meta/<FRAME>.pkl   handPose [48] (flat-hand-mean axis-angle), handBeta [10], handTrans [3],
                                   handJoints3D [21, 3], objName, objRot [3] or [3, 1] (axis-angle),
                                   objTrans [3], camMat [3, 3]; all in the OpenGL camera frame, metres. A frame
                                   whose hand or object annotation is None is skipped (counted in the log).
    evaluation/<SEQ>/rgb/..., evaluation/<SEQ>/meta/<FRAME>.pkl
                                   handBoundingBox [4] (x0, y0, x1, y1), handJoints3D [3] (the root joint only),
                                   objName, objRot, objTrans, camMat (objRot None: no object label).
    evaluation_xyz.json, evaluation_verts.json   optional: the evaluation split's hand ground truth (released
                                   in 2024; [N][21][3] and [N][778][3], OpenGL, in evaluation.txt order).
  object models: `<models_dir>/<objName>/points.xyz` (the YCB models HO-3D uses, one 'x y z' point per line in
                                   metres, object frame); `models_dir` defaults to manual_dir/models.

Conventions of the examples (those of `input_pipeline.pose_data`): OpenCV camera frame, metres, pixel centres
at integer coordinates, 21 joints in HO-3D order (MANO's 16, then the tips at HO-3D's vertices 728, 353, 442,
576, 694). Every OpenGL quantity is converted once, here, by `handobj_jax.geometry.camera_frames` (points and
object poses flip y and z; MANO's global rotation and translation as that module derives). The hand mesh of a
train frame is the MANO layer of the user's model file at the annotated parameters (config.mano.model_path;
the licence-free synthetic model does not reproduce HO-3D's hands and is refused by the jobs); its joints are
checked against the file's handJoints3D and the largest gap is stored (`mano_joint_gap_mm`; ~0 with the right
model file).

Objects: the 21 control points are those of the axis-aligned box of all model points
(`synthetic_3d.control_points`), the diameter that box's diagonal (the ADD-0.1D threshold); `obj_points3d` keeps
`num_model_points` of them (`mesh_files.model_point_subset`: the extreme points, then evenly spaced in file order)
for ADD and REP-5. `obj_mask` is the filled convex hull
of the projected model points: HO-3D ships no object masks, so the hand's occlusion is not removed.

Splits: `train`, `validation` and `test` are disjoint sets of whole train sequences (by default sorted sequence
names i with i % 10 == 1 go to validation and i % 10 == 6 to test; or the builder config's lists), so the test
split has full hand ground truth for local scores. `evaluation` is the official evaluation split, in
evaluation.txt order (`index`), with its oracle hand box and root joint; its hand joints and vertices are the
root alone unless the released evaluation ground truth is present (`has_hand_gt`). `every` > 1 keeps every
k-th frame of each sequence (never for the evaluation split, whose frames all belong in a submission).

Bad input is one line naming the file: a missing meta or image file, a pickle of the wrong layout, a missing
object model, an image of the wrong size. Pickles are read by `fileio.load_pickle` (a restricted unpickler).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax import fileio
from handobj_jax.geometry import camera_frames
from handobj_jax.models import mano as mano_lib
from input_pipeline import mesh_files
from input_pipeline import pipeline
from input_pipeline import rasterizer
from input_pipeline import synthetic_3d

# The YCB objects of HO-3D (v2 and v3), sorted: the class names of `obj_type`.
OBJECTS = ("003_cracker_box", "004_sugar_box", "006_mustard_bottle", "010_potted_meat_can", "011_banana",
           "019_pitcher_base", "021_bleach_cleanser", "025_mug", "035_power_drill", "037_scissors")
IMAGE_HW = (480, 640)
OFFICIAL_SIZES = {"v2": {"train": 66034, "evaluation": 11524}, "v3": {"train": 78297, "evaluation": 20137}}
VERSIONS = ("v2", "v3")
HO3D_TIPS = (728, 353, 442, 576, 694)

_TRAIN_KEYS = {"handPose": (48,), "handBeta": (10,), "handTrans": (3,), "handJoints3D": (21, 3),
               "objTrans": (3,), "camMat": (3, 3)}
_EVAL_KEYS = {"handBoundingBox": (4,), "handJoints3D": (3,), "camMat": (3, 3)}


@dataclasses.dataclass
class Ho3dConfig(tfds.core.BuilderConfig):
  """Attributes: version ('v2' / 'v3'), every (keep every k-th train frame), num_model_points, and the
  validation / test sequences (empty: the default rule of the module docstring)."""
  ho3d_version: str = "v3"
  every: int = 1
  num_model_points: int = 1000
  validation_sequences: tuple[str, ...] = ()
  test_sequences: tuple[str, ...] = ()


def make_config(version: str, every: int = 1, num_model_points: int = 1000,
                validation_sequences: Sequence[str] = (), test_sequences: Sequence[str] = ()) -> Ho3dConfig:
  """A builder config whose name encodes its settings (so differently made builds never share a directory)."""
  if version not in VERSIONS:
    raise pipeline.DataError(f"config.data.builder_config: HO-3D version {version!r} is not one of {VERSIONS}")
  if int(every) < 1:
    raise pipeline.DataError(f"config.data.every={every}: must be >= 1")
  val, test = tuple(sorted(validation_sequences)), tuple(sorted(test_sequences))
  name = f"{version}_every{int(every)}_p{int(num_model_points)}"
  if val or test:
    import hashlib  # pylint: disable=g-import-not-at-top
    name += "_" + hashlib.sha1(repr((val, test)).encode()).hexdigest()[:8]
  return Ho3dConfig(name=name, description=f"HO-3D {version}, every {every} train frame(s)", ho3d_version=version,
                    every=int(every), num_model_points=int(num_model_points), validation_sequences=val,
                    test_sequences=test)


# ---------------------------------------------------------------------------------------------------------
# Reading the download.


def read_frame_list(root: str, split: str) -> list[tuple[str, str]]:
  """[(sequence, frame)] of `split` ('train' / 'evaluation'): the official list file, else a sorted scan."""
  path = os.path.join(root, f"{split}.txt")
  if os.path.isfile(path):
    out = []
    with open(path) as f:
      for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
          continue
        seq, sep, frame = line.partition("/")
        if not sep or not seq or not frame or "/" in frame:
          raise pipeline.DataError(f"{path}:{n}: expected 'SEQUENCE/FRAME', got {line!r}")
        out.append((seq, frame))
    return out
  metas = sorted(glob.glob(os.path.join(root, split, "*", "meta", "*.pkl")))
  if not metas:
    raise pipeline.DataError(f"{path} is missing and {os.path.join(root, split)}/*/meta/*.pkl is empty: is "
                             "config.data.manual_dir the HO-3D folder (holding train/ and evaluation/)?")
  return [(m.split(os.sep)[-3], os.path.splitext(os.path.basename(m))[0]) for m in metas]


def meta_path(root: str, split: str, seq: str, frame: str) -> str:
  return os.path.join(root, split, seq, "meta", f"{frame}.pkl")


def image_path(root: str, split: str, seq: str, frame: str) -> str:
  """The frame's rgb/ file (.jpg or .png); the .png name when neither exists (for the error message)."""
  base = os.path.join(root, split, seq, "rgb", frame)
  for ext in (".jpg", ".png", ".jpeg"):
    if os.path.isfile(base + ext):
      return base + ext
  return base + ".png"


def _array(meta: dict[str, Any], key: str, shape: tuple[int, ...], path: str) -> np.ndarray:
  value = meta.get(key)
  try:
    arr = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise pipeline.DataError(f"{path}: field {key!r} is not numeric ({type(value).__name__})") from None
  if arr.size != int(np.prod(shape)):
    raise pipeline.DataError(f"{path}: field {key!r} has shape {arr.shape}, expected {shape}")
  arr = arr.reshape(shape)
  if not np.all(np.isfinite(arr)):
    raise pipeline.DataError(f"{path}: field {key!r} holds non-finite values")
  return arr


def read_meta(path: str, split: str) -> dict[str, Any] | None:
  """A frame's annotation in the file's own frame (OpenGL), checked; None for an unannotated train frame.

  Raises:
    pipeline.DataError naming the file: missing, not a readable (restricted) pickle, or the wrong layout.
  """
  if not os.path.isfile(path):
    raise pipeline.DataError(f"{path}: meta file missing (listed in {split}.txt)")
  try:
    meta = fileio.load_pickle(path)
  except Exception as e:  # pylint: disable=broad-except  (pickle/EOF/refused globals)
    raise pipeline.DataError(f"{path}: not a readable HO-3D meta pickle ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if not isinstance(meta, dict):
    raise pipeline.DataError(f"{path}: expected a pickled dict of annotations, got {type(meta).__name__}")
  keys = _TRAIN_KEYS if split == "train" else _EVAL_KEYS
  missing = [k for k in (*keys, "objName", "objRot", "camMat") if k not in meta]
  if missing:
    raise pipeline.DataError(f"{path}: not an HO-3D {split} meta file: no field(s) {missing} (has {sorted(meta)})")
  if split == "train" and (meta.get("handPose") is None or meta.get("objRot") is None):
    return None
  out = {k: _array(meta, k, shape, path) for k, shape in keys.items()}
  out["has_object"] = meta.get("objRot") is not None
  if out["has_object"]:
    out["objRot"] = _array(meta, "objRot", (3,), path)
    out["objTrans"] = _array(meta, "objTrans", (3,), path)
    name = meta.get("objName")
    if not isinstance(name, str) or not name:
      raise pipeline.DataError(f"{path}: field 'objName' is {name!r}, expected an object name such as "
                               f"{OBJECTS[0]!r}")
    out["objName"] = name
  return out


def read_image(path: str, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
  """RGB uint8 [H, W, 3]; a missing / unreadable file or the wrong size is a DataError naming the file."""
  img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
  if img is None:
    raise pipeline.DataError(f"{path}: image missing or unreadable")
  if img.shape[:2] != tuple(hw):
    raise pipeline.DataError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, HO-3D images are {hw[1]}x{hw[0]}")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_object_models(models_dir: str, names: Sequence[str]) -> dict[str, np.ndarray]:
  """{name: [P, 3] model points (metres)} from `<models_dir>/<name>/points.xyz`."""
  out = {}
  for name in sorted(set(names)):
    path = os.path.join(models_dir, name, "points.xyz")
    if name not in OBJECTS:
      raise pipeline.DataError(f"object {name!r} (in the meta files) is not one of HO-3D's objects {OBJECTS}")
    if not os.path.isfile(path):
      raise pipeline.DataError(f"{path}: object model missing (the YCB model of {name!r}; set "
                               "config.data.models_dir to the folder holding <objName>/points.xyz)")
    try:
      pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
      raise pipeline.DataError(f"{path}: not an 'x y z' point list ({e})") from None
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[0] < 4:
      raise pipeline.DataError(f"{path}: expected >= 4 rows of 'x y z', got an array of shape {pts.shape}")
    out[name] = pts[:, :3]
  return out


def split_sequences(sequences: Sequence[str], config: Ho3dConfig) -> dict[str, list[str]]:
  """Train sequences -> {'train', 'validation', 'test'} (module docstring)."""
  seqs = sorted(set(sequences))
  val, test = list(config.validation_sequences), list(config.test_sequences)
  unknown = sorted(set(val + test) - set(seqs))
  if unknown:
    raise pipeline.DataError(f"validation/test sequence(s) {unknown} are not train sequences of the download "
                             f"(it has {len(seqs)}: {seqs[:5]}...)")
  if not val and not test:
    val = [s for i, s in enumerate(seqs) if i % 10 == 1]
    test = [s for i, s in enumerate(seqs) if i % 10 == 6]
  if set(val) & set(test):
    raise pipeline.DataError(f"sequences {sorted(set(val) & set(test))} are in both validation and test")
  train = [s for s in seqs if s not in set(val) | set(test)]
  return {"train": train, "validation": sorted(val), "test": sorted(test)}


class Ho3dMano:
  """The MANO layer at HO-3D's convention (flat hand mean, HO-3D tips): `synthetic_3d.mano_layer`."""

  def __init__(self, model_path: str | None):
    self.model, self._forward = synthetic_3d.mano_layer("right", model_path or None, HO3D_TIPS, True)

  def __call__(self, pose, betas, trans) -> tuple[np.ndarray, np.ndarray]:
    return self._forward(pose, betas, trans)

  def rest_root(self, betas) -> np.ndarray:
    """[..., 3] the rest-pose wrist joint J0 of each shape (no pose, no translation)."""
    betas = np.asarray(betas)
    lead = betas.shape[:-1]
    return self._forward(np.zeros(lead + (48,)), betas, np.zeros(lead + (3,)))[1][..., 0, :]


def _object_fields(meta: dict[str, Any], models: dict[str, np.ndarray], k: np.ndarray, num_points: int,
                   hw: tuple[int, int]) -> dict[str, Any]:
  pts = models[meta["objName"]]
  rot, trans = camera_frames.rotvec_pose(meta["objRot"], meta["objTrans"])
  ctrl = synthetic_3d.control_points(pts)
  ctrl3d = ctrl @ rot.T + trans
  ctrl2d = rasterizer.project_points(ctrl3d, k)
  return {"obj_rot": rot, "obj_trans": trans, "obj_ctrl3d": ctrl3d, "obj_ctrl2d": ctrl2d,
          "obj_box": rasterizer.box_of(ctrl2d), "obj_points3d": mesh_files.model_point_subset(pts, num_points),
          "obj_diameter": np.float32(synthetic_3d.bbox_diameter(pts)), "obj_type": meta["objName"],
          "obj_mask": rasterizer.convex_hull_mask(rasterizer.project_points(pts @ rot.T + trans, k), *hw)}


def _no_object(hand_box: np.ndarray, num_points: int, hw: tuple[int, int]) -> dict[str, Any]:
  return {"obj_rot": np.eye(3), "obj_trans": np.array([0.0, 0.0, 1.0]), "obj_ctrl3d": np.zeros((21, 3)),
          "obj_ctrl2d": np.zeros((21, 2)), "obj_box": hand_box, "obj_points3d": np.zeros((num_points, 3)),
          "obj_diameter": np.float32(0.0), "obj_type": OBJECTS[0], "obj_mask": np.zeros(hw, bool)}


def train_examples(metas: list[dict[str, Any]], mano: Ho3dMano, models: dict[str, np.ndarray],
                   num_points: int, hw: tuple[int, int] = IMAGE_HW) -> list[dict[str, Any]]:
  """Labels (no image) of annotated train frames, in the OpenCV frame; MANO runs once for the whole list."""
  if not metas:
    return []
  pose_gl = np.stack([m["handPose"] for m in metas])
  betas = np.stack([m["handBeta"] for m in metas])
  trans_gl = np.stack([m["handTrans"] for m in metas])
  pose, trans = camera_frames.mano_params(pose_gl, trans_gl, mano.rest_root(betas))
  verts, joints_mano = mano(pose, betas, trans)
  out = []
  for i, m in enumerate(metas):
    k = m["camMat"]
    joints = camera_frames.flip_points(m["handJoints3D"])
    joints2d = rasterizer.project_points(joints, k)
    verts2d = rasterizer.project_points(verts[i], k)
    hand_box = rasterizer.box_of(np.concatenate([joints2d, verts2d]))
    out.append({
        "K": k, "joints3d": joints, "joints2d": joints2d, "verts3d": verts[i], "mano_pose": pose[i],
        "mano_betas": betas[i], "mano_trans": trans[i], "root3d": joints[0], "hand_box": hand_box,
        "has_hand_gt": True, "has_object_gt": True,
        "mano_joint_gap_mm": np.float32(1000.0 * np.max(np.linalg.norm(joints_mano[i] - joints, axis=-1))),
        **_object_fields(m, models, k, num_points, hw)})
  return out


def eval_example(meta: dict[str, Any], models: dict[str, np.ndarray], num_points: int,
                 gt: tuple[np.ndarray, np.ndarray] | None = None, hw: tuple[int, int] = IMAGE_HW) -> dict[str, Any]:
  """Labels of an evaluation frame: oracle hand box and root (OpenCV), the object pose, hand GT if given (GL)."""
  k = meta["camMat"]
  root = camera_frames.flip_points(meta["handJoints3D"])
  hand_box = meta["handBoundingBox"].astype(np.float32)
  if gt is None:
    joints = np.zeros((21, 3)) + root
    verts = np.zeros((778, 3)) + root
  else:
    joints, verts = camera_frames.flip_points(gt[0]), camera_frames.flip_points(gt[1])
  obj = _object_fields(meta, models, k, num_points, hw) if meta["has_object"] else _no_object(hand_box, num_points,
                                                                                             hw)
  return {"K": k, "joints3d": joints, "joints2d": rasterizer.project_points(joints, k), "verts3d": verts,
          "mano_pose": np.zeros(48), "mano_betas": np.zeros(10), "mano_trans": np.zeros(3), "root3d": root,
          "hand_box": hand_box, "has_hand_gt": gt is not None, "has_object_gt": bool(meta["has_object"]),
          "mano_joint_gap_mm": np.float32(0.0), **obj}


def read_eval_ground_truth(root: str, count: int) -> tuple[np.ndarray, np.ndarray] | None:
  """The released evaluation ground truth ([N, 21, 3], [N, 778, 3], OpenGL), or None when absent."""
  paths = [os.path.join(root, f"evaluation_{n}.json") for n in ("xyz", "verts")]
  if not all(os.path.isfile(p) for p in paths):
    return None
  arrays = []
  for path, k in zip(paths, (21, 778)):
    try:
      with open(path) as f:
        arr = np.asarray(json.load(f), np.float64)
    except (OSError, ValueError) as e:
      raise pipeline.DataError(f"{path}: not a readable JSON array ({e})") from None
    if arr.shape != (count, k, 3):
      raise pipeline.DataError(f"{path}: shape {arr.shape}, expected ({count}, {k}, 3) for the {count} frames of "
                               "evaluation.txt")
    arrays.append(arr)
  return arrays[0], arrays[1]


# ---------------------------------------------------------------------------------------------------------
# The builder.


class Ho3d(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """HO-3D frames in the project's conventions (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [make_config("v3"), make_config("v2")]

  def __init__(self, *, models_dir: str = "", mano_path: str | None = None, **kwargs):
    self._models_dir = models_dir
    self._mano_path = mano_path
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = IMAGE_HW
    p = self.builder_config.num_model_points
    f32 = pipeline.float_tensor
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(h, w, 3), encoding_format="jpeg"),
        "K": f32((3, 3)), "joints3d": f32((21, 3)), "joints2d": f32((21, 2)), "verts3d": f32((778, 3)),
        "mano_pose": f32((48,)), "mano_betas": f32((10,)), "mano_trans": f32((3,)), "root3d": f32((3,)),
        "hand_box": f32((4,)), "obj_rot": f32((3, 3)), "obj_trans": f32((3,)), "obj_ctrl3d": f32((21, 3)),
        "obj_ctrl2d": f32((21, 2)), "obj_box": f32((4,)), "obj_points3d": f32((p, 3)),
        "obj_diameter": f32(()), "obj_type": tfds.features.ClassLabel(names=OBJECTS),
        "obj_mask": pipeline.bool_mask((h, w)),
        "has_hand_gt": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "has_object_gt": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "mano_joint_gap_mm": f32(()), "sequence": tfds.features.Text(), "frame": tfds.features.Text(),
        "index": tfds.features.Tensor(shape=(), dtype=np.int64),
    }), description=__doc__.splitlines()[0], metadata=tfds.core.MetadataDict(
        mano_model=mano_lib.model_identity(self._mano_path)))

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    c = self.builder_config
    models_dir = self._models_dir or os.path.join(root, "models")
    train_frames = read_frame_list(root, "train")
    eval_frames = read_frame_list(root, "evaluation")
    parts = split_sequences([s for s, _ in train_frames], c)
    by_seq: dict[str, list[tuple[int, str]]] = {}
    for i, (seq, frame) in enumerate(train_frames):
      by_seq.setdefault(seq, []).append((i, frame))
    mano = Ho3dMano(self._mano_path)
    out = {}
    for split, seqs in parts.items():
      frames = [(seq, i, f) for seq in seqs for j, (i, f) in enumerate(by_seq[seq]) if j % c.every == 0]
      out[split] = self._generate_examples(split, len(frames), self._train_split(root, models_dir, mano, split,
                                                                                 frames))
    out["evaluation"] = self._generate_examples("evaluation", len(eval_frames),
                                                self._eval_split(root, models_dir, eval_frames))
    return out

  def _generate_examples(self, split: str, total: int, examples: Iterator[Any]):
    return self.reported(split, total, examples)

  def _train_split(self, root, models_dir, mano, split, frames) -> Iterator[Any]:
    c = self.builder_config
    skipped, seq_rows = 0, {}
    for seq, i, frame in frames:
      seq_rows.setdefault(seq, []).append((i, frame))
    for seq, rows in seq_rows.items():  # One MANO call per sequence.
      metas, kept = [], []
      for i, frame in rows:
        meta = read_meta(meta_path(root, "train", seq, frame), "train")
        if meta is None:
          skipped += 1
          continue
        metas.append(meta)
        kept.append((i, frame))
      models = load_object_models(models_dir, [m["objName"] for m in metas])
      for (i, frame), labels in zip(kept, train_examples(metas, mano, models, c.num_model_points)):
        image = read_image(image_path(root, "train", seq, frame))
        yield f"{seq}/{frame}", self._encode(image, labels, seq, frame, i)
    if skipped:
      logging.info("ho3d/%s: %d frames without hand or object annotation skipped", split, skipped)

  def _eval_split(self, root, models_dir, frames) -> Iterator[Any]:
    c = self.builder_config
    gt = read_eval_ground_truth(root, len(frames))
    models: dict[str, np.ndarray] = {}
    for i, (seq, frame) in enumerate(frames):
      meta = read_meta(meta_path(root, "evaluation", seq, frame), "evaluation")
      if meta["has_object"] and meta["objName"] not in models:
        models.update(load_object_models(models_dir, [meta["objName"]]))
      labels = eval_example(meta, models, c.num_model_points, None if gt is None else (gt[0][i], gt[1][i]))
      image = read_image(image_path(root, "evaluation", seq, frame))
      yield f"{seq}/{frame}", self._encode(image, labels, seq, frame, i)

  @staticmethod
  def _encode(image, labels, seq, frame, index):
    ex = {k: (np.asarray(v, np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
          for k, v in labels.items()}
    return {"image": image, **ex, "sequence": seq, "frame": frame, "index": np.int64(index)}


def build(data_dir: str, manual_dir: str, version: str = "v3", *, every: int = 1, num_model_points: int = 1000,
          validation_sequences: Sequence[str] = (), test_sequences: Sequence[str] = (), models_dir: str = "",
          mano_path: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds (first use) or opens `ho3d/<config>` under `data_dir` from the download in `manual_dir`."""
  config = make_config(version, every, num_model_points, validation_sequences, test_sequences)
  return pipeline.prepare_manual(Ho3d, data_dir, manual_dir, config, "HO-3D",
                                 recorded=("mano_model", mano_lib.model_identity(mano_path),
                                           f"the MANO model ({mano_lib.MANO_CONFIG_KEY})"), models_dir=models_dir,
                                 mano_path=mano_path)


# ---------------------------------------------------------------------------------------------------------
# Checking a download before building (the `check_data` job).


def check_download(root: str, version: str = "v3", models_dir: str = "", mano_path: str | None = None,
                   sample: int = 200) -> list[tuple[str, str, bool]]:
  """Validates a user's HO-3D download without building it, in seconds to minutes.

  Checks: both frame lists (counts against the official sizes), that every listed rgb and meta file exists, a
  sample of `sample` frames per split read in full (meta layout, image size, projected joints inside the image),
  the object models of every object seen, and that the MANO file reproduces the annotated joints (largest gap).

  Returns:
    Rows (check, finding, ok); a problem is a row with ok False (nothing raises for bad files: every problem is
    listed, each naming its file).
  """
  rows: list[tuple[str, str, bool]] = []
  if not os.path.isdir(root):
    return [("manual_dir", f"{root!r} is not a directory", False)]
  lists = {}
  for split in ("train", "evaluation"):
    try:
      lists[split] = read_frame_list(root, split)
    except pipeline.DataError as e:
      rows.append((f"{split} list", str(e), False))
      continue
    official = OFFICIAL_SIZES.get(version, {}).get(split)
    note = "" if official in (None, len(lists[split])) else f" (the official {version} {split} set has {official})"
    has_list = os.path.isfile(os.path.join(root, f"{split}.txt"))
    found = (f"{len(lists[split])} frames from {split}.txt" if has_list else
             f"{len(lists[split])} frames found by scanning ({split}.txt missing: the submission order is unknown)")
    rows.append((f"{split} list", found + note, has_list or split == "train"))
    paths = [p for seq, fr in lists[split] for p in (meta_path(root, split, seq, fr), image_path(root, split, seq, fr))]
    missing = [p for p in paths if not os.path.isfile(p)]
    rows.append((f"{split} files", f"all {2 * len(lists[split])} rgb + meta files present" if not missing else
                 f"{len(missing)} missing, e.g. {missing[0]}", not missing))
  seen: set[str] = set()
  metas = []
  for split, frames in lists.items():
    step = max(1, len(frames) // max(1, sample))
    bad = []
    for seq, fr in frames[::step]:
      try:
        meta = read_meta(meta_path(root, split, seq, fr), split)
        read_image(image_path(root, split, seq, fr))
      except pipeline.DataError as e:
        bad.append(str(e))
        continue
      if meta is None:
        continue
      if meta["has_object"]:
        seen.add(meta["objName"])
      if split == "train":
        metas.append(meta)
        uv = rasterizer.project_points(camera_frames.flip_points(meta["handJoints3D"]), meta["camMat"])
        if not np.all((uv > -50) & (uv < np.array(IMAGE_HW[::-1]) + 50)):
          bad.append(f"{meta_path(root, split, seq, fr)}: the annotated joints project outside the image "
                     f"({np.round(uv.min(0))} .. {np.round(uv.max(0))}): is this the OpenGL-frame HO-3D annotation?")
    n = len(frames[::step])
    rows.append((f"{split} sample", f"{n} frames read (meta layout, 640x480 images, joints in view)" if not bad else
                 f"{len(bad)} of {n} sampled frames bad, e.g. {bad[0]}", not bad))
  try:
    models = load_object_models(models_dir or os.path.join(root, "models"), sorted(seen))
    rows.append(("object models", f"{len(models)} models with points.xyz: {', '.join(sorted(models))}", True))
  except pipeline.DataError as e:
    models = None
    rows.append(("object models", str(e), False))
  if metas:
    try:
      mano = Ho3dMano(mano_path)
      labels = train_examples(metas, mano, models, 8) if models is not None else []
      gaps = np.array([lab["mano_joint_gap_mm"] for lab in labels])
      if gaps.size:
        ok = bool(np.median(gaps) < 2.0)
        rows.append(("MANO model", f"{mano_path or 'synthetic model'}: annotated joints reproduced to median "
                     f"{np.median(gaps):.2f} mm, max {gaps.max():.2f} mm over {gaps.size} frames" +
                     ("" if ok else " (expected < 2 mm: wrong MANO file, side, or a non-HO-3D annotation?)"), ok))
    except Exception as e:  # pylint: disable=broad-except  (ManoFileError and friends: reported as a row)
      rows.append(("MANO model", str(e).splitlines()[0], False))
  return rows
