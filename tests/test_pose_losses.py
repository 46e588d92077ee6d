"""Tests for handobj_jax.losses.pose_losses against NumPy float64 transcriptions.

Tolerances: relative 1e-5 on every loss value (float32 against float64),
absolute 1e-6 on the normalised heatmaps.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.losses import pose_losses as pl

RTOL = 1e-5
HEATMAP_ATOL = 1e-6


def _wmean(values, weight):
  values = np.asarray(values, np.float64)
  w = np.asarray(weight, np.float64)
  if w.sum() == 0:
    return 0.0
  return float(np.sum(np.where(w > 0, w * np.where(w > 0, values, 0), 0)) / w.sum())


def _finite_grads(grads):
  return all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


# ---------------------------------------------------------------- heatmaps


def _np_heatmaps(uv, valid, size, sigma):
  b, j, _ = uv.shape
  out = np.zeros((b, size, size, j))
  for bi in range(b):
    for ji in range(j):
      if not valid[bi, ji]:
        continue
      for row in range(size):
        for col in range(size):
          dx = (col + 0.5) - uv[bi, ji, 0] * size
          dy = (row + 0.5) - uv[bi, ji, 1] * size
          out[bi, row, col, ji] = np.exp(-(dx * dx + dy * dy) / (2 * sigma ** 2))
      out[bi, :, :, ji] /= out[bi, :, :, ji].sum()
  return out


def test_heatmap_targets_match_numpy():
  rng = np.random.RandomState(0)
  uv = rng.uniform(0.05, 0.95, (2, 5, 2))
  valid = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], bool)
  ours = np.asarray(pl.heatmap_targets(uv, valid, 16, 1.5))
  ref = _np_heatmaps(uv, valid, 16, 1.5)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=HEATMAP_ATOL)
  np.testing.assert_allclose(ours.sum((1, 2)), valid.astype(float), atol=1e-5)
  # Peak at the joint's cell: u = (col + 0.5) / S.
  one = np.asarray(pl.heatmap_targets(np.array([[[5.5 / 16, 9.5 / 16]]]), None, 16, 1.0))
  assert np.unravel_index(one[0, ..., 0].argmax(), (16, 16)) == (9, 5)
  # Far outside the RoI: still finite and normalised (mass on the border).
  far = np.asarray(pl.heatmap_targets(np.array([[[40.0, -30.0]]]), None, 8, 1.0))
  assert np.isfinite(far).all() and abs(far.sum() - 1) < 1e-5
  with pytest.raises(ValueError, match="sigma"):
    pl.heatmap_targets(uv, valid, 16, 0.0)
  grad = jax.grad(lambda u: jnp.sum(pl.heatmap_targets(u, None, 8, 1.0) ** 2))(
      jnp.array([[[40.0, -30.0], [0.5, 0.5]]]))
  assert np.isfinite(np.asarray(grad)).all()


def test_heatmap_loss_matches_numpy_and_honours_masks():
  rng = np.random.RandomState(1)
  b, s, j = 4, 8, 3
  pred = rng.rand(b, s, s, j)
  target = rng.rand(b, s, s, j)
  weight = np.array([1.0, 0.0, 2.0, 0.5])
  joint_valid = rng.rand(b, j) > 0.3
  ours = float(pl.heatmap_loss(pred, target, weight, joint_valid))
  per = (((pred - target) ** 2).sum((1, 2)) * joint_valid).sum(1)
  assert ours == pytest.approx(_wmean(per, weight), rel=RTOL)
  no_valid = float(pl.heatmap_loss(pred, target, weight))
  assert no_valid == pytest.approx(_wmean(((pred - target) ** 2).sum((1, 2, 3)), weight),
                                   rel=RTOL)
  assert abs(no_valid - ours) > 1e-3
  # A masked example changes nothing, even with NaN in it.
  pred2 = pred.copy()
  pred2[1] = np.nan
  assert float(pl.heatmap_loss(pred2, target, weight, joint_valid)) == pytest.approx(
      ours, rel=1e-6)
  # All masked: exactly 0 with finite gradients; zero heatmaps are fine too.
  zeros = np.zeros((b, s, s, j), np.float32)
  assert float(pl.heatmap_loss(pred, target, np.zeros(b))) == 0.0
  g = jax.grad(lambda p: pl.heatmap_loss(p, zeros, np.zeros(b)))(jnp.asarray(zeros))
  assert _finite_grads(g) and np.all(np.asarray(g) == 0)
  g = jax.grad(lambda p: pl.heatmap_loss(p, zeros, np.ones(b)))(jnp.asarray(zeros))
  assert _finite_grads(g)


def test_joints2d_loss_matches_numpy():
  rng = np.random.RandomState(2)
  b, j = 3, 21
  pred, target = rng.rand(b, j, 2), rng.rand(b, j, 2)
  weight = np.array([True, True, False])
  valid = rng.rand(b, j) > 0.2
  ours = float(pl.joints2d_loss(pred, target, weight, valid))
  sq = (pred - target) ** 2
  per = np.array([sq[i][valid[i]].mean() for i in range(b)])
  assert ours == pytest.approx(_wmean(per, weight), rel=RTOL)
  # Without joint_valid: PyTorch F.mse_loss over the unmasked examples.
  full = float(pl.joints2d_loss(pred, target, weight))
  assert full == pytest.approx(sq[:2].mean(), rel=RTOL)
  assert float(pl.joints2d_loss(pred, target, np.zeros(b, bool))) == 0.0
  g = jax.grad(lambda p: pl.joints2d_loss(p, jnp.asarray(pred, jnp.float32),
                                          np.ones(b), np.zeros((b, j))))(
                                              jnp.asarray(pred, jnp.float32))
  assert _finite_grads(g) and np.all(np.asarray(g) == 0)


# -------------------------------------------------------------------- MANO


def _mano_batch(rng, b):
  return dict(theta=0.4 * rng.randn(b, 48), beta=rng.randn(b, 10),
              joints=0.05 * rng.randn(b, 21, 3), verts=0.05 * rng.randn(b, 778, 3))


@pytest.mark.parametrize("pose_space", ["axis_angle", "rotmat"])
def test_mano_loss_matches_numpy(pose_space):
  rng = np.random.RandomState(3)
  b = 4
  pred, target = _mano_batch(rng, b), _mano_batch(rng, b)
  rot = lambda th: Rotation.from_rotvec(th.reshape(-1, 3)).as_matrix().reshape(b, 16, 3, 3)
  pred["rotmats"] = rot(pred["theta"])
  weight = np.array([1.0, 1.0, 0.0, 3.0])
  weights = dict(joints=1e4, verts=1e4, pose=10.0, shape=0.1)
  total, terms = pl.mano_loss(pred, target, weight, pose_space=pose_space)
  mse = lambda a, c: ((a - c) ** 2).reshape(b, -1).mean(1)
  ref = {
      "pose": _wmean(mse(pred["theta"], target["theta"]) if pose_space == "axis_angle"
                     else mse(pred["rotmats"], rot(target["theta"])), weight),
      "shape": _wmean(mse(pred["beta"], target["beta"]), weight),
      "joints": _wmean(mse(pred["joints"], target["joints"]), weight),
      "verts": _wmean(mse(pred["verts"], target["verts"]), weight),
  }
  assert set(terms) == set(ref)
  for k in ref:
    assert float(terms[k]) == pytest.approx(ref[k], rel=RTOL), k
  assert float(total) == pytest.approx(sum(weights[k] * ref[k] for k in ref), rel=RTOL)
  # Custom weights and a target with joints only (pseudo-label style).
  total2, terms2 = pl.mano_loss(pred, {"joints": target["joints"]}, weight,
                                joints_weight=2.0)
  assert set(terms2) == {"joints"}
  assert float(total2) == pytest.approx(2.0 * ref["joints"], rel=RTOL)
  # Masked example: NaN in it changes nothing.
  pred_nan = {k: v.copy() for k, v in pred.items()}
  for v in pred_nan.values():
    v[2] = np.nan
  total3, _ = pl.mano_loss(pred_nan, target, weight, pose_space=pose_space)
  assert float(total3) == pytest.approx(float(total), rel=1e-6)


def test_mano_loss_degenerate_gradients():
  rng = np.random.RandomState(4)
  b = 2
  target = {k: jnp.asarray(v, jnp.float32) for k, v in _mano_batch(rng, b).items()}
  target["rotmats"] = jnp.tile(jnp.eye(3), (b, 16, 1, 1))
  for weight in (np.zeros(b), np.ones(b)):
    for space in ("axis_angle", "rotmat"):
      g = jax.grad(lambda p: pl.mano_loss(p, target, weight, pose_space=space)[0])(
          dict(target))  # identical prediction and target
      assert _finite_grads(g)
      assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(g))
  assert float(pl.mano_loss(target, target, np.zeros(b))[0]) == 0.0
  with pytest.raises(ValueError, match="pose_space"):
    pl.mano_loss(target, target, np.ones(b), pose_space="quat")


# ------------------------------------------------------------------ object


def _np_object_loss(pred, conf, target, cell_mask, example_mask, lp, lc,
                    reduction, outside, norm):
  b, s, _, n, _ = pred.shape
  m = np.ones((b, s, s)) if cell_mask is None else np.asarray(cell_mask, np.float64)
  p2d, cl = np.zeros(b), np.zeros(b)
  for bi in range(b):
    sums = np.zeros(2)
    counts = np.zeros(2)
    for row in range(s):
      for col in range(s):
        for i in range(n):
          delta = pred[bi, row, col, i] - target[bi, i]
          c = np.exp(-np.sqrt((delta ** 2).sum()))
          e = conf[bi, row, col, i] - c
          inside = m[bi, row, col] > 0
          if inside:
            sums[0] += m[bi, row, col] * np.abs(delta).sum()
            counts[0] += m[bi, row, col]
          if outside == "zero":
            e = conf[bi, row, col, i] - (c * m[bi, row, col])
            sums[1] += e ** 2 if norm == "l2" else abs(e)
            counts[1] += 1
          elif inside:
            sums[1] += m[bi, row, col] * (e ** 2 if norm == "l2" else abs(e))
            counts[1] += m[bi, row, col]
    for k, out in enumerate((p2d, cl)):
      if reduction == "sum":
        out[bi] = sums[k]
      elif reduction == "grid_mean":
        out[bi] = sums[k] / (s * s * n)
      else:
        out[bi] = sums[k] / counts[k] if counts[k] > 0 else 0.0
  p2d, cl = _wmean(p2d, example_mask), _wmean(cl, example_mask)
  return lp * p2d + lc * cl, p2d, cl


def _object_inputs(seed, b=3, s=5, n=4):
  rng = np.random.RandomState(seed)
  pred = rng.uniform(-0.2, 1.2, (b, s, s, n, 2))
  conf = rng.uniform(0, 1, (b, s, s, n))
  target = rng.uniform(0, 1, (b, n, 2))
  cell_mask = rng.rand(b, s, s) > 0.4
  cell_mask[2] = False  # an example with an empty object mask
  return pred, conf, target, cell_mask


@pytest.mark.parametrize("reduction,outside,norm", list(itertools.product(
    pl.CELL_REDUCTIONS, ("ignore", "zero"), ("l2", "l1"))))
def test_object_loss_matches_numpy(reduction, outside, norm):
  pred, conf, target, cell_mask = _object_inputs(5)
  example_mask = np.array([1.0, 0.5, 1.0])
  total, terms = pl.object_loss(pred, conf, target, cell_mask, example_mask, 0.5, 0.1,
                                cell_reduction=reduction, conf_outside_mask=outside,
                                conf_norm=norm)
  ref_total, ref_p2d, ref_conf = _np_object_loss(
      pred, conf, target, cell_mask, example_mask, 0.5, 0.1, reduction, outside, norm)
  assert float(terms["p2d"]) == pytest.approx(ref_p2d, rel=RTOL)
  assert float(terms["conf"]) == pytest.approx(ref_conf, rel=RTOL)
  assert float(total) == pytest.approx(ref_total, rel=RTOL)


def test_object_loss_defaults_masks_and_degenerate_gradients():
  pred, conf, target, cell_mask = _object_inputs(6)
  b, s = pred.shape[:2]
  example_mask = np.array([True, False, True])
  total, terms = pl.object_loss(pred, conf, target, cell_mask, example_mask)
  ref = _np_object_loss(pred, conf, target, cell_mask, example_mask, 0.5, 0.1,
                        "grid_mean", "ignore", "l2")
  assert float(total) == pytest.approx(ref[0], rel=RTOL)
  # The defaults differ from the other options on this input (the test can fail).
  other, _ = pl.object_loss(pred, conf, target, cell_mask, example_mask,
                            cell_reduction="mask_mean")
  assert abs(float(other) - float(total)) > 1e-3
  # cell_mask=None is all cells.
  all_cells, _ = pl.object_loss(pred, conf, target, None, example_mask)
  ones, _ = pl.object_loss(pred, conf, target, np.ones((b, s, s)), example_mask)
  assert float(all_cells) == pytest.approx(float(ones), rel=1e-6)
  # Masked example (index 1): garbage in it changes nothing.
  pred2, conf2, target2 = pred.copy(), conf.copy(), target.copy()
  pred2[1], conf2[1], target2[1] = np.nan, 7.0, -3.0
  total2, _ = pl.object_loss(pred2, conf2, target2, cell_mask, example_mask)
  assert float(total2) == pytest.approx(float(total), rel=1e-6)
  # Masked-out cells do not count (with the default 'ignore').
  pred3 = pred.copy()
  pred3[0][~cell_mask[0]] += 5.0
  total3, _ = pl.object_loss(pred3, conf, target, cell_mask, example_mask)
  assert float(total3) == pytest.approx(float(total), rel=1e-6)
  # Confidence target is a constant (stop-gradient): d L_conf / d points = 0.
  g_pts = jax.grad(lambda p: pl.object_loss(p, conf, target, cell_mask, example_mask,
                                            lambda_p=0.0)[0])(jnp.asarray(pred, jnp.float32))
  assert np.all(np.asarray(g_pts) == 0)
  # Degenerate: prediction == target everywhere, all masks zero, empty cells.
  exact = np.broadcast_to(target[:, None, None], pred.shape).astype(np.float32)
  for cm, em in ((cell_mask, example_mask), (np.zeros((b, s, s)), np.ones(b)),
                 (cell_mask, np.zeros(b))):
    for reduction in pl.CELL_REDUCTIONS:
      fn = lambda p, c: pl.object_loss(p, c, target, cm, em,
                                       cell_reduction=reduction)[0]
      value = fn(jnp.asarray(exact), jnp.ones_like(jnp.asarray(conf)))
      g = jax.grad(fn, argnums=(0, 1))(jnp.asarray(exact), jnp.ones_like(jnp.asarray(conf)))
      assert np.isfinite(float(value)) and _finite_grads(g)
      assert float(value) == pytest.approx(0.0, abs=1e-7)  # conf == exp(0) == 1
  assert float(pl.object_loss(pred, conf, target, cell_mask, np.zeros(b))[0]) == 0.0
  with pytest.raises(ValueError, match="cell_reduction"):
    pl.object_loss(pred, conf, target, cell_mask, example_mask, cell_reduction="max")


def test_weighted_mean_all_zero_and_float_weights():
  assert float(pl.weighted_mean(jnp.array([1.0, jnp.nan]), jnp.array([0.0, 0.0]))) == 0.0
  assert float(pl.weighted_mean(jnp.array([1.0, 4.0]), jnp.array([3.0, 1.0]))) == (
      pytest.approx(7.0 / 4.0))
  g = jax.grad(lambda x: pl.weighted_mean(x, jnp.zeros(2)))(jnp.array([1.0, 2.0]))
  assert np.all(np.asarray(g) == 0)
