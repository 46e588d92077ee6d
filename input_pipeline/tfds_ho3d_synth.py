"""TFDS builders for the synthetic 3D hand-object world (offline, no download).

* `synthetic_ho3d`: labelled frames (HO-3D stand-in) from
  `synthetic_3d.generate_example`; splits train / validation / test; builder
  configs `tiny`, `small`, `default` (example counts and image size below).
* `synthetic_ho3d_video`: unlabelled clips (Something-Something stand-in) from
  `synthetic_3d.generate_sequence`: frames with per-frame hand / object boxes
  as the only labels, the hidden ground truth under the nested `gt` dict (for
  evaluating pseudo-labels only; training code must not read it). Splits
  train / validation.

Frames, units and the control-point order are those of
`input_pipeline.synthetic_3d` (OpenCV camera frame, metres, pixel centres at
integer coordinates, boxes [x0, y0, x1, y1]). Decoded dtypes: images uint8,
masks bool, geometry float32, `obj_type` / `side` int64 class labels
(`OBJECT_TYPES`, `SIDES`), `seed` int64 (the generator seed of the example).

Every example is a pure function of (config seed, split, index), so builds
are reproducible. Build, e.g.:
  builder = SyntheticHo3d(config="tiny", data_dir=DIR)
  builder.download_and_prepare()
  ds = builder.as_dataset(split="train")
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import synthetic_3d

SIDES = ("right", "left")
_SPLIT_SEED = {"train": 0, "validation": 1, "test": 2}


# The shifted domain (the semi-supervised experiments' unlabelled video and its labelled test frames): a
# darker scene seen from farther away (smaller hands), tighter grasps of larger objects. Overrides of
# `synthetic_3d.World3DConfig`; the source domain is the default world.
SHIFTED_WORLD = (("distance_range", (0.55, 0.95)), ("ambient_range", (0.12, 0.3)),
                 ("flexion_range", (0.4, 1.1)), ("obj_size_range", (0.06, 0.14)))
DOMAINS = {"source": (), "shifted": SHIFTED_WORLD}


def _world(config) -> synthetic_3d.World3DConfig:
  return synthetic_3d.World3DConfig(height=config.image_size, width=config.image_size,
                                    num_model_points=config.num_model_points, **dict(DOMAINS[config.domain]))


@dataclasses.dataclass
class SyntheticHo3dConfig(tfds.core.BuilderConfig):
  """Sizes of a `synthetic_ho3d` variant.

  Attributes:
    image_size: square image side in pixels.
    num_train / num_validation / num_test: examples per split.
    num_model_points: object model points per example.
    seed: base seed; example i of split s uses seed
      seed * 10**7 + split_index * 10**6 + i.
  """
  image_size: int = 128
  num_train: int = 24
  num_validation: int = 8
  num_test: int = 8
  num_model_points: int = 1000
  seed: int = 0
  domain: str = "source"

  def world_config(self) -> synthetic_3d.World3DConfig:
    return _world(self)


@dataclasses.dataclass
class SyntheticHo3dVideoConfig(tfds.core.BuilderConfig):
  """Sizes of a `synthetic_ho3d_video` variant (counts are sequences)."""
  image_size: int = 128
  num_frames: int = 8
  num_train: int = 2
  num_validation: int = 1
  num_model_points: int = 1000
  seed: int = 100
  domain: str = "source"

  def world_config(self) -> synthetic_3d.World3DConfig:
    return _world(self)


def _seed(config, split: str, index: int) -> int:
  if index >= 10**6:
    raise ValueError(f"split {split} index {index} exceeds 10**6 per split")
  return config.seed * 10**7 + _SPLIT_SEED[split] * 10**6 + index


_f32 = pipeline.float_tensor
_mask = pipeline.bool_mask


def _frame_label_features(p: int, t: tuple[int, ...] = ()) -> dict:
  """Geometry features of one frame, optionally with a leading time dim."""
  return {
      "joints3d": _f32(t + (21, 3)),
      "joints2d": _f32(t + (21, 2)),
      "verts3d": _f32(t + (778, 3)),
      "mano_pose": _f32(t + (48,)),
      "mano_trans": _f32(t + (3,)),
      "obj_rot": _f32(t + (3, 3)),
      "obj_trans": _f32(t + (3,)),
      "obj_ctrl3d": _f32(t + (21, 3)),
      "obj_ctrl2d": _f32(t + (21, 2)),
  }


def _static_features(p: int) -> dict:
  return {
      "K": _f32((3, 3)),
      "mano_betas": _f32((10,)),
      "obj_points3d": _f32((p, 3)),
      "obj_type": tfds.features.ClassLabel(names=synthetic_3d.OBJECT_TYPES),
      "obj_dims": _f32((3,)),
      "obj_diameter": _f32(()),
      "side": tfds.features.ClassLabel(names=SIDES),
  }


# Both builders render the same world, so they share its version.
_VERSION = tfds.core.Version("1.1.0")
_RELEASE_NOTES = {"1.0.0": "Initial release.",
                  "1.1.0": "Objects carry a colour field tied to their frame (their orientation is visible)."}


class SyntheticHo3d(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """Labelled synthetic hand-object frames in HO-3D conventions."""

  VERSION = _VERSION
  RELEASE_NOTES = _RELEASE_NOTES
  BUILDER_CONFIGS = [
      SyntheticHo3dConfig(name="tiny", description="24/8/8 at 128 px (tests)",
                          image_size=128, num_train=24, num_validation=8,
                          num_test=8),
      SyntheticHo3dConfig(name="small", description="2000/200/200 at 128 px",
                          image_size=128, num_train=2000, num_validation=200,
                          num_test=200),
      SyntheticHo3dConfig(name="default",
                          description="20000/1000/1000 at 256 px",
                          image_size=256, num_train=20000, num_validation=1000,
                          num_test=1000),
      SyntheticHo3dConfig(name="small_shifted", description="200/100/200 at 128 px, shifted domain",
                          image_size=128, num_train=200, num_validation=100, num_test=200, seed=3,
                          domain="shifted"),
      SyntheticHo3dConfig(name="default_shifted", description="1000/500/1000 at 256 px, shifted domain",
                          image_size=256, num_train=1000, num_validation=500, num_test=1000, seed=5,
                          domain="shifted"),
      SyntheticHo3dConfig(name="tiny_shifted", description="8/4/8 at 128 px, shifted domain (tests)",
                          image_size=128, num_train=8, num_validation=4, num_test=8, seed=4,
                          domain="shifted"),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    features = {
        "seed": tfds.features.Tensor(shape=(), dtype=np.int64),
        "image": tfds.features.Image(shape=(s, s, 3)),
        "hand_box": _f32((4,)),
        "obj_box": _f32((4,)),
        "hand_mask": _mask((s, s)),
        "obj_mask": _mask((s, s)),
        **_frame_label_features(c.num_model_points),
        **_static_features(c.num_model_points),
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {
        "train": self._generate_examples("train", c.num_train),
        "validation": self._generate_examples("validation", c.num_validation),
        "test": self._generate_examples("test", c.num_test),
    }

  def _generate_examples(self, split: str, num: int):
    return self.reported(split, num, self._examples(split, num))

  def _examples(self, split: str, num: int):
    c = self.builder_config
    world = c.world_config()
    for i in range(num):
      seed = _seed(c, split, i)
      ex = synthetic_3d.generate_example(world, seed)
      yield i, {"seed": seed, **ex}


class SyntheticHo3dVideo(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """Unlabelled synthetic hand-object clips with per-frame boxes."""

  VERSION = _VERSION
  RELEASE_NOTES = _RELEASE_NOTES
  BUILDER_CONFIGS = [
      SyntheticHo3dVideoConfig(name="tiny", description="2+1 clips x 8 @128",
                               image_size=128, num_frames=8, num_train=2,
                               num_validation=1),
      SyntheticHo3dVideoConfig(name="small",
                               description="200+20 clips x 16 @128",
                               image_size=128, num_frames=16, num_train=200,
                               num_validation=20),
      SyntheticHo3dVideoConfig(name="default",
                               description="1000+50 clips x 32 @256",
                               image_size=256, num_frames=32, num_train=1000,
                               num_validation=50),
      SyntheticHo3dVideoConfig(name="small_shifted", description="200+20 clips x 16 @128, shifted domain",
                               image_size=128, num_frames=16, num_train=200, num_validation=20, seed=103,
                               domain="shifted"),
      SyntheticHo3dVideoConfig(name="default_shifted", description="1000+50 clips x 32 @256, shifted domain",
                               image_size=256, num_frames=32, num_train=1000, num_validation=50, seed=105,
                               domain="shifted"),
      SyntheticHo3dVideoConfig(name="tiny_shifted", description="2+1 clips x 8 @128, shifted domain (tests)",
                               image_size=128, num_frames=8, num_train=2, num_validation=1, seed=104,
                               domain="shifted"),
  ]
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, t = c.image_size, c.num_frames
    gt = {
        **_frame_label_features(c.num_model_points, (t,)),
        **_static_features(c.num_model_points),
        "hand_mask": _mask((t, s, s)),
        "obj_mask": _mask((t, s, s)),
    }
    features = {
        "seed": tfds.features.Tensor(shape=(), dtype=np.int64),
        "frames": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 3)),
                                         length=t),
        "hand_boxes": _f32((t, 4)),
        "obj_boxes": _f32((t, 4)),
        "gt": tfds.features.FeaturesDict(gt),
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {
        "train": self._generate_examples("train", c.num_train),
        "validation": self._generate_examples("validation", c.num_validation),
    }

  def _generate_examples(self, split: str, num: int):
    return self.reported(split, num, self._examples(split, num))

  def _examples(self, split: str, num: int):
    c = self.builder_config
    world = c.world_config()
    for i in range(num):
      seed = _seed(c, split, i)
      seq = synthetic_3d.generate_sequence(world, seed, c.num_frames)
      gt = {k[3:]: v for k, v in seq.items() if k.startswith("gt/")}
      yield i, {"seed": seed, "frames": list(seq["frames"]),
                "hand_boxes": seq["hand_boxes"],
                "obj_boxes": seq["obj_boxes"], "gt": gt}


def build(data_dir: str, config_name: str = "tiny", video: bool = False) -> tfds.core.DatasetBuilder:
  """Builds (if needed) `synthetic_ho3d/<config_name>` (or `synthetic_ho3d_video`) under `data_dir`.

  Damaged files of an earlier build are reported with the directory to delete (it is rebuilt on the next
  run: the world is procedural)."""
  cls = SyntheticHo3dVideo if video else SyntheticHo3d
  known = [c.name for c in cls.BUILDER_CONFIGS]
  if config_name not in known:
    raise pipeline.DataError(f"unknown config.data.builder_config {config_name!r} for {cls.name}; choose one "
                             f"of {known}")
  directory = os.path.join(data_dir, cls.name, config_name, str(cls.VERSION))
  return pipeline.prepare(lambda: cls(data_dir=data_dir, config=config_name), directory,
                          f"delete {directory} and rerun: it is rebuilt from the embedded generator")
