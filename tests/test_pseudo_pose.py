"""Pseudo-labelled pose examples (Sec. 5.2): the pseudo camera reproduces the weak-perspective fit, examples
join the right frames, the object loss is masked (Eq. 8), frame choice by filters and fraction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import handobj_pose
from configs import handobj_pose_semi
from handobj_jax.semi import filters
from handobj_jax.tasks import pose_task
from input_pipeline import pseudo_pose
from input_pipeline import synthetic_3d

H = W = 128
T = 8


def _labels(num_clips=2, seed0=6):
  """Pseudo-labels made of the synthetic video's ground truth (a perfect teacher), in the job's layout."""
  cfg = synthetic_3d.World3DConfig(height=H, width=W, num_model_points=1000)
  seqs = [synthetic_3d.generate_sequence(cfg, seed0 + i, T) for i in range(num_clips)]
  cat = lambda k: np.concatenate([s[k] for s in seqs])
  j3 = cat("gt/joints3d")
  labels = dict(joints2d=cat("gt/joints2d"), joints3d=j3 - j3[:, :1], verts3d=cat("gt/verts3d") - j3[:, :1],
                theta=cat("gt/mano_pose"), beta=np.concatenate([np.tile(s["gt/mano_betas"], (T, 1)) for s in seqs]),
                hand_box=cat("hand_boxes"), obj_box=cat("obj_boxes"),
                clip_index=np.repeat(np.arange(num_clips), T), frame_index=np.tile(np.arange(T), num_clips),
                is_left=np.zeros(num_clips * T, bool))
  labels = {k: np.asarray(v) for k, v in labels.items()}
  return labels, np.stack([s["frames"] for s in seqs])


def test_pseudo_camera_reproduces_the_weak_perspective_fit():
  labels, _ = _labels(1)
  s, t, ok = (np.asarray(x) for x in filters.weak_perspective_fit(labels["joints3d"], labels["joints2d"]))
  assert ok.all()
  k, root = pseudo_pose.pseudo_camera(s, t, (H, W))
  pts = labels["verts3d"] + root[:, None]
  uvw = np.einsum("nij,npj->npi", k.astype(np.float64), pts.astype(np.float64))
  proj = uvw[..., :2] / uvw[..., 2:]
  weak = s[:, None, None] * labels["verts3d"][..., :2] + t[:, None]
  extent = np.max(weak, axis=1) - np.min(weak, axis=1)
  # Within 1% of the hand's extent in the image (the perspective of a hand 20 image widths away).
  assert np.max(np.abs(proj - weak) / extent[:, None]) < 0.01


def test_examples_join_their_frames_and_train_with_the_object_loss_masked():
  labels, frames = _labels(2)
  c = handobj_pose_semi.filters()
  choice = pseudo_pose.choose_frames(labels, c)            # No `keep` stored: the filters run here.
  assert choice["used"] == choice["kept"] > 0
  arrays = pseudo_pose.example_arrays(labels, choice["indices"], (H, W))
  video = tf.data.Dataset.from_tensor_slices({"frames": frames})
  examples = list(pseudo_pose.dataset(video, arrays, (H, W)).as_numpy_iterator())
  assert len(examples) == choice["used"]
  for ex, i in zip(examples, choice["indices"]):
    np.testing.assert_array_equal(ex["image"], frames[labels["clip_index"][i], labels["frame_index"][i]])
    np.testing.assert_allclose(ex["joints2d"], labels["joints2d"][i])
    assert ex["object_weight"] == 0.0 and not ex["obj_mask"].any()
  # The control-point stand-ins span the given object box, so the network's object RoI is that box.
  np.testing.assert_allclose(np.min(arrays["obj_ctrl2d"], 1), arrays["obj_box"][:, :2])
  np.testing.assert_allclose(np.max(arrays["obj_ctrl2d"], 1), arrays["obj_box"][:, 2:])

  config = handobj_pose.get_config("smoke")
  task = pose_task.HandObjectPoseTask(config)
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples[:2]])) for k in examples[0]}
  prep = jax.jit(lambda b: pose_task.prepare(b, config.data, config.augment, 64, 16, None))(batch)
  # The root-relative 3D targets are the pseudo-labels' (no rotation without augmentation).
  np.testing.assert_allclose(prep["joints_rel"], labels["joints3d"][choice["indices"][:2]], atol=1e-4)
  variables = jax.jit(lambda key: task.init_variables(key, None))(jax.random.PRNGKey(0))

  def object_loss(weight):
    b = dict(batch, object_weight=jnp.full((2,), weight, jnp.float32))
    _, (metrics, _) = task.loss_fn(variables["params"], variables["batch_stats"], b, jax.random.PRNGKey(1),
                                   False)
    return metrics

  m0, m1 = jax.jit(object_loss)(0.0), jax.jit(object_loss)(1.0)
  assert float(m0["object_loss"]) == 0.0 and float(m1["object_loss"]) > 0.0
  np.testing.assert_allclose(m0["hand_loss"], m1["hand_loss"], rtol=1e-6)


def test_frame_choice_by_filters_fraction_and_hand_side():
  labels, _ = _labels(2)
  c = handobj_pose_semi.filters()
  labels["keep"] = np.ones(2 * T, bool)
  labels["keep"][3] = False
  labels["is_left"] = labels["is_left"].copy()
  labels["is_left"][5] = True
  full = pseudo_pose.choose_frames(labels, c)
  assert full["kept"] == 15 and full["left_skipped"] == 1 and full["used"] == 14
  assert 3 not in full["indices"] and 5 not in full["indices"]
  part = pseudo_pose.choose_frames(labels, c, fraction=0.5, seed=1)
  assert part["used"] == 7 and set(part["indices"]) <= set(full["indices"])
  assert set(pseudo_pose.choose_frames(labels, c, fraction=0.5, seed=2)["indices"]) != set(part["indices"])
  # An ablation recomputes the selection from the stored predictions instead of `keep`.
  no_temporal = pseudo_pose.choose_frames(labels, c, use_temporal=False)
  assert 3 in no_temporal["indices"]
  with pytest.raises(ValueError, match="pseudo_fraction"):
    pseudo_pose.choose_frames(labels, c, fraction=0.0)


def test_tfds_pseudo_label_dataset_round_trip(tmp_path):
  """The job's TFDS output holds every frame with its masks; training reads back exactly the chosen rows."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import pose_data  # pylint: disable=g-import-not-at-top
  from input_pipeline import tfds_pseudo_pose  # pylint: disable=g-import-not-at-top
  labels, frames = _labels(2)
  sel = filters.select(labels, labels["clip_index"], labels["frame_index"], handobj_pose_semi.filters())
  labels = dict(labels, keep=sel["keep"], **{f"mask_{k}": v for k, v in sel["masks"].items()})
  labels["keep"][[2, 9]] = False
  video = tf.data.Dataset.from_tensor_slices({"frames": frames})
  with pytest.raises(pipeline.DataError, match="holds no pseudo-label dataset"):
    tfds_pseudo_pose.open_dataset(str(tmp_path))
  tfds_pseudo_pose.build(str(tmp_path), video, labels, (H, W), sel["removed"])
  builder = tfds_pseudo_pose.open_dataset(str(tmp_path))
  rows = list(pipeline.load_split(builder, "train").as_numpy_iterator())
  assert sorted(int(r["row"]) for r in rows) == list(range(2 * T))
  for r in rows:
    i = int(r["row"])
    np.testing.assert_array_equal(r["image"], frames[labels["clip_index"][i], labels["frame_index"][i]])
    assert bool(r["keep"]) == labels["keep"][i] and r["object_weight"] == 0.0
  assert "Removed by each filter" in builder.info.description
  chosen = pseudo_pose.choose_frames(labels, handobj_pose_semi.filters())["indices"]
  train = list(pseudo_pose.training_examples(pipeline.load_split(builder, "train"), chosen, 2 * T,
                                             (H, W)).as_numpy_iterator())
  assert len(train) == len(chosen) == 2 * T - 2
  assert set(train[0]) == set(pose_data.TRAIN_FIELDS) | {"object_weight"}
  # Rebuilding replaces the earlier dataset.
  tfds_pseudo_pose.build(str(tmp_path), video, labels, (H, W), sel["removed"])
  assert len(list(pipeline.load_split(tfds_pseudo_pose.open_dataset(str(tmp_path)), "train"))) == 2 * T
