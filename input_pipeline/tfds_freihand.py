"""TFDS builder `freihand`: the FreiHAND evaluation split (Zimmermann et al., ICCV 2019) with its released
annotations, read from a user's download.

Nothing is downloaded. `config.data.manual_dir` holds (the published layout of FreiHAND_pub_v2_eval plus the
evaluation annotations released later):

  manual_dir/
    evaluation/rgb/00000000.jpg ...   224x224 RGB (3960 images in the real data), image i = %08d.jpg
    evaluation_K.json      [N][3][3]   intrinsics of image i
    evaluation_mano.json   [N][1][61]  MANO: 48 pose axis-angle, 10 shape, 2 uv_root, 1 scale
    evaluation_xyz.json    [N][21][3]  joints, metres, camera frame, FreiHAND order
    evaluation_verts.json  [N][778][3] MANO vertices, metres, camera frame
    evaluation_scale.json  [N]         optional (a bone length); not used

N is the length of evaluation_K.json; the other files must have N entries of the shapes above.

Frames and units: OpenCV camera frame (x right, y down, z forward), metres; pixel centres at integer
coordinates. FreiHAND's joint order ("simple": wrist, then thumb, index, middle, ring, little, each from its
base to its tip) is mapped to HO-3D order (`mano.JOINT21_NAMES`: MANO's 16 joints, then the tips thumb,
index, middle, ring, little): HO3D_TO_SIMPLE maps HO-3D to simple (simple = ho3d[HO3D_TO_SIMPLE]) and
SIMPLE_TO_HO3D, its inverse permutation, gives ho3d = simple[SIMPLE_TO_HO3D]. FreiHAND's fingertips are the
MANO vertices FREIHAND_TIP_IDS = (745, 317, 444, 556, 673) (thumb, index, middle, ring, little: the
'alternative' set of `evaluation.ho3d.FINGERTIP_VERTEX_IDS`), not HO-3D's.

MANO parameters are passed through as released: `mano_pose` [48] = full axis-angle pose (global rotation in
the camera frame, then 15 joints in MANO order), in FreiHAND's convention, which adds MANO's `hands_mean`
(FreiHAND's `HandModel(use_mean_pose=True)`), i.e. `mano_forward(..., flat_hand_mean=False)`; `mano_betas`
[10]. FreiHAND gives no MANO translation (it stores the root's uv and a scale instead): `verts3d` is the
camera-frame mesh as released.

Images are resized (cv2.INTER_AREA / INTER_LINEAR) to `image_size` (default 224: unchanged; `tiny`: 112 for
tests), with K scaled so that u' = (u + 0.5) s - 0.5, s = image_size / 224.

Per example (float32 unless said): image [S, S, 3] uint8; K [3, 3]; joints3d [21, 3] (HO-3D order);
joints2d [21, 2] = projection of joints3d with K; verts3d [778, 3]; mano_pose [48]; mano_betas [10];
hand_box [4] = tight box [x0, y0, x1, y1] of the projected joints and vertices (not clipped to the image);
index int64 (i of the image file). One split, `evaluation`.

Problems are a one-line `pipeline.DataError`: a missing or unparsable JSON file, one with the wrong number of
entries (named with the count expected) or an entry of the wrong shape (named with its index), and a missing
or unreadable image (named).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import rasterizer

HO3D_TO_SIMPLE = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
SIMPLE_TO_HO3D = tuple(int(i) for i in np.argsort(HO3D_TO_SIMPLE))
FREIHAND_TIP_IDS = (745, 317, 444, 556, 673)
SOURCE_SIZE = 224
SPLIT = "evaluation"
# evaluation_<name>.json -> the shape of one entry.
JSON_FILES = {"K": (3, 3), "mano": (1, 61), "xyz": (21, 3), "verts": (778, 3)}


@dataclasses.dataclass
class FreihandConfig(tfds.core.BuilderConfig):
  image_size: int = SOURCE_SIZE


BUILDER_CONFIGS = [
    FreihandConfig(name="default", description="the evaluation images at their 224 px"),
    FreihandConfig(name="tiny", description="the evaluation images at 112 px (tests)", image_size=112),
]


def json_path(root: str, name: str) -> str:
  return os.path.join(root, f"{SPLIT}_{name}.json")


def image_path(root: str, index: int) -> str:
  return os.path.join(root, SPLIT, "rgb", f"{index:08d}.jpg")


def load_json_array(path: str, entry_shape: tuple[int, ...], expected: int | None = None,
                    reference: str = "") -> np.ndarray:
  """[N, *entry_shape] float64 from a JSON list of N nested lists; errors name the file and the entry."""
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise pipeline.DataError(f"{path} is missing (FreiHAND evaluation annotations; config.data.manual_dir "
                             "must hold the download, see input_pipeline/tfds_freihand.py)") from None
  except (OSError, ValueError) as e:
    raise pipeline.DataError(f"{path}: not a readable JSON file ({e})") from None
  if not isinstance(data, list):
    raise pipeline.DataError(f"{path}: expected a JSON list with one entry per image, got a {type(data).__name__}")
  if expected is not None and len(data) != expected:
    raise pipeline.DataError(f"{path}: {len(data)} entries, expected {expected} (one per image, as {reference})")
  out = np.empty((len(data),) + tuple(entry_shape), np.float64)
  for i, item in enumerate(data):
    try:
      a = np.asarray(item, np.float64)
    except (ValueError, TypeError):
      raise pipeline.DataError(f"{path}: entry {i} is not a numeric array of shape {list(entry_shape)}") from None
    if a.shape != tuple(entry_shape):
      raise pipeline.DataError(f"{path}: entry {i} has shape {list(a.shape)}, expected {list(entry_shape)}")
    if not np.all(np.isfinite(a)):
      raise pipeline.DataError(f"{path}: entry {i} has non-finite values")
    out[i] = a
  return out


def load_annotations(root: str) -> dict[str, np.ndarray]:
  """{'K': [N, 3, 3], 'mano': [N, 1, 61], 'xyz': [N, 21, 3], 'verts': [N, 778, 3]} (float64)."""
  k = load_json_array(json_path(root, "K"), JSON_FILES["K"])
  if len(k) == 0:
    raise pipeline.DataError(f"{json_path(root, 'K')}: no entries")
  out = {"K": k}
  for name, shape in JSON_FILES.items():
    if name != "K":
      out[name] = load_json_array(json_path(root, name), shape, len(k), os.path.basename(json_path(root, "K")))
  return out


def scaled_intrinsics(k: np.ndarray, image_size: int) -> np.ndarray:
  """K of a SOURCE_SIZE image resized to image_size (pixel centres at integers)."""
  s = image_size / SOURCE_SIZE
  out = np.array(k, np.float64)
  out[:2, :] *= s
  out[:2, 2] += 0.5 * s - 0.5
  return out


def read_image(path: str, image_size: int) -> np.ndarray:
  img = cv2.imread(path, cv2.IMREAD_COLOR)
  if img is None:
    raise pipeline.DataError(f"{path}: missing or not a readable image")
  if img.shape[:2] != (SOURCE_SIZE, SOURCE_SIZE):
    raise pipeline.DataError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, expected FreiHAND's "
                             f"{SOURCE_SIZE}x{SOURCE_SIZE}")
  if image_size != SOURCE_SIZE:
    interp = cv2.INTER_AREA if image_size < SOURCE_SIZE else cv2.INTER_LINEAR
    img = cv2.resize(img, (image_size, image_size), interpolation=interp)
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class Freihand(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """FreiHAND evaluation images with their released annotations (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(s, s, 3)),
        "K": pipeline.float_tensor((3, 3)),
        "joints3d": pipeline.float_tensor((21, 3)),
        "joints2d": pipeline.float_tensor((21, 2)),
        "verts3d": pipeline.float_tensor((778, 3)),
        "mano_pose": pipeline.float_tensor((48,)),
        "mano_betas": pipeline.float_tensor((10,)),
        "hand_box": pipeline.float_tensor((4,)),
        "index": tfds.features.Tensor(shape=(), dtype=np.int64),
    }), description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    ann = load_annotations(root)
    for i in range(len(ann["K"])):
      if not os.path.isfile(image_path(root, i)):
        raise pipeline.DataError(f"{image_path(root, i)} is missing (image {i} of the {len(ann['K'])} in "
                                 f"{os.path.basename(json_path(root, 'K'))})")
    return {SPLIT: self._generate_examples(root, ann)}

  def _generate_examples(self, root: str, ann: dict[str, np.ndarray]) -> Iterator[Any]:
    return self.reported(SPLIT, len(ann["K"]), self._examples(root, ann))

  def _examples(self, root, ann):
    size = self.builder_config.image_size
    for i in range(len(ann["K"])):
      k = scaled_intrinsics(ann["K"][i], size)
      joints = ann["xyz"][i][list(SIMPLE_TO_HO3D)]
      verts = ann["verts"][i]
      joints2d = rasterizer.project_points(joints, k)
      both = np.concatenate([joints2d, rasterizer.project_points(verts, k)])
      mano = ann["mano"][i][0]
      yield i, {
          "image": read_image(image_path(root, i), size),
          "K": k.astype(np.float32),
          "joints3d": joints.astype(np.float32),
          "joints2d": joints2d.astype(np.float32),
          "verts3d": verts.astype(np.float32),
          "mano_pose": mano[:48].astype(np.float32),
          "mano_betas": mano[48:58].astype(np.float32),
          "hand_box": np.concatenate([both.min(0), both.max(0)]).astype(np.float32),
          "index": np.int64(i),
      }


def build(data_dir: str, manual_dir: str, config_name: str = "default") -> tfds.core.DatasetBuilder:
  """Builds (if needed) `freihand/<config_name>` under `data_dir` from the FreiHAND download in `manual_dir`."""
  return pipeline.prepare_manual(Freihand, data_dir, manual_dir, config_name, "FreiHAND evaluation")
