"""NaN-safe elementwise helpers and closed-form 3x3 algebra that never calls LAPACK.

Why a module of its own: jaxlib 0.10's CPU LAPACK kernels can deadlock when independent batched
linear-algebra calls run at once, and a program sharded over several CPU devices runs one per device at
once. Geometry that runs inside jitted, sharded steps (homographies, PnP, Procrustes metrics) therefore uses
these: determinants and inverses by cofactors, and the orthogonal polar factor by scaled Newton iterations
(Higham's), all elementwise arithmetic. All functions batch over leading dims and are float32, finite for
degenerate input (with finite gradients where stated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

POLAR_ITERS = 10


def safe_div(num: Array, den: Array, ok: Array) -> Array:
  """num / den where ok, 0 elsewhere, with finite gradients everywhere."""
  den_safe = jnp.where(ok, den, jnp.ones_like(den))
  return jnp.where(ok, num / den_safe, jnp.zeros_like(num))


def safe_sqrt(x: Array) -> Array:
  """sqrt(x) for x >= 0 with a zero (not inf) gradient at x = 0."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def det3(m: Array) -> Array:
  """Determinant of [..., 3, 3] by cofactors (no LU call per matrix)."""
  return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
          - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
          + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def matmul3(a: Array, b: Array) -> Array:
  """[..., 3, 3] @ [..., 3, 3] as exact float32 products and sums (no dot call, no reduced-precision
  matmul units)."""
  return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def cofactor3(m: Array) -> Array:
  """Cofactor matrix of [..., 3, 3] (adj(m) = cof(m)^T, inv = adj / det)."""
  def c(i, j):
    r0, r1 = [r for r in range(3) if r != i]
    c0, c1 = [k for k in range(3) if k != j]
    minor = m[..., r0, c0] * m[..., r1, c1] - m[..., r0, c1] * m[..., r1, c0]
    return minor if (i + j) % 2 == 0 else -minor
  return jnp.stack([jnp.stack([c(i, j) for j in range(3)], -1) for i in range(3)], -2)


def inv3(m: Array, ok: Array) -> Array:
  """Inverse of [..., 3, 3] where ok (callers check the determinant), 0 elsewhere."""
  adj = jnp.swapaxes(cofactor3(m), -1, -2)
  return safe_div(adj, det3(m)[..., None, None], ok[..., None, None])


def polar_factor(m: Array, iters: int = POLAR_ITERS, positive_det: bool = True,
                 regularize: float = 0.0) -> tuple[Array, Array]:
  """The orthogonal factor U V^T of m = U S V^T [..., 3, 3], by scaled Newton iterations
  X <- (g X + X^-T / g) / 2, g = sqrt(|X^-1|_F / |X|_F), from X = m / |m|_F.

  positive_det=True: only for det(m) safely > 0 (a rotation), else R = I and ok False. positive_det=False:
  any sign (det R = sign det m, reflections included, as scipy's orthogonal_procrustes); with
  `regularize` > 0 a near-singular m (|det| <= 1e-6 |m|^3, e.g. from collinear or coplanar points) is
  replaced by m + regularize |m|_F I first, so it still gets a finite orthogonal factor (ok stays False
  there); with m = 0, R = I.

  Returns (R [..., 3, 3], ok [...]).
  """
  eye = jnp.eye(3, dtype=m.dtype)
  fro = safe_sqrt(jnp.sum(m * m, axis=(-2, -1)))
  det = det3(m)
  tol = 1e-6 * fro * fro * fro
  finite = jnp.isfinite(det) & jnp.isfinite(fro)
  ok = finite & ((det > tol) if positive_det else (jnp.abs(det) > tol))
  if not positive_det and regularize > 0:
    reg = jnp.where(ok[..., None, None], m, m + regularize * fro[..., None, None] * eye)
    use = finite & (fro > 0)
  else:
    reg, use = m, ok
  x = jnp.where(use[..., None, None], reg, eye)
  x = safe_div(x, fro[..., None, None], use[..., None, None]) + jnp.where(use[..., None, None], 0.0, eye)

  def newton(_, x):
    d = det3(x)
    d_ok = jnp.abs(d) > 1e-30
    inv_t = safe_div(cofactor3(x), d[..., None, None], d_ok[..., None, None])
    n_x = jnp.sum(x * x, axis=(-2, -1))
    n_inv = jnp.sum(inv_t * inv_t, axis=(-2, -1))
    g = jnp.sqrt(jnp.sqrt(safe_div(n_inv, n_x, d_ok & (n_x > 0))))
    g = jnp.where(d_ok & (g > 0), g, 1.0)
    return jnp.where(d_ok[..., None, None], 0.5 * (g[..., None, None] * x + inv_t / g[..., None, None]), x)

  x = jax.lax.fori_loop(0, iters, newton, x)
  return jnp.where(use[..., None, None], x, eye), ok
