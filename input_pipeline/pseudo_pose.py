"""Pseudo-labelled pose examples (Semi-Hand-Object Sec. 5.2): frames of unlabelled clips with the hand
pseudo-labels of the `pose_pseudolabel` job, in the fields of `input_pipeline.pose_data`, so that the pose
task trains on them unchanged, mixed with labelled examples.

Unlabelled video has no camera, so each frame gets a pseudo camera that reproduces its fitted weak-perspective
camera Pi* = (s, t) (`semi.filters.weak_perspective_fit`) up to 1%: K = [[F, 0, cx], [0, F, cy], [0, 0, 1]]
with F = `FOCAL_PER_PIXEL` x the image's larger side and (cx, cy) the image centre, the root joint at depth
Z = F / s, projecting to t. Then joints3d / verts3d = root + the pseudo-label's root-relative points (so
`pose_task.prepare` gets its 2D hand box from the projected mesh, as for labelled data), joints2d = the
ensemble's 2D joints, mano_pose / mano_betas = theta / beta.

Objects have no pseudo-labels (Sec. 5: object models are unknown at inference): `object_weight` = 0 (the
B of Eq. 8), rotation I, the 21 control points spread over the given object box (its 4 corners, then its
centre) so that the network's object RoI is the given box, an empty object mask, object type 0.

Frames: those the filters kept (`keep`), or a selection recomputed from the stored predictions with one
filter group switched off (Table 4); then a fraction (Fig. 9) after a seeded shuffle. Left hands (the
pseudo-labels are in the left MANO convention) are not used: the pose model is a right-hand model; their
count is reported.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from handobj_jax.semi import filters as filters_lib
from input_pipeline import pose_data

FOCAL_PER_PIXEL = 20.0


def pseudo_camera(scale: np.ndarray, trans: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(K [N, 3, 3], root [N, 3]) reproducing the weak-perspective cameras (module docstring)."""
  h, w = image_hw
  f = FOCAL_PER_PIXEL * max(h, w)
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  n = len(scale)
  k = np.zeros((n, 3, 3), np.float32)
  k[:, 0, 0] = k[:, 1, 1] = f
  k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = cx, cy, 1.0
  z = f / np.maximum(np.asarray(scale, np.float64), 1e-6)
  root = np.stack([(trans[:, 0] - cx) * z / f, (trans[:, 1] - cy) * z / f, z], -1).astype(np.float32)
  return k, root


def box_control_points(box: np.ndarray) -> np.ndarray:
  """[N, 4] boxes -> [N, 21, 2]: the 4 corners, then the centre repeated (their tight box is the box)."""
  x0, y0, x1, y1 = (box[:, i] for i in range(4))
  corners = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x0, y1], -1),
                      np.stack([x1, y1], -1)], 1)
  centre = np.repeat(((box[:, :2] + box[:, 2:]) / 2.0)[:, None], 17, axis=1)
  return np.concatenate([corners, centre], 1).astype(np.float32)


def choose_frames(labels: dict[str, np.ndarray], filter_config: Any, *, use_spatial: bool = True,
                  use_temporal: bool = True, fraction: float = 1.0, seed: int = 0) -> dict[str, Any]:
  """Indices of the frames to train on and how they were chosen (module docstring)."""
  if use_spatial and use_temporal and "keep" in labels:
    keep = np.asarray(labels["keep"], bool)
  else:
    keep = filters_lib.select(labels, labels["clip_index"], labels["frame_index"], filter_config,
                              use_spatial=use_spatial, use_temporal=use_temporal)["keep"]
  left = np.asarray(labels["is_left"], bool)
  idx = np.flatnonzero(keep & ~left)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"config.semi.pseudo_fraction={fraction}: must lie in (0, 1]")
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.permutation(idx)[:int(np.ceil(fraction * len(idx)))]) if len(idx) else idx
  return {"indices": chosen, "kept": int(keep.sum()), "left_skipped": int(np.sum(keep & left)),
          "used": int(len(chosen))}


