"""Tests for handobj_jax.losses.cohesiv_losses against NumPy float64 loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.losses import cohesiv_losses as cl
from reference_helpers import import_torch

RTOL = 1e-5

# Shared jitted entry points: eager JAX compiles every primitive separately,
# which dominates the run time of these small tests.
_resp_jit = jax.jit(cl.responsibility_loss)
_emb_jit = jax.jit(cl.embedding_loss)
_emb_vg = jax.jit(jax.value_and_grad(cl.embedding_loss))


# ----------------------------------------------------------------------------
# Independent float64 references (explicit loops, written from the paper).


def ref_smooth_l1(x, beta):
  ax = abs(x)
  return 0.5 * x * x / beta if ax < beta else ax - 0.5 * beta


def ref_responsibility_loss(attn, target, valid, beta):
  b_, p_, h_, w_ = attn.shape
  total, n = 0.0, 0
  for b in range(b_):
    for p in range(p_):
      if not valid[b, p]:
        continue
      for i in range(h_):
        for j in range(w_):
          pred = min(max(float(attn[b, p, i, j]), 0.0), 1.0)
          total += ref_smooth_l1(pred - float(target[b, p, i, j]), beta)
          n += 1
  return total / n if n else 0.0


def ref_embedding_loss(z, pm, om, bm, eps):
  z = z.astype(np.float64)
  b_, h_, w_, f_ = z.shape
  groups = [pm, om, bm]
  sums = [0.0, 0.0, 0.0]
  present = [0, 0, 0]
  for b in range(b_):
    means = []
    for m in groups:
      acc = np.zeros(f_)
      c = 0
      for i in range(h_):
        for j in range(w_):
          if m[b, i, j]:
            acc += z[b, i, j]
            c += 1
      means.append(acc / c if c else np.zeros(f_))
    for g, m in enumerate(groups):
      tot, c = 0.0, 0
      for i in range(h_):
        for j in range(w_):
          if not m[b, i, j]:
            continue
          a = [float(means[k] @ z[b, i, j]) for k in range(3)]
          num = math.exp(a[g]) + eps
          den = math.exp(a[0]) + math.exp(a[1]) + math.exp(a[2]) + eps
          tot += -math.log(num / den)
          c += 1
      if c:
        sums[g] += tot / c
        present[g] += 1
  return sum(s / p if p else 0.0 for s, p in zip(sums, present))


def _random_masks(rng, b, h, w):
  lab = rng.integers(0, 3, size=(b, h, w))
  return lab == 0, lab == 1, lab == 2


# ----------------------------------------------------------------------------


def test_smooth_l1_matches_formula_and_both_branches():
  x = np.linspace(-2, 2, 41).astype(np.float32)
  got = np.asarray(cl.smooth_l1(jnp.asarray(x), 0.5))
  want = np.array([ref_smooth_l1(float(v), 0.5) for v in x])
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)
  # Both branches are exercised.
  assert (np.abs(x) < 0.5).any() and (np.abs(x) > 0.5).any()


@pytest.mark.reference
def test_smooth_l1_matches_torch():
  torch = import_torch()
  rng = np.random.default_rng(0)
  pred = rng.uniform(-1, 2, size=(2, 3, 5, 6)).astype(np.float32)
  tgt = rng.uniform(0, 1, size=pred.shape).astype(np.float32)
  valid = np.ones((2, 3), bool)
  want = torch.nn.SmoothL1Loss(beta=0.5)(
      torch.clamp(torch.from_numpy(pred), 0, 1), torch.from_numpy(tgt)).item()
  got = float(cl.responsibility_loss(jnp.asarray(pred), jnp.asarray(tgt),
                                     jnp.asarray(valid), beta=0.5))
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_responsibility_loss_matches_reference_jit_eager_vmap():
  rng = np.random.default_rng(1)
  attn = rng.normal(0.5, 0.8, size=(3, 2, 4, 5)).astype(np.float32)
  tgt = rng.uniform(0, 1, size=attn.shape).astype(np.float32)
  valid = np.array([[True, False], [True, True], [False, False]])
  want = ref_responsibility_loss(attn, tgt, valid, 0.5)
  args = (jnp.asarray(attn), jnp.asarray(tgt), jnp.asarray(valid))
  eager = float(cl.responsibility_loss(*args))
  jitted = float(_resp_jit(*args))
  np.testing.assert_allclose(eager, want, rtol=RTOL)
  np.testing.assert_allclose(jitted, want, rtol=RTOL)
  # vmap over an extra leading axis gives the per-slice values.
  stacked = [jnp.stack([a, a]) for a in args]
  vm = np.asarray(jax.vmap(cl.responsibility_loss)(*stacked))
  np.testing.assert_allclose(vm, [want, want], rtol=RTOL)


def test_responsibility_loss_no_valid_query_is_zero_with_finite_grad():
  attn = jnp.ones((1, 2, 3, 3)) * 0.3
  tgt = jnp.ones((1, 2, 3, 3))
  valid = jnp.zeros((1, 2), bool)
  val, g = jax.jit(jax.value_and_grad(cl.responsibility_loss))(attn, tgt,
                                                                valid)
  assert float(val) == 0.0
  assert np.all(np.isfinite(np.asarray(g)))


def test_responsibility_loss_clamp_blocks_gradient_outside_unit_interval():
  attn = jnp.array([-0.5, 0.4, 1.7], jnp.float32).reshape(1, 1, 1, 3)
  tgt = jnp.full((1, 1, 1, 3), 0.5)
  g = np.asarray(jax.jit(jax.grad(cl.responsibility_loss))(
      attn, tgt, jnp.ones((1, 1), bool)))
  assert g[0, 0, 0, 0] == 0.0 and g[0, 0, 0, 2] == 0.0
  assert g[0, 0, 0, 1] != 0.0


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 0.3), (2, 3.0)])
def test_embedding_loss_matches_reference(seed, scale):
  rng = np.random.default_rng(seed)
  b, h, w, f = 2, 5, 6, 4
  z = (rng.normal(size=(b, h, w, f)) * scale).astype(np.float32)
  pm, om, bm = _random_masks(rng, b, h, w)
  om[1] = False  # one image without an object
  want = ref_embedding_loss(z, pm, om, bm, 1e-3)
  args = tuple(jnp.asarray(a) for a in (z, pm, om, bm))
  np.testing.assert_allclose(float(_emb_jit(*args)), want, rtol=RTOL)
  if seed == 0:  # eager == jit once
    np.testing.assert_allclose(float(cl.embedding_loss(*args)), want,
                               rtol=RTOL)


def test_embedding_loss_large_dot_products_no_overflow():
  rng = np.random.default_rng(3)
  b, h, w, f = 2, 5, 6, 4
  # Dot products of order 1e3..1e4: exp overflows float64 as well, so compare
  # against the exact asymptotic form of the reference: with a_g the largest
  # logit the loss -> max(a) - a_g (computed in float64).
  z = (rng.normal(size=(b, h, w, f)) * 30.0).astype(np.float32)
  pm, om, bm = _random_masks(rng, b, h, w)
  val, g = _emb_vg(jnp.asarray(z), jnp.asarray(pm), jnp.asarray(om),
                   jnp.asarray(bm))
  assert np.isfinite(float(val))
  assert np.all(np.isfinite(np.asarray(g)))
  z64 = z.astype(np.float64)
  masks = [pm, om, bm]
  want = 0.0
  for gi, m in enumerate(masks):
    per_image = []
    for bi in range(b):
      means = [z64[bi][mm[bi]].mean(0) for mm in masks]
      vals = []
      for zij in z64[bi][m[bi]]:
        a = np.array([mu @ zij for mu in means])
        top = max(a.max(), math.log(1e-3))
        den = top + math.log(np.exp(a - top).sum() + 1e-3 * math.exp(-top))
        num = np.logaddexp(a[gi], math.log(1e-3))
        vals.append(den - num)
      per_image.append(np.mean(vals))
    want += np.mean(per_image)
  np.testing.assert_allclose(float(val), want, rtol=1e-4)


def test_embedding_loss_empty_masks_finite_value_and_grad():
  z = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 6, 4)),
                  jnp.float32)
  empty = jnp.zeros((2, 5, 6), bool)
  full = jnp.ones((2, 5, 6), bool)
  # All three empty: loss 0, zero gradient.
  val, g = _emb_vg(z, empty, empty, empty)
  assert float(val) == 0.0
  assert np.all(np.asarray(g) == 0.0)
  # Only background present: finite and equals the reference.
  val, g = _emb_vg(z, empty, empty, full)
  want = ref_embedding_loss(np.asarray(z), np.asarray(empty),
                            np.asarray(empty), np.asarray(full), 1e-3)
  np.testing.assert_allclose(float(val), want, rtol=RTOL)
  assert np.all(np.isfinite(np.asarray(g)))
  # Huge embeddings with empty masks.
  val, g = _emb_vg(z * 1e3, empty, full, empty)
  assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(g)))


def test_embedding_loss_lower_for_separated_embeddings():
  # Sanity: well-separated clusters give a smaller loss than a mixed one.
  h, w = 4, 6
  lab = np.zeros((1, h, w), int)
  lab[:, :, 2:4] = 1
  lab[:, :, 4:] = 2
  proto = np.eye(3) * 3
  z_good = proto[lab].astype(np.float32)
  z_bad = np.ones_like(z_good)
  masks = [jnp.asarray(lab == k) for k in range(3)]
  good = float(_emb_jit(jnp.asarray(z_good), *masks))
  bad = float(_emb_jit(jnp.asarray(z_bad), *masks))
  assert good < bad


def test_center_heatmap_target_matches_reference():
  boxes = np.array([[[2, 1, 6, 5], [10, 10, 12, 14], [0, 0, 0, 0]]],
                   np.float32)
  valid = np.array([[True, True, False]])
  h, w, sigma = 12, 15, 1.5
  got = np.asarray(cl.center_heatmap_target(jnp.asarray(boxes),
                                            jnp.asarray(valid), h, w, sigma))
  want = np.zeros((1, h, w))
  for n in range(2):
    cx = (boxes[0, n, 0] + boxes[0, n, 2]) / 2
    cy = (boxes[0, n, 1] + boxes[0, n, 3]) / 2
    for y in range(h):
      for x in range(w):
        v = math.exp(-((x - cx)**2 + (y - cy)**2) / (2 * sigma**2))
        want[0, y, x] = max(want[0, y, x], v)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)
  # Peak (value 1) at (x=4, y=3), i.e. row 3, column 4.
  assert got[0, 3, 4] == pytest.approx(1.0)
  # No valid hand -> all zeros.
  none = cl.center_heatmap_target(jnp.asarray(boxes),
                                  jnp.zeros_like(jnp.asarray(valid)), h, w, 1.)
  assert float(jnp.max(none)) == 0.0


def test_center_loss_is_mse():
  rng = np.random.default_rng(5)
  a = rng.normal(size=(2, 4, 4)).astype(np.float32)
  b = rng.normal(size=(2, 4, 4)).astype(np.float32)
  np.testing.assert_allclose(float(cl.center_loss(jnp.asarray(a),
                                                  jnp.asarray(b))),
                             np.mean((a.astype(np.float64) - b)**2), rtol=RTOL)
  with pytest.raises(ValueError, match="same shape"):
    cl.center_loss(jnp.asarray(a), jnp.asarray(b[0]))


def test_total_loss_weights_and_grads():
  rng = np.random.default_rng(6)
  b, p, h, w, f = 2, 2, 4, 5, 3
  attn = jnp.asarray(rng.normal(0.5, 0.5, size=(b, p, h, w)), jnp.float32)
  tgt = jnp.asarray(rng.uniform(size=(b, p, h, w)), jnp.float32)
  valid = jnp.asarray([[True, True], [True, False]])
  z = jnp.asarray(rng.normal(size=(b, h, w, f)), jnp.float32)
  pm, om, bm = (jnp.asarray(m) for m in _random_masks(rng, b, h, w))
  loss, aux = jax.jit(cl.cohesiv_total_loss)(attn, tgt, valid, z, pm, om, bm)
  la = ref_responsibility_loss(np.asarray(attn), np.asarray(tgt),
                               np.asarray(valid), 0.5)
  le = ref_embedding_loss(np.asarray(z), np.asarray(pm), np.asarray(om),
                          np.asarray(bm), 1e-3)
  np.testing.assert_allclose(float(loss), 10 * la + le, rtol=RTOL)
  np.testing.assert_allclose(float(aux["responsibility_loss"]), la, rtol=RTOL)
  np.testing.assert_allclose(
      float(aux["embedding_person"] + aux["embedding_object"] +
            aux["embedding_background"]), le, rtol=RTOL)
  grads = jax.jit(jax.grad(lambda a, zz: cl.cohesiv_total_loss(
      a, tgt, valid, zz, pm, om, bm, attention_weight=2.0)[0],
                   argnums=(0, 1)))(attn, z)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.any(np.asarray(g) != 0)


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="query_valid"):
    cl.responsibility_loss(jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 2, 3, 3)),
                           jnp.zeros((1, 3), bool))
  with pytest.raises(ValueError, match="object_mask"):
    cl.embedding_loss(jnp.zeros((1, 3, 3, 2)), jnp.zeros((1, 3, 3), bool),
                      jnp.zeros((1, 3, 4), bool), jnp.zeros((1, 3, 3), bool))


def test_embedding_loss_stop_gradient_means_same_value_different_grad():
  rng = np.random.default_rng(7)
  z = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
  pm, om, bm = (jnp.asarray(m) for m in _random_masks(rng, 2, 5, 6))
  f = jax.jit(jax.value_and_grad(
      lambda zz, sg: cl.embedding_loss(zz, pm, om, bm,
                                       stop_gradient_means=sg)),
              static_argnums=1)
  v0, g0 = f(z, False)
  v1, g1 = f(z, True)
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
  assert not np.allclose(np.asarray(g0), np.asarray(g1))
