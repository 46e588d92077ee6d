"""Batched planar homographies: normalised DLT, a robust fit, and application.

Frames and units:
  * Points are pixel coordinates (x, y) = (column, row), pixel centres at
    integer coordinates (OpenCV convention), float32.
  * A homography ``H`` [..., 3, 3] acts on homogeneous column vectors
    [x, y, 1]^T: p' = proj(H @ [x, y, 1]^T), proj([a, b, c]) = [a / c, b / c].
  * Returned homographies are scaled so that H[2, 2] = 1 whenever
    |H[2, 2]| > 1e-6 * ||H||_F; otherwise (a plane-at-infinity map, rare in
    practice) they are scaled to unit Frobenius norm with H[2, 2] >= 0.

Shapes: every function accepts any leading batch shape ``...``; correspondences
are [..., P, 2], per-point weights / validity [..., P], homographies
[..., 3, 3], ok flags [...].

Degenerate input (fewer than four usable points, all points collinear, too few
distinct points, non-finite coordinates, zero weights) never produces NaN: the
fit returns ok=False and the identity, and gradients with respect to the
inputs stay finite (divisions and square roots go through the double
``jnp.where`` pattern; the null-vector solve has a custom JVP whose
eigen-gaps are guarded).

Accuracy: the fit itself is done in normalised coordinates, but H is
returned in pixel coordinates, whose float32 representation loses accuracy
when the points are far from the origin relative to their spread (e.g. a
0.1 px patch at x = 4000); for image-sized point clouds the reprojection
error is ~1e-4 px.

Everything is jit- and vmap-safe and uses only jax.numpy / lax.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Relative threshold on the second-smallest singular value of the
# (normalised) DLT design matrix; below it the null space is not 1-D.
_RANK_TOL = 1e-4
# Minimum |det| of the unit-Frobenius normalised-frame homography.
_DET_TOL = 1e-5
# Smallest |w| used in the perspective division.
_W_EPS = 1e-8
# Projected coordinates are clipped to this magnitude so squared distances
# stay finite in float32.
_COORD_LIMIT = 1e15


# Geometry runs in full float32 on every backend: GPUs would otherwise use TF32 for float32 matmuls
# (10-bit mantissa), far too coarse for pixel-accurate homographies.
_HIGHEST = jax.lax.Precision.HIGHEST
_mm = functools.partial(jnp.matmul, precision=_HIGHEST)


def _safe_div(num: Array, den: Array, ok: Array) -> Array:
  """num / den where ok, 0 elsewhere, with finite gradients everywhere."""
  den_safe = jnp.where(ok, den, jnp.ones_like(den))
  return jnp.where(ok, num / den_safe, jnp.zeros_like(num))


def _safe_sqrt(x: Array) -> Array:
  """sqrt(x) for x >= 0 with a zero (not inf) gradient at x = 0."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _normalising_transform(pts: Array, w: Array) -> Tuple[Array, Array, Array]:
  """Hartley normalisation: weighted centroid to 0, RMS distance to sqrt(2).

  Args:
    pts: [..., P, 2] finite points.
    w: [..., P] non-negative weights (0 = unused).

  Returns:
    centre [..., 2], scale [...] (multiply centred points by it) and a
    spread-ok flag [...] (False when the weighted spread is zero).
  """
  wsum = jnp.sum(w, axis=-1)
  has_w = wsum > 0
  centre = _safe_div(jnp.sum(w[..., None] * pts, axis=-2),
                     wsum[..., None], has_w[..., None])
  sq = jnp.sum(jnp.square(pts - centre[..., None, :]), axis=-1)
  mean_sq = _safe_div(jnp.sum(w * sq, axis=-1), wsum, has_w)
  # Spread relative to the coordinate magnitude, so that huge but
  # well-spread coordinates still count as spread.
  mag = jnp.max(jnp.where(w > 0, jnp.max(jnp.abs(pts), axis=-1), 0.0), axis=-1)
  spread_ok = has_w & (mean_sq > jnp.square(1e-6 * (mag + 1.0)))
  scale = _safe_div(jnp.sqrt(2.0).astype(pts.dtype), _safe_sqrt(mean_sq),
                    spread_ok)
  return centre, scale, spread_ok


