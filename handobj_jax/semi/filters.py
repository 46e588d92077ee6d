"""Pseudo-label selection by spatial and temporal consistency (Semi-Hand-Object Sec. 5.1.1-5.1.2, Fig. 5).

Every filter is a small pure JAX function, batched over leading dims and jit-safe; its threshold is an
argument, and the values used by the jobs live in one place, `configs/handobj_pose_semi.py`
(`config.filters`). Degenerate input (all joints on one point, zero boxes, NaN predictions) gives finite
values and a rejection, never NaN.

Inputs per frame, as the pseudo-label job writes them (`handobj_jax.semi.tta`):
  joints2d [..., 21, 2]  full-image pixels (HO-3D joint order, `models.mano.JOINT21_NAMES`);
  joints3d [..., 21, 3]  root-relative, metres, in the frame's camera frame (OpenCV: x right, y down);
  verts3d  [..., 778, 3] root-relative, same frame;
  theta    [..., 48]     axis-angle MANO pose (3 global + 45 articulation), radians;
  beta     [..., 10]     MANO shape;
  hand_box [..., 4]      the given (annotated or detected) hand box [x0, y0, x1, y1], pixels.

Spatial filters (Sec. 5.1.1), per frame:
  * Camera: the weak-perspective camera Pi* = (s, t) minimising sum_j ||s X_j[:2] + t - x_j||^2 (Eq. 7) in
    closed form: with centred point sets, s = <X', x'> / <X', X'>, t = mean(x) - s mean(X[:2]). This is the
    exact minimiser that SMPLify's optimiser approaches; a negative or vanishing s (no valid fit: the 2D
    pose is the mirror image of the 3D one) is flagged and rejected (`require_camera`).
  * IoU: the box of the re-projected mesh, s V[:2] + t, scaled by `box_scale` (the same enlargement the
    given boxes carry; 1.0 for the synthetic video's tight hand boxes, where the ground truth's IoU is
    0.81 at the 5th percentile and 0.95 at the median: the weak-perspective approximation) against the given box; kept when
    IoU >= `min_iou` (paper: 0.6).
  * Pose re-projection: both 2D joint sets (the network's J2D and Pi* J3D) are centred on their mean and
    divided by their root-mean-square distance to it, so each becomes a set of unit RMS radius whatever the
    image or hand size; the distance is the RMS over joints of the per-joint L2 distance between the two
    normalised sets (0 = identical shapes; two unrelated shapes land near sqrt(2)). Kept when <= `max_reproj`
    (paper: t_p = 0.65).
  * Biomechanical: bone lengths of the 20 bones of the five finger chains (wrist -> MCP -> PIP -> DIP -> tip)
    divided by the palm length |middle MCP - wrist|; kept when the smallest is >= `min_bone` (paper: 0.1).
    Joint angles: at each of the 15 finger joints (MCP, PIP, DIP of the four fingers; the thumb's three
    joints) the flexion angle between the incoming and the outgoing bone (0 = straight). For the four
    fingers it is signed: positive when the finger bends towards the palm (the side of the palm normal
    n = (index MCP - wrist) x (little MCP - wrist) for a right hand, negated for a left hand),
    negative for hyper-extension. The thumb's angles are unsigned (its flexion plane is not the palm's).
    Kept when every angle is <= `angle_max_deg` and the eight MCP and PIP angles of the four fingers are
    >= `angle_min_deg` - `angle_tol_deg` (paper: (0, 90) degrees). The tolerance admits the few degrees of
    hyper-extension that real straight fingers show; DIP joints have no lower bound, because fingertip
    pads pressed on an object hyper-extend them (the synthetic world's grasps reach -54 degrees there).

Temporal filters (Sec. 5.1.2), on frames sorted within their clip:
  * Smoothness, between a frame and its predecessor in the clip (the first frame: its successor; a clip
    of one frame has no neighbour and is rejected):
      2D: the per-joint RMS distance between the two frames' 2D joints, each set centred on its mean,
          divided by the current frame's given-box side (max of width and height); kept when <= `max_j2d`.
          Centring removes the hand's motion across the image, so the filter measures the change of pose
          (paper: t_j = 0.5 without units; see the config for the value used here and why);
      theta: the root-mean-square difference of the 45 articulation components (radians), the global
          rotation excluded because camera motion changes it; kept when <= `max_theta` (paper: 0.01).
  * Shape: among the frames of a clip that passed everything else (the confident set C), beta_bar = mean
    beta, sigma_C = sqrt(mean ||beta_t - beta_bar||^2); frames with ||beta_t - beta_bar|| > `shape_sigmas`
    sigma_C are removed (paper: 2). A clip with fewer than 2 confident frames keeps them.

`select` runs them in the paper's order (spatial -> temporal smoothness -> shape) and returns each filter's
mask and the removal counts in that order.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax import viz
from handobj_jax.geometry import crop as crop_lib

Array = jax.Array
_EPS = 1e-8

# The five finger chains from the wrist to the tip (thumb, index, middle, ring, little) in HO-3D joint order.
FINGER_CHAINS = viz.HAND_CHAINS["ho3d"]
WRIST, INDEX_MCP, MIDDLE_MCP, LITTLE_MCP = 0, 1, 4, 7
# Flexion angles with a lower bound: the MCP and PIP of the index, middle, ring and little fingers.
_LOWER_BOUNDED = np.asarray([3, 4, 6, 7, 9, 10, 12, 13])
FILTER_NAMES = ("finite", "camera", "iou", "reprojection", "bone_length", "joint_angle", "smooth_2d",
                "smooth_theta", "shape")


def _finite_rows(x: Array, axes: tuple[int, ...]) -> Array:
  return jnp.all(jnp.isfinite(x), axis=axes)


def _clean(x: Array) -> Array:
  return jnp.where(jnp.isfinite(x), x, 0.0)


# ---- Spatial -----------------------------------------------------------------------------------------


def weak_perspective_fit(joints3d: Array, joints2d: Array) -> tuple[Array, Array, Array]:
  """Pi* of Eq. 7: [..., J, 3], [..., J, 2] -> scale [...], translation [..., 2], valid [...] (s > 0)."""
  x3 = _clean(jnp.asarray(joints3d, jnp.float32))[..., :2]
  x2 = _clean(jnp.asarray(joints2d, jnp.float32))
  m3 = jnp.mean(x3, axis=-2, keepdims=True)
  m2 = jnp.mean(x2, axis=-2, keepdims=True)
  a, b = x3 - m3, x2 - m2
  den = jnp.sum(a * a, axis=(-1, -2))
  num = jnp.sum(a * b, axis=(-1, -2))
  ok = den > _EPS
  s = jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)
  t = m2[..., 0, :] - s[..., None] * m3[..., 0, :]
  return s, t, ok & (s > 0)


def weak_perspective_project(scale: Array, trans: Array, points3d: Array) -> Array:
  """s X[:2] + t: [...], [..., 2], [..., P, 3] -> [..., P, 2]."""
  return scale[..., None, None] * points3d[..., :2] + trans[..., None, :]


def box_iou(a: Array, b: Array) -> Array:
  """IoU of boxes [..., 4] = [x0, y0, x1, y1]; 0 where either box is empty or non-finite."""
  a, b = _clean(jnp.asarray(a, jnp.float32)), _clean(jnp.asarray(b, jnp.float32))
  iw = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0.0)
  ih = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
  inter = iw * ih
  area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0.0) * jnp.maximum(x[..., 3] - x[..., 1], 0.0)
  union = area(a) + area(b) - inter
  return jnp.where(union > _EPS, inter / jnp.where(union > _EPS, union, 1.0), 0.0)


def normalize_2d(points: Array) -> Array:
  """Centre [..., J, 2] on its mean and scale to unit RMS radius (a collapsed set stays at 0)."""
  c = points - jnp.mean(points, axis=-2, keepdims=True)
  rms = jnp.sqrt(jnp.mean(jnp.sum(c * c, axis=-1), axis=-1))
  return c / jnp.maximum(rms, _EPS)[..., None, None]


def reprojection_distance(joints2d: Array, reprojected: Array) -> Array:
  """Per-joint RMS distance [...] between the normalised sets (module docstring); sqrt(2) if one collapses."""
  a = normalize_2d(_clean(jnp.asarray(joints2d, jnp.float32)))
  b = normalize_2d(_clean(jnp.asarray(reprojected, jnp.float32)))
  d = jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1), axis=-1))
  collapsed = (jnp.max(jnp.abs(a), axis=(-1, -2)) == 0) | (jnp.max(jnp.abs(b), axis=(-1, -2)) == 0)
  return jnp.where(collapsed, jnp.sqrt(2.0), d)


def bone_lengths(joints3d: Array) -> Array:
  """The 20 finger-chain bone lengths [..., 20] divided by the palm length |middle MCP - wrist|."""
  j = _clean(jnp.asarray(joints3d, jnp.float32))
  chains = np.asarray(FINGER_CHAINS)
  bones = j[..., chains[:, 1:], :] - j[..., chains[:, :-1], :]                 # [..., 5, 4, 3]
  lengths = jnp.linalg.norm(bones + 0.0, axis=-1).reshape(j.shape[:-2] + (20,))
  palm = jnp.linalg.norm(j[..., MIDDLE_MCP, :] - j[..., WRIST, :], axis=-1)
  return jnp.where(palm[..., None] > _EPS, lengths / jnp.maximum(palm, _EPS)[..., None], 0.0)


def _safe_norm(v: Array) -> Array:
  sq = jnp.sum(v * v, axis=-1)
  return jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * (sq > 0)


def flexion_angles(joints3d: Array, side: str = "right") -> Array:
  """Flexion angles [..., 15] in degrees at the 3 joints of each finger chain (thumb, index, middle, ring,
  little); signed for the four fingers (positive towards the palm), unsigned for the thumb (module doc)."""
  if side not in ("right", "left"):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  j = _clean(jnp.asarray(joints3d, jnp.float32))
  chains = np.asarray(FINGER_CHAINS)
  bones = j[..., chains[:, 1:], :] - j[..., chains[:, :-1], :]                 # [..., 5, 4, 3]
  inc, out = bones[..., :3, :], bones[..., 1:, :]                              # [..., 5, 3, 3]
  cos = jnp.sum(inc * out, axis=-1)
  cross = jnp.cross(inc, out)
  sin_abs = _safe_norm(cross)
  unsigned = jnp.degrees(jnp.arctan2(sin_abs, cos))
  normal = jnp.cross(j[..., INDEX_MCP, :] - j[..., WRIST, :], j[..., LITTLE_MCP, :] - j[..., WRIST, :])
  if side == "left":
    normal = -normal
  # Bending towards the palm rotates the incoming direction towards n: the same sense as inc x n.
  sense = jnp.sum(cross * jnp.cross(inc, normal[..., None, None, :]), axis=-1)
  sign = jnp.where(sense < 0, -1.0, 1.0)
  signed = unsigned * sign
  is_thumb = (np.arange(5) == 0)[:, None]
  angles = jnp.where(is_thumb, unsigned, signed)
  return angles.reshape(j.shape[:-2] + (15,))


def spatial_masks(pred: Mapping[str, Array], cfg: Any, side: str = "right") -> dict[str, Array]:
  """The spatial filters' keep-masks [...] (each on its own, not chained) and the fitted camera.

  `cfg`: `config.filters` (min_iou, box_scale, max_reproj, min_bone, angle_min_deg, angle_tol_deg,
  angle_max_deg)."""
  j2d, j3d, v3d = pred["joints2d"], pred["joints3d"], pred["verts3d"]
  finite = (_finite_rows(j2d, (-1, -2)) & _finite_rows(j3d, (-1, -2)) & _finite_rows(v3d, (-1, -2))
            & _finite_rows(pred["theta"], (-1,)) & _finite_rows(pred["beta"], (-1,))
            & _finite_rows(pred["hand_box"], (-1,)))
  s, t, cam_ok = weak_perspective_fit(j3d, j2d)
  mesh_box = crop_lib.scale_boxes(crop_lib.boxes_of(weak_perspective_project(s, t, _clean(v3d))),
                                  float(cfg.box_scale))
  iou = box_iou(mesh_box, pred["hand_box"])
  reproj = reprojection_distance(j2d, weak_perspective_project(s, t, _clean(j3d)))
  bones = bone_lengths(j3d)
  angles = flexion_angles(j3d, side)
  lo = float(cfg.angle_min_deg) - float(cfg.angle_tol_deg)
  return dict(
      finite=finite, camera=cam_ok | (not cfg.get("require_camera", True)), iou=iou >= float(cfg.min_iou),
      reprojection=reproj <= float(cfg.max_reproj), bone_length=jnp.min(bones, axis=-1) >= float(cfg.min_bone),
      joint_angle=jnp.all(angles <= float(cfg.angle_max_deg), axis=-1) & jnp.all(
          angles[..., _LOWER_BOUNDED] >= lo, axis=-1),
      values_iou=iou, values_reproj=reproj, values_min_bone=jnp.min(bones, axis=-1),
      values_angle_min=jnp.min(angles[..., _LOWER_BOUNDED], axis=-1), values_angle_max=jnp.max(angles, axis=-1),
      cam_scale=s, cam_trans=t)


# ---- Temporal ----------------------------------------------------------------------------------------


def neighbour_index(clip_ids: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
  """For flat frames [N], the index of each frame's temporal neighbour in the same clip: its predecessor
  in frame order, for a clip's first frame its successor, and -1 for a clip of one frame. Host-side ints."""
  clip_ids, frame_index = np.asarray(clip_ids), np.asarray(frame_index)
  order = np.lexsort((frame_index, clip_ids))
  nb = np.full(len(order), -1, np.int64)
  same_prev = np.zeros(len(order), bool)
  same_prev[1:] = clip_ids[order[1:]] == clip_ids[order[:-1]]
  nb[order[1:][same_prev[1:]]] = order[:-1][same_prev[1:]]
  first = ~same_prev
  has_next = np.zeros(len(order), bool)
  has_next[:-1] = same_prev[1:]
  take_next = first & has_next
  nb[order[take_next]] = order[np.nonzero(take_next)[0] + 1]
  return nb


