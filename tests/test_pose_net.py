"""The assembled pose network and its task: sizes, degenerate boxes, augmentation consistency against the
synthetic world's own labels, overfitting one batch on 2 devices, and the jobs end to end (smoke size)."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import handobj_pose
from handobj_jax import config_lib
from handobj_jax import errors
from handobj_jax import jobs
from handobj_jax.models import hand_object
from handobj_jax.models import mano as mano_lib
from handobj_jax.tasks import pose_task
from handobj_jax.train import trainer
from input_pipeline import pipeline
from input_pipeline import pose_data
from input_pipeline import synthetic_3d

PAPER_PARAMS = {"none": 37_774_051, "o+": 38_497_507, "h+": 38_497_507, "h+o+": 39_220_963}


@functools.lru_cache(maxsize=None)
def _examples(n: int, size: int = 128, seed0: int = 0) -> dict[str, np.ndarray]:
  world = synthetic_3d.World3DConfig(height=size, width=size)
  exs = [synthetic_3d.generate_example(world, seed0 + i) for i in range(n)]
  out = {k: np.stack([e[k] for e in exs]) for k in pose_data.EVAL_FIELDS}
  out["obj_type"] = out["obj_type"].astype(np.int32)
  return out


def _smoke(**overrides) -> ml_collections.ConfigDict:
  config = handobj_pose.get_config("smoke")
  config.update_from_flattened_dict(overrides)
  return config


def _init(task, seed: int):
  """The task's variables, initialised in one compiled program: eagerly, Flax's ~150 initialisers each
  dispatch and compile their own random-number ops (about a minute on 2 cores)."""
  return jax.jit(lambda key: task.init_variables(key, None))(jax.random.PRNGKey(seed))


def test_paper_sized_network_parameters_and_shapes():
  """Table 6 at 512x512: P2 128x128x256, RoIs 32x32x256, heatmaps 32x32x21, 58 MANO outputs, object grid
  32x32x21x(2+1); parameter counts per CR variant (eval_shape only, nothing is run)."""
  x = jnp.zeros((1, 512, 512, 3))
  boxes = (jnp.array([[100.0, 120, 260, 300]]), jnp.array([[200.0, 200, 330, 380]]))
  for cr, expected in PAPER_PARAMS.items():
    net = hand_object.HandObjectNet(cr=cr)
    shapes = jax.eval_shape(lambda net=net: net.init(jax.random.PRNGKey(0), x, *boxes, False))
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes["params"])) == expected
  out = jax.eval_shape(lambda v: hand_object.HandObjectNet().apply(v, x, *boxes, False), shapes)
  assert out["heatmaps"].shape == (1, 32, 32, 21) and out["theta"].shape == (1, 48)
  assert out["beta"].shape == (1, 10) and out["obj_points"].shape == (1, 32, 32, 21, 2)
  assert out["obj_confidence"].shape == (1, 32, 32, 21)
  assert out["attention_object"].shape == (1, 1, 1024, 1024)
  p2 = jax.eval_shape(lambda: hand_object.fpn_lib.FPN().init_with_output(jax.random.PRNGKey(0), x, False))
  assert p2[0][0].shape == (1, 128, 128, 256)


def test_degenerate_boxes_are_flagged_and_outputs_finite():
  config = _smoke()
  task = pose_task.HandObjectPoseTask(config)
  variables = _init(task, 0)
  s = config.model.image_size
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, s, s, 3)), jnp.float32)
  hand = jnp.array([[10.0, 10, 30, 30], [10.0, 10, 30, 30], [np.nan, 0, 5, 5], [200.0, 200, 260, 260]])
  obj = jnp.array([[20.0, 20, 50, 50], [40.0, 40, 60, 60], [20.0, 20, 50, 50], [20.0, 20, 20, 50]])
  out = jax.jit(lambda v: task.net.apply(v, images, hand, obj, False))(variables)
  np.testing.assert_array_equal(np.asarray(out["inter_valid"]), [True, False, False, False])
  np.testing.assert_array_equal(np.asarray(out["roi_valid"])[:, :2],
                                [[True, True], [True, True], [False, True], [False, False]])
  for k, v in out.items():
    if k != "boxes":  # The boxes are the inputs, NaN included.
      assert np.isfinite(np.asarray(v)).all(), k
  # No intersection: the object features only went through the CR block's feed-forward part.
  assert float(jnp.abs(out["attention_object"][1]).max()) == 0.0
  grads = jax.jit(jax.grad(lambda p: jnp.sum(task.net.apply({**variables, "params": p}, images, hand, obj,
                                                            False)["theta"])))(variables["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bad_configs_and_missing_mano_file(tmp_path):
  config = _smoke()
  config.model.cr = "x+"
  with pytest.raises(config_lib.ConfigError, match=r"config.model.cr='x\+': expected one of 'none', 'o\+'"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="HandObjectNet.cr='x\\+'"):
    pose_task.make_model(config.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                            jnp.zeros((1, 4)), jnp.zeros((1, 4)), False)
  config = _smoke(**{"mano.model_path": str(tmp_path / "MANO_RIGHT.pkl")})
  with pytest.raises(errors.InputError, match=r"MANO_RIGHT.pkl.*licence"):
    pose_task.HandObjectPoseTask(config)
  config = _smoke(**{"model.hourglass_depth": 5})
  with pytest.raises(config_lib.ConfigError, match="roi_size=16 must be >= 32"):
    config_lib.validate(config)


@pytest.mark.parametrize("augment", [False, True])
def test_crops_move_image_labels_camera_and_3d_together(augment):
  """After the (augmented) crop, the ground truth stays self-consistent to float32 precision: MANO of the
  rotated theta gives the rotated joints; the crop camera projects the rotated 3D joints / control points onto
  the transformed 2D ones; the RoI coordinates map back to them; the warped image equals OpenCV's."""
  config = _smoke(**{"model.image_size": 128, "augment.enabled": augment})
  batch = {k: jnp.asarray(v) for k, v in _examples(4).items()}
  prep = jax.jit(lambda b, r: pose_task.prepare(b, config.data, config.augment, 128, 16, r))(
      batch, jax.random.PRNGKey(3) if augment else None)
  model = mano_lib.synthetic_mano_model("right")
  task = pose_task.HandObjectPoseTask(config)
  mano = task.hand_mesh(prep["theta"], prep["beta"])
  np.testing.assert_allclose(np.asarray(mano["joints"]), np.asarray(prep["joints_rel"]), atol=2e-5)
  np.testing.assert_allclose(np.asarray(mano["verts"]), np.asarray(prep["verts_rel"]), atol=2e-5)
  del model
  joints_cam = prep["joints_rel"] + prep["root"][:, None]
  np.testing.assert_allclose(np.asarray(pose_task.project(prep["K"], joints_cam)), np.asarray(prep["joints2d"]),
                             atol=2e-2)
  ctrl_obj = jnp.einsum("bji,bpj->bpi", batch["obj_rot"], batch["obj_ctrl3d"] - batch["obj_trans"][:, None])
  ctrl_cam = jnp.einsum("bij,bpj->bpi", prep["obj_rot"], ctrl_obj) + prep["obj_trans"][:, None]
  np.testing.assert_allclose(np.asarray(pose_task.project(prep["K"], ctrl_cam)), np.asarray(prep["ctrl2d"]),
                             atol=2e-2)
  back = pose_task.pnp.box_to_pixels(prep["ctrl_uv"], prep["obj_box"])
  np.testing.assert_allclose(np.asarray(back), np.asarray(prep["ctrl2d"]), atol=1e-3)
  uv = np.asarray(prep["ctrl_uv"])
  assert uv.min() >= -1e-5 and uv.max() <= 1 + 1e-5  # The object box is the control points' box.
  import cv2  # pylint: disable=import-outside-toplevel
  img = np.asarray(batch["image"][1], np.float32) / 255.0
  ref = cv2.warpAffine(img, np.asarray(prep["affine"][1], np.float64), (128, 128), flags=cv2.INTER_LINEAR)
  if not augment:  # Colour jitter changes the values; the geometry is checked without it.
    assert np.mean(np.abs(np.asarray(prep["image"][1]) - ref)) < 2e-3
  # The silhouette cells lie on the object: most have a control-point box around them.
  assert float(prep["cell_mask"].mean()) > 0.1


