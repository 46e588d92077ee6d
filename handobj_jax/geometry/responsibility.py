"""COHESIV responsibility maps (Sec. 3.1, Eq. 1-2) and the pseudo-labels.

Frames and units:
  * Pixels (x, y) = (column, row), pixel centres at integer coordinates.
  * Optical flow [..., H, W, 2] from frame t to a neighbour frame:
    flow[..., y, x, 0] = dx (along columns), flow[..., y, x, 1] = dy (rows).
  * A hand's motion model is a homography M_k [..., 3, 3] acting on [x, y, 1]
    (frame t -> neighbour frame); its predicted flow at (x, y) is
    proj(M_k [x, y, 1]) - [x, y].

Eq. 2 (distances, pixels):
  d_k(x, y)  = || [x, y] + o(x, y) - proj(M_k [x, y, 1]) ||_2
  d_BG(x, y) = || o(x, y) ||_2            (static background)
Eq. 1 (read as the paper intends, see the papers README): per pixel, a
softmax over {background, valid hands} of -d / t with temperature t = 2, so
the model with the smaller distance gets the larger share:
  R[..., y, x, 0]  = background responsibility,
  R[..., y, x, k]  = responsibility of hand k (k = 1..N); invalid hands get
  exactly 0 and the channels sum to 1.

Shapes: B batch, K neighbour offsets, N hands, V hand vertices, H, W image.
All functions accept any leading batch shape and are jit/vmap-safe float32.

Degenerate input stays finite: a non-finite flow value counts as no motion
(0) and flow components are clamped to +-MAX_FLOW_PX (far beyond any image),
so distances, exponentials and their gradients never overflow; a non-finite
responsibility given to `pseudo_labels` counts as 0 and is flagged in its
`finite` output.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from handobj_jax.geometry.homography import _safe_sqrt
from handobj_jax.geometry.homography import fit_homography
from handobj_jax.geometry.homography import fit_homography_robust
from handobj_jax.geometry.homography import projected_pixel_grid

Array = jax.Array


MAX_FLOW_PX = 1e4  # |dx|, |dy| beyond this are clamped (squares stay far from float32's range).


def _check_flow(flow: Array, name: str = "flow") -> Array:
  flow = jnp.asarray(flow, jnp.float32)
  if flow.ndim < 3 or flow.shape[-1] != 2:
    raise ValueError(f"{name} must be [..., H, W, 2] (dx, dy); got "
                     f"{flow.shape}")
  return flow


def _finite_flow(x: Array) -> Array:
  """Flow values with non-finite ones set to 0 and clamped to +-MAX_FLOW_PX.

  Applied where the flow is read (per-offset planes inside the fused pixel
  pass, sampled values at the vertices), so it fuses into those loops
  instead of costing a pass over the whole flow.
  """
  return jnp.clip(jnp.where(jnp.isfinite(x), x, 0.0), -MAX_FLOW_PX, MAX_FLOW_PX)


def _plane_distance(ox: Array, oy: Array, h: Array) -> Array:
  """Eq. 2 for one hand on planar flow components.

  Args:
    ox, oy: [..., H, W] flow components.
    h: [..., 3, 3].

  Returns:
    [..., H, W] distances in pixels (finite, possibly huge).
  """
  xs, ys, px, py = projected_pixel_grid(h, ox.shape[-2], ox.shape[-1])
  rx = xs + ox - px
  ry = ys + oy - py
  return _safe_sqrt(rx * rx + ry * ry)


def _offset_shares(ox: Array, oy: Array, homographies: Array,
                   hand_valid: Array, inv_t: float) -> List[Array]:
  """Eq. 1 hand channels for one offset, as N planes [..., H, W].

  R_n = e_n / (e_bg + sum_j e_j) with e_x = exp((m - d_x) / t), where m is
  the smallest distance among background and valid hands: every exponent is
  <= 0 and one term is exactly 1, so nothing overflows and the denominator
  is >= 1 (finite values and gradients). Invalid hands are exactly 0.
  """
  d_bg = _safe_sqrt(ox * ox + oy * oy)
  n_hands = homographies.shape[-3]
  valids = [hand_valid[..., n][..., None, None] for n in range(n_hands)]
  dists = [_plane_distance(ox, oy, homographies[..., n, :, :])
           for n in range(n_hands)]
  m = d_bg
  for n in range(n_hands):
    m = jnp.where(valids[n], jnp.minimum(m, dists[n]), m)
  es = [jnp.where(valids[n], jnp.exp((m - dists[n]) * inv_t), 0.0)
        for n in range(n_hands)]
  inv = 1.0 / (jnp.exp((m - d_bg) * inv_t) + sum(es))
  return [e * inv for e in es]


def _two_hand_shares(ox: Array, oy: Array, homographies: Array,
                     hand_valid: Array, inv_t: float) -> List[Array]:
  """_offset_shares for exactly two hands with two exponentials, not three.

  With m the nearer hand's distance, the nearer hand's share is
  1 / (1 + e_far + e_bg), e_far = exp((m - d_far) / t) <= 1 and e_bg =
  exp((m - d_bg) / t), and the farther hand's share is e_far times it.
  e_bg's exponent is capped at 80: a background that much nearer leaves the
  hands < 2e-35 either way. An invalid hand's distance is 3e38 (its
  exponential underflows to 0); with no valid hand both shares are 0.
  """
  d_bg = _safe_sqrt(ox * ox + oy * oy)
  valid = [hand_valid[..., n][..., None, None] for n in range(2)]
  far_away = jnp.float32(3e38)
  d0, d1 = [jnp.where(valid[n], _plane_distance(ox, oy, homographies[..., n, :, :]), far_away)
            for n in range(2)]
  near = jnp.minimum(d0, d1)
  e_far = jnp.exp((near - jnp.maximum(d0, d1)) * inv_t)
  e_bg = jnp.exp(jnp.minimum((near - d_bg) * inv_t, 80.0))
  r_near = 1.0 / (1.0 + e_far + e_bg)
  r_far = e_far * r_near
  first_nearer = d0 <= d1
  some = valid[0] | valid[1]
  return [jnp.where(some, jnp.where(first_nearer, r_near, r_far), 0.0),
          jnp.where(some, jnp.where(first_nearer, r_far, r_near), 0.0)]


def _averaged_hand_planes(flow: Array, homographies: Array, ok: Array,
                          weights: Array, temperature: float,
                          any_valid: Array) -> List[Array]:
  """sum_k w_k R_k for the N hand channels, as N planes [..., H, W].

  Args:
    flow: [..., K, H, W, 2].
    homographies: [..., K, N, 3, 3].
    ok: [..., K, N] bool, hands that take part at each offset.
    weights: [..., K] offset weights w_k.
    temperature: Eq. 1 temperature.
    any_valid: scalar bool; False skips the work (all planes zero).

  Performance (measured on CPU, where this is most of the work): XLA emits
  one loop per output and recomputes shared subexpressions in each, so N
  float planes would cost N times the distances and exponentials. Hands
  are therefore packed in pairs into complex64 planes (real = hand 2i,
  imaginary = hand 2i + 1), one loop per pair with the K offsets unrolled
  inside it. The packed planes are the result of a lax.cond (skipping the
  work when no offset is valid), whose boundary also keeps the algebraic
  simplifier from splitting real and imaginary parts back into separate
  loops (an optimization_barrier is dropped by XLA's CPU pipeline). All
  slicing happens inside the branch, so no per-offset flow plane is
  materialised.
  """
  inv_t = 1.0 / float(temperature)  # a Python constant, not a traced one
  num_k, n_hands = homographies.shape[-4], homographies.shape[-3]
  firsts = range(0, n_hands, 2)

  share_fn = _two_hand_shares if n_hands == 2 else _offset_shares

  def packed(flow, homographies, ok, weights):
    shares = [share_fn(_finite_flow(flow[..., k, :, :, 0]), _finite_flow(flow[..., k, :, :, 1]),
                       homographies[..., k, :, :, :], ok[..., k, :], inv_t)
              for k in range(num_k)]
    outs = []
    for first in firsts:
      acc = None
      for k, share in enumerate(shares):
        w = weights[..., k][..., None, None]
        v = (jax.lax.complex(share[first] * w, share[first + 1] * w)
             if first + 1 < n_hands else share[first] * w)
        acc = v if acc is None else acc + v
      outs.append(acc)
    return tuple(outs)

  def empty(flow, *_):
    # zeros_like of an operand (not jnp.zeros): inside shard_map the zeros
    # must vary over the same mesh axes as the other branch's result.
    zero = jnp.zeros_like(flow[..., 0, :, :, 0])
    return tuple(jax.lax.complex(zero, zero) if first + 1 < n_hands else zero
                 for first in firsts)

  outs = jax.lax.cond(any_valid, packed, empty, flow, homographies, ok,
                      weights)
  planes = []
  for first, out in zip(firsts, outs):
    if first + 1 < n_hands:
      planes += [jnp.real(out), jnp.imag(out)]
    else:
      planes.append(out)
  return planes


def _with_background(hand_planes: List[Array]) -> Array:
  """Stacks [1 - sum(hands), hands...] channel-last, [..., H, W, N + 1]."""
  bg = 1.0 - sum(hand_planes)
  return jnp.stack([jnp.maximum(bg, 0.0)] + list(hand_planes), axis=-1)


def hand_distance(flow: Array, h_k: Array) -> Array:
  """Eq. 2: distance between observed flow and one hand's homography flow.

  Args:
    flow: [..., H, W, 2] (dx, dy) in pixels.
    h_k: [..., 3, 3] homography (frame t -> neighbour frame).

  Returns:
    d_k [..., H, W] = || [x, y] + o - proj(h_k [x, y, 1]) ||.
  """
  flow = _check_flow(flow)
  h_k = jnp.asarray(h_k, jnp.float32)
  if h_k.shape[-2:] != (3, 3):
    raise ValueError(f"h_k must be [..., 3, 3]; got {h_k.shape}")
  return _plane_distance(_finite_flow(flow[..., 0]), _finite_flow(flow[..., 1]), h_k)


def responsibility(
    flow: Array,
    homographies: Array,
    hand_valid: Array,
    temperature: float = 2.0,
) -> Array:
  """Eq. 1: per-pixel softmax of -d / t over background and valid hands.

  Args:
    flow: [..., H, W, 2] (dx, dy) in pixels.
    homographies: [..., N, 3, 3] per-hand motion models.
    hand_valid: [..., N] bool; invalid hands get responsibility exactly 0.
    temperature: t > 0 (the paper uses 2).

  Returns:
    R [..., H, W, N + 1]: channel 0 background, channel k hand k; sums to 1.
  """
  flow = _check_flow(flow)
  homographies = jnp.asarray(homographies, jnp.float32)
  if homographies.ndim < 3 or homographies.shape[-2:] != (3, 3):
    raise ValueError(f"homographies must be [..., N, 3, 3]; got "
                     f"{homographies.shape}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0; got {temperature}")
  hand_valid = jnp.asarray(hand_valid, bool)
  planes = _offset_shares(_finite_flow(flow[..., 0]), _finite_flow(flow[..., 1]),
                          homographies, hand_valid, 1.0 / float(temperature))
  return _with_background(planes)


def bilinear_sample(image: Array, pts: Array) -> Array:
  """Bilinear lookup at sub-pixel (x, y) points.

  Border handling: coordinates are clamped to [0, W-1] x [0, H-1] (edge
  replication), so points outside the image return the nearest edge value;
  non-finite coordinates are treated as (0, 0). Callers that need to know
  which points were outside must test that themselves.

  Args:
    image: [..., H, W, C].
    pts: [..., P, 2] (x, y) pixel coordinates; leading dims broadcast
      against image's.

  Returns:
    [..., P, C] float32.
  """
  image = jnp.asarray(image, jnp.float32)
  pts = jnp.asarray(pts, jnp.float32)
  if image.ndim < 3 or pts.shape[-1] != 2:
    raise ValueError(f"bilinear_sample wants image [..., H, W, C] and pts "
                     f"[..., P, 2]; got {image.shape}, {pts.shape}")
  height, width, chans = image.shape[-3:]
  batch = jnp.broadcast_shapes(image.shape[:-3], pts.shape[:-2])
  # Each point reads one 2x2 patch with a single gather (a dynamic_slice
  # under vmap); four separate corner gathers were 2.5x slower on CPU.
  if height < 2 or width < 2:
    image = jnp.pad(image, [(0, 0)] * (image.ndim - 3)
                    + [(0, max(0, 2 - height)), (0, max(0, 2 - width)),
                       (0, 0)], mode="edge")
  pts = jnp.where(jnp.isfinite(pts), pts, 0.0)
  x = jnp.clip(pts[..., 0], 0.0, width - 1.0)
  y = jnp.clip(pts[..., 1], 0.0, height - 1.0)
  x0f = jnp.clip(jnp.floor(x), 0.0, max(image.shape[-2] - 2, 0))
  y0f = jnp.clip(jnp.floor(y), 0.0, max(image.shape[-3] - 2, 0))
  fx = (x - x0f)[..., None]
  fy = (y - y0f)[..., None]
  y0 = y0f.astype(jnp.int32)
  x0 = x0f.astype(jnp.int32)

  def patch(img, yi, xi):
    return jax.lax.dynamic_slice(img, (yi, xi, 0), (2, 2, chans))

  def sample(img, yi, xi):
    """vmaps over the leading dims; a size-1 dim on one side is broadcast
    with in_axes=None, so neither images nor points are copied."""
    if yi.ndim == 1:
      return jax.vmap(patch, in_axes=(None, 0, 0))(img, yi, xi)
    n = max(img.shape[0], yi.shape[0])
    img_ax = 0 if img.shape[0] == n else None
    pt_ax = 0 if yi.shape[0] == n else None
    img = img if img_ax == 0 else img[0]
    yi, xi = (yi, xi) if pt_ax == 0 else (yi[0], xi[0])
    return jax.vmap(sample, in_axes=(img_ax, pt_ax, pt_ax))(img, yi, xi)

  lead = len(batch)
  image = image.reshape((1,) * (lead - (image.ndim - 3)) + image.shape)
  y0 = y0.reshape((1,) * (lead - (y0.ndim - 1)) + y0.shape)
  x0 = x0.reshape(y0.shape)
  quads = sample(image, y0, x0)  # [..., P, 2, 2, C]
  top = quads[..., 0, 0, :] * (1.0 - fx) + quads[..., 0, 1, :] * fx
  bot = quads[..., 1, 0, :] * (1.0 - fx) + quads[..., 1, 1, :] * fx
  return top * (1.0 - fy) + bot * fy


def clip_responsibility(
    flow: Array,
    flow_valid: Array,
    vertices_t: Array,
    vertices_nbr: Optional[Array],
    hand_valid: Array,
    temperature: float = 2.0,
    robust: bool = False,
    robust_threshold: float = 3.0,
) -> Tuple[Array, Array]:
  """Responsibility of frame t averaged over neighbour offsets (paper: +-3).

  For each offset k and hand n, a homography is fit from the hand vertices
  at frame t to dst, where dst = v + flow_k(v) (flow bilinearly sampled at
  the vertices, the paper's procedure) or, if ``vertices_nbr`` is given,
  dst = vertices_nbr (direct vertex correspondence, which the paper reports
  as worse). Vertices that are non-finite or outside [0, W-1] x [0, H-1] at
  frame t are excluded from the fit. R_k is Eq. 1 with hands whose fit failed
  excluded; R is the mean of R_k over offsets with flow_valid. With no valid
  offset at all, R is all background.

  Args:
    flow: [..., K, H, W, 2] flow from frame t to each neighbour.
    flow_valid: [..., K] bool, False where the neighbour is outside the clip.
    vertices_t: [..., N, V, 2] hand vertices (x, y) at frame t.
    vertices_nbr: None or [..., K, N, V, 2] vertices in each neighbour.
    hand_valid: [..., N] bool.
    temperature: Eq. 1 temperature.
    robust: use fit_homography_robust (RANSAC + IRLS) instead of the DLT.
    robust_threshold: inlier threshold in pixels for the robust fit.

  Returns:
    R [..., H, W, N + 1] and ok [..., K, N] (fit succeeded, offset valid
    and hand valid).

  Batching: pass batches through the leading dims rather than jax.vmap.
  Under vmap the per-pixel pass loses its lax.cond boundary (the predicate
  becomes batched) and XLA splits the packed hand pairs again: the result
  is the same but on CPU the pass became ~8x slower (measured).
  """
  flow = _check_flow(flow)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0; got {temperature}")
  if flow.ndim < 4:
    raise ValueError(f"flow must be [..., K, H, W, 2]; got {flow.shape}")
  height, width = flow.shape[-3], flow.shape[-2]
  vertices_t = jnp.asarray(vertices_t, jnp.float32)
  if vertices_t.ndim < 3 or vertices_t.shape[-1] != 2:
    raise ValueError(f"vertices_t must be [..., N, V, 2]; got "
                     f"{vertices_t.shape}")
  n_hands, n_verts = vertices_t.shape[-3], vertices_t.shape[-2]
  flow_valid = jnp.asarray(flow_valid, bool)
  hand_valid = jnp.asarray(hand_valid, bool)

  src = vertices_t[..., None, :, :, :]  # [..., 1, N, V, 2]
  inside = (jnp.all(jnp.isfinite(vertices_t), axis=-1)
            & (vertices_t[..., 0] >= 0) & (vertices_t[..., 0] <= width - 1)
            & (vertices_t[..., 1] >= 0) & (vertices_t[..., 1] <= height - 1))
  if vertices_nbr is None:
    flat_v = vertices_t.reshape(vertices_t.shape[:-3] + (1, n_hands * n_verts,
                                                         2))
    sampled = _finite_flow(bilinear_sample(flow, flat_v))  # [..., K, N*V, 2]
    dst = src + sampled.reshape(sampled.shape[:-2] + (n_hands, n_verts, 2))
  else:
    dst = jnp.asarray(vertices_nbr, jnp.float32)
    if dst.shape[-3:] != vertices_t.shape[-3:]:
      raise ValueError(f"vertices_nbr {dst.shape} must be [..., K, N, V, 2] "
                       f"matching vertices_t {vertices_t.shape}")
  src = jnp.broadcast_to(src, dst.shape)
  vert_ok = jnp.broadcast_to(inside[..., None, :, :], dst.shape[:-1])
  if robust:
    h, fit_ok, _ = fit_homography_robust(src, dst, valid=vert_ok,
                                         inlier_threshold=robust_threshold)
  else:
    h, fit_ok = fit_homography(src, dst, valid=vert_ok)
  ok = fit_ok & flow_valid[..., None] & hand_valid[..., None, :]

  wk = flow_valid.astype(jnp.float32)
  n_valid = jnp.sum(wk, axis=-1, keepdims=True)
  wk = wk / jnp.maximum(n_valid, 1.0)
  # Offsets unrolled (K is small and static): a weighted sum of fused
  # elementwise planes, no [..., K, H, W, N+1] intermediate.
  planes = _averaged_hand_planes(flow, h, ok, wk, temperature,
                                 jnp.any(n_valid > 0))
  # With no valid offset every weight is 0, the hand planes are 0 and R is
  # all background: no special case needed.
  return _with_background(planes), ok


def pseudo_labels(
    resp: Array,
    person_mask: Array,
    object_threshold: float = 0.5,
) -> Dict[str, Array]:
  """Training targets from a responsibility map (paper Sec. 3.3).

  Args:
    resp: R [..., H, W, N + 1] (channel 0 background).
    person_mask: [..., H, W] bool person segmentation.
    object_threshold: a pixel is object when the summed hand
      responsibility exceeds it and it is not person.

  Returns:
    dict with hand_resp [..., N, H, W] float32 (per-hand targets in [0, 1]),
    object_mask, person_mask and background_mask [..., H, W] bool, where
    background = not (object or person), and finite [..., H, W] bool: False
    where `resp` held a non-finite value (counted as 0 there).
  """
  resp = jnp.asarray(resp, jnp.float32)
  finite = jnp.all(jnp.isfinite(resp), axis=-1)
  resp = jnp.clip(jnp.where(jnp.isfinite(resp), resp, 0.0), 0.0, 1.0)
  person = jnp.asarray(person_mask, bool)
  if person.shape != resp.shape[:-1]:
    raise ValueError(f"person_mask {person.shape} must match resp "
                     f"{resp.shape[:-1]}")
  hand_resp = jnp.moveaxis(resp[..., 1:], -1, -3)
  obj = (jnp.sum(resp[..., 1:], axis=-1) > object_threshold) & ~person
  return dict(hand_resp=hand_resp, object_mask=obj, person_mask=person,
              background_mask=~(obj | person), finite=finite)
