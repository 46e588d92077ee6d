"""Tests for handobj_jax.models.fast_ops against the plain JAX expressions they replace, in value and gradient.

References: `jnp.einsum` at full precision for `pixel_dot`; `flax.linen.max_pool` (reduce_window, whose
gradient is select-and-scatter: the first maximum of a window in row-major order gets the gradient) for
`max_pool`. Tolerances: values equal exactly for the pool and to float32 rounding (1e-6 relative) for the
dot; gradients to 1e-5 of the largest element (sums of the same terms in another order).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.models import fast_ops


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pixel_dot_equals_einsum_in_value_and_gradient(k):
  rng = np.random.default_rng(k)
  fmap = jnp.asarray(rng.normal(size=(2, 5, 7, 16)), jnp.float32)
  vecs = jnp.asarray(rng.normal(size=(2, k, 16)), jnp.float32)
  weight = jnp.asarray(rng.normal(size=(2, 5, 7, k)), jnp.float32)
  plain = lambda f, v: jnp.einsum("bhwf,bkf->bhwk", f, v, precision=jax.lax.Precision.HIGHEST)
  assert _rel(fast_ops.pixel_dot(fmap, vecs), plain(fmap, vecs)) < 1e-6
  loss = lambda fn: jax.grad(lambda f, v: jnp.sum(weight * jnp.tanh(fn(f, v))), argnums=(0, 1))(fmap, vecs)
  for ours, ref in zip(loss(fast_ops.pixel_dot), loss(plain)):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert _rel(ours, ref) < 1e-5


def test_pixel_dot_keeps_bfloat16():
  fmap = jnp.ones((1, 2, 2, 4), jnp.bfloat16)
  vecs = jnp.ones((1, 2, 4), jnp.bfloat16)
  assert fast_ops.pixel_dot(fmap, vecs).dtype == jnp.bfloat16
  g = jax.grad(lambda f: jnp.sum(fast_ops.pixel_dot(f, vecs).astype(jnp.float32)))(fmap)
  assert g.dtype == jnp.bfloat16 and np.allclose(np.asarray(g, np.float32), 2.0)


POOLS = [
    # (N, H, W, C, window, strides, padding)
    (2, 9, 8, 3, (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet stem's pool, odd and even sizes
    (1, 8, 8, 4, (2, 2), (2, 2), ((0, 0), (0, 0))),  # the hand decoder's 2x pool
    (1, 7, 5, 2, (2, 2), (2, 2), ((0, 0), (0, 0))),  # odd sizes: the last row / column is dropped
    (2, 6, 7, 2, (3, 2), (1, 2), ((0, 2), (1, 0))),
]


@pytest.mark.parametrize("case", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_flax_in_value_and_gradient(case, ties):
  n, h, w, c, window, strides, padding = case
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, h, w, c)).astype(np.float32)
  if ties:  # ReLU output: many windows whose maximum is a tie (zeros), and exact repeats of other values.
    x = np.maximum(np.round(x), 0.0).astype(np.float32)
  x = jnp.asarray(x)
  ref_fn = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  ours_fn = lambda x: fast_ops.max_pool(x, window, strides, padding)
  y_ref, y = ref_fn(x), jax.jit(ours_fn)(x)
  assert y.shape == y_ref.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
  d_ref = jax.vjp(ref_fn, x)[1](g)[0]
  d = jax.jit(lambda x, g: jax.vjp(ours_fn, x)[1](g)[0])(x, g)
  assert _rel(d, d_ref) < 1e-5
  # Each window's gradient lands on exactly one input: the total is preserved.
  np.testing.assert_allclose(float(jnp.sum(d)), float(jnp.sum(g)), rtol=1e-5, atol=1e-5)

