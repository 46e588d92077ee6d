"""The pseudo-label dataset as TFDS (Semi-Hand-Object Sec. 5.1-5.2): every pseudo-labelled frame of a
`pose_pseudolabel` run, with its image and the fields of `input_pipeline.pose_data` (as made by
`input_pipeline.pseudo_pose.example_arrays`: pseudo camera, object loss masked), plus `row` (the frame's index in
`pseudo_labels.npz`), `clip_index`, `frame_index`, `keep` and each filter's mask `mask_<filter>`.

Written by the job into `<workdir>/pseudo_labels/tfds/pseudo_pose/<video builder config>/1.0.0` and opened with
`open_dataset`; retraining reads it and keeps the chosen rows (`pseudo_pose.choose_frames`). Its
`dataset_info.json` description records the per-filter removal counts of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from handobj_jax.semi import filters as filters_lib
from input_pipeline import pipeline
from input_pipeline import pseudo_pose

NAME = "pseudo_pose"


@dataclasses.dataclass
class PseudoPoseConfig(tfds.core.BuilderConfig):
  image_size: int = 128


class PseudoPose(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """Pseudo-labelled hand frames (module docstring). Built from in-memory inputs (`build`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [PseudoPoseConfig(name="any")]

  def __init__(self, *, inputs: dict[str, Any] | None = None, image_size: int = 128, summary: str = "",
               **kwargs):
    self._inputs = inputs
    self._image_size = int(image_size)
    self._summary = summary
    super().__init__(config=PseudoPoseConfig(name=f"s{image_size}", image_size=int(image_size)), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self._image_size
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    features = {
        "image": tfds.features.Image(shape=(s, s, 3)), "K": f32(3, 3), "joints3d": f32(21, 3),
        "joints2d": f32(21, 2), "verts3d": f32(778, 3), "mano_pose": f32(48), "mano_betas": f32(10),
        "obj_rot": f32(3, 3), "obj_trans": f32(3), "obj_ctrl3d": f32(21, 3), "obj_ctrl2d": f32(21, 2),
        "hand_box": f32(4), "obj_box": f32(4), "object_weight": f32(),
        "obj_type": tfds.features.Tensor(shape=(), dtype=np.int32),
        "row": tfds.features.Tensor(shape=(), dtype=np.int64),
        "clip_index": tfds.features.Tensor(shape=(), dtype=np.int64),
        "frame_index": tfds.features.Tensor(shape=(), dtype=np.int64),
        "keep": tfds.features.Tensor(shape=(), dtype=np.bool_),
        **{f"mask_{n}": tfds.features.Tensor(shape=(), dtype=np.bool_) for n in filters_lib.FILTER_NAMES},
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description="Hand pseudo-labels. " + self._summary)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    video_ds, arrays, masks, n = (self._inputs[k] for k in ("video_ds", "arrays", "masks", "num"))
    hw = (self._image_size, self._image_size)
    examples = pseudo_pose.dataset(video_ds, arrays, hw).as_numpy_iterator()
    return self.reported("train", n, self._rows(examples, masks))

  def _rows(self, examples, masks):
    for ex in examples:
      row = int(ex["row"])
      ex.pop("obj_mask")
      ex.update({k: bool(v[row]) for k, v in masks.items()})
      yield row, ex


def directory(pseudo_dir: str) -> str:
  return os.path.join(pseudo_dir, "tfds")


def build(pseudo_dir: str, video_ds: tf.data.Dataset, labels: dict[str, np.ndarray], image_hw: tuple[int, int],
          removed: list[tuple[str, int]]) -> tfds.core.DatasetBuilder:
  """Writes every frame of `labels` (the job's merged, filtered arrays) as TFDS under `directory(pseudo_dir)`,
  replacing an earlier build there."""
  if image_hw[0] != image_hw[1]:
    raise ValueError(f"pseudo-label frames must be square, got {image_hw}")
  rows = np.arange(len(labels["clip_index"]))
  arrays = pseudo_pose.example_arrays(labels, rows, image_hw)
  arrays["row"] = rows.astype(np.int64)
  masks = {k: np.asarray(labels[k], bool) for k in labels if k.startswith("mask_") or k == "keep"}
  data_dir = directory(pseudo_dir)
  if tf.io.gfile.exists(data_dir):
    tf.io.gfile.rmtree(data_dir)
  summary = "Removed by each filter, in order: " + json.dumps(dict(removed))
  builder = PseudoPose(inputs={"video_ds": video_ds, "arrays": arrays, "masks": masks, "num": len(rows)},
                       image_size=image_hw[0], summary=summary, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def open_dataset(pseudo_dir: str) -> tfds.core.DatasetBuilder:
  """The pseudo-label TFDS of a `pose_pseudolabel` workdir (a clear error when it was never written)."""
  root = directory(pseudo_dir)
  found = tf.io.gfile.glob(os.path.join(root, NAME, "*", "*", "dataset_info.json"))
  if not found:
    raise pipeline.DataError(f"{root} holds no pseudo-label dataset: run the pose_pseudolabel job with "
                             f"--workdir={pseudo_dir} first (configs/handobj_pose_semi.py)")
  return tfds.builder_from_directory(os.path.dirname(sorted(found)[-1]))
