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
``jnp.where`` pattern; both null-vector solvers, QR + SVD for at most 16
points and a 9x9 normal-equation solve above, have custom JVPs whose
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
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp

from handobj_jax.geometry import small_linalg

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
_safe_div, _safe_sqrt = small_linalg.safe_div, small_linalg.safe_sqrt
_det3, _matmul3 = small_linalg.det3, small_linalg.matmul3


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _reduce_many(terms, ops, axis: int = -1):
  """One variadic reduction over ``axis`` for several same-shape terms.

  ``ops`` names each term's combiner ("sum" or "max"). XLA on CPU runs every
  separate reduction as its own loop over the points; a fit needs dozens of
  sums, so they are grouped into a handful of passes (measured ~2x faster
  than separate sums for the hand-vertex fits of the responsibility maps).
  Sums are differentiated as sums; "max" outputs have a zero tangent (they
  only ever feed validity flags here).
  """
  terms = tuple(terms)
  combine = {"sum": jnp.add, "max": jnp.maximum}
  fns = [combine[o] for o in ops]
  init = tuple(jnp.zeros((), t.dtype) for t in terms)
  axis = axis % terms[0].ndim
  return jax.lax.reduce(
      terms, init, lambda a, b: tuple(f(x, y) for f, x, y in zip(fns, a, b)),
      (axis,))


@_reduce_many.defjvp
def _reduce_many_jvp(ops, axis, primals, tangents):
  (terms,), (dterms,) = primals, tangents
  out = _reduce_many(terms, ops, axis)
  dout = tuple(jnp.sum(dt, axis=axis) if o == "sum" else jnp.zeros_like(r)
               for o, dt, r in zip(ops, dterms, out))
  return out, dout


def _centroids(sx: Array, sy: Array, dx: Array, dy: Array, w: Array):
  """First pass over the points: weighted centroids of both sets, their
  coordinate magnitudes and the total weight.

  Args:
    sx, sy, dx, dy: [..., P] finite source / destination coordinates.
    w: [..., P] non-negative weights (0 = unused).

  Returns:
    c_s, c_d [..., 2] centroids, mag_s, mag_d [...] largest |coordinate| of
    a used point, wsum [...] and the number of used points [...] (float).
  """
  used = w > 0
  mag_s = jnp.where(used, jnp.maximum(jnp.abs(sx), jnp.abs(sy)), 0.0)
  mag_d = jnp.where(used, jnp.maximum(jnp.abs(dx), jnp.abs(dy)), 0.0)
  wsum, msx, msy, mdx, mdy, count, mag_s, mag_d = _reduce_many(
      (w, w * sx, w * sy, w * dx, w * dy, used.astype(w.dtype), mag_s, mag_d),
      ("sum",) * 6 + ("max",) * 2)
  has_w = (wsum > 0)[..., None]
  c_s = _safe_div(jnp.stack([msx, msy], -1), wsum[..., None], has_w)
  c_d = _safe_div(jnp.stack([mdx, mdy], -1), wsum[..., None], has_w)
  return c_s, c_d, mag_s, mag_d, wsum, count


# Moments of the centred points, in the order of _moment_terms: factors
# (1, u, v, u^2 + v^2) times monomials (x^2, xy, x, y^2, y, 1), each
# weighted. Their degrees in the source and destination coordinates give
# how each scales when the points are scaled (Hartley normalisation).
_MONO_DEGREE = (2, 2, 1, 2, 1, 0)
_FACTOR_DEGREE = (0, 1, 1, 2)


def _moment_terms(x: Array, y: Array, u: Array, v: Array,
                  w: Array) -> List[Array]:
  mono = (x * x, x * y, x, y * y, y, None)
  factors = (w, w * u, w * v, w * (u * u + v * v))
  return [f if m is None else f * m for f in factors for m in mono]


