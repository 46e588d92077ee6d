"""TFDS builder `synthetic_handobj`: the embedded default video dataset, built offline.

Each example is one 10-frame clip of the procedural world in `input_pipeline.synthetic_world`, with the
estimator-like (noisy) flow from each middle frame to its +-3 neighbours and exact ground truth. Nothing is
downloaded: `download_and_prepare` generates the clips deterministically from the builder config's seed.

Stored shapes (T frames, N = max hands, V vertices, M = 4 middle frames, K = 6 offsets, pixels (x, y)):
  frames [T,H,W,3] uint8; flow [M,K,H,W,2] float16 (px; |flow| < ~60 px keeps 0.03 px resolution);
  flow_visible [M,K,H,W] bool; hand_vertices [T,N,V,2], keypoints [T,N,21,2], query_point [T,N,2] float32;
  hand_valid, holding [N] bool; person_mask [T,H,W], hand_mask / object_mask [T,N,H,W] bool;
  hand_box / object_box [T,N,4] float32 [x0,y0,x1,y1]; hand_homography [T,N,3,3], camera_homography [T,3,3];
  distractor_mask / moving_distractor_mask [T,H,W] bool; clip_seed int64.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import synthetic_world

# Fields of `synthetic_world.generate_clip` kept in the dataset, with their storage dtype and encoding.
_Z = tfds.features.Encoding.ZLIB
_NONE = tfds.features.Encoding.NONE


def _field_specs(world: synthetic_world.WorldConfig) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
  t, n, v = world.num_frames, world.max_hands, world.num_vertices
  h, w = world.height, world.width
  m, k = len(synthetic_world.MIDDLE_FRAMES), len(synthetic_world.OFFSETS)
  return {
      "frames": ((t, h, w, 3), np.uint8, _Z),
      "flow": ((m, k, h, w, 2), np.float16, _NONE),
      "flow_visible": ((m, k, h, w), np.bool_, _Z),
      "hand_vertices": ((t, n, v, 2), np.float32, _NONE),
      "keypoints": ((t, n, 21, 2), np.float32, _NONE),
      "query_point": ((t, n, 2), np.float32, _NONE),
      "hand_valid": ((n,), np.bool_, _NONE),
      "holding": ((n,), np.bool_, _NONE),
      "person_mask": ((t, h, w), np.bool_, _Z),
      "hand_mask": ((t, n, h, w), np.bool_, _Z),
      "object_mask": ((t, n, h, w), np.bool_, _Z),
      "hand_box": ((t, n, 4), np.float32, _NONE),
      "object_box": ((t, n, 4), np.float32, _NONE),
      "hand_homography": ((t, n, 3, 3), np.float32, _NONE),
      "camera_homography": ((t, 3, 3), np.float32, _NONE),
      "distractor_mask": ((t, h, w), np.bool_, _Z),
      "moving_distractor_mask": ((t, h, w), np.bool_, _Z),
  }


@dataclasses.dataclass(eq=False)
class SyntheticHandObjConfig(tfds.core.BuilderConfig):
  """Sizes of a synthetic build. `world` holds `WorldConfig` overrides as (name, value) pairs."""
  height: int = 128
  width: int = 128
  num_train: int = 100
  num_validation: int = 20
  num_test: int = 20
  seed: int = 0
  world: tuple[tuple[str, Any], ...] = ()

  def world_config(self) -> synthetic_world.WorldConfig:
    return synthetic_world.WorldConfig(height=self.height, width=self.width, **dict(self.world))


# Realistic defaults: an estimator's flow and vertices are noisy, some clips are egocentric.
_REALISTIC = (("flow_noise_sigma", 0.3), ("flow_outlier_frac", 0.01), ("vertex_noise_sigma", 0.5),
              ("p_camera_motion", 0.2), ("lighting_change", 0.05))

BUILDER_CONFIGS = (
    SyntheticHandObjConfig(name="tiny", description="Tests: 64x64, 6/2/2 clips.", height=64, width=64,
                           num_train=6, num_validation=2, num_test=2, world=_REALISTIC),
    SyntheticHandObjConfig(name="small", description="CPU training: 128x128, 160/32/32 clips.",
                           height=128, width=128, num_train=160, num_validation=32, num_test=32,
                           world=_REALISTIC),
    SyntheticHandObjConfig(name="default", description="256x256, 2000/200/200 clips.", height=256,
                           width=256, num_train=2000, num_validation=200, num_test=200, world=_REALISTIC),
)

_SPLIT_SEED_OFFSET = {"train": 0, "validation": 10_000_000, "test": 20_000_000}


def clip_seed(config: SyntheticHandObjConfig, split: str, index: int) -> int:
  """The world seed of clip `index` of `split`: disjoint between splits, fixed by the config seed."""
  return config.seed * 100_000_000 + _SPLIT_SEED_OFFSET[split] + index


class SyntheticHandobj(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """Procedural hand-object clips with exact ground truth (no download)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Motion 2.5x faster (WorldConfig.motion_scale 2.5): hands move 2.5-6.25 px per frame at 128^2.",
  }
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)

  def _info(self) -> tfds.core.DatasetInfo:
    specs = _field_specs(self.builder_config.world_config())
    features = {name: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=enc)
                for name, (shape, dtype, enc) in specs.items()}
    features["clip_seed"] = tfds.features.Scalar(dtype=np.int64)
    return self.dataset_info_from_configs(
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict(features),
        homepage="",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", cfg.num_train),
        "validation": self._generate_examples("validation", cfg.num_validation),
        "test": self._generate_examples("test", cfg.num_test),
    }

  def _generate_examples(self, split: str, count: int):
    return self.reported(split, count, self._examples(split, count))

  def _examples(self, split: str, count: int):
    cfg = self.builder_config
    world = cfg.world_config()
    specs = _field_specs(world)
    for i in range(count):
      seed = clip_seed(cfg, split, i)
      clip = synthetic_world.generate_clip(world, seed)
      example = {name: np.asarray(clip[name]).astype(dtype) for name, (_, dtype, _) in specs.items()}
      example["clip_seed"] = np.int64(seed)
      yield f"{split}_{i:07d}", example


def build(data_dir: str, config_name: str = "small") -> tfds.core.DatasetBuilder:
  """Builds (if needed) `synthetic_handobj/<config_name>` under `data_dir` and returns the builder.

  Damaged files of an earlier build are reported with the directory to delete (it is rebuilt on the next
  run: the world is procedural)."""
  directory = os.path.join(data_dir, SyntheticHandobj.name, config_name, str(SyntheticHandobj.VERSION))
  return pipeline.prepare(lambda: SyntheticHandobj(data_dir=data_dir, config=config_name), directory,
                          f"delete {directory} and rerun: it is rebuilt from the embedded generator")