def smoothness(joints2d: Array, theta: Array, hand_box: Array, neighbour: Array) -> tuple[Array, Array]:
  """Per-frame 2D-pose and theta changes [N] against `neighbour` [N] (module docstring); inf without one."""
  j2d = _clean(jnp.asarray(joints2d, jnp.float32))
  th = _clean(jnp.asarray(theta, jnp.float32))[:, 3:]
  box = _clean(jnp.asarray(hand_box, jnp.float32))
  nb = jnp.asarray(neighbour)
  has = nb >= 0
  idx = jnp.where(has, nb, 0)
  centred = j2d - jnp.mean(j2d, axis=-2, keepdims=True)
  side = jnp.maximum(jnp.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), _EPS)
  d = centred - centred[idx]
  d2 = jnp.sqrt(jnp.mean(jnp.sum(d * d, axis=-1), axis=-1)) / side
  dth = jnp.sqrt(jnp.mean((th - th[idx]) ** 2, axis=-1))
  return jnp.where(has, d2, jnp.inf), jnp.where(has, dth, jnp.inf)


def shape_mask(beta: Array, clip_ids: Array, confident: Array, num_clips: int,
               sigmas: float) -> tuple[Array, Array]:
  """Keep-mask [N] of the shape filter among `confident` frames, and each frame's deviation / sigma_C."""
  b = _clean(jnp.asarray(beta, jnp.float32))
  w = jnp.asarray(confident, jnp.float32)
  cid = jnp.asarray(clip_ids)
  count = jax.ops.segment_sum(w, cid, num_clips)
  mean = jax.ops.segment_sum(b * w[:, None], cid, num_clips) / jnp.maximum(count, 1.0)[:, None]
  dev = jnp.linalg.norm(b - mean[cid] + 0.0, axis=-1)
  var = jax.ops.segment_sum(dev ** 2 * w, cid, num_clips) / jnp.maximum(count, 1.0)
  sigma = jnp.sqrt(var)[cid]
  ratio = jnp.where(sigma > _EPS, dev / jnp.maximum(sigma, _EPS), 0.0)
  keep = (ratio <= sigmas) | (count[cid] < 2)
  return keep & confident, ratio


