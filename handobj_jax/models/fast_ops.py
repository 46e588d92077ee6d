"""Two operations whose automatic gradients XLA:CPU runs slowly, with hand-written gradients.

Both compute the same values as the plain JAX expression; their gradients are the same sums in a different
order (equal to float32 rounding; tests/test_fast_ops.py checks values and gradients against the plain form).
The profile behind them (`benchmarks/profile_train_step.py`, COHESIV train step, SE-ResNeXt-50, batch 10,
256^2, 2-core CPU) showed:

  * `pixel_dot`: the gradient of einsum('bkf,bhwf->bhwk') with K = 2 or 3 vectors (the attention Q(p)^T K and
    the embedding loss's logits) w.r.t. the [B, H, W, F] map is a matrix product with a contraction of length
    K, which XLA:CPU ran as one 1.4 s fused kernel at 256^2. Written as K broadcast multiply-adds it is one
    elementwise pass over the map.
  * `max_pool`: the gradient of `flax.linen.max_pool` (reduce_window max) lowers to select-and-scatter,
    which XLA:CPU expanded into a variadic reduce-window over index planes (1.3 s for the stem's 3x3 / 2
    pool at 256^2). Here the forward is a running maximum over the window's strided views, and the
    gradient goes to the first maximum of each window in row-major order, as select-and-scatter's does.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp


@jax.custom_vjp
def pixel_dot(fmap: jax.Array, vectors: jax.Array) -> jax.Array:
  """out[b, h, w, k] = sum_f fmap[b, h, w, f] * vectors[b, k, f] (at full precision).

  Args:
    fmap: [B, H, W, F].
    vectors: [B, K, F], K small (the gradient w.r.t. `fmap` is K multiply-adds per element).

  Returns:
    [B, H, W, K] in the inputs' common dtype.
  """
  return _pixel_dot(fmap, vectors)


def _pixel_dot(fmap, vectors):
  return jnp.einsum("bhwf,bkf->bhwk", fmap, vectors, precision=jax.lax.Precision.HIGHEST)


def _pixel_dot_fwd(fmap, vectors):
  return _pixel_dot(fmap, vectors), (fmap, vectors)


def _pixel_dot_bwd(residuals, g):
  fmap, vectors = residuals
  g = g.astype(jnp.float32)
  v = vectors.astype(jnp.float32)
  d_fmap = None
  for k in range(vectors.shape[1]):
    term = g[..., k:k + 1] * v[:, None, None, k, :]
    d_fmap = term if d_fmap is None else d_fmap + term
  d_vectors = jnp.einsum("bhwk,bhwf->bkf", g, fmap.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return d_fmap.astype(fmap.dtype), d_vectors.astype(vectors.dtype)


pixel_dot.defvjp(_pixel_dot_fwd, _pixel_dot_bwd)


def _window_views(xp: jax.Array, window: Sequence[int], strides: Sequence[int], out_hw: Sequence[int]):
  n, _, _, c = xp.shape
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  for i in range(kh):
    for j in range(kw):
      yield i, j, jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                                (1, sh, sw, 1))


def _pool_geometry(x, window, strides, padding):
  (pt, pb), (pl, pr) = padding
  ho = (x.shape[1] + pt + pb - window[0]) // strides[0] + 1
  wo = (x.shape[2] + pl + pr - window[1]) // strides[1] + 1
  return (pt, pb), (pl, pr), (ho, wo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """Max pooling of NHWC `x` (padding with -inf), equal to `flax.linen.max_pool(x, window, strides, padding)`.

  Args:
    x: [N, H, W, C].
    window: (kh, kw).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)).

  Returns:
    [N, Ho, Wo, C].
  """
  return _max_pool(x, window, strides, padding)


def _max_pool(x, window, strides, padding):
  ph, pw, out_hw = _pool_geometry(x, window, strides, padding)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  y = None
  for _, _, view in _window_views(xp, window, strides, out_hw):
    y = view if y is None else jnp.maximum(y, view)
  return y


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  ph, pw, out_hw = _pool_geometry(x, window, strides, padding)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  hp, wp = xp.shape[1:3]
  (sh, sw), (ho, wo) = strides, out_hw
  taken = jnp.zeros(y.shape, bool)
  dxp = None
  for i, j, view in _window_views(xp, window, strides, out_hw):
    first = (view == y) & ~taken  # The first maximum of each window gets the gradient.
    taken = taken | first
    contrib = jnp.where(first, g, jnp.zeros((), g.dtype))
    # Scatter back to the padded input: rows i, i + sh, ..., i + (ho - 1) * sh (likewise columns).
    config = [(0, 0, 0), (i, hp - (i + (ho - 1) * sh + 1), sh - 1), (j, wp - (j + (wo - 1) * sw + 1), sw - 1),
              (0, 0, 0)]
    part = jax.lax.pad(contrib, jnp.zeros((), g.dtype), config)
    dxp = part if dxp is None else dxp + part
  return (dxp[:, ph[0]:ph[0] + x.shape[1], pw[0]:pw[0] + x.shape[2]],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
