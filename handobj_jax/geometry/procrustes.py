"""Similarity alignment of point sets (JAX float32, batched over leading dims).

The on-device twins of `handobj_jax.evaluation.ho3d.procrustes_align_np` and
`scale_translation_align_np` (NumPy float64, host-side evaluation), for
validation metrics computed inside a jitted eval step. Both follow the HO-3D
evaluation protocol exactly as defined once, in the `handobj_jax.evaluation.ho3d`
module docstring, and are tested against the NumPy versions.

Points are [..., K, 3] in any consistent unit (HO-3D: metres, OpenGL camera
frame). Forward values are finite for degenerate input (e.g. all-zero
predictions map to the ground-truth centroid); these functions are meant for
evaluation.

No LAPACK: R = U V^T is the orthogonal polar factor of the 3x3 matrix
M = gt^T pred, computed by scaled Newton iterations
(`small_linalg.polar_factor`, reflections allowed as in scipy's
orthogonal_procrustes), and s = trace(R^T M) = the sum of M's singular values.
So the metric is safe inside jitted steps sharded over several CPU devices,
where concurrent LAPACK calls can deadlock with jaxlib 0.10. Exact to float32
precision for non-degenerate M; a rank-deficient M (collinear or coplanar
point sets) is regularised by 1e-4 |M| I to pick a rotation (its scale s stays
trace(R^T M)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from handobj_jax.geometry import small_linalg

Array = jax.Array

_NORM_EPS = 1e-8


# Full float32 on GPUs too (no TF32 for these small matmuls).
_HIGHEST = jax.lax.Precision.HIGHEST

def orthogonal_procrustes(a: Array, b: Array) -> tuple[Array, Array]:
  """R, s minimising ||a R - b||_F over orthogonal R (det may be -1), for 3-D points.

  Args:
    a, b: [..., K, 3].

  Returns:
    (R [..., 3, 3], s [...] = sum of singular values of a^T b), without LAPACK (module docstring).
  """
  if a.shape[-1] != 3 or b.shape[-1] != 3:
    raise ValueError(f"orthogonal_procrustes: 3-D points expected, got {a.shape} and {b.shape}")
  m = jnp.matmul(jnp.swapaxes(a, -1, -2), b, precision=_HIGHEST)
  r, _ = small_linalg.polar_factor(m, iters=14, positive_det=False, regularize=1e-4)
  return r, jnp.sum(r * m, axis=(-2, -1))


def _check_pair(name: str, pred: Array, gt: Array) -> tuple[Array, Array]:
  """Both [..., K, 3] of one shape (else ValueError naming `name`), as float32."""
  if pred.shape != gt.shape or pred.shape[-1] != 3 or pred.ndim < 2:
    raise ValueError(f"{name}: pred and gt must both be [..., K, 3]; got "
                     f"{pred.shape} and {gt.shape}")
  return pred.astype(jnp.float32), gt.astype(jnp.float32)


def procrustes_align(pred: Array, gt: Array) -> Array:
  """Aligns `pred` onto `gt` with a similarity transform (HO-3D protocol).

  Same definition as `ho3d.procrustes_align_np` (see that module), in float32.

  Args:
    pred: [..., K, 3] predicted points.
    gt: [..., K, 3] ground-truth points.

  Returns:
    [..., K, 3] float32 aligned prediction.
  """
  pred, gt = _check_pair("procrustes_align", pred, gt)
  mu_p = jnp.mean(pred, axis=-2, keepdims=True)
  mu_g = jnp.mean(gt, axis=-2, keepdims=True)
  p0 = pred - mu_p
  g0 = gt - mu_g
  n_p = jnp.linalg.norm(p0, axis=(-2, -1))[..., None, None] + _NORM_EPS
  n_g = jnp.linalg.norm(g0, axis=(-2, -1))[..., None, None] + _NORM_EPS
  r, s = orthogonal_procrustes(g0 / n_g, p0 / n_p)
  aligned = jnp.matmul(p0 / n_p, jnp.swapaxes(r, -1, -2), precision=_HIGHEST)
  return aligned * s[..., None, None] * n_g + mu_g


def _bone_length(x: Array, root: int, scale_ref: int) -> Array:
  """|x[scale_ref] - x[root]| as [..., 1, 1]; gradient 0 (not NaN) at 0."""
  d = x[..., scale_ref, :] - x[..., root, :]
  sq = jnp.sum(d * d, axis=-1)[..., None, None]
  ok = sq > 0
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def scale_translation_align(pred: Array, gt: Array, root: int = 0,
                            scale_ref: int = 4) -> Array:
  """Scale + translation alignment (HO-3D "sc-tr" protocol).

  Same arithmetic, in the same order, as `ho3d.scale_translation_align_np`
  (see that module): pred / |pred[scale_ref] - pred[root]| (skipped when that
  length is 0) * |gt[scale_ref] - gt[root]|, then pred[root] moved onto
  gt[root]. A zero-length predicted bone is scaled by the ground truth's
  length, not by 1.

  Args:
    pred, gt: [..., K, 3].
    root: index of the translation anchor (wrist).
    scale_ref: index whose distance to `root` fixes the scale.

  Returns:
    [..., K, 3] float32.
  """
  pred, gt = _check_pair("scale_translation_align", pred, gt)
  k = pred.shape[-2]
  if not (0 <= root < k and 0 <= scale_ref < k):
    raise ValueError(f"scale_translation_align: root={root} / scale_ref="
                     f"{scale_ref} out of range for K={k}")
  len_p = _bone_length(pred, root, scale_ref)
  len_g = _bone_length(gt, root, scale_ref)
  ok = len_p > 0
  pred = jnp.where(ok, pred / jnp.where(ok, len_p, 1.0), pred)
  pred = pred * len_g
  return pred - pred[..., root:root + 1, :] + gt[..., root:root + 1, :]