def _hartley_scales(moments: List[Array], wsum: Array, mag_s: Array,
                    mag_d: Array):
  """Scales that bring the centred sets to RMS distance sqrt(2), and
  spread-ok flags (False when a set's weighted spread is zero)."""
  has_w = wsum > 0
  # sum w (x^2 + y^2) and sum w (u^2 + v^2) of the centred points.
  sq_s = moments[0] + moments[3]
  sq_d = moments[23]
  out = []
  for sq, mag in ((sq_s, mag_s), (sq_d, mag_d)):
    mean_sq = _safe_div(sq, wsum, has_w)
    # Spread relative to the coordinate magnitude, so that huge but
    # well-spread coordinates still count as spread.
    spread_ok = has_w & (mean_sq > jnp.square(1e-6 * (mag + 1.0)))
    scale = _safe_div(jnp.float32(jnp.sqrt(2.0)), _safe_sqrt(mean_sq),
                      spread_ok)
    out += [scale, spread_ok]
  return tuple(out)


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


def _design_matrix(x: Array, y: Array, u: Array, v: Array,
                   sw: Array) -> Array:
  """Weighted DLT rows for h = row-major H, [..., max(2P, 9), 9], from the
  normalised source (x, y) and destination (u, v) coordinates [..., P]."""
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


# --- The normal-equation solver for many points ------------------------------
#
# For P points the design matrix A is [2P, 9]; a QR of it per fit is what
# dominated a batch of hand fits (778 MANO vertices) on CPU. The normal
# matrix M = A^T W A is a 9x9 whose entries are weighted moments of the
# points, so the fit takes three passes over the points (centroids; moments
# of the centred points, which also give the Hartley scales; one refinement
# pass) plus a 9x9 eigen-decomposition. Forming M squares the condition
# number, so in float32 the eigenvector alone is accurate to ~1e-3 px only;
# one Newton
# step whose residuals are computed per point (never through M) brings it
# to ~1e-4 px on image-sized point sets, as good as QR + SVD in float32.
# Sets whose second-smallest eigenvalue (recomputed from residuals) is below
# _EIG_RANK_TOL * the largest are rejected as near-degenerate: measured
# with 20 to 778 points, strips of points down to 1% as high as wide were
# accepted (within 2e-4 px), 0.5% and thinner rejected (the QR + SVD path
# accepts thinner sets).

# Fits with at most this many points use QR + SVD of A instead (minimal
# RANSAC samples: there A has fewer rows than unknowns and the normal
# matrix is too ill-conditioned for float32).
_SMALL_P = 16
_EIG_RANK_TOL = 1e-5


def _normal_matrix(moments: List[Array], s_s: Array, s_d: Array) -> Array:
  """M = sum_i w_i (a1_i a1_i^T + a2_i a2_i^T), [..., 9, 9], of the
  normalised points, from the moments of the centred points.

  With p = [x, y, 1] and the DLT rows a1 = [p, 0, -u p], a2 = [0, p, -v p]:
  M = [[S, 0, -S_u], [0, S, -S_v], [-S_u, -S_v, S_uv]] with S = sum w p p^T,
  S_u = sum w u p p^T, S_v = sum w v p p^T, S_uv = sum w (u^2 + v^2) p p^T.
  A moment of degree (a, b) in the source and destination coordinates
  scales by s_s^a s_d^b (no cancellation: a product, not a shift).
  """
  sums = [moments[6 * f + m] * s_s ** _MONO_DEGREE[m] * s_d ** _FACTOR_DEGREE[f]
          for f in range(4) for m in range(6)]

  def block(i):
    xx, xy, x1, yy, y1, one = sums[6 * i:6 * i + 6]
    return [[xx, xy, x1], [xy, yy, y1], [x1, y1, one]]

  s0, su, sv, sq = [block(i) for i in range(4)]
  zero = [jnp.zeros_like(s0[0][0])] * 3
  neg = lambda row: [-e for e in row]  # noqa: E731
  rows = ([s0[i] + zero + neg(su[i]) for i in range(3)]
          + [zero + s0[i] + neg(sv[i]) for i in range(3)]
          + [neg(su[i]) + neg(sv[i]) + sq[i] for i in range(3)])
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def _residual_terms(h: Array, x: Array, y: Array, u: Array, v: Array,
                    w: Array):
  """Per-point terms of M h (9) and h^T M h (1), for vectors h [..., 9]."""
  c = [h[..., i, None] for i in range(9)]
  den = c[6] * x + c[7] * y + c[8]
  e1 = c[0] * x + c[1] * y + c[2] - u * den   # a1 . h
  e2 = c[3] * x + c[4] * y + c[5] - v * den   # a2 . h
  r1, r2 = w * e1, w * e2
  r3 = -(u * r1 + v * r2)
  terms = [r1 * x, r1 * y, r1, r2 * x, r2 * y, r2, r3 * x, r3 * y, r3]
  return terms + [r1 * e1 + r2 * e2]


