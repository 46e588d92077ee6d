"""TFDS builder `fpha`: the hand-object subset of the First-Person Hand Action benchmark (Garcia-Hernando et
al., CVPR 2018) used by Tekin et al. (H+O) and Hasson et al., read from a user's download.

Nothing is downloaded. `config.data.manual_dir` holds (the published layout):

  manual_dir/
    Video_files/<subject>/<action>/<seq>/color/color_0000.jpeg ...   1920x1080 RGB frames
    Hand_pose_annotation_v1/<subject>/<action>/<seq>/skeleton.txt  per line: frame index, then 21 x 3 world
                              coordinates (mm) in FILE_JOINT_NAMES order
    Object_6D_pose_annotation_v1_1/<subject>/<action>/<seq>/object_pose.txt  per line: frame index, then 16
                              values; values.reshape(4, 4).T is the object-to-world transform, applied to model
                              points in mm (model metres x 1000)
    Object_models/<model>_model/<model>_model.ply   object models (metres); <model> is juice, liquid_soap,
                              milk or salt (the object juice_bottle's folder is `juice_model`)
    Subjects_info/Subject_<k>_info.txt   3 header lines, then "action seq_idx num_frames" per line
    data_split_action_recognition.txt    "Training N", then "<subject>/<action>/<seq> <action label>" lines,
                              then "Test N" and the test lines (the action split)

Splits `train` and `test`: the action split's sequences whose object (the action without its verb:
open_juice_bottle -> juice_bottle, pour_liquid_soap -> liquid_soap, put_salt -> salt) is one of
OBJECT_NAMES, restricted to their frames 0 .. num_frames - 1 (Subjects_info) that have an object pose line
(as Hasson et al.'s loader does). Frames with an object pose but no skeleton line are dropped with a warning.

Frames and units: OpenCV colour-camera frame (x right, y down, z forward), metres. World (mm) -> camera (mm)
is the published colour extrinsic CAM_EXTR: X_cam = CAM_EXTR[:3, :3] X_world + CAM_EXTR[:3, 3]. Images are
resized (cv2.INTER_AREA), aspect kept, so that the long side is `image_size` (default 640 x 360, tiny
160 x 90); with pixel centres at integer coordinates a source pixel u maps to u' = (u + 0.5) s - 0.5
(s = new width / 1920, resp. new height / 1080), so K' = [[fx s, 0, (cx + 0.5) s - 0.5], [0, fy s,
(cy + 0.5) s - 0.5], [0, 0, 1]] (stored as `K`). All 2D quantities are in the resized image.

Per example (float32 unless said):
  image [H, W, 3] uint8 RGB; K [3, 3];
  joints3d [21, 3]: the annotated joints in the camera frame, metres, HO-3D order (`mano.JOINT21_NAMES`:
    wrist, index, middle, little, ring, thumb MCP..DIP / CMC..IP, then the tips thumb, index, middle, ring,
    little); the file's order is mapped by FPHA_TO_HO3D (ho3d[k] = file[FPHA_TO_HO3D[k]]);
  joints2d [21, 2] = projection of joints3d with K;
  mano_pose [48], mano_betas [10], mano_trans [3], verts3d [778, 3], mano_fit_error_mm []: MANO fitted to
    joints3d (`handobj_jax.models.mano_fit`, as Hasson et al. obtained FPHA meshes): right hand,
    flat_hand_mean=True, fingertips = vertices FIT_TIP_IDS (the 'alternative' set of
    `evaluation.ho3d.FINGERTIP_VERTEX_IDS`, manopth's tips, which Hasson et al.'s fits used);
    verts3d = mano_forward(model, mano_pose, mano_betas, mano_trans, flat_hand_mean=True) in the camera
    frame; mano_fit_error_mm = the fit's mean joint residual. The fit runs per sequence, batched.
    The MANO model is `build(..., mano_path)` (None: the licence-free synthetic model, for tests; its meshes
    are not MANO's); the build records which model it used and refuses to reuse a build made with another;
  hand_box [4]: tight box [x0, y0, x1, y1] of the projected joints and vertices (not clipped to the image);
  obj_rot [3, 3], obj_trans [3]: object-to-camera, X_cam = obj_rot X_obj + obj_trans (metres);
    obj_rot = CAM_EXTR[:3, :3] R_obj_to_world as given (orthonormal to the files' precision, not
    re-orthonormalised);
  obj_points3d [P, 3]: model points, object frame, metres, P = `num_model_points` of the config: the model's
    vertices with the smallest / largest x, y, z first (so the points' axis-aligned box is the model's),
    then vertices at evenly spaced indices (repeated when the model has fewer; `model_point_subset`);
  obj_ctrl3d [21, 3]: `synthetic_3d.control_points` of the model (axis-aligned box corners, edge midpoints,
    centre) in the camera frame; obj_ctrl2d [21, 2] their projection; obj_box [4] their 2D box;
  obj_diameter []: `synthetic_3d.bbox_diameter` of the model (metres);
  obj_type: ClassLabel(OBJECT_NAMES);
  obj_mask [H, W] bool: the filled convex hull of all projected model vertices (a silhouette estimate: the
    hand's occlusion of the object is NOT removed, and concavities are filled);
  subject, action, sequence: text; frame_index: int64.

Problems: a missing or malformed split file, Subjects_info file, skeleton file (a bad line is named with its
line number), object pose file line or model .ply, and a missing or unreadable frame image are a one-line
`pipeline.DataError` naming the file. A sequence whose video folder is missing (or holds none of the frames),
or that has no object pose file, is reported with a warning and skipped; the build goes on.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax import console
from handobj_jax.models import mano as mano_lib
from handobj_jax.models import mano_fit
from input_pipeline import mesh_files
from input_pipeline import pipeline
from input_pipeline import rasterizer
from input_pipeline import synthetic_3d

FILE_JOINT_NAMES = ("Wrist", "TMCP", "IMCP", "MMCP", "RMCP", "PMCP", "TPIP", "TDIP", "TTIP", "IPIP", "IDIP",
                    "ITIP", "MPIP", "MDIP", "MTIP", "RPIP", "RDIP", "RTIP", "PPIP", "PDIP", "PTIP")
# HO-3D order from the file's order: wrist; index MCP PIP DIP; middle; little (P); ring; thumb (TMCP = the
# thumb's first joint, MANO's CMC; TPIP, TDIP = MANO's MCP, IP); tips thumb, index, middle, ring, little.
FPHA_TO_HO3D = (0, 2, 9, 10, 3, 12, 13, 5, 18, 19, 4, 15, 16, 1, 6, 7, 8, 11, 14, 17, 20)
CAM_EXTR = np.array([[0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
                     [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
                     [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902],
                     [0.0, 0.0, 0.0, 1.0]])
CAM_INTR = np.array([[1395.749023, 0.0, 935.732544], [0.0, 1395.749268, 540.681030], [0.0, 0.0, 1.0]])
SOURCE_HEIGHT, SOURCE_WIDTH = 1080, 1920
OBJECT_NAMES = ("juice_bottle", "liquid_soap", "milk", "salt")
MODEL_NAMES = {"juice_bottle": "juice", "liquid_soap": "liquid_soap", "milk": "milk", "salt": "salt"}
FIT_TIP_IDS = mano_lib.ALT_TIP_IDS
SPLIT_FILE = "data_split_action_recognition.txt"


@dataclasses.dataclass
class FphaConfig(tfds.core.BuilderConfig):
  """image_size: the resized frames' long side (px); num_model_points: P of obj_points3d; fit_steps /
  fit_chunk: the MANO fit's Adam steps and batch size (frames of a sequence are fitted in chunks)."""
  image_size: int = 640
  num_model_points: int = 1000
  fit_steps: int = 500
  fit_chunk: int = 64