@jax.custom_jvp
def _null_vector(a: Array) -> Tuple[Array, Array]:
  """Right singular vector of the smallest singular value of ``a``.

  Args:
    a: [..., M, 9] with M >= 9.

  Returns:
    v [..., 9] (unit norm) and the singular values s [..., 9] in descending
    order. ``s`` is returned for diagnostics only: its tangent is zero.
  """
  # QR first, so the SVD works on a 9x9 triangle rather than on a^T a (which
  # would square the condition number in float32).
  r = jnp.linalg.qr(a, mode="r")
  _, s, vt = jnp.linalg.svd(r, full_matrices=True)
  return vt[..., -1, :], s


@_null_vector.defjvp
def _null_vector_jvp(primals, tangents):
  (a,), (da,) = primals, tangents
  r = jnp.linalg.qr(a, mode="r")
  _, s, vt = jnp.linalg.svd(r, full_matrices=True)
  v = vt[..., -1, :]
  lam = jnp.square(s)
  # d(a^T a) v = da^T (a v) + a^T (da v)
  av = jnp.einsum("...mi,...i->...m", a, v, precision=_HIGHEST)
  dav = jnp.einsum("...mi,...i->...m", da, v, precision=_HIGHEST)
  dm_v = (jnp.einsum("...mi,...m->...i", da, av, precision=_HIGHEST)
          + jnp.einsum("...mi,...m->...i", a, dav, precision=_HIGHEST))
  # First-order perturbation of the smallest eigenvector of a^T a:
  # dv = sum_{j != min} v_j (v_j . dM v) / (lam_min - lam_j).
  gap = lam[..., -1:] - lam  # [..., 9], <= 0
  usable = jnp.abs(gap) > (1e-9 * lam[..., :1] + 1e-30)
  usable = usable.at[..., -1].set(False)
  inv_gap = _safe_div(jnp.ones_like(gap), gap, usable)
  proj = jnp.einsum("...ji,...i->...j", vt, dm_v, precision=_HIGHEST)  # v_j . dM v
  dv = jnp.einsum("...ji,...j->...i", vt, proj * inv_gap, precision=_HIGHEST)
  return (v, s), (dv, jnp.zeros_like(s))


def _design_matrix(src_n: Array, dst_n: Array, sw: Array) -> Array:
  """Weighted DLT rows for h = row-major H, [..., max(2P, 9), 9]."""
  x, y = src_n[..., 0], src_n[..., 1]
  u, v = dst_n[..., 0], dst_n[..., 1]
  one = jnp.ones_like(x)
  zero = jnp.zeros_like(x)
  # u = (h0 . p) / (h2 . p)  and  v = (h1 . p) / (h2 . p)
  r1 = jnp.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], axis=-1)
  r2 = jnp.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], axis=-1)
  a = jnp.concatenate([r1 * sw[..., None], r2 * sw[..., None]], axis=-2)
  rows = a.shape[-2]
  if rows < 9:
    pad = [(0, 0)] * (a.ndim - 2) + [(0, 9 - rows), (0, 0)]
    a = jnp.pad(a, pad)
  return a