def _normal_matvec(h: Array, x: Array, y: Array, u: Array, v: Array,
                   w: Array) -> Tuple[Array, Array]:
  """(M h, h^T M h) through per-point residuals, in one pass."""
  sums = _reduce_many(_residual_terms(h, x, y, u, v, w), ("sum",) * 10)
  return jnp.stack(sums[:9], axis=-1), sums[9]


def _normal_solve(m: Array, x: Array, y: Array, u: Array, v: Array,
                w: Array):
  """Refined null vector h [..., 9], eigenvectors q [..., 9, 9] (columns,
  ascending) and eigenvalues [..., 9] of the normal matrix m, the two
  smallest recomputed as Rayleigh quotients through per-point residuals of
  the normalised points (x, y) -> (u, v) with weights w."""
  lam, q = jnp.linalg.eigh(m)  # ascending; q's columns are eigenvectors
  lam_max = lam[..., -1:]
  h = q[..., :, 0]
  not_null = jnp.arange(9) > 0
  # One pass gives M h, h^T M h and q_1^T M q_1 (the rank test's eigenvalue).
  sums = _reduce_many(_residual_terms(h, x, y, u, v, w)
                      + _residual_terms(q[..., :, 1], x, y, u, v, w)[-1:],
                      ("sum",) * 11)
  mh, rq0, rq1 = jnp.stack(sums[:9], axis=-1), sums[9], sums[10]
  # A Newton step for (M - rq0) h = 0 in the complement of the null
  # direction; M h comes from residuals, so h gains the accuracy that
  # forming M in float32 lost.
  resid = mh - rq0[..., None] * h
  coef = jnp.sum(q * resid[..., :, None], axis=-2)    # q_j . resid
  gap = lam - rq0[..., None]
  use = not_null & (gap > 1e-7 * lam_max)
  h = h - jnp.sum(q * _safe_div(coef, gap, use)[..., None, :], axis=-1)
  norm = _safe_sqrt(jnp.sum(h * h, axis=-1, keepdims=True))
  h = _safe_div(h, norm, norm > 0)
  # rq0 is the Rayleigh quotient before the step: it only serves as the
  # smallest eigenvalue in the tangent's eigen-gaps.
  lam = jnp.concatenate([jnp.maximum(rq0, 0.0)[..., None],
                         jnp.maximum(rq1, 0.0)[..., None], lam[..., 2:]], -1)
  return h, q, lam


@jax.custom_jvp
def _null_vector_normal(m: Array, x: Array, y: Array, u: Array, v: Array,
                        w: Array) -> Tuple[Array, Array]:
  """Null vector h [..., 9] of the normal matrix m of the weighted DLT of
  the normalised points, and m's eigenvalues [..., 9] ascending
  (diagnostics only: zero tangent).

  The points refine h (see _normal_solve) but m already is a function of
  them, so the tangent only needs dm: dh = sum_{j > 0} q_j (q_j . dm h) /
  (lam_0 - lam_j), the first-order perturbation of the null vector.
  """
  h, _, lam = _normal_solve(m, x, y, u, v, w)
  return h, lam