BUILDER_CONFIGS = [
    FphaConfig(name="default", description="frames at 640 x 360, 1000 model points"),
    FphaConfig(name="tiny", description="frames at 160 x 90, 64 model points (tests)", image_size=160,
               num_model_points=64, fit_chunk=8),
]


@dataclasses.dataclass
class Sequence:
  """One sequence's parsed annotations: frame -> skeleton [21, 3] (file order, world mm) and object-to-world
  4x4 (mm)."""
  subject: str
  action: str
  seq: str
  object_name: str
  frames: list[int]
  skeletons: dict[int, np.ndarray]
  poses: dict[int, np.ndarray]

  @property
  def key(self) -> str:
    return f"{self.subject}/{self.action}/{self.seq}"


def object_of_action(action: str) -> str:
  """'open_juice_bottle' -> 'juice_bottle' (the action without its verb)."""
  return "_".join(action.split("_")[1:])


def output_size(image_size: int) -> tuple[int, int]:
  """(height, width) of a resized frame: the long side (width) is image_size."""
  scale = image_size / max(SOURCE_HEIGHT, SOURCE_WIDTH)
  return max(1, int(round(SOURCE_HEIGHT * scale))), max(1, int(round(SOURCE_WIDTH * scale)))


def scaled_intrinsics(image_size: int) -> np.ndarray:
  """K of the resized frames (module docstring)."""
  h, w = output_size(image_size)
  sx, sy = w / SOURCE_WIDTH, h / SOURCE_HEIGHT
  k = CAM_INTR.copy()
  k[0, 0], k[0, 2] = CAM_INTR[0, 0] * sx, (CAM_INTR[0, 2] + 0.5) * sx - 0.5
  k[1, 1], k[1, 2] = CAM_INTR[1, 1] * sy, (CAM_INTR[1, 2] + 0.5) * sy - 0.5
  return k


