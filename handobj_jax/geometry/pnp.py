"""Object pose from control-point votes: vote selection and PnP (Semi-Hand-Object Sec. 4, App. A).

The object decoder predicts, for every cell g of its 32 x 32 grid and every
control point i (N = 21: the 8 corners, 12 edge midpoints and centre of the
object model's 3D bounding box), a 2D location and a confidence in [0, 1].
At test time the most confident votes are fed to PnP against the known 3D
control points.

Frames and units:
  * 3D points: metres. ``points3d`` are in the OBJECT frame; the returned pose
    maps them to the OpenCV camera frame (x right, y down, z forward):
    X_cam = R @ X_obj + t.
  * Pixels (x, y) = (column, row), pixel centres at integer coordinates;
    K [..., 3, 3] projects a camera point X to proj(K X),
    proj([a, b, c]) = [a / c, b / c]. No lens distortion.
  * Boxes [x0, y0, x1, y1] in pixels.

Pipeline (the HO-3D protocol of the released code):
  1. ``select_votes``: per control point, the ``num_votes`` most confident
     grid cells, each kept only if its confidence > ``threshold``.
  2. Votes back to full-image pixels: grid predictions expressed in
     normalised box coordinates (u, v in [0, 1] across the object box, which
     is given in network-input (crop) pixels) become crop pixels with
     ``box_to_pixels`` (x = x0 + u (x1 - x0), y = y0 + v (y1 - y0)); crop
     pixels become full-image pixels with ``crop_to_image``, the inverse of the
     2x3 full-image -> crop affine. (Equivalently, PnP can run in crop pixels
     with the crop's intrinsics A K, A the affine as a 3x3.)
  3. PnP on the (up to 21 x 10) correspondences, the 3D control point
     repeated for each of its valid votes: ``solve_pnp_opencv`` (host, NumPy:
     cv2.solvePnPRansac with EPnP, the reference) or ``solve_pnp`` (device,
     jit/vmap-safe, fixed shapes with per-correspondence weights).

The device solver (``solve_pnp``):
  * Initialisation: a normalised DLT in normalised camera coordinates
    (K^-1 applied to the pixels; Hartley normalisation of both point sets),
    the 3x4 null vector of the weighted DLT normal matrix, R = the rotation
    factor of the polar decomposition of its left 3x3 block (scaled Newton
    iterations, closed-form 3x3 algebra, det +1; the sign of the null vector
    is fixed by det > 0, which puts the points in front of the camera when
    they are), t = last column / the mean singular value. The DLT was chosen
    over EPnP because it is one small symmetric eigenproblem, exact for
    noise-free data, and its result is refined on the reprojection error
    anyway; it needs >= 6 correspondences on >= 6 non-coplanar 3D points
    (EPnP's extra planar branch is not needed: the control points of a 3D
    box are never coplanar).
  * Robustness (``robust=True``), a fixed-size LO-RANSAC:
    - hypotheses: the DLT on all usable correspondences; the DLT on one
      "consensus" correspondence per 3D point (correspondences with
      bit-identical 3D points form a group, e.g. the votes of one control
      point; each group contributes the member with the most group members
      within ``inlier_threshold`` px, i.e. its densest vote, an inlier
      unless most of that point's votes are outliers); and
      ``num_hypotheses`` minimal DLTs on 6 correspondences with DISTINCT 3D
      points (6 groups drawn uniformly, one member each drawn with
      probability proportional to its weight). Minimal 6-point DLTs are
      rough at 1-2 px noise (degrees), hence the next two steps.
    - scoring: the truncated (MSAC) cost sum_i w_i min(e_i^2, c_lo^2) of the
      reprojection errors e_i in pixels over all correspondences, with the
      generous c_lo = 2 x ``inlier_threshold`` (points behind the camera
      count as c_lo); the best 4 are kept as candidates.
    - local optimisation: every candidate gets 4 Levenberg-Marquardt steps
      with Tukey's scale c_lo, then ``iterations`` steps with c =
      ``inlier_threshold``; the candidate with the lowest final robust cost
      wins.
  * Levenberg-Marquardt: on the weighted robust reprojection cost
    sum_i w_i rho(e_i), Tukey's biweight rho (IRLS weights (1 - (e/c)^2)^2,
    0 beyond c) or plain least squares when ``robust=False`` (then only the
    all-points DLT initialises and there is no LO phase). The update is
    R <- exp(w) R, t <- t + dt (axis-angle increment w in the camera frame,
    Marquardt damping of the 6x6 normal equations, solved by an unrolled
    Cholesky, no LAPACK call); a step is kept only if the robust cost
    decreases. The rotation is re-orthonormalised at the end (2 polar
    Newton steps).
  * ok is False, and the pose is the fallback R = I, t = (0, 0, 1), when: K
    is not finite or singular; fewer than 6 usable correspondences (finite,
    weight > 0); the usable 3D/2D set is degenerate for the DLT (rank test:
    collinear or coplanar 3D points, too few distinct points); no valid
    hypothesis; fewer than 6 inliers (e < thr, in front of the camera) at
    the final pose, or a degenerate inlier set (same rank test); or a
    non-finite result. Outputs are always finite.
  * Linear algebra: exactly two batched ``eigh`` calls of 12x12 matrices
    (all hypotheses at once; then the inlier rank test at the final pose),
    the second data-dependent on the first, so they never run side by side (jaxlib
    0.10's CPU LAPACK kernels can deadlock when independent calls run
    concurrently). Everything else is closed-form. Callers that put other
    linear algebra in the same compiled program (e.g. Procrustes SVDs in an
    evaluation step) should chain it after the pose (homography._after).
  * Not meant to be differentiated: all inputs pass through
    ``jax.lax.stop_gradient`` (gradients are exactly zero, hence finite).
    The network is trained on the 2D votes and confidences, not on the pose.

Shapes: ``...`` is any batch shape; M correspondences per example (e.g.
21 x 10 = 210 vote slots with weight 0 for unused ones).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import small_linalg
from handobj_jax.geometry.small_linalg import det3 as _det3
from handobj_jax.geometry.small_linalg import inv3 as _inv3
from handobj_jax.geometry.small_linalg import matmul3 as _matmul3
from handobj_jax.geometry.small_linalg import safe_div as _safe_div
from handobj_jax.geometry.small_linalg import safe_sqrt as _safe_sqrt
from handobj_jax.geometry.rotation import axis_angle_to_matrix

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST
# Minimum number of correspondences (the DLT has 11 degrees of freedom).
MIN_CORRESPONDENCES = 6
# Relative threshold on the second-smallest eigenvalue of the normalised DLT
# normal matrix; below it the null space is not 1-D (coplanar / collinear
# points, repeated points).
_RANK_TOL = 1e-6
# Camera-frame depth (metres) below which a point counts as behind the camera.
_MIN_DEPTH = 1e-6
# Scaled Newton iterations of the polar decomposition.
_POLAR_ITERS = 10
_MIN_SAMPLE = 6
# LO-RANSAC: hypotheses are scored (MSAC) at _LO_SCALE x the inlier
# threshold; the best _LO_CANDIDATES get _LO_ITERATIONS LM steps at that
# Tukey scale before the best of them is refined at the threshold itself.
_LO_SCALE = 2.0
_LO_CANDIDATES = 4
_LO_ITERATIONS = 4


class PnPResult(NamedTuple):
  """Pose X_cam = rotation @ X_obj + translation, and diagnostics.

  rotation [..., 3, 3] (det +1), translation [..., 3] metres, ok [...] bool
  (False: the fallback R = I, t = (0, 0, 1)), num_inliers [...] int32
  (usable correspondences with reprojection error < inlier_threshold in
  front of the camera, at the final pose; all usable ones when not robust),
  rms_error [...] float32 pixels (RMS reprojection error over those inliers,
  0 when none).
  """
  rotation: Array
  translation: Array
  ok: Array
  num_inliers: Array
  rms_error: Array


# --- Votes --------------------------------------------------------------------


def select_votes(points2d: Array, confidence: Array, *, num_votes: int = 10,
                 threshold: float = 0.5) -> Tuple[Array, Array]:
  """The HO-3D protocol's vote selection, per control point.

  The rule (released evaluation code): repeat ``num_votes`` times: for each
  control point take the grid cell with the highest confidence (ties: the
  lowest cell index, like NumPy's argmax), keep its vote only if that
  confidence > threshold, then set that cell's confidence to 0 for that
  control point. With threshold >= 0 this is exactly a per-control-point
  top-k over the cells (``lax.top_k`` also breaks ties by the lower index):
  kept votes are the leading top-k entries whose confidence > threshold.
  Non-finite confidences count as 0 (never kept).

  Args:
    points2d: [..., G, N, 2] per-cell predictions (x, y) for N control points.
    confidence: [..., G, N] confidences (in [0, 1] from a sigmoid).
    num_votes: votes per control point (static).
    threshold: keep votes with confidence > threshold; must be >= 0.

  Returns:
    votes [..., N, num_votes, 2] (in descending confidence) and vote_valid
    [..., N, num_votes] bool. Slots beyond G cells are invalid (zeros).
    Votes are copied as given (a kept vote may hold non-finite coordinates;
    solve_pnp ignores those).
  """
  points2d = jnp.asarray(points2d)
  conf = jnp.asarray(confidence, jnp.float32)
  if (points2d.ndim < 3 or points2d.shape[-1] != 2
      or points2d.shape[:-1] != conf.shape):
    raise ValueError(f"points2d must be [..., G, N, 2] and confidence "
                     f"[..., G, N]; got {points2d.shape}, {conf.shape}")
  if isinstance(threshold, (int, float)) and threshold < 0:
    raise ValueError(f"threshold must be >= 0; got {threshold}")
  num_g = conf.shape[-2]
  k = min(int(num_votes), num_g)
  conf = jnp.where(jnp.isfinite(conf), conf, 0.0)
  values, idx = jax.lax.top_k(jnp.swapaxes(conf, -1, -2), k)     # [..., N, k]
  pts = jnp.swapaxes(points2d, -2, -3)                             # [..., N, G, 2]
  votes = jnp.take_along_axis(pts, idx[..., None], axis=-2)       # [..., N, k, 2]
  valid = values > threshold
  if k < num_votes:
    pad = num_votes - k
    votes = jnp.concatenate(
        [votes, jnp.zeros(votes.shape[:-2] + (pad, 2), votes.dtype)], -2)
    valid = jnp.concatenate(
        [valid, jnp.zeros(valid.shape[:-1] + (pad,), bool)], -1)
  return votes, valid


def votes_to_correspondences(points3d: Array, votes: Array,
                             vote_valid: Array) -> Tuple[Array, Array, Array]:
  """Flattens per-control-point votes into solve_pnp's fixed-size lists.

  Args:
    points3d: [..., N, 3] control points (object frame).
    votes: [..., N, V, 2] votes in full-image pixels.
    vote_valid: [..., N, V] bool.

  Returns:
    points3d [..., N * V, 3] (each control point repeated V times),
    image_points [..., N * V, 2] and weights [..., N * V] (1 valid, 0 not).
  """
  points3d = jnp.asarray(points3d, jnp.float32)
  votes = jnp.asarray(votes, jnp.float32)
  num_v = votes.shape[-2]
  lead = votes.shape[:-3]
  p3 = jnp.broadcast_to(points3d[..., :, None, :],
                        lead + points3d.shape[-2:-1] + (num_v, 3))
  p3 = p3.reshape(lead + (-1, 3))
  img = votes.reshape(lead + (-1, 2))
  w = jnp.asarray(vote_valid, jnp.float32).reshape(lead + (-1,))
  return p3, img, w


def box_to_pixels(points_norm: Array, box: Array) -> Array:
  """Normalised box coordinates to pixels: x0 + u (x1 - x0), y0 + v (y1 - y0).

  Args:
    points_norm: [..., P, 2] (u, v), (0, 0) = box corner (x0, y0), (1, 1) =
      (x1, y1).
    box: [..., 4] [x0, y0, x1, y1] pixels; leading dims broadcast against
      points_norm's.

  Returns:
    [..., P, 2] pixels, in the frame the box is given in.
  """
  points_norm = jnp.asarray(points_norm, jnp.float32)
  box = jnp.asarray(box, jnp.float32)[..., None, :]
  return box[..., :2] + points_norm * (box[..., 2:] - box[..., :2])


def pixels_to_box(points: Array, box: Array) -> Array:
  """Inverse of `box_to_pixels`: pixels [..., P, 2] -> (u, v) of box [..., 4] (sizes floored at 1e-6)."""
  points = jnp.asarray(points, jnp.float32)
  box = jnp.asarray(box, jnp.float32)[..., None, :]
  return (points - box[..., :2]) / jnp.maximum(box[..., 2:] - box[..., :2], 1e-6)


def crop_to_image(points: Array, crop_affine: Array) -> Array:
  """Maps crop (network input) pixels back to full-image pixels.

  Args:
    points: [..., P, 2] crop pixels (x, y).
    crop_affine: [..., 2, 3] the affine A that made the crop: p_crop =
      A[:, :2] @ p_image + A[:, 2] (cv2.warpAffine's matrix); leading dims
      broadcast against points'.

  Returns:
    [..., P, 2] full-image pixels, A^-1 applied (`crop.invert_affine`: a
    singular or non-finite affine gives zeros, finite).
  """
  return crop_lib.apply_affine(crop_lib.invert_affine(crop_affine), jnp.asarray(points, jnp.float32))


# --- Host reference: OpenCV ------------------------------------------------------


def solve_pnp_opencv(points3d: np.ndarray, votes: np.ndarray,
                     vote_valid: np.ndarray, K: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The HO-3D protocol's PnP on the host (NumPy + OpenCV), the reference.

  Per example: the valid votes and their 3D control points (each control
  point repeated for each of its valid votes); fewer than 6 -> fallback
  (R = I, t = (0, 0, 1), ok False); else cv2.solvePnPRansac(...,
  distCoeffs=None, flags=cv2.SOLVEPNP_EPNP) with OpenCV's default RANSAC
  settings (100 iterations, 8 px, confidence 0.99); failure or a non-finite
  result -> fallback.

  Args:
    points3d: [..., N, 3] control points (object frame, metres).
    votes: [..., N, V, 2] full-image pixels.
    vote_valid: [..., N, V] bool.
    K: [..., 3, 3] intrinsics.

  Returns:
    R [..., 3, 3], t [..., 3] (float64), ok [...] bool.
  """
  votes = np.asarray(votes, np.float64)
  lead = votes.shape[:-3]
  n, v = votes.shape[-3:-1]
  p3 = np.broadcast_to(np.asarray(points3d, np.float64), lead + (n, 3))
  valid = np.broadcast_to(np.asarray(vote_valid, bool), lead + (n, v))
  k = np.broadcast_to(np.asarray(K, np.float64), lead + (3, 3))
  rot = np.zeros(lead + (3, 3))
  trans = np.zeros(lead + (3,))
  ok = np.zeros(lead, bool)
  for idx in np.ndindex(*lead):
    rot[idx], trans[idx], ok[idx] = _solve_pnp_opencv_one(
        p3[idx], votes[idx], valid[idx], k[idx])
  return rot, trans, ok


def _solve_pnp_opencv_one(p3, votes, valid, k):
  fallback = (np.eye(3), np.array([0.0, 0.0, 1.0]), False)
  rows, cols = np.nonzero(valid)
  if len(rows) < MIN_CORRESPONDENCES:
    return fallback
  obj = np.ascontiguousarray(p3[rows])
  img = np.ascontiguousarray(votes[rows, cols])
  if not (np.all(np.isfinite(obj)) and np.all(np.isfinite(img))
          and np.all(np.isfinite(k))):
    return fallback
  try:
    retval, rvec, tvec, _ = cv2.solvePnPRansac(obj, img, k, None,
                                               flags=cv2.SOLVEPNP_EPNP)
  except cv2.error:
    return fallback
  if not retval or rvec is None or tvec is None:
    return fallback
  rot = cv2.Rodrigues(rvec)[0]
  trans = tvec.reshape(3)
  if not (np.all(np.isfinite(rot)) and np.all(np.isfinite(trans))):
    return fallback
  return rot, trans, True


# --- Device solver: small closed-form algebra -----------------------------------


def _polar_rotation(m: Array, iters: int = _POLAR_ITERS) -> Tuple[Array, Array]:
  """Rotation polar factor of m [..., 3, 3] with det(m) > 0 (`small_linalg.polar_factor`); R = I and ok
  False elsewhere."""
  return small_linalg.polar_factor(m, iters, positive_det=True)


def _chol_solve6(h: Array, g: Array) -> Array:
  """Solves h x = g for symmetric positive definite h [..., 6, 6] by an
  unrolled Cholesky factorisation (pivots floored at a tiny positive)."""
  n = 6
  l = [[None] * n for _ in range(n)]
  for j in range(n):
    s = h[..., j, j] - sum((l[j][k] * l[j][k] for k in range(j)),
                           jnp.zeros_like(h[..., 0, 0]))
    d = jnp.sqrt(jnp.maximum(s, 1e-30))
    l[j][j] = d
    for i in range(j + 1, n):
      s = h[..., i, j] - sum((l[i][k] * l[j][k] for k in range(j)),
                             jnp.zeros_like(h[..., 0, 0]))
      l[i][j] = s / d
  y = []
  for i in range(n):
    s = g[..., i] - sum((l[i][k] * y[k] for k in range(i)),
                        jnp.zeros_like(g[..., 0]))
    y.append(s / l[i][i])
  x = [None] * n
  for i in reversed(range(n)):
    s = y[i] - sum((l[k][i] * x[k] for k in range(i + 1, n)),
                   jnp.zeros_like(g[..., 0]))
    x[i] = s / l[i][i]
  return jnp.stack(x, axis=-1)


# --- Device solver: DLT ------------------------------------------------------


def _dlt_normal(p3: Array, xn: Array, w: Array):
  """Normal matrix of the Hartley-normalised, weighted DLT for P = [R | t].

  Args:
    p3: [..., P, 3] object points; xn: [..., P, 2] normalised camera
      coordinates (K^-1 applied); w: [..., P] weights (0 = unused).

  Returns:
    normal [..., 12, 12] (scaled to unit trace), (c3, s3, c2, s2) the
    normalisations (centroids and scales), spread_ok [...].
  """
  wsum = jnp.sum(w, axis=-1)
  has_w = wsum > 0
  c3 = _safe_div(jnp.sum(w[..., None] * p3, -2), wsum[..., None],
                 has_w[..., None])
  c2 = _safe_div(jnp.sum(w[..., None] * xn, -2), wsum[..., None],
                 has_w[..., None])
  d3 = p3 - c3[..., None, :]
  d2 = xn - c2[..., None, :]
  ms3 = _safe_div(jnp.sum(w * jnp.sum(d3 * d3, -1), -1), wsum, has_w)
  ms2 = _safe_div(jnp.sum(w * jnp.sum(d2 * d2, -1), -1), wsum, has_w)
  mag3 = jnp.max(jnp.where(w > 0, jnp.max(jnp.abs(p3), -1), 0.0), -1)
  mag2 = jnp.max(jnp.where(w > 0, jnp.max(jnp.abs(xn), -1), 0.0), -1)
  ok3 = has_w & (ms3 > jnp.square(1e-6 * (mag3 + 1e-3)))
  ok2 = has_w & (ms2 > jnp.square(1e-6 * (mag2 + 1e-3)))
  s3 = _safe_div(jnp.float32(np.sqrt(3.0)), _safe_sqrt(ms3), ok3)
  s2 = _safe_div(jnp.float32(np.sqrt(2.0)), _safe_sqrt(ms2), ok2)
  xh = jnp.concatenate([d3 * s3[..., None, None],
                        jnp.ones_like(d3[..., :1])], -1)         # [..., P, 4]
  u = d2[..., 0] * s2[..., None]
  v = d2[..., 1] * s2[..., None]
  zero = jnp.zeros_like(xh)
  # u = (p0 . X) / (p2 . X), v = (p1 . X) / (p2 . X)
  a1 = jnp.concatenate([xh, zero, -u[..., None] * xh], -1)        # [..., P, 12]
  a2 = jnp.concatenate([zero, xh, -v[..., None] * xh], -1)
  sw = _safe_sqrt(w)[..., None]
  a = jnp.concatenate([a1 * sw, a2 * sw], -2)
  normal = jnp.einsum("...pi,...pj->...ij", a, a, precision=_HIGHEST)
  tr = jnp.trace(normal, axis1=-2, axis2=-1)
  normal = _safe_div(normal, tr[..., None, None], (tr > 0)[..., None, None])
  return normal, (c3, s3, c2, s2), ok3 & ok2


def _dlt_pose(q0: Array, norms) -> Tuple[Array, Array, Array]:
  """Pose (R, t, ok) from the normalised DLT null vector q0 [..., 12]."""
  c3, s3, c2, s2 = norms
  pn = q0.reshape(q0.shape[:-1] + (3, 4))
  # Pn maps T3 [X, 1] to T2 [x, 1] with T3 = [[s3 I, -s3 c3], [0, 1]] and
  # T2 = [[s2 I, -s2 c2], [0, 1]], so P = T2^-1 Pn T3:
  # Pn T3 = [s3 Pn[:, :3], Pn[:, 3] - s3 Pn[:, :3] c3] = B, and T2^-1 B has
  # rows B_r / s2 + c2_r B_2 (r = 0, 1) and B_2.
  m3 = pn[..., :3] * s3[..., None, None]
  b = jnp.concatenate(
      [m3, (pn[..., 3] - jnp.sum(m3 * c3[..., None, :], -1))[..., None]], -1)
  inv_s2 = _safe_div(jnp.ones_like(s2), s2, s2 > 0)
  top = b[..., :2, :] * inv_s2[..., None, None] + c2[..., :, None] * b[..., 2:3, :]
  p = jnp.concatenate([top, b[..., 2:3, :]], -2)                 # [..., 3, 4]
  m3, p4 = p[..., :3], p[..., 3]
  sign = jnp.where(_det3(m3) < 0, -1.0, 1.0)
  m3 = m3 * sign[..., None, None]
  p4 = p4 * sign[..., None]
  rot, ok = _polar_rotation(m3)
  lam = jnp.sum(rot * m3, axis=(-2, -1)) / 3.0    # mean singular value
  ok = ok & (lam > 0)
  t = _safe_div(p4, lam[..., None], ok[..., None])
  return rot, t, ok


def _null_vectors(normal: Array) -> Tuple[Array, Array]:
  """Smallest eigenvector [..., 12] and rank flag of [..., 12, 12] normal
  matrices, ONE batched eigh call."""
  lam, q = jnp.linalg.eigh(normal)            # ascending
  rank_ok = (lam[..., 1] > _RANK_TOL * lam[..., -1]) & jnp.all(
      jnp.isfinite(lam), -1)
  return q[..., :, 0], rank_ok


# --- Device solver: reprojection and refinement ----------------------------------


def _project(rot, t, p3, k):
  """Camera points, pixels and depth flags, as planes over the points.

  rot [..., 3, 3], t [..., 3], p3 [..., M, 3], k [..., 3, 3] (leading dims
  broadcast) -> (rx, q, pix, front): rx = R X and q = K (R X + t) as 3
  planes [..., M] each, pix as 2 planes, front [..., M] bool. Written out
  component by component so XLA fuses it into one loop (a broadcast
  [..., M, 3, 3] product and reduction was ~10x slower on CPU).
  """
  x = [p3[..., j] for j in range(3)]
  rx = [sum(rot[..., i, j][..., None] * x[j] for j in range(3))
        for i in range(3)]
  xc = [rx[i] + t[..., i][..., None] for i in range(3)]
  q = [sum(k[..., i, j][..., None] * xc[j] for j in range(3))
       for i in range(3)]
  front = (xc[2] > _MIN_DEPTH) & (q[2] > _MIN_DEPTH)
  inv = _safe_div(jnp.ones_like(q[2]), q[2], front)
  pix = [q[0] * inv, q[1] * inv]
  return rx, q, pix, front


def _sq_error(pix, obs):
  """Squared pixel distance [..., M] between pix planes and obs [..., M, 2]."""
  return jnp.square(pix[0] - obs[..., 0]) + jnp.square(pix[1] - obs[..., 1])


def _robust_cost(sq_err, front, w, thr, robust):
  """sum_i w_i rho(e_i); behind-camera points cost the outlier constant."""
  if robust:
    c2 = thr * thr
    r = jnp.minimum(sq_err / c2, 1.0)
    rho = c2 / 6.0 * (1.0 - (1.0 - r) ** 3)
    rho = jnp.where(front, rho, c2 / 6.0)
  else:
    rho = jnp.where(front, 0.5 * sq_err, 0.5 * 1e6)
  return jnp.sum(w * rho, axis=-1)


def _irls_weights(sq_err, front, w, thr, robust):
  if robust:
    r = sq_err / (thr * thr)
    return jnp.where(front & (r < 1.0), w * jnp.square(1.0 - r), 0.0)
  return jnp.where(front, w, 0.0)


def _lm_step(state, p3, obs, w, k, thr, robust):
  rot, t, mu, cost = state
  rx, q, pix, front = _project(rot, t, p3, k)
  res = [pix[0] - obs[..., 0], pix[1] - obs[..., 1]]
  wi = _irls_weights(res[0] * res[0] + res[1] * res[1], front, w, thr, robust)
  # d pix / d X_cam, row r: (K[r] - pix_r K[2]) / q_z, 3 planes each.
  inv_z = _safe_div(jnp.ones_like(q[2]), q[2], front)
  kc = lambda i, j: k[..., i, j][..., None]  # noqa: E731
  rows = [[(kc(r, j) - pix[r] * kc(2, j)) * inv_z for j in range(3)]
          for r in range(2)]
  # Left increment exp(w) R: d X_cam / d w = -[R X]_x, so a row a gives
  # a^T (-[R X]_x) = (R X) x a; d X_cam / d t = I.
  jac = []
  for a in rows:
    cross = [rx[1] * a[2] - rx[2] * a[1], rx[2] * a[0] - rx[0] * a[2],
             rx[0] * a[1] - rx[1] * a[0]]
    jac.append(jnp.stack(cross + a, -1))                # [..., M, 6]
  jac = jnp.stack(jac, -2)                              # [..., M, 2, 6]
  res = jnp.stack(res, -1)                              # [..., M, 2]
  h = jnp.einsum("...mri,...m,...mrj->...ij", jac, wi, jac, precision=_HIGHEST)
  g = jnp.einsum("...mri,...m,...mr->...i", jac, wi, res, precision=_HIGHEST)
  diag = jnp.diagonal(h, axis1=-2, axis2=-1)
  tiny = 1e-9 * jnp.mean(diag, -1, keepdims=True) + 1e-20
  h_damped = h + (jnp.eye(6) * (mu[..., None, None] * diag[..., None, :]
                                + tiny[..., None]))
  delta = -_chol_solve6(h_damped, g)
  delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
  rot_new = _matmul3(axis_angle_to_matrix(delta[..., :3]), rot)
  t_new = t + delta[..., 3:]
  _, _, pix_new, front_new = _project(rot_new, t_new, p3, k)
  cost_new = _robust_cost(_sq_error(pix_new, obs), front_new, w, thr, robust)
  better = (cost_new < cost) & jnp.isfinite(cost_new)
  rot = jnp.where(better[..., None, None], rot_new, rot)
  t = jnp.where(better[..., None], t_new, t)
  cost = jnp.where(better, cost_new, cost)
  mu = jnp.where(better, jnp.maximum(mu / 3.0, 1e-7),
                 jnp.minimum(mu * 4.0, 1e7))
  return rot, t, mu, cost


def _groups(p3: Array, used: Array) -> Tuple[Array, Array, Array]:
  """Correspondences with bit-identical 3D points (votes of one control
  point) form a group.

  Returns same [..., M, M] (both used and the same 3D point), first [..., M]
  (used and the group's lowest index) and group [..., M] (the index of the
  group's first member; meaningless for unused points).
  """
  num_m = p3.shape[-2]
  same = (jnp.all(p3[..., :, None, :] == p3[..., None, :, :], -1)
          & used[..., :, None] & used[..., None, :])
  earlier = jnp.arange(num_m)[None, :] < jnp.arange(num_m)[:, None]
  first = used & ~jnp.any(same & earlier, -1)
  return same, first, jnp.argmax(same, axis=-1)


def _consensus_weights(same: Array, p2: Array, w: Array,
                       radius: Array) -> Array:
  """One correspondence per group: the member whose image point has the
  most (weighted) group members within ``radius`` pixels (ties: the lower
  index), weighted by its weight; [..., M], 0 elsewhere.

  With votes, that is each control point's densest vote, an inlier unless
  most of the control point's votes are outliers; the DLT on these is a
  robust, accurate hypothesis that needs no lucky sample.
  """
  d = p2[..., :, None, :] - p2[..., None, :, :]
  close = same & (jnp.sum(d * d, -1) < radius * radius)
  score = jnp.sum(jnp.where(close, w[..., None, :], 0.0), -1)       # [..., M]
  # The group's best member (argmax: the first of equal scores).
  best = jnp.argmax(jnp.where(same, score[..., None, :], -1.0), axis=-1)
  mode = (w > 0) & (best == jnp.arange(p2.shape[-2]))
  return jnp.where(mode, w, 0.0)


def _sample_minimal_sets(key: Array, w: Array, first: Array, group: Array,
                         num_sets: int) -> Tuple[Array, Array]:
  """Random minimal sets of correspondences with DISTINCT 3D points.

  Votes repeat their control point, so uniform draws of 6 out of 21 x 10
  correspondences would often pick the same 3D point twice (a degenerate
  DLT). A set is 6 distinct groups (see _groups) drawn uniformly (Gumbel
  top-k over the groups' first members), and within each group one member
  drawn with probability proportional to its weight. The same Gumbel noise
  serves every example.

  Args:
    key: PRNG key. w: [..., M] weights (0 = unused). first, group: from
      _groups. num_sets: S.

  Returns:
    idx [..., S, 6] int32 correspondence indices and top [..., S, 6], finite
    where the draw found a group (fewer than 6 groups leave -inf entries).
  """
  num_m = w.shape[-1]
  size = min(_MIN_SAMPLE, num_m)
  used = w > 0
  key_group, key_member = jax.random.split(key)
  g1 = jax.random.gumbel(key_group, (num_sets, num_m))
  g2 = jax.random.gumbel(key_member, (num_sets, num_m))
  top, reps = jax.lax.top_k(jnp.where(first[..., None, :], g1, -jnp.inf), size)
  log_w = jnp.log(jnp.where(used, w, 1.0))
  member_logits = jnp.where(
      (group[..., None, None, :] == reps[..., :, :, None])
      & used[..., None, None, :],
      g2[:, None, :] + log_w[..., None, None, :], -jnp.inf)   # [..., S, 6, M]
  idx = jnp.argmax(member_logits, axis=-1).astype(jnp.int32)
  return idx, top


def solve_pnp(points3d: Array, image_points: Array, weights: Array, K: Array,
              *, iterations: int = 10, robust: bool = True,
              num_hypotheses: int = 64, inlier_threshold: float = 8.0,
              key: Optional[Array] = None) -> PnPResult:
  """Robust weighted PnP on device (see the module docstring).

  Args:
    points3d: [..., M, 3] object-frame points (metres).
    image_points: [..., M, 2] pixels (x, y).
    weights: [..., M] non-negative weights; 0 marks an unused slot. Points
      with non-finite coordinates or weights are unused.
    K: [..., 3, 3] intrinsics. Leading dims of all inputs broadcast.
    iterations: Levenberg-Marquardt steps at the inlier threshold (static;
      with robust, after 4 local-optimisation steps).
    robust: LO-RANSAC hypotheses + Tukey IRLS (True) or the DLT on all
      points + weighted least squares (False).
    num_hypotheses: random minimal (6-point) hypotheses when robust, besides
      the all-points and consensus DLTs (static).
    inlier_threshold: pixels; MSAC truncation, Tukey's c and the inlier test.
    key: PRNG key for the hypotheses; a fixed key (0) when None, and the same
      draws for every example of the batch (results do not depend on the
      batch position).

  Returns:
    PnPResult; where ok is False the pose is R = I, t = (0, 0, 1).

  The body is one jitted function (static: iterations, robust,
  num_hypotheses, inlier_threshold), so eager calls compile once per shape.
  """
  shapes = [jnp.shape(x) for x in (points3d, image_points, weights, K)]
  s3, s2, sw, sk = shapes
  if (len(s3) < 2 or s3[-1] != 3 or len(s2) < 2 or s2[-1] != 2
      or len(sk) < 2 or sk[-2:] != (3, 3) or len(sw) < 1):
    raise ValueError(f"solve_pnp wants points3d [..., M, 3], image_points "
                     f"[..., M, 2], weights [..., M], K [..., 3, 3]; got "
                     f"{s3}, {s2}, {sw}, {sk}")
  if not s3[-2] == s2[-2] == sw[-1]:
    raise ValueError(f"points3d {s3}, image_points {s2} and weights {sw} "
                     "disagree on M")
  return _solve_pnp_jit(points3d, image_points, weights, K, key,
                        iterations=int(iterations), robust=bool(robust),
                        num_hypotheses=int(num_hypotheses),
                        inlier_threshold=float(inlier_threshold))


@functools.partial(jax.jit, static_argnames=(
    "iterations", "robust", "num_hypotheses", "inlier_threshold"))
def _solve_pnp_jit(points3d, image_points, weights, K, key, *, iterations,
                   robust, num_hypotheses, inlier_threshold) -> PnPResult:
  """solve_pnp's body, compiled as one program even when called eagerly
  (op-by-op execution of its ~1000 operations would spend tens of seconds
  compiling them one by one). Inside a caller's jit or vmap it is inlined
  or batched like any function."""
  p3 = jax.lax.stop_gradient(jnp.asarray(points3d, jnp.float32))
  p2 = jax.lax.stop_gradient(jnp.asarray(image_points, jnp.float32))
  w = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
  k = jax.lax.stop_gradient(jnp.asarray(K, jnp.float32))
  num_m = p3.shape[-2]
  batch = jnp.broadcast_shapes(p3.shape[:-2], p2.shape[:-2], w.shape[:-1],
                               k.shape[:-2])
  p3 = jnp.broadcast_to(p3, batch + (num_m, 3))
  p2 = jnp.broadcast_to(p2, batch + (num_m, 2))
  w = jnp.broadcast_to(w, batch + (num_m,))
  k = jnp.broadcast_to(k, batch + (3, 3))
  thr = jnp.float32(inlier_threshold)

  k_det = _det3(k)
  k_scale = jnp.max(jnp.abs(k), axis=(-2, -1))
  k_ok = (jnp.all(jnp.isfinite(k), axis=(-2, -1))
          & (jnp.abs(k_det) > 1e-12 * k_scale * k_scale * k_scale))
  k = jnp.where(k_ok[..., None, None], k, jnp.eye(3, dtype=jnp.float32))
  usable = (jnp.all(jnp.isfinite(p3), -1) & jnp.all(jnp.isfinite(p2), -1)
            & jnp.isfinite(w) & (w > 0))
  # First where of the double-where pattern: nothing non-finite goes further.
  p3 = jnp.where(usable[..., None], p3, 0.0)
  p2 = jnp.where(usable[..., None], p2, 0.0)
  w = jnp.where(usable, w, 0.0)
  n_usable = jnp.sum(usable, -1)

  # Normalised camera coordinates K^-1 [x, y, 1].
  k_inv = _inv3(k, jnp.ones(batch, bool))
  hom = jnp.concatenate([p2, jnp.ones_like(p2[..., :1])], -1)
  ray = jnp.sum(k_inv[..., None, :, :] * hom[..., :, None, :], -1)
  ray_ok = jnp.abs(ray[..., 2]) > 1e-12
  xn = _safe_div(ray[..., :2], ray[..., 2:], ray_ok[..., None])
  w = jnp.where(ray_ok, w, 0.0)

  # Hypotheses: the DLT on all usable points first, then minimal samples.
  normal_all, norms_all, spread_all = _dlt_normal(p3, xn, w)
  hyp_axis = len(batch)   # hypotheses axis, right after the batch dims
  expand = lambda x: jnp.expand_dims(x, hyp_axis)  # noqa: E731
  normals = [expand(normal_all)]
  norm_parts = [tuple(expand(x) for x in norms_all)]
  spreads = [expand(spread_all)]
  if robust:
    same, first, group = _groups(p3, w > 0)
    normal_con, norms_con, spread_con = _dlt_normal(
        p3, xn, _consensus_weights(same, p2, w, thr))
    normals.append(expand(normal_con))
    norm_parts.append(tuple(expand(x) for x in norms_con))
    spreads.append(expand(spread_con))
  if robust and num_hypotheses > 0:
    if key is None:
      key = jax.random.PRNGKey(0)
    idx, top = _sample_minimal_sets(key, w, first, group, num_hypotheses)
    picked = jnp.isfinite(top).astype(jnp.float32)
    take = lambda a: jnp.take_along_axis(                    # noqa: E731
        a[..., None, :, :], idx[..., None], axis=-2)
    normal_min, norms_min, spread_min = _dlt_normal(take(p3), take(xn), picked)
    normals.append(normal_min)
    norm_parts.append(norms_min)
    spreads.append(spread_min)
  normal = jnp.concatenate(normals, hyp_axis)                # [..., S+1, 12, 12]
  norms = tuple(jnp.concatenate(parts, hyp_axis) for parts in zip(*norm_parts))
  spread = jnp.concatenate(spreads, hyp_axis)
  q0, rank_ok = _null_vectors(normal)                        # eigh no. 1
  rot_h, t_h, pose_ok = _dlt_pose(q0, norms)
  hyp_ok = rank_ok & pose_ok & spread
  # The usable set as a whole must not be degenerate (its DLT's pose may
  # still be poor: outliers).
  all_ok = (rank_ok & spread)[..., 0]

  # Score the hypotheses on all points (MSAC with a generous threshold:
  # minimal DLT fits are rough), keep the best few.
  _, _, pix_h, front_h = _project(rot_h, t_h, p3[..., None, :, :],
                                  k[..., None, :, :])
  sq_h = _sq_error(pix_h, p2[..., None, :, :])
  if robust:
    thr_lo = _LO_SCALE * thr
    cost_h = jnp.sum(w[..., None, :] * jnp.where(
        front_h, jnp.minimum(sq_h, thr_lo * thr_lo), thr_lo * thr_lo), -1)
  else:
    cost_h = _robust_cost(sq_h, front_h, w[..., None, :], thr, False)
  cost_h = jnp.where(hyp_ok & jnp.isfinite(cost_h), cost_h, jnp.inf)
  num_c = min(_LO_CANDIDATES, cost_h.shape[-1]) if robust else 1
  neg_cost, cand = jax.lax.top_k(-cost_h, num_c)            # [..., L]
  cand_ok = jnp.isfinite(neg_cost)
  rot = jnp.take_along_axis(rot_h, cand[..., None, None], -3)
  t = jnp.take_along_axis(t_h, cand[..., None], -2)
  rot = jnp.where(cand_ok[..., None, None], rot, jnp.eye(3))
  t = jnp.where(cand_ok[..., None], t, jnp.array([0.0, 0.0, 1.0]))

  # Levenberg-Marquardt on the robust reprojection cost, for every
  # candidate (a candidate axis L, data broadcast over it): with robust,
  # _LO_ITERATIONS steps at Tukey scale _LO_SCALE x thr (local optimisation,
  # LO-RANSAC), then `iterations` steps at thr; the candidate with the lowest
  # final robust cost wins.
  ex = lambda x: jnp.expand_dims(x, hyp_axis)  # noqa: E731
  p3_l, p2_l, w_l, k_l = ex(p3), ex(p2), ex(w), ex(k)
  lo_steps = _LO_ITERATIONS if robust else 0

  def scale(i):
    return jnp.where(i < lo_steps, _LO_SCALE * thr, thr)

  _, _, pix, front = _project(rot, t, p3_l, k_l)
  cost = _robust_cost(_sq_error(pix, p2_l), front, w_l, scale(0), robust)
  mu = jnp.full(cost.shape, 1e-3, jnp.float32)

  def step(i, state):
    rot, t, mu, cost = state
    # Entering the second phase, costs are re-evaluated at the new scale.
    _, _, pix, front = _project(rot, t, p3_l, k_l)
    cost = jnp.where(i == lo_steps, _robust_cost(
        _sq_error(pix, p2_l), front, w_l, scale(i), robust), cost)
    return _lm_step((rot, t, mu, cost), p3_l, p2_l, w_l, k_l, scale(i),
                    robust)

  rot, t, _, _ = jax.lax.fori_loop(0, lo_steps + iterations, step,
                                   (rot, t, mu, cost))
  _, _, pix, front = _project(rot, t, p3_l, k_l)
  cost = _robust_cost(_sq_error(pix, p2_l), front, w_l, thr, robust)
  cost = jnp.where(cand_ok, cost, jnp.inf)
  best = jnp.argmin(cost, axis=-1)
  best_ok = jnp.take_along_axis(cand_ok, best[..., None], -1)[..., 0]
  rot = jnp.take_along_axis(rot, best[..., None, None, None], -3)[..., 0, :, :]
  t = jnp.take_along_axis(t, best[..., None, None], -2)[..., 0, :]
  rot, rot_ok = _polar_rotation(rot, iters=2)

  # Inliers at the final pose, and their rank test (eigh no. 2: its input
  # depends on the pose, i.e. on eigh no. 1, so the calls are sequential).
  _, _, pix, front = _project(rot, t, p3, k)
  sq = _sq_error(pix, p2)
  inlier = usable & ray_ok & front
  if robust:
    inlier = inlier & (sq < thr * thr)
  n_inl = jnp.sum(inlier, -1)
  rms = jnp.sqrt(_safe_div(jnp.sum(jnp.where(inlier, sq, 0.0), -1),
                           n_inl.astype(jnp.float32), n_inl > 0))
  w_inl = jnp.where(inlier, w, 0.0)
  normal_inl, _, spread_inl = _dlt_normal(p3, xn, w_inl)
  _, rank_inl = _null_vectors(normal_inl)

  ok = (k_ok & (n_usable >= MIN_CORRESPONDENCES) & all_ok & best_ok & rot_ok
        & (n_inl >= MIN_CORRESPONDENCES) & spread_inl & rank_inl
        & jnp.all(jnp.isfinite(rot), (-2, -1)) & jnp.all(jnp.isfinite(t), -1))
  rot = jnp.where(ok[..., None, None], rot, jnp.eye(3, dtype=jnp.float32))
  t = jnp.where(ok[..., None], t, jnp.array([0.0, 0.0, 1.0], jnp.float32))
  return PnPResult(rot, t, ok, jnp.where(ok, n_inl, 0).astype(jnp.int32),
                   jnp.where(ok, rms, 0.0))