@_null_vector_normal.defjvp
def _null_vector_normal_jvp(primals, tangents):
  dm = tangents[0]
  h, q, lam = _normal_solve(*primals)
  dm_h = jnp.sum(dm * h[..., None, :], axis=-1)
  gap = lam[..., :1] - lam
  usable = (jnp.abs(gap) > (1e-9 * lam[..., -1:] + 1e-30)) & (
      jnp.arange(9) > 0)
  proj = jnp.sum(q * dm_h[..., :, None], axis=-2)
  dh = jnp.sum(q * _safe_div(proj, gap, usable)[..., None, :], axis=-1)
  # Keep the tangent orthogonal to h (the refined h is not exactly q_0).
  dh = dh - jnp.sum(dh * h, axis=-1, keepdims=True) * h
  return (h, lam), (dh, jnp.zeros_like(lam))


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

  sx, sy, dx, dy = src0[..., 0], src0[..., 1], dst0[..., 0], dst0[..., 1]
  # Pass 1: centroids. Pass 2: moments of the centred points, which give
  # both the Hartley scales and (scaled) the DLT normal matrix.
  c_s, c_d, mag_s, mag_d, wsum, n_usable = _centroids(sx, sy, dx, dy, w0)
  ex, ey = sx - c_s[..., 0:1], sy - c_s[..., 1:2]
  eu, ev = dx - c_d[..., 0:1], dy - c_d[..., 1:2]
  moments = _reduce_many(_moment_terms(ex, ey, eu, ev, w0), ("sum",) * 24)
  s_s, ok_s, s_d, ok_d = _hartley_scales(moments, wsum, mag_s, mag_d)
  # Normalised coordinates as planes [..., P] (fused into their consumers).
  x, y = ex * s_s[..., None], ey * s_s[..., None]
  u, v = eu * s_d[..., None], ev * s_d[..., None]
  if src.shape[-2] > _SMALL_P:
    # Unusable points carry zero weight.
    h_vec, lam = _null_vector_normal(_normal_matrix(moments, s_s, s_d),
                                     x, y, u, v, w0)
    rank_ok = lam[..., 1] > _EIG_RANK_TOL * lam[..., -1]
  else:
    # Rows of unusable points are zeroed through the weights.
    a = _design_matrix(x, y, u, v, _safe_sqrt(w0))
    h_vec, sing = _null_vector(a)
    rank_ok = sing[..., -2] > _RANK_TOL * sing[..., 0]
  h_n = h_vec.reshape(h_vec.shape[:-1] + (3, 3))

  det_ok = jnp.abs(_det3(h_n)) > _DET_TOL

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
  h = _matmul3(_matmul3(t_dst_inv, h_n), t_src)

  fro = _safe_sqrt(jnp.sum(jnp.square(h), axis=(-2, -1)))
  h22 = h[..., 2, 2]
  use_h22 = jnp.abs(h22) > 1e-6 * fro
  sign = jnp.where(h22 < 0, -1.0, 1.0)
  den = jnp.where(use_h22, h22, sign * fro)
  den_ok = use_h22 | (fro > 0)
  h = _safe_div(h, den[..., None, None], den_ok[..., None, None])

  ok = ((n_usable >= 3.5) & ok_s & ok_d & rank_ok & det_ok & den_ok
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


def _after(x: Array, dep: Array) -> Array:
  """x, made data-dependent on dep (adds an exact 0 derived from dep).

  Orders linear-algebra custom calls: jaxlib 0.10's CPU LAPACK kernels split
  their batch over XLA's intra-op thread pool and block until it is done, so
  as many independent LAPACK calls as the pool has threads, run side by side
  by the thunk executor, deadlock (seen with 2 threads in the pseudolabel
  job; jaxlib 0.11 compiles that parallel path out). Independent fits in one
  program are therefore chained.
  """
  probe = jnp.sum(dep)
  return x + 0.0 * jnp.where(jnp.isfinite(probe), probe, 0.0)


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
  # The minimal fits run after the full fit, not beside it: see _after.
  sg_src_min = _after(sg_src, h_all)
  # Minimal samples: top-4 of Gumbel noise restricted to usable points. The
  # same noise for every fit of the batch, so a fit's result does not depend
  # on its position in the batch or on the batch size.
  gumbel = jax.random.gumbel(key, (num_hypotheses, num_p))
  gumbel = jnp.where(usable[..., None, :], gumbel, -jnp.inf)
  k = min(4, num_p)
  top_val, idx = jax.lax.top_k(gumbel, k)  # [..., S, 4]
  pick_ok = jnp.isfinite(top_val)
  take = lambda p: jnp.take_along_axis(  # noqa: E731
      p[..., None, :, :], idx[..., None], axis=-2)
  h_min, ok_min = fit_homography(take(sg_src_min), take(sg_dst), valid=pick_ok)
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