def world_mm_to_camera_m(points: np.ndarray) -> np.ndarray:
  """[..., 3] world points (mm) -> OpenCV colour-camera frame (m)."""
  return (np.asarray(points, np.float64) @ CAM_EXTR[:3, :3].T + CAM_EXTR[:3, 3]) / 1000.0


def object_to_camera(obj_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Object-to-world 4x4 (applied to mm) -> (rotation, translation in m), X_cam = R X_obj + t (metres)."""
  rot = CAM_EXTR[:3, :3] @ obj_to_world[:3, :3]
  trans = (CAM_EXTR[:3, :3] @ obj_to_world[:3, 3] + CAM_EXTR[:3, 3]) / 1000.0
  return rot, trans


# ---------------------------------------------------------------------------------------------------------
# Annotation files.


def _lines(path: str, what: str) -> list[str]:
  try:
    with open(path) as f:
      return f.read().splitlines()
  except FileNotFoundError:
    raise pipeline.DataError(f"{path} is missing ({what}; config.data.manual_dir must hold the FPHA "
                             "download, see input_pipeline/tfds_fpha.py)") from None
  except (OSError, UnicodeDecodeError) as e:
    raise pipeline.DataError(f"{path}: unreadable ({what}: {e})") from None


def read_split(root: str) -> dict[str, list[tuple[str, str, str]]]:
  """{'train': [(subject, action, seq), ...], 'test': [...]} from the action-recognition split file."""
  path = os.path.join(root, SPLIT_FILE)
  out: dict[str, list] = {"train": [], "test": []}
  split = None
  for lineno, line in enumerate(_lines(path, "the action split"), start=1):
    words = line.split()
    if not words:
      continue
    if words[0] in ("Training", "Test"):
      split = "train" if words[0] == "Training" else "test"
      continue
    parts = words[0].split("/")
    if split is None or len(parts) != 3 or not all(parts):
      raise pipeline.DataError(f"{path}:{lineno}: expected 'Training N' / 'Test N' headers and "
                               f"'Subject_k/action/seq label' lines, got {line.strip()[:80]!r}")
    out[split].append(tuple(parts))
  if not out["train"] and not out["test"]:
    raise pipeline.DataError(f"{path}: no sequences listed")
  return out


def read_subject_info(root: str, subject: str) -> dict[tuple[str, str], int]:
  """{(action, seq): num_frames} of Subjects_info/<subject>_info.txt (3 header lines)."""
  path = os.path.join(root, "Subjects_info", f"{subject}_info.txt")
  out = {}
  for lineno, line in enumerate(_lines(path, "frame counts")[3:], start=4):
    words = line.split()
    if not words:
      continue
    try:
      action, seq, count = words
      out[(action, seq)] = int(count)
    except ValueError:
      raise pipeline.DataError(f"{path}:{lineno}: expected 'action seq_idx num_frames', got "
                               f"{line.strip()[:80]!r}") from None
  return out


def _numeric_rows(path: str, what: str, width: int) -> dict[int, np.ndarray]:
  """frame index -> the `width` values after it, one line per frame; malformed lines name their number."""
  out = {}
  for lineno, line in enumerate(_lines(path, what), start=1):
    words = line.split()
    if not words:
      continue
    try:
      if len(words) != width + 1:
        raise ValueError
      frame = float(words[0])
      values = np.asarray([float(w) for w in words[1:]], np.float64)
      if frame != int(frame) or frame < 0 or not np.all(np.isfinite(values)):
        raise ValueError
    except ValueError:
      raise pipeline.DataError(f"{path}:{lineno}: malformed line (expected a frame index and {width} finite "
                               f"numbers, got {len(words)} fields: {line.strip()[:60]!r}...)") from None
    out[int(frame)] = values
  return out


def read_skeleton(path: str) -> dict[int, np.ndarray]:
  """frame -> [21, 3] world joints (mm, FILE_JOINT_NAMES order)."""
  return {f: v.reshape(21, 3) for f, v in _numeric_rows(path, "hand joints", 63).items()}


def read_object_poses(path: str) -> dict[int, np.ndarray]:
  """frame -> object-to-world 4x4 (mm): the line's 16 values reshaped (4, 4) and transposed."""
  return {f: v.reshape(4, 4).T for f, v in _numeric_rows(path, "object poses", 16).items()}


def frame_path(root: str, subject: str, action: str, seq: str, frame: int) -> str:
  return os.path.join(root, "Video_files", subject, action, seq, "color", f"color_{frame:04d}.jpeg")


def model_path(root: str, object_name: str) -> str:
  name = MODEL_NAMES[object_name]
  return os.path.join(root, "Object_models", f"{name}_model", f"{name}_model.ply")


def load_model_points(root: str, object_name: str) -> np.ndarray:
  path = model_path(root, object_name)
  if not os.path.isfile(path):
    raise pipeline.DataError(f"{path} is missing (the {object_name} object model)")
  try:
    verts = mesh_files.read_ply_vertices(path)
  except mesh_files.MeshFileError as e:
    raise pipeline.DataError(str(e)) from None
  if len(verts) == 0 or not np.all(np.isfinite(verts)):
    raise pipeline.DataError(f"{path}: the model has no (finite) vertices")
  return verts


def load_sequences(root: str, split_list: list[tuple[str, str, str]], split: str) -> list[Sequence]:
  """Parses the annotations of a split's hand-object sequences (module docstring for what is kept)."""
  infos: dict[str, dict] = {}
  out = []
  for subject, action, seq in split_list:
    object_name = object_of_action(action)
    if object_name not in OBJECT_NAMES:
      continue
    name = f"{subject}/{action}/{seq}"
    if subject not in infos:
      infos[subject] = read_subject_info(root, subject)
    if (action, seq) not in infos[subject]:
      raise pipeline.DataError(f"{os.path.join(root, 'Subjects_info', subject + '_info.txt')}: no line for "
                               f"sequence {action} {seq} (listed in {SPLIT_FILE})")
    num_frames = infos[subject][(action, seq)]
    color_dir = os.path.dirname(frame_path(root, subject, action, seq, 0))
    if not any(os.path.isfile(frame_path(root, subject, action, seq, f)) for f in range(num_frames)):
      _skip(split, name, f"no video frames in {color_dir}")
      continue
    pose_path = os.path.join(root, "Object_6D_pose_annotation_v1_1", subject, action, seq, "object_pose.txt")
    if not os.path.isfile(pose_path):
      _skip(split, name, f"no object pose file {pose_path}")
      continue
    poses = read_object_poses(pose_path)
    skel_path = os.path.join(root, "Hand_pose_annotation_v1", subject, action, seq, "skeleton.txt")
    skeletons = read_skeleton(skel_path)
    frames = [f for f in range(num_frames) if f in poses]
    lacking = [f for f in frames if f not in skeletons]
    if lacking:
      console.warn(f"fpha/{split}: {name}: {len(lacking)} frames with an object pose have no line in "
                   f"{skel_path} (e.g. frame {lacking[0]}); they are left out")
      frames = [f for f in frames if f in skeletons]
    for f in frames:
      path = frame_path(root, subject, action, seq, f)
      if not os.path.isfile(path):
        raise pipeline.DataError(f"{path} is missing (frame {f} of {name}, which has annotations)")
    if frames:
      out.append(Sequence(subject, action, seq, object_name, frames, skeletons, poses))
  return out


def _skip(split: str, name: str, reason: str) -> None:
  console.warn(f"fpha/{split}: sequence {name} skipped: {reason}")
  logging.warning("fpha: sequence %s skipped: %s", name, reason)


def read_frame(path: str, height: int, width: int) -> np.ndarray:
  """The RGB frame resized to (height, width) (module docstring)."""
  img = cv2.imread(path, cv2.IMREAD_COLOR)
  if img is None:
    raise pipeline.DataError(f"{path}: missing or not a readable image")
  if img.shape[:2] != (SOURCE_HEIGHT, SOURCE_WIDTH):
    raise pipeline.DataError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, expected the colour camera's "
                             f"{SOURCE_WIDTH}x{SOURCE_HEIGHT} (its intrinsics are fixed)")
  img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def mano_identity(mano_path: str | None) -> str:
  return mano_lib.model_identity(mano_path)