@pytest.mark.slow
def test_overfits_one_batch_on_two_devices():
  """Adam on one fixed batch (no augmentation) over a 2-device mesh: joint and control-point errors fall."""
  assert jax.device_count() == 2
  config = _smoke(**{"model.image_size": 64, "augment.enabled": False, "batch_size": 4})
  config.optim.learning_rate = 2e-3
  task = pose_task.HandObjectPoseTask(config)
  mesh = pipeline.make_data_mesh()
  batch = next(pipeline.global_batches([{k: v for k, v in _examples(4).items()
                                         if k in pose_data.TRAIN_FIELDS}], mesh))
  make_state, _ = trainer.init_state(task, config, mesh, batch)
  state = make_state()
  step = trainer.make_train_step(task, mesh)
  history = []
  for _ in range(80):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))  # Blocks each step (see tests/conftest.py).
  first = {k: np.mean([h[k] for h in history[:3]]) for k in ("joint_err_mm", "ctrl_err_px", "loss")}
  last = {k: np.mean([h[k] for h in history[-3:]]) for k in first}
  assert all(h["finite"] for h in history)
  assert last["loss"] < 0.3 * first["loss"], (first, last)
  assert last["joint_err_mm"] < 0.6 * first["joint_err_mm"], (first, last)
  assert last["ctrl_err_px"] < 0.6 * first["ctrl_err_px"], (first, last)