def example_arrays(labels: dict[str, np.ndarray], indices: np.ndarray, image_hw: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
  """The per-frame label fields (all but the image and mask) of the chosen frames."""
  j3, v3 = labels["joints3d"][indices], labels["verts3d"][indices]
  s, t, _ = (np.asarray(x) for x in filters_lib.weak_perspective_fit(j3, labels["joints2d"][indices]))
  k, root = pseudo_camera(s, t, image_hw)
  n = len(indices)
  obj_box = labels["obj_box"][indices].astype(np.float32)
  return {
      "clip_index": labels["clip_index"][indices].astype(np.int64),
      "frame_index": labels["frame_index"][indices].astype(np.int64),
      "K": k, "joints3d": (j3 + root[:, None]).astype(np.float32),
      "verts3d": (v3 + root[:, None]).astype(np.float32),
      "joints2d": labels["joints2d"][indices].astype(np.float32),
      "mano_pose": labels["theta"][indices].astype(np.float32),
      "mano_betas": labels["beta"][indices].astype(np.float32),
      "obj_rot": np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)).copy(),
      "obj_trans": np.broadcast_to(np.asarray([0.0, 0.0, 1.0], np.float32), (n, 3)).copy(),
      "obj_ctrl3d": np.zeros((n, 21, 3), np.float32), "obj_ctrl2d": box_control_points(obj_box),
      "hand_box": labels["hand_box"][indices].astype(np.float32), "obj_box": obj_box,
      "obj_type": np.zeros((n,), np.int32), "object_weight": np.zeros((n,), np.float32),
  }


def load_labels(pseudo_workdir: str) -> dict[str, np.ndarray]:
  from handobj_jax import fileio  # pylint: disable=g-import-not-at-top
  from handobj_jax.jobs import pose_semi  # pylint: disable=g-import-not-at-top
  path = os.path.join(pseudo_workdir, pose_semi.OUT_DIR, pose_semi.LABELS_FILE)
  if not os.path.isfile(path):
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    raise pipeline.DataError(f"{path} does not exist: run the pose_pseudolabel job with "
                             f"--workdir={pseudo_workdir} first (configs/handobj_pose_semi.py)")
  return fileio.load_npz(path)


def dataset(video_ds: tf.data.Dataset, arrays: dict[str, np.ndarray], image_hw: tuple[int, int]
            ) -> tf.data.Dataset:
  """One pass over the chosen frames in clip order: the video split's clips (`frames` [T, H, W, 3]) joined
  with `arrays` (`example_arrays`), as pose examples with `object_weight` 0 (plus every other key of
  `arrays`, e.g. clip_index and frame_index; `training_examples` keeps the pose fields)."""
  clip_ids = arrays["clip_index"]
  num_clips = int(clip_ids.max()) + 1 if len(clip_ids) else 0
  order = np.argsort(clip_ids, kind="stable")
  arrays = {k: v[order] for k, v in arrays.items()}
  splits = np.searchsorted(arrays["clip_index"], np.arange(num_clips + 1)).astype(np.int64)
  table = {k: tf.constant(v) for k, v in arrays.items()}
  splits_t = tf.constant(splits)
  h, w = image_hw

  def per_clip(clip_index, example):
    lo, hi = splits_t[clip_index], splits_t[clip_index + 1]
    rows = {k: v[lo:hi] for k, v in table.items()}
    rows["image"] = tf.gather(example["frames"], rows["frame_index"])
    rows["obj_mask"] = tf.zeros(tf.stack([hi - lo, h, w]), tf.bool)
    return tf.data.Dataset.from_tensor_slices(rows)

  return video_ds.take(num_clips).enumerate().flat_map(per_clip)


def training_examples(ds: tf.data.Dataset, rows: np.ndarray, num_rows: int,
                      image_hw: tuple[int, int]) -> tf.data.Dataset:
  """The pose training examples of a pseudo-label dataset (`tfds_pseudo_pose`) whose `row` is in `rows`: the
  fields of `pose_data.TRAIN_FIELDS`, `object_weight` (0) and an empty object mask."""
  chosen = np.zeros(num_rows, bool)
  chosen[np.asarray(rows, np.int64)] = True
  chosen_t = tf.constant(chosen)
  h, w = image_hw

  def to_example(ex):
    out = {k: ex[k] for k in pose_data.TRAIN_FIELDS + ("object_weight",) if k != "obj_mask"}
    out["obj_mask"] = tf.zeros((h, w), tf.bool)
    return out

  return ds.filter(lambda ex: tf.gather(chosen_t, ex["row"])).map(to_example)
