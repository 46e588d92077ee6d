"""Examples of the pose model (Semi-Hand-Object): which fields of a labelled hand-object dataset are read,
and how they are decoded for the jitted step (`handobj_jax.tasks.pose_task`), which crops and augments.

Any builder whose examples carry these fields (in the conventions of `input_pipeline.synthetic_3d`: OpenCV
camera frame, metres, pixel centres at integers, boxes [x0, y0, x1, y1], the 21 control points of the object's
model-point box in its order, 21 hand joints in HO-3D order) trains the model; `synthetic_ho3d` does.

  image [H, W, 3] uint8                 K [3, 3]
  joints3d [21, 3], joints2d [21, 2]    verts3d [778, 3]
  mano_pose [48] (flat-hand-mean axis-angle), mano_betas [10]
  obj_rot [3, 3], obj_trans [3]         obj_ctrl3d [21, 3], obj_ctrl2d [21, 2]
  hand_box [4], obj_box [4]             obj_mask [H, W] bool
  obj_type int32 (index into the builder's object names)
Evaluation also reads obj_points3d [P, 3] (model points, ADD) and obj_diameter (the ADD-0.1D threshold).
"""

from __future__ import annotations

import tensorflow as tf

TRAIN_FIELDS = ("image", "K", "joints3d", "joints2d", "verts3d", "mano_pose", "mano_betas", "obj_rot",
                "obj_trans", "obj_ctrl3d", "obj_ctrl2d", "hand_box", "obj_box", "obj_mask", "obj_type")
EVAL_FIELDS = TRAIN_FIELDS + ("obj_points3d", "obj_diameter")
# Kept when a builder has them: which labels a frame has (HO-3D's evaluation split: no hand mesh; frames
# without an object), and its position in the split's official list (the submission order).
OPTIONAL_FIELDS = ("has_hand_gt", "has_object_gt", "index")
OBJECT_FIELDS = ("obj_rot", "obj_trans", "obj_ctrl3d", "obj_ctrl2d", "obj_box", "obj_mask", "obj_type",
                 "obj_points3d", "obj_diameter")


def select(fields: tuple[str, ...], optional: tuple[str, ...] = ()):
  """A tf.data map keeping `fields` and those of `optional` that exist (obj_type as int32); a missing field is a
  one-line error at trace time."""
  def fn(example):
    missing = [k for k in fields if k not in example]
    if missing:
      from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
      raise pipeline.DataError(f"pose examples lack the field(s) {missing}; they have {sorted(example)}")
    out = {k: example[k] for k in fields}
    out.update({k: example[k] for k in optional if k in example})
    out["obj_type"] = tf.cast(out["obj_type"], tf.int32)
    return out
  return fn


def hand_only(num_points: int = 8):
  """A tf.data map giving a hand-only example (FreiHAND: no object) placeholder object fields, so the pose
  network runs on it: the object box is the hand box (the crop is the hand's) and `has_object_gt` is False, so no
  object metric reads them."""
  def fn(example):
    if "obj_rot" in example:
      return example
    hw = tf.shape(example["image"])[:2]
    return {**example, "obj_rot": tf.eye(3), "obj_trans": tf.constant([0.0, 0.0, 1.0]),
            "obj_ctrl3d": tf.zeros((21, 3)), "obj_ctrl2d": tf.zeros((21, 2)), "obj_box": example["hand_box"],
            "obj_mask": tf.zeros(hw, tf.bool), "obj_type": tf.constant(0, tf.int64),
            "obj_points3d": tf.zeros((num_points, 3)), "obj_diameter": tf.constant(0.0),
            "has_object_gt": tf.constant(False)}
  return fn