def test_object_loss_is_masked_on_pseudo_labelled_examples():
  """Eq. 8: with B = 0 (object_weight) an example's object labels do not matter."""
  config = _smoke(**{"model.image_size": 64, "augment.enabled": False})
  task = pose_task.HandObjectPoseTask(config)
  variables = _init(task, 1)
  batch = {k: jnp.asarray(v) for k, v in _examples(2).items() if k in pose_data.TRAIN_FIELDS}
  loss_fn = jax.jit(lambda b: task.loss_fn(variables["params"], variables["batch_stats"], b,
                                           jax.random.PRNGKey(0), False)[1][0])
  masked = {**batch, "object_weight": jnp.array([1.0, 0.0])}
  moved = {**masked, "obj_ctrl2d": masked["obj_ctrl2d"].at[1].add(7.0)}
  both = {**moved, "object_weight": jnp.array([1.0, 1.0])}  # Same structure: one compile for all three.
  a, b, c = loss_fn(masked), loss_fn(moved), loss_fn(both)
  assert float(a["object_loss"]) == pytest.approx(float(b["object_loss"]), rel=1e-6)
  assert float(c["object_loss"]) != pytest.approx(float(b["object_loss"]), rel=1e-3)
  assert float(a["hand_loss"]) == pytest.approx(float(c["hand_loss"]), rel=1e-6)


@pytest.mark.slow
def test_train_and_eval_jobs_end_to_end(tmp_path):
  """`pose_train` then `pose_eval` on the tiny synthetic build: checkpoints, report tables, figures."""
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  config = _smoke(**{"data.data_dir": str(data_dir), "num_steps": 3})
  workdir = str(tmp_path / "work")
  out = jobs.get_job("pose_train")(config, workdir)
  assert out["fit"].step == 3 and np.isfinite(out["val_metrics"]["joint_err_mm"])
  config.job = "pose_eval"
  result = jobs.get_job("pose_eval")(config, workdir)
  report = result["report"]
  row = report["rows"][0]
  assert row["num_images"] == 8 and set(report["object_groups"]) <= set(synthetic_3d.OBJECT_TYPES)
  for key in ("joint_error_procrustes_mm", "mesh_error_procrustes_mm", "fscore_5mm", "fscore_15mm",
              "joint_auc_procrustes"):
    assert np.isfinite(row["hand"][key])
  for solver in ("cv", "dev"):
    assert 0.0 <= row["objects"][solver]["add_success_mean"] <= 100.0
  text = open(result["report_md"]).read()
  assert "Table 1 shape" in text and "Table 2 shape" in text and "oracle boxes and root" in text
  assert any(os.path.basename(p).startswith("fig6_") for p in result["figures"])
  assert any(os.path.basename(p).startswith("fig7_") for p in result["figures"])