@functools.lru_cache(maxsize=2)
def _mano_model(mano_path: str | None, identity: str) -> mano_lib.ManoModel:
  """The right-hand MANO model, kept across builds in one process (the identity is part of the key: a
  changed file is loaded again)."""
  del identity
  return mano_lib.load_mano(mano_path, "right")


class Fpha(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """FPHA hand-object frames with MANO fits (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, mano_path: str | None = None, **kwargs):
    self._mano_path = mano_path
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    h, w = output_size(c.image_size)
    p = c.num_model_points
    features = {
        "image": tfds.features.Image(shape=(h, w, 3)),
        "K": pipeline.float_tensor((3, 3)),
        "joints3d": pipeline.float_tensor((21, 3)),
        "joints2d": pipeline.float_tensor((21, 2)),
        "verts3d": pipeline.float_tensor((778, 3)),
        "mano_pose": pipeline.float_tensor((48,)),
        "mano_betas": pipeline.float_tensor((10,)),
        "mano_trans": pipeline.float_tensor((3,)),
        "mano_fit_error_mm": pipeline.float_tensor(()),
        "hand_box": pipeline.float_tensor((4,)),
        "obj_rot": pipeline.float_tensor((3, 3)),
        "obj_trans": pipeline.float_tensor((3,)),
        "obj_points3d": pipeline.float_tensor((p, 3)),
        "obj_ctrl3d": pipeline.float_tensor((21, 3)),
        "obj_ctrl2d": pipeline.float_tensor((21, 2)),
        "obj_box": pipeline.float_tensor((4,)),
        "obj_diameter": pipeline.float_tensor(()),
        "obj_type": tfds.features.ClassLabel(names=OBJECT_NAMES),
        "obj_mask": pipeline.bool_mask((h, w)),
        "subject": tfds.features.Text(),
        "action": tfds.features.Text(),
        "sequence": tfds.features.Text(),
        "frame_index": tfds.features.Tensor(shape=(), dtype=np.int64),
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), description=__doc__.splitlines()[0],
        metadata=tfds.core.MetadataDict(mano_model=mano_identity(self._mano_path)))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    lists = read_split(root)
    seqs = {split: load_sequences(root, lists[split], split) for split in ("train", "test")}
    for split, found in seqs.items():
      if not found:
        raise pipeline.DataError(f"no usable FPHA hand-object sequence in split {split!r} of "
                                 f"{os.path.join(root, SPLIT_FILE)} (see the warnings above)")
    models = {}
    for found in seqs.values():
      for s in found:
        if s.object_name not in models:
          models[s.object_name] = load_model_points(root, s.object_name)
    mano = _mano_model(self._mano_path, mano_identity(self._mano_path))
    return {split: self._generate_examples(root, found, models, mano, split) for split, found in seqs.items()}

  def _generate_examples(self, root: str, seqs: list[Sequence], models, mano, split: str) -> Iterator[Any]:
    total = sum(len(s.frames) for s in seqs)
    return self.reported(split, total, self._examples(root, seqs, models, mano))

  def _examples(self, root, seqs, models, mano):
    c = self.builder_config
    h, w = output_size(c.image_size)
    k = scaled_intrinsics(c.image_size)
    project = lambda p: rasterizer.project_points(p, k)
    for s in seqs:
      model_verts = models[s.object_name]
      points = mesh_files.model_point_subset(model_verts, c.num_model_points)
      ctrl = synthetic_3d.control_points(model_verts)
      diameter = synthetic_3d.bbox_diameter(model_verts)
      joints = np.stack([world_mm_to_camera_m(s.skeletons[f][list(FPHA_TO_HO3D)]) for f in s.frames])
      fit = mano_fit.fit_mano_to_joints(mano, joints, tip_ids=FIT_TIP_IDS, flat_hand_mean=True,
                                        steps=c.fit_steps, chunk_size=c.fit_chunk)
      for i, f in enumerate(s.frames):
        rot, trans = object_to_camera(s.poses[f])
        ctrl3d = ctrl @ rot.T + trans
        joints2d = project(joints[i])
        verts2d = project(fit["verts"][i])
        yield f"{s.key}/{f:04d}", {
            "image": read_frame(frame_path(root, s.subject, s.action, s.seq, f), h, w),
            "K": k.astype(np.float32),
            "joints3d": joints[i].astype(np.float32),
            "joints2d": joints2d.astype(np.float32),
            "verts3d": fit["verts"][i],
            "mano_pose": fit["pose"][i],
            "mano_betas": fit["betas"][i],
            "mano_trans": fit["trans"][i],
            "mano_fit_error_mm": np.float32(fit["joint_error_m"][i] * 1000.0),
            "hand_box": rasterizer.box_of(np.concatenate([joints2d, verts2d])),
            "obj_rot": rot.astype(np.float32),
            "obj_trans": trans.astype(np.float32),
            "obj_points3d": points.astype(np.float32),
            "obj_ctrl3d": ctrl3d.astype(np.float32),
            "obj_ctrl2d": project(ctrl3d).astype(np.float32),
            "obj_box": rasterizer.box_of(project(ctrl3d)),
            "obj_diameter": np.float32(diameter),
            "obj_type": s.object_name,
            "obj_mask": rasterizer.convex_hull_mask(project(_in_front(model_verts @ rot.T + trans)), h, w),
            "subject": s.subject,
            "action": s.action,
            "sequence": s.seq,
            "frame_index": np.int64(f),
        }


def _in_front(points: np.ndarray) -> np.ndarray:
  return points[points[:, 2] > 1e-6]


def build(data_dir: str, manual_dir: str, config_name: str = "default",
          mano_path: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds (if needed) `fpha/<config_name>` under `data_dir` from the FPHA download in `manual_dir`, fitting
  MANO with the model `mano_path` (None: the synthetic model; see `mano.load_mano`). A build made with another
  MANO file is refused."""
  return pipeline.prepare_manual(Fpha, data_dir, manual_dir, config_name, "FPHA",
                                 recorded=("mano_model", mano_identity(mano_path), f"the MANO model ({mano_lib.MANO_CONFIG_KEY})"), mano_path=mano_path)