def fit_homography(
    src: Array,
    dst: Array,
    weights: Optional[Array] = None,
    valid: Optional[Array] = None,
) -> Tuple[Array, Array]:
  """Weighted, Hartley-normalised DLT homography with dst ~ proj(H src).

  Minimises sum_i w_i ||A_i h_n||^2 over unit-norm h_n, where h_n is the
  homography between the normalised point sets (each centred on its weighted
  centroid and scaled to RMS distance sqrt(2) from it).

  Args:
    src: [..., P, 2] source points (x, y) in pixels.
    dst: [..., P, 2] destination points (x, y) in pixels.
    weights: optional [..., P] non-negative per-point weights.
    valid: optional [..., P] bool mask. Points with non-finite coordinates
      or non-finite / non-positive weights are treated as invalid.

  Returns:
    H [..., 3, 3] float32 (see the module docstring for its scale) and
    ok [...] bool. Where ok is False, H is the identity.
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  if src.shape[-1] != 2 or dst.shape[-1] != 2:
    raise ValueError(f"src/dst must end in 2 (x, y); got src {src.shape}, "
                     f"dst {dst.shape}")
  if src.shape != dst.shape:
    raise ValueError(f"src shape {src.shape} != dst shape {dst.shape}")
  batch_p = src.shape[:-1]
  w = (jnp.ones(batch_p, jnp.float32) if weights is None
       else jnp.broadcast_to(jnp.asarray(weights, jnp.float32), batch_p))
  usable = (jnp.all(jnp.isfinite(src), axis=-1)
            & jnp.all(jnp.isfinite(dst), axis=-1)
            & jnp.isfinite(w) & (w > 0))
  if valid is not None:
    usable = usable & jnp.broadcast_to(jnp.asarray(valid, bool), batch_p)
  # First where of the double-where pattern: unusable points become 0 so no
  # NaN/inf enters any arithmetic (and their gradients are exactly zero).
  src0 = jnp.where(usable[..., None], src, 0.0)
  dst0 = jnp.where(usable[..., None], dst, 0.0)
  w0 = jnp.where(usable, w, 0.0)

  c_s, s_s, ok_s = _normalising_transform(src0, w0)
  c_d, s_d, ok_d = _normalising_transform(dst0, w0)
  src_n = (src0 - c_s[..., None, :]) * s_s[..., None, None]
  dst_n = (dst0 - c_d[..., None, :]) * s_d[..., None, None]
  # Rows of unusable points are zeroed through the weights.
  a = _design_matrix(src_n, dst_n, _safe_sqrt(w0))
  h_vec, sing = _null_vector(a)
  h_n = h_vec.reshape(h_vec.shape[:-1] + (3, 3))

  n_usable = jnp.sum(usable, axis=-1)
  rank_ok = sing[..., -2] > _RANK_TOL * sing[..., 0]
  det_ok = jnp.abs(jnp.linalg.det(h_n)) > _DET_TOL

  # Undo the normalisation: H = T_dst^{-1} H_n T_src.
  zeros = jnp.zeros_like(s_s)
  ones = jnp.ones_like(s_s)
  t_src = jnp.stack([
      jnp.stack([s_s, zeros, -s_s * c_s[..., 0]], -1),
      jnp.stack([zeros, s_s, -s_s * c_s[..., 1]], -1),
      jnp.stack([zeros, zeros, ones], -1)], -2)
  inv_sd = _safe_div(ones, s_d, ok_d)
  t_dst_inv = jnp.stack([
      jnp.stack([inv_sd, zeros, c_d[..., 0]], -1),
      jnp.stack([zeros, inv_sd, c_d[..., 1]], -1),
      jnp.stack([zeros, zeros, ones], -1)], -2)
  h = _mm(_mm(t_dst_inv, h_n), t_src)

  fro = _safe_sqrt(jnp.sum(jnp.square(h), axis=(-2, -1)))
  h22 = h[..., 2, 2]
  use_h22 = jnp.abs(h22) > 1e-6 * fro
  sign = jnp.where(h22 < 0, -1.0, 1.0)
  den = jnp.where(use_h22, h22, sign * fro)
  den_ok = use_h22 | (fro > 0)
  h = _safe_div(h, den[..., None, None], den_ok[..., None, None])

  ok = ((n_usable >= 4) & ok_s & ok_d & rank_ok & det_ok & den_ok
        & jnp.all(jnp.isfinite(h), axis=(-2, -1)))
  # Second where: degenerate fits become the identity.
  eye = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), h.shape)
  h = jnp.where(ok[..., None, None], jnp.where(jnp.isfinite(h), h, 0.0), eye)
  return h, ok


def apply_homography(h: Array, pts: Array) -> Array:
  """Maps points through homographies, proj(H [x, y, 1]^T).

  Args:
    h: [..., 3, 3] homographies.
    pts: [..., P, 2] points (x, y); leading dims broadcast against h's.

  Returns:
    [..., P, 2] float32. Where |w| < 1e-8 the division uses +-1e-8 (a finite,
    large distance) and results are clipped to +-1e15.
  """
  h = jnp.asarray(h, jnp.float32)
  pts = jnp.asarray(pts, jnp.float32)
  x, y = pts[..., 0], pts[..., 1]
  hb = h[..., None, :, :]
  num_x = hb[..., 0, 0] * x + hb[..., 0, 1] * y + hb[..., 0, 2]
  num_y = hb[..., 1, 0] * x + hb[..., 1, 1] * y + hb[..., 1, 2]
  den = hb[..., 2, 0] * x + hb[..., 2, 1] * y + hb[..., 2, 2]
  return jnp.stack(_project(num_x, num_y, den), axis=-1)


def _project(num_x: Array, num_y: Array, den: Array) -> Tuple[Array, Array]:
  """Safe perspective division with clipping (see apply_homography)."""
  small = jnp.abs(den) < _W_EPS
  den_safe = jnp.where(small, jnp.where(den < 0, -_W_EPS, _W_EPS), den)
  inv = 1.0 / den_safe
  px = jnp.clip(num_x * inv, -_COORD_LIMIT, _COORD_LIMIT)
  py = jnp.clip(num_y * inv, -_COORD_LIMIT, _COORD_LIMIT)
  return px, py


def homography_flow_grid(h: Array, height: int, width: int) -> Array:
  """Flow predicted by a homography at every pixel centre.

  Args:
    h: [..., 3, 3] homographies.
    height: image height H (rows, y).
    width: image width W (columns, x).

  Returns:
    [..., H, W, 2] with [..., y, x, :] = proj(h [x, y, 1]) - [x, y]
    (dx, dy), float32, finite.
  """
  xs, ys, px, py = projected_pixel_grid(jnp.asarray(h, jnp.float32), height, width)
  return jnp.stack([px - xs, py - ys], axis=-1)


def projected_pixel_grid(h: Array, height: int, width: int) -> Tuple[Array, Array, Array, Array]:
  """(xs [1, W], ys [H, 1], px, py [..., H, W]): every pixel (x, y) and proj(h [x, y, 1]), as planes.

  Written as elementwise planes rather than a [..., H, W, 3] matmul: XLA fuses them with whatever
  consumes them (flow grids, Eq. 2 distances) without materialising homogeneous coordinates.
  """
  xs = jnp.arange(width, dtype=jnp.float32)[None, :]
  ys = jnp.arange(height, dtype=jnp.float32)[:, None]
  e = h[..., None, None, :, :]
  num_x = e[..., 0, 0] * xs + e[..., 0, 1] * ys + e[..., 0, 2]
  num_y = e[..., 1, 0] * xs + e[..., 1, 1] * ys + e[..., 1, 2]
  den = e[..., 2, 0] * xs + e[..., 2, 1] * ys + e[..., 2, 2]
  px, py = _project(num_x, num_y, den)
  return xs, ys, px, py


def reprojection_error(h: Array, src: Array, dst: Array) -> Array:
  """Per-point forward reprojection error ||proj(H src) - dst||, [..., P]."""
  diff = apply_homography(h, src) - jnp.asarray(dst, jnp.float32)
  return _safe_sqrt(jnp.sum(jnp.square(diff), axis=-1))


def fit_homography_robust(
    src: Array,
    dst: Array,
    valid: Optional[Array] = None,
    num_iters: int = 5,
    num_hypotheses: int = 64,
    inlier_threshold: float = 3.0,
    key: Optional[Array] = None,
) -> Tuple[Array, Array, Array]:
  """Outlier-robust homography: fixed-count RANSAC, then Tukey IRLS.

  1. Hypotheses: the plain DLT fit on all valid points plus
     ``num_hypotheses`` minimal 4-point DLT fits on random distinct valid
     points (Gumbel top-k sampling, so shapes are static).
  2. The hypothesis with the lowest truncated (MSAC) reprojection cost
     sum_i min(e_i^2, thr^2) over valid points wins.
  3. ``num_iters`` IRLS steps: Tukey biweights w_i = (1 - (e_i/thr)^2)^2 for
     e_i < thr, else 0, on the current reprojection error, then a weighted
     DLT refit. Weights are not differentiated (stop_gradient), so gradients
     flow through the final weighted DLT only.

  Args:
    src: [..., P, 2] source points (x, y) in pixels.
    dst: [..., P, 2] destination points.
    valid: optional [..., P] bool mask (non-finite points are invalid).
    num_iters: IRLS iterations after the RANSAC stage (static).
    num_hypotheses: random minimal-sample hypotheses (static).
    inlier_threshold: reprojection error (pixels) separating inliers.
    key: PRNG key; a fixed key (0) when None, so results are deterministic.

  Returns:
    H [..., 3, 3], ok [...] and inlier_weights [..., P] in [0, 1].
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  if src.shape != dst.shape or src.shape[-1] != 2:
    raise ValueError(f"src {src.shape} and dst {dst.shape} must both be "
                     "[..., P, 2]")
  if key is None:
    key = jax.random.PRNGKey(0)
  batch_p = src.shape[:-1]
  usable = (jnp.all(jnp.isfinite(src), axis=-1)
            & jnp.all(jnp.isfinite(dst), axis=-1))
  if valid is not None:
    usable = usable & jnp.broadcast_to(jnp.asarray(valid, bool), batch_p)
  src0 = jnp.where(usable[..., None], src, 0.0)
  dst0 = jnp.where(usable[..., None], dst, 0.0)
  thr = jnp.float32(inlier_threshold)

  sg_src = jax.lax.stop_gradient(src0)
  sg_dst = jax.lax.stop_gradient(dst0)
  num_p = src.shape[-2]
  h_all, ok_all = fit_homography(sg_src, sg_dst, valid=usable)
  # Minimal samples: top-4 of Gumbel noise restricted to usable points.
  gumbel = jax.random.gumbel(key, batch_p[:-1] + (num_hypotheses, num_p))
  gumbel = jnp.where(usable[..., None, :], gumbel, -jnp.inf)
  k = min(4, num_p)
  top_val, idx = jax.lax.top_k(gumbel, k)  # [..., S, 4]
  pick_ok = jnp.isfinite(top_val)
  take = lambda p: jnp.take_along_axis(  # noqa: E731
      p[..., None, :, :], idx[..., None], axis=-2)
  h_min, ok_min = fit_homography(take(sg_src), take(sg_dst), valid=pick_ok)
  hyps = jnp.concatenate([h_all[..., None, :, :], h_min], axis=-3)
  hyp_ok = jnp.concatenate([ok_all[..., None], ok_min], axis=-1)

  err = reprojection_error(hyps, sg_src[..., None, :, :],
                           sg_dst[..., None, :, :])  # [..., S+1, P]
  cost = jnp.sum(jnp.where(usable[..., None, :],
                           jnp.minimum(jnp.square(err), thr * thr), 0.0), -1)
  cost = jnp.where(hyp_ok, cost, jnp.inf)
  best = jnp.argmin(cost, axis=-1)
  h_cur = jnp.take_along_axis(hyps, best[..., None, None, None], axis=-3)[
      ..., 0, :, :]

  def tukey(h_est):
    e = reprojection_error(h_est, sg_src, sg_dst)
    r = e / thr
    return jnp.where(usable & (r < 1.0), jnp.square(1.0 - jnp.square(r)), 0.0)

  def irls_step(_, h_est):
    h_new, ok_new = fit_homography(sg_src, sg_dst, weights=tukey(h_est))
    return jnp.where(ok_new[..., None, None], h_new, h_est)

  h_cur = jax.lax.fori_loop(0, num_iters, irls_step, h_cur)
  w_fin = jax.lax.stop_gradient(tukey(h_cur))
  h_fin, ok = fit_homography(src0, dst0, weights=w_fin)
  return h_fin, ok, w_fin