# ---- All of it ---------------------------------------------------------------------------------------


def select(pred: Mapping[str, Any], clip_ids: np.ndarray, frame_index: np.ndarray, cfg: Any,
           side: str = "right", use_spatial: bool = True, use_temporal: bool = True) -> dict[str, Any]:
  """Runs the filters in the paper's order over N frames of any number of clips.

  Returns dict(keep [N] bool, masks {name: [N] bool, each filter on its own}, removed [(name, count)] in
  order (a frame counts against the first filter that rejects it), values {name: [N] float}). The finite
  check always runs; `use_spatial` / `use_temporal` False skip those groups (Table 4's ablations)."""
  clip_ids = np.asarray(clip_ids)
  _, dense_ids = np.unique(clip_ids, return_inverse=True)
  num_clips = int(dense_ids.max()) + 1 if len(dense_ids) else 1
  sp = jax.device_get(spatial_masks({k: jnp.asarray(v) for k, v in pred.items()}, cfg, side))
  nb = neighbour_index(dense_ids, frame_index)
  d2, dth = jax.device_get(smoothness(pred["joints2d"], pred["theta"], pred["hand_box"], nb))
  masks = {name: np.asarray(sp[name]) for name in FILTER_NAMES[:6]}
  masks["smooth_2d"] = np.asarray(d2 <= float(cfg.max_j2d))
  masks["smooth_theta"] = np.asarray(dth <= float(cfg.max_theta))
  order = ["finite"]
  if use_spatial:
    order += ["camera", "iou", "reprojection", "bone_length", "joint_angle"]
  if use_temporal:
    order += ["smooth_2d", "smooth_theta"]
  keep = np.ones(len(clip_ids), bool)
  removed = []
  for name in order:
    removed.append((name, int(np.sum(keep & ~masks[name]))))
    keep &= masks[name]
  shape_keep, ratio = jax.device_get(shape_mask(pred["beta"], dense_ids, keep, num_clips,
                                                float(cfg.shape_sigmas)))
  if use_temporal:
    masks["shape"] = np.asarray(shape_keep) | ~keep
    removed.append(("shape", int(np.sum(keep & ~np.asarray(shape_keep)))))
    keep = keep & np.asarray(shape_keep)
  values = {k[len("values_"):]: np.asarray(v) for k, v in sp.items() if k.startswith("values_")}
  values.update(smooth_2d=np.asarray(d2), smooth_theta=np.asarray(dth), shape_ratio=np.asarray(ratio))
  return dict(keep=keep, masks=masks, removed=removed, values=values)
