"""3D rotation conversions: axis-angle (Rodrigues), rotation matrices, 6D.

Conventions:
  * Rotation matrices act on column vectors, ``p' = R @ p``, shape [..., 3, 3].
  * Axis-angle vectors ``a = theta * u`` (unit axis ``u``, angle ``theta`` in
    radians, right-hand rule), shape [..., 3]. ``matrix_to_axis_angle`` returns
    the representative with ``theta`` in [0, pi].
  * The 6D representation (Zhou et al., CVPR 2019) is the first two *columns*
    of the rotation matrix, concatenated: ``d6 = [R[:, 0], R[:, 1]]``, shape
    [..., 6].

All functions are float32, batched over any leading shape, jit/vmap-safe and
finite (values and gradients) at degenerate inputs (zero rotation, zero-length
6D columns). Small-angle cases use Taylor expansions selected with a "double
where" so that the unused branch never produces NaN gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this squared angle (rad^2) the Taylor branches are used. At theta^2 =
# 1e-4 the truncated series have relative errors < 1e-14 while the closed forms
# are still accurate in float32 just above the threshold.
_SMALL_ANGLE_SQ = 1e-4
_EPS = 1e-12


def skew(v: jax.Array) -> jax.Array:
  """Cross-product matrix ``[v]_x`` with ``[v]_x @ w == cross(v, w)``.

  Args:
    v: [..., 3].

  Returns:
    [..., 3, 3].
  """
  v = jnp.asarray(v, jnp.float32)
  x, y, z = v[..., 0], v[..., 1], v[..., 2]
  o = jnp.zeros_like(x)
  rows = [
      jnp.stack([o, -z, y], axis=-1),
      jnp.stack([z, o, -x], axis=-1),
      jnp.stack([-y, x, o], axis=-1),
  ]
  return jnp.stack(rows, axis=-2)


def axis_angle_to_matrix(axis_angle: jax.Array) -> jax.Array:
  """Rodrigues' formula ``R = I + A(t) K + B(t) K^2`` with ``K = [a]_x``.

  ``A = sin(t)/t`` and ``B = (1 - cos t)/t^2`` (computed as
  ``2 sin^2(t/2)/t^2`` to avoid cancellation); Taylor series near ``t = 0``.

  Args:
    axis_angle: [..., 3] rotation vectors in radians.

  Returns:
    [..., 3, 3] rotation matrices (float32).
  """
  a = jnp.asarray(axis_angle, jnp.float32)
  theta_sq = jnp.sum(a * a, axis=-1)
  small = theta_sq < _SMALL_ANGLE_SQ
  # Double where: the closed form only ever sees a safe, non-zero angle.
  safe_sq = jnp.where(small, 1.0, theta_sq)
  safe_theta = jnp.sqrt(safe_sq)
  a_closed = jnp.sin(safe_theta) / safe_theta
  half_sin = jnp.sin(0.5 * safe_theta)
  b_closed = 2.0 * half_sin * half_sin / safe_sq
  a_taylor = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
  b_taylor = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
  coef_a = jnp.where(small, a_taylor, a_closed)[..., None, None]
  coef_b = jnp.where(small, b_taylor, b_closed)[..., None, None]
  k = skew(a)
  kk = jnp.matmul(k, k, precision=jax.lax.Precision.HIGHEST)
  eye = jnp.eye(3, dtype=jnp.float32)
  return eye + coef_a * k + coef_b * kk


def matrix_to_quaternion(matrix: jax.Array) -> jax.Array:
  """Rotation matrix to unit quaternion ``(w, x, y, z)`` with ``w >= 0``.

  Branch-free Shepperd method: four candidate quaternions are formed, each
  well conditioned when its own squared component is largest, and the best one
  is selected.

  Args:
    matrix: [..., 3, 3] rotation matrices.

  Returns:
    [..., 4] unit quaternions, scalar first.
  """
  m = jnp.asarray(matrix, jnp.float32)
  r00, r01, r02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  r10, r11, r12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  r20, r21, r22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  # 4 * (component)^2 for w, x, y, z.
  t = jnp.stack([
      1.0 + r00 + r11 + r22,
      1.0 + r00 - r11 - r22,
      1.0 - r00 + r11 - r22,
      1.0 - r00 - r11 + r22,
  ], axis=-1)
  # Each row is 4 * q_i * q (unnormalised) for pivot component i.
  cand = jnp.stack([
      jnp.stack([t[..., 0], r21 - r12, r02 - r20, r10 - r01], axis=-1),
      jnp.stack([r21 - r12, t[..., 1], r01 + r10, r02 + r20], axis=-1),
      jnp.stack([r02 - r20, r01 + r10, t[..., 2], r12 + r21], axis=-1),
      jnp.stack([r10 - r01, r02 + r20, r12 + r21, t[..., 3]], axis=-1),
  ], axis=-2)
  best = jnp.argmax(t, axis=-1)
  q = jnp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
  norm = jnp.sqrt(jnp.maximum(jnp.sum(q * q, axis=-1, keepdims=True), _EPS))
  q = q / norm
  return jnp.where(q[..., :1] < 0.0, -q, q)


def quaternion_to_axis_angle(quaternion: jax.Array) -> jax.Array:
  """Unit quaternion ``(w, x, y, z)`` to axis-angle with angle in [0, pi].

  Args:
    quaternion: [..., 4], scalar first (need not be exactly unit).

  Returns:
    [..., 3] rotation vectors.
  """
  q = jnp.asarray(quaternion, jnp.float32)
  q = jnp.where(q[..., :1] < 0.0, -q, q)
  w = q[..., 0]
  v = q[..., 1:]
  n_sq = jnp.sum(v * v, axis=-1)
  w_sq = w * w
  # Small rotation: theta / |v| = (2 / w) * (1 - (|v|/w)^2 / 3 + ...).
  small = n_sq < 1e-8 * jnp.maximum(w_sq, _EPS)
  safe_n_sq = jnp.where(small, 1.0, n_sq)
  safe_n = jnp.sqrt(safe_n_sq)
  scale_closed = 2.0 * jnp.arctan2(safe_n, w) / safe_n
  safe_w = jnp.where(small, w, 1.0)
  scale_taylor = 2.0 / safe_w * (1.0 - n_sq / (3.0 * safe_w * safe_w))
  scale = jnp.where(small, scale_taylor, scale_closed)
  return v * scale[..., None]


def matrix_to_axis_angle(matrix: jax.Array) -> jax.Array:
  """Inverse of :func:`axis_angle_to_matrix` (angle in [0, pi]).

  Args:
    matrix: [..., 3, 3] rotation matrices.

  Returns:
    [..., 3] rotation vectors.
  """
  return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def _safe_normalize(v: jax.Array) -> jax.Array:
  n_sq = jnp.sum(v * v, axis=-1, keepdims=True)
  return v / jnp.sqrt(jnp.maximum(n_sq, _EPS))


def rotation_6d_to_matrix(d6: jax.Array) -> jax.Array:
  """6D representation to rotation matrix by Gram-Schmidt.

  Args:
    d6: [..., 6], two (not necessarily orthonormal) 3-vectors ``a1, a2`` that
      become the first two columns of the result.

  Returns:
    [..., 3, 3] rotation matrices with columns ``b1, b2, b1 x b2``. Degenerate
    input (zero or parallel vectors) gives finite, possibly non-orthonormal,
    output.
  """
  d6 = jnp.asarray(d6, jnp.float32)
  a1, a2 = d6[..., :3], d6[..., 3:]
  b1 = _safe_normalize(a1)
  b2 = _safe_normalize(a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1)
  b3 = jnp.cross(b1, b2)
  return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rotation_6d(matrix: jax.Array) -> jax.Array:
  """First two columns of ``matrix`` as a [..., 6] vector."""
  m = jnp.asarray(matrix, jnp.float32)
  return jnp.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)
