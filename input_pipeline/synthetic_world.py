"""Procedural synthetic hand-object video world (NumPy + OpenCV, deterministic per seed).

The embedded default dataset for COHESIV (paper Sec. 3.1): short clips of arms ending in hands that move with
smooth planar (homography) motion, optionally holding a rigidly attached textured object, in front of a
textured background with static and moving distractors and optional global camera motion. Because every
surface is a textured plane warped by a known per-frame homography, the optical flow, its visibility, and
all masks are known exactly.

Conventions:
- Frames are RGB uint8 [T, H, W, 3]; masks are bool.
- Pixel coordinates are (x, y) = (column, row) with pixel centres at integer coordinates (OpenCV).
  flow[..., 0] = dx (along columns), flow[..., 1] = dy (along rows).
- Homographies act on homogeneous column vectors [x, y, 1]: p' = proj(M @ [x, y, 1]).
- `hand_homography[t, n]` maps hand-canonical coordinates (wrist at the origin, fingers pointing to -y,
  units of image pixels at the clip's resolution) to image coordinates at frame t. The motion of hand n and
  its held object from frame t to frame s is H_s @ inv(H_t).
- `camera_homography[t]` maps world coordinates (= image coordinates of a virtual camera at clip time 4.5,
  i.e. between frames 4 and 5) to image coordinates at frame t; it is the identity without camera motion.
- Boxes are [x0, y0, x1, y1] float32 with x0/y0 the smallest pixel column/row of the mask and x1/y1 the
  largest column/row plus one (so (x1 - x0) is the number of columns covered); all zeros for an empty mask.

Rendering: the scene is a back-to-front stack of layers; each layer is a canonical texture plus a canonical
alpha mask, warped into frame t by its own homography `transforms[t]` (cv2.warpPerspective, bilinear, alpha
thresholded at 0.5, so every pixel belongs to exactly one layer). A per-pixel layer-id map per frame gives
the exact flow from frame t to s at pixel p of layer L as proj(G_L(s) @ inv(G_L(t)) @ [p, 1]) - p, visible if
the layer id at the rounded target in frame s is L and the target lies inside the image. (OpenCV quantises
warp sample positions to 1/32 px, so rendered frames deviate from the exact geometry by at most ~1/64 px.)

Sizes: all lengths are defined at 128 x 128 and scale with s = min(H, W) / 128.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

OFFSETS = (-3, -2, -1, 1, 2, 3)  # K = 6 neighbour offsets.
MIDDLE_FRAMES = (3, 4, 5, 6)  # 0-based indices of the paper's 4th-7th frames (M = 4).
NUM_KEYPOINTS = 21  # Wrist, then thumb, index, middle, ring, little: 4 joints each, base to tip.
MIN_SIZE = 32

# Layer kinds.
KIND_BACKGROUND = 0
KIND_STATIC_DISTRACTOR = 1
KIND_MOVING_DISTRACTOR = 2
KIND_ARM = 3
KIND_HAND_BACK = 4  # Palm and the fingers behind a held object.
KIND_OBJECT = 5
KIND_HAND_FRONT = 6  # Fingers in front of a held object.

_TIME_CENTRE = 4.5  # Clip time at which motions are anchored (identity camera, reference arm pose).
_SUPERSAMPLE = 2  # Texels per image pixel for hand/object textures (smoother shape edges).
_HAND_SCALE = 1.6  # Hand size (wrist to middle fingertip is about 25 * 1.6 = 40 px at 128 x 128).
_HAND_BOX = (25.0, 30.0, 10.0)  # Canonical hand texture box [-25, 25] x [-30, 10] in units of hand size.
_OUTLIER_MIN_PX = 4.0  # Flow outliers add a random vector of length in [4, 16] * s px.
_OUTLIER_MAX_PX = 16.0


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Configuration of the synthetic world. All sizes in pixels; probabilities in [0, 1]."""
  height: int = 128
  width: int = 128
  num_frames: int = 10
  max_hands: int = 2  # N: arrays are padded to this many hands.
  min_hands: int = 1
  num_vertices: int = 128  # V >= 100 "hand vertices" per hand (like FrankMocap's projected mesh).
  p_hold: float = 0.8  # Probability a hand holds an object.
  p_camera_motion: float = 0.0  # Probability the clip has global camera motion (egocentric case).
  num_static_distractors: tuple[int, int] = (0, 2)  # Inclusive range.
  num_moving_distractors: tuple[int, int] = (0, 2)
  p_similar_motion: float = 0.3  # Prob. a moving distractor copies (approximately) a nearby hand's motion.
  flow_noise_sigma: float = 0.0  # Gaussian noise (px, per component) added to the *noisy* flow.
  flow_outlier_frac: float = 0.0  # Fraction of pixels whose noisy flow is replaced by an outlier.
  vertex_noise_sigma: float = 0.0  # Px noise (per component) on vertices/keypoints as an estimator makes.
  lighting_change: float = 0.0  # Max relative brightness change over the clip.
  # Scales per-frame motion (hands, held objects, moving distractors). At 2.5 (since dataset version 1.1.0)
  # hands translate 2.5-6.25 px per frame at 128 x 128 (2-5% of the width; for a view ~0.6 m wide at 30 fps,
  # 0.35-0.9 m/s), the moving hands COHESIV selects its clips for; 1.0 was the slower 1.0.0 world, in which
  # Eq. 1 with t = 2 px could not separate hands from background (see scripts/responsibility_quality.py).
  motion_scale: float = 2.5

  def __post_init__(self):
    def fail(field, msg):
      raise ValueError(f"WorldConfig.{field}={getattr(self, field)!r}: {msg}")

    for field in ("height", "width"):
      if not isinstance(getattr(self, field), (int, np.integer)) or getattr(self, field) < MIN_SIZE:
        fail(field, f"must be an integer >= {MIN_SIZE}")
    needed = max(MIDDLE_FRAMES) + max(OFFSETS) + 1
    if self.num_frames < needed:
      fail("num_frames", f"must be >= {needed} (middle frames {MIDDLE_FRAMES} with offsets {OFFSETS})")
    if self.max_hands < 1:
      fail("max_hands", "must be >= 1")
    if self.min_hands < 0:
      fail("min_hands", "must be >= 0")
    if self.max_hands < self.min_hands:
      fail("max_hands", f"must be >= min_hands={self.min_hands}")
    if self.num_vertices < 100:
      fail("num_vertices", "must be >= 100")
    for field in ("p_hold", "p_camera_motion", "p_similar_motion"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        fail(field, "must be a probability in [0, 1]")
    if not 0.0 <= self.flow_outlier_frac <= 1.0:
      fail("flow_outlier_frac", "must be in [0, 1]")
    for field in ("num_static_distractors", "num_moving_distractors"):
      rng = getattr(self, field)
      if len(rng) != 2 or rng[0] < 0 or rng[1] < rng[0]:
        fail(field, "must be an inclusive range (lo, hi) with 0 <= lo <= hi")
    for field in ("flow_noise_sigma", "vertex_noise_sigma", "motion_scale"):
      if not getattr(self, field) >= 0.0:
        fail(field, "must be >= 0")
    if not 0.0 <= self.lighting_change < 1.0:
      fail("lighting_change", "must be in [0, 1)")


@dataclasses.dataclass
class Layer:
  """One textured plane. `transforms[t]` maps texture (column, row) coordinates to image coordinates."""
  texture: np.ndarray  # [h, w, 3] float32 in [0, 255].
  alpha: np.ndarray  # [h, w] float32 in [0, 1].
  transforms: np.ndarray  # [T, 3, 3] float64.
  kind: int
  owner: int = -1  # Hand index for arm/hand/object layers (and the copied hand of a similar distractor).


# ----------------------------------------------------------------------------------------------------------
# Homography helpers (float64, 3x3).


def _translate(tx: float, ty: float) -> np.ndarray:
  return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _rotate(theta: float) -> np.ndarray:
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _scale(k: float) -> np.ndarray:
  return np.diag([k, k, 1.0])


def _perspective(a: float, b: float) -> np.ndarray:
  return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [a, b, 1.0]])


def apply_homography(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
  """proj(m @ [x, y, 1]) for pts [..., 2]; m [3, 3] or broadcastable [..., 3, 3]."""
  pts = np.asarray(pts, np.float64)
  hom = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,))], axis=-1)
  out = np.einsum("...ij,...j->...i", m, hom)
  return out[..., :2] / out[..., 2:3]


def _tex_to_canonical(offset: np.ndarray, supersample: float) -> np.ndarray:
  """Maps texel (column, row) to canonical coordinates: canonical = texel / ss - offset."""
  return np.array([[1.0 / supersample, 0.0, -offset[0]], [0.0, 1.0 / supersample, -offset[1]],
                   [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------------
# Rendering and exact flow.


def render_layers(layers: Sequence[Layer], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Composites layers back to front.

  Returns:
    frames: [T, H, W, 3] float32 in [0, 255] (before lighting), layer_id: [T, H, W] int32 index into layers.
  """
  num_frames = layers[0].transforms.shape[0]
  frames = np.zeros((num_frames, height, width, 3), np.float32)
  layer_id = np.full((num_frames, height, width), -1, np.int32)
  for idx, layer in enumerate(layers):
    rgba = np.ascontiguousarray(np.concatenate([layer.texture, layer.alpha[..., None]], axis=-1), np.float32)
    th, tw = layer.alpha.shape
    corners = np.array([[-1.0, -1.0], [tw, -1.0], [tw, th], [-1.0, th]])
    for t in range(num_frames):
      # Warp only into the image box covered by the layer's texture (plus a 1-px guard for interpolation).
      m = layer.transforms[t]
      hom = np.concatenate([corners, np.ones((4, 1))], -1) @ m.T
      if np.all(hom[:, 2] > 1e-9):
        img = hom[:, :2] / hom[:, 2:3]
        x0 = int(np.clip(np.floor(img[:, 0].min()) - 1, 0, width))
        x1 = int(np.clip(np.ceil(img[:, 0].max()) + 2, 0, width))
        y0 = int(np.clip(np.floor(img[:, 1].min()) - 1, 0, height))
        y1 = int(np.clip(np.ceil(img[:, 1].max()) + 2, 0, height))
      else:  # Texture crosses the horizon: fall back to the full image.
        x0, x1, y0, y1 = 0, width, 0, height
      if x1 <= x0 or y1 <= y0:
        continue
      warped = cv2.warpPerspective(rgba, _translate(-x0, -y0) @ m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
      mask = warped[..., 3] > 0.5
      np.copyto(frames[t, y0:y1, x0:x1], warped[..., :3], where=mask[..., None])
      layer_id[t, y0:y1, x0:x1][mask] = idx
  if (layer_id < 0).any():
    raise RuntimeError("synthetic world: some pixel is covered by no layer (background too small)")
  return frames, layer_id


def exact_flow(transforms: np.ndarray, layer_id: np.ndarray, t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
  """Exact flow from frame t to frame s and its visibility.

  Args:
    transforms: [L, T, 3, 3] per-layer texture-to-image homographies.
    layer_id: [T, H, W] int layer index per pixel.
    t, s: source and target frame indices.

  Returns:
    flow [H, W, 2] float64 (dx, dy) and visible [H, W] bool.
  """
  _, height, width = layer_id.shape
  rel = transforms[:, s] @ np.linalg.inv(transforms[:, t])  # [L, 3, 3]
  ids = layer_id[t]
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  m = rel[ids]  # [H, W, 3, 3]
  den = m[..., 2, 0] * xs + m[..., 2, 1] * ys + m[..., 2, 2]
  tx = (m[..., 0, 0] * xs + m[..., 0, 1] * ys + m[..., 0, 2]) / den
  ty = (m[..., 1, 0] * xs + m[..., 1, 1] * ys + m[..., 1, 2]) / den
  flow = np.stack([tx - xs, ty - ys], axis=-1)
  qx, qy = np.rint(tx), np.rint(ty)
  inside = (den > 0) & (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
  qxi = np.clip(qx, 0, width - 1).astype(np.int64)
  qyi = np.clip(qy, 0, height - 1).astype(np.int64)
  visible = inside & (layer_id[s][qyi, qxi] == ids)
  return flow, visible


# ----------------------------------------------------------------------------------------------------------
# Textures and shapes.


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
  """Zero-mean, unit-ish std noise with features of about `cell` texels: [h, w, channels] float32."""
  gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
  grid = rng.standard_normal((gh, gw, channels)).astype(np.float32)
  out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
  return out.reshape(h, w, channels)


def _fill_poly(img: np.ndarray, pts: np.ndarray, value) -> None:
  cv2.fillPoly(img, [np.round(np.asarray(pts) * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def _thick_polyline(img: np.ndarray, pts: np.ndarray, width: float, value) -> None:
  """Capsule chain through pts (texel units) with the given full width."""
  p16 = np.round(np.asarray(pts) * 16).astype(np.int32)
  thick = max(1, int(round(width)))
  for a, b in zip(p16[:-1], p16[1:]):
    cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), value, thick, cv2.LINE_8, shift=4)
  for p in p16:
    cv2.circle(img, tuple(int(v) for v in p), int(round(width * 8)), value, -1, cv2.LINE_8, shift=4)


def _edge_shading(alpha: np.ndarray, width_texels: float, depth: float) -> np.ndarray:
  """Multiplicative shading darkening towards mask edges: [h, w, 1] in [1 - depth, 1]."""
  dist = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
  ramp = np.clip(dist / max(width_texels, 1e-3), 0.0, 1.0)
  shade = 1.0 - depth * (1.0 - ramp) ** 2
  return cv2.GaussianBlur(shade, (0, 0), 0.7)[..., None].astype(np.float32)


def _random_colour(rng: np.random.Generator, saturated: bool) -> np.ndarray:
  hue = rng.uniform(0, 180)
  sat = rng.uniform(120, 230) if saturated else rng.uniform(20, 90)
  val = rng.uniform(110, 240) if saturated else rng.uniform(90, 210)
  hsv = np.array([[[hue, sat, val]]], np.float32)
  return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
  light = np.array([232.0, 196.0, 170.0])
  dark = np.array([92.0, 62.0, 46.0])
  u = rng.uniform()
  return (light * (1 - u) + dark * u + rng.normal(0, 6, 3)).astype(np.float32)


def _shape_polygon(rng: np.random.Generator, radius: float) -> tuple[str, np.ndarray]:
  """A random shape outline centred at the origin (canonical units): ellipse, polygon, rectangle, bottle."""
  kind = rng.choice(["ellipse", "polygon", "rectangle", "bottle"])
  angle = rng.uniform(0, np.pi)
  if kind == "ellipse":
    a, b = radius, radius * rng.uniform(0.45, 1.0)
    th = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    pts = np.stack([a * np.cos(th), b * np.sin(th)], -1)
  elif kind == "polygon":
    n = rng.integers(3, 8)
    th = np.sort(rng.uniform(0, 2 * np.pi, n))
    th = th + np.linspace(0, 2 * np.pi, n, endpoint=False) - th  # Roughly even spacing ...
    th += rng.uniform(-0.35, 0.35, n) * (2 * np.pi / n)  # ... with jitter, stays convex-ish.
    r = radius * rng.uniform(0.75, 1.0, n)
    pts = np.stack([r * np.cos(th), r * np.sin(th)], -1)
  elif kind == "rectangle":
    a, b = radius, radius * rng.uniform(0.35, 0.9)
    pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
  else:  # Bottle: body plus neck.
    a, b = radius, radius * rng.uniform(0.3, 0.45)
    nb = b * 0.45
    pts = np.array([[-a, -b], [0.35 * a, -b], [0.55 * a, -nb], [a, -nb], [a, nb], [0.55 * a, nb],
                    [0.35 * a, b], [-a, b]])
  return str(kind), pts @ _rotate(angle)[:2, :2].T


def _object_layer_data(rng: np.random.Generator, radius: float, ss: float, s: float) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
  """Textured random shape centred at canonical (0, 0). Returns texture, alpha, tex->canonical."""
  _, outline = _shape_polygon(rng, radius)
  half = int(np.ceil((radius + 2) * ss))
  size = 2 * half + 1
  offset = np.array([half / ss, half / ss])  # canonical = texel / ss - offset
  alpha = np.zeros((size, size), np.float32)
  _fill_poly(alpha, (outline + offset) * ss, 1.0)
  base = _random_colour(rng, saturated=True)
  pattern = rng.choice(["stripes", "checker", "blobs", "label"])
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / ss
  if pattern == "stripes":
    th = rng.uniform(0, np.pi)
    period = rng.uniform(9, 14) * s
    p = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(th) + ys * np.sin(th)) / period)
  elif pattern == "checker":
    period = rng.uniform(8, 12) * s
    p = 0.5 + 0.5 * np.sin(np.pi * xs / period) * np.sin(np.pi * ys / period)
  elif pattern == "blobs":
    p = 0.5 + 0.35 * _smooth_noise(rng, size, size, 7 * s * ss)[..., 0]
  else:  # A band ("label") across the object.
    th = rng.uniform(0, np.pi)
    d = (xs - half / ss) * np.cos(th) + (ys - half / ss) * np.sin(th)
    p = 1.0 / (1.0 + np.exp(-(radius * 0.3 - np.abs(d)) / (1.2 * s)))
  second = _random_colour(rng, saturated=rng.uniform() < 0.5)
  p = np.clip(p, 0, 1)[..., None]
  tex = base * (1 - p) + second * p
  tex = tex + 6.0 * _smooth_noise(rng, size, size, 5 * s * ss)
  tex = tex * _edge_shading(alpha, 2.0 * ss, 0.3)
  # Band-limit (about 0.7 px) so that resampling the rendered frames is accurate.
  tex = cv2.GaussianBlur(tex.astype(np.float32), (0, 0), 0.7 * ss)
  return np.clip(tex, 0, 255).astype(np.float32), alpha, _tex_to_canonical(offset, ss)


# ----------------------------------------------------------------------------------------------------------
# Hand model.


@dataclasses.dataclass
class _HandModel:
  keypoints: np.ndarray  # [21, 2] canonical.
  palm: np.ndarray  # [P, 2] palm outline, canonical.
  thenar: np.ndarray  # [2, 2] capsule from the wrist area to the thumb base.
  thenar_width: float
  fingers: list[np.ndarray]  # 5 chains [4, 2] (thumb first), canonical, drawn from the palm joint.
  finger_widths: np.ndarray  # [5]
  palm_centre: np.ndarray  # [2]
  size: float


def _hand_geometry(rng: np.random.Generator, s: float, holding: bool, front: np.ndarray) -> _HandModel:
  """Palm, thumb and 4 fingers with random curl; canonical wrist at origin, fingers towards -y.

  Fingers in front of a held object (front[f], thumb first) curl less so that they lie across it.
  """
  size = rng.uniform(0.9, 1.15) * s * _HAND_SCALE
  ts = rng.choice([-1.0, 1.0])  # Thumb side (handedness).
  pw = rng.uniform(0.92, 1.08)
  palm = np.array([[-4.6, 0.8], [4.6, 0.8], [6.2, -5.5], [6.0, -12.0], [3.4, -13.6], [-3.4, -13.6],
                   [-6.0, -12.0], [-6.2, -5.5]]) * np.array([pw, 1.0]) * size
  mcp = np.array([[4.5, -12.6], [1.5, -13.5], [-1.5, -13.3], [-4.4, -12.3]]) * np.array([ts * pw, 1.0]) * size
  lengths = np.array([10.5, 12.0, 11.0, 8.8]) * size * rng.uniform(0.9, 1.1)
  widths = np.array([3.3, 3.4, 3.2, 2.8]) * size
  spread = np.deg2rad(np.array([9.0, 1.0, -6.0, -13.0]) * rng.uniform(0.6, 1.6) + rng.normal(0, 2.5, 4))
  fingers = []
  for f in range(4):
    if holding:
      curl = rng.uniform(0.15, 0.6) if front[f + 1] else rng.uniform(0.35, 0.95)
    else:
      curl = rng.uniform(0.0, 0.55)
    ang = ts * spread[f]
    d = np.array([np.sin(ang), -np.cos(ang)])
    perp = np.array([-d[1], d[0]])
    cum = np.cumsum(np.deg2rad([70.0, 95.0, 55.0]) * curl)
    seg = lengths[f] * np.array([0.45, 0.30, 0.25])
    lateral = rng.normal(0, 0.15)
    pts = [mcp[f]]
    for i in range(3):
      pts.append(pts[-1] + d * seg[i] * np.cos(cum[i]) + perp * seg[i] * np.sin(cum[i]) * lateral)
    fingers.append(np.array(pts))
  # Thumb: CMC, MCP, IP, tip, bending towards the fingers when curled.
  cmc = np.array([ts * 4.2, -2.5]) * size
  thumb_curl = rng.uniform(0.3, 1.0) if holding else rng.uniform(0.0, 0.6)
  base_ang = np.deg2rad(rng.uniform(35, 60))
  seg = np.array([4.6, 4.0, 3.4]) * size
  pts = [cmc]
  ang = base_ang
  for i in range(3):
    d = np.array([ts * np.sin(ang), -np.cos(ang)])
    pts.append(pts[-1] + d * seg[i])
    ang -= np.deg2rad(35.0) * thumb_curl
  thumb = np.array(pts)
  chains = [thumb] + fingers
  keypoints = np.concatenate([np.zeros((1, 2))] + chains, axis=0)
  return _HandModel(
      keypoints=keypoints, palm=palm, thenar=np.array([[ts * 1.5, -1.0], cmc]) * np.array([1.0, 1.0]),
      thenar_width=5.0 * size, fingers=chains, finger_widths=np.concatenate([[3.9 * size], widths]),
      palm_centre=np.array([0.0, -7.5]) * size, size=size)


# ----------------------------------------------------------------------------------------------------------
# Motions.


def _hand_motion(rng: np.random.Generator, wrist: np.ndarray, theta0: float, palm_centre: np.ndarray, s: float,
                 motion_scale: float, times: np.ndarray) -> np.ndarray:
  """Smooth homographies [T, 3, 3] canonical -> world: translation, rotation, scale, mild perspective."""
  speed = rng.uniform(1.0, 2.5) * s * motion_scale
  direction = rng.uniform(0, 2 * np.pi)
  vel = speed * np.array([np.cos(direction), np.sin(direction)])
  acc = rng.normal(0, 0.12, 2) * s * motion_scale
  omega = np.deg2rad(rng.uniform(1.0, 3.0)) * rng.choice([-1, 1]) * motion_scale
  kappa = rng.uniform(-0.02, 0.02) * motion_scale
  sigma0 = rng.uniform(0.95, 1.05)
  a0, b0 = rng.uniform(-0.003, 0.003, 2) / s
  a1, b1 = rng.uniform(-0.0006, 0.0006, 2) / s * motion_scale
  out = []
  for tp in times:
    c = wrist + vel * tp + 0.5 * acc * tp**2
    persp = _translate(*palm_centre) @ _perspective(a0 + a1 * tp, b0 + b1 * tp) @ _translate(*-palm_centre)
    out.append(_translate(*c) @ _rotate(theta0 + omega * tp) @ _scale(sigma0 * np.exp(kappa * tp)) @ persp)
  return np.stack(out)


def _free_motion(rng: np.random.Generator, centre: np.ndarray, s: float, motion_scale: float,
                 times: np.ndarray) -> np.ndarray:
  """Smooth similarity motion [T, 3, 3] of a canonical object centred at the origin, placed at `centre`."""
  speed = rng.uniform(0.8, 2.5) * s * motion_scale
  direction = rng.uniform(0, 2 * np.pi)
  vel = speed * np.array([np.cos(direction), np.sin(direction)])
  theta0 = rng.uniform(0, 2 * np.pi)
  omega = np.deg2rad(rng.uniform(-4.0, 4.0)) * motion_scale
  kappa = rng.uniform(-0.02, 0.02) * motion_scale
  return np.stack([_translate(*(centre + vel * tp)) @ _rotate(theta0 + omega * tp) @ _scale(np.exp(kappa * tp))
                   for tp in times])


def _camera_motion(rng: np.random.Generator, height: int, width: int, s: float, times: np.ndarray) -> np.ndarray:
  """Smooth camera homographies [T, 3, 3] world -> image, identity at clip time 4.5."""
  centre = np.array([width / 2.0, height / 2.0])
  speed = rng.uniform(0.5, 2.0) * s
  direction = rng.uniform(0, 2 * np.pi)
  vel = speed * np.array([np.cos(direction), np.sin(direction)])
  omega = np.deg2rad(rng.uniform(-1.0, 1.0))
  kappa = rng.uniform(-0.01, 0.01)
  pa, pb = rng.uniform(-2e-4, 2e-4, 2) / s
  out = []
  for tp in times:
    m = (_translate(*(centre + vel * tp)) @ _rotate(omega * tp) @ _scale(np.exp(kappa * tp))
         @ _perspective(pa * tp, pb * tp) @ _translate(*-centre))
    out.append(m / m[2, 2])
  return np.stack(out)


def _arm_motion(shoulder: np.ndarray, wrists: np.ndarray, ref_wrist: np.ndarray) -> np.ndarray:
  """Similarities about the shoulder taking the reference wrist to each frame's wrist: [T, 3, 3]."""
  r0 = ref_wrist - shoulder
  out = []
  for w in wrists:
    r = w - shoulder
    phi = np.arctan2(r[1], r[0]) - np.arctan2(r0[1], r0[0])
    k = np.linalg.norm(r) / np.linalg.norm(r0)
    out.append(_translate(*shoulder) @ _rotate(phi) @ _scale(k) @ _translate(*-shoulder))
  return np.stack(out)


# ----------------------------------------------------------------------------------------------------------
# Scene assembly.


def _background_layer(rng: np.random.Generator, height: int, width: int, s: float, margin: int,
                      cams: np.ndarray) -> Layer:
  h, w = height + 2 * margin, width + 2 * margin
  base = _random_colour(rng, saturated=False)
  tex = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
  tex += 25.0 * _smooth_noise(rng, h, w, 40 * s, 1) + 5.0 * _smooth_noise(rng, h, w, 14 * s, 3)
  tex += 6.0 * _smooth_noise(rng, h, w, 5 * s, 1)
  struct = np.zeros((h, w, 3), np.float32)
  # A table edge / wall boundary and a few soft rectangles (tiles, papers, shelves).
  if rng.uniform() < 0.8:
    y0 = rng.uniform(0.2, 0.8) * h
    slope = rng.uniform(-0.3, 0.3)
    poly = np.array([[0, y0], [w, y0 + slope * w], [w, h + 5], [0, h + 5]])
    _fill_poly(struct, poly, tuple(float(v) for v in (_random_colour(rng, False) - base)))
  for _ in range(rng.integers(3, 9)):
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rw, rh = rng.uniform(4, 30) * s, rng.uniform(4, 30) * s
    rect = np.array([[-rw, -rh], [rw, -rh], [rw, rh], [-rw, rh]]) @ _rotate(rng.uniform(0, np.pi))[:2, :2].T
    _fill_poly(struct, rect + [cx, cy], tuple(float(v) for v in rng.normal(0, 30, 3)))
  tex += cv2.GaussianBlur(struct, (0, 0), 1.5 * s)
  tex = np.clip(tex, 0, 255).astype(np.float32)
  alpha = np.ones((h, w), np.float32)
  transforms = np.stack([c @ _translate(-margin, -margin) for c in cams])
  return Layer(tex, alpha, transforms, KIND_BACKGROUND)


def _arm_layer(rng: np.random.Generator, height: int, width: int, s: float, margin: int, shoulder: np.ndarray,
               ref_wrist: np.ndarray, hand_size: float, skin: np.ndarray, transforms_world: np.ndarray,
               cams: np.ndarray, owner: int) -> Layer:
  h, w = height + 2 * margin, width + 2 * margin
  off = np.array([margin, margin], np.float64)
  u = ref_wrist - shoulder
  length = np.linalg.norm(u)
  u = u / length
  n = np.array([-u[1], u[0]])
  w_sh = rng.uniform(1.5, 2.0) * 8.5 * hand_size / 2
  w_wr = 8.5 * hand_size / 2
  start = shoulder - u * 8 * s
  end = ref_wrist + u * 4 * hand_size
  poly = np.array([start + n * w_sh, end + n * w_wr, end - n * w_wr, start - n * w_sh]) + off
  alpha = np.zeros((h, w), np.float32)
  _fill_poly(alpha, poly, 1.0)
  sleeve = _random_colour(rng, saturated=rng.uniform() < 0.5)
  skin_frac = rng.uniform(0.0, 0.7)  # Fraction of the arm near the wrist that is bare skin.
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  along = ((xs - off[0] - shoulder[0]) * u[0] + (ys - off[1] - shoulder[1]) * u[1]) / length
  bare = 1.0 / (1.0 + np.exp(-(along - (1.0 - skin_frac)) * length / (1.2 * s)))
  tex = sleeve * (1 - bare[..., None]) + skin * bare[..., None]
  tex = tex + 7.0 * _smooth_noise(rng, h, w, 8 * s, 1)
  tex = tex * _edge_shading(alpha, 3.0 * s, 0.35)
  transforms = np.stack([c @ a @ _translate(-margin, -margin) for c, a in zip(cams, transforms_world)])
  return Layer(np.clip(tex, 0, 255).astype(np.float32), alpha, transforms, KIND_ARM, owner)


def _hand_layers(rng: np.random.Generator, model: _HandModel, skin: np.ndarray, front: np.ndarray, s: float,
                 hand_h: np.ndarray, owner: int) -> tuple[Layer, Layer | None, np.ndarray]:
  """Back (palm + back fingers) and front (front fingers) hand layers, plus the full canonical hand mask."""
  ss = _SUPERSAMPLE
  half_w, top, bottom = _HAND_BOX
  offset = np.array([half_w, top]) * model.size
  h, w = int(np.ceil((top + bottom) * model.size * ss)), int(np.ceil(2 * half_w * model.size * ss))
  tex2can = _tex_to_canonical(offset, ss)

  def to_tex(p):
    return (np.asarray(p) + offset) * ss

  back = np.zeros((h, w), np.float32)
  _fill_poly(back, to_tex(model.palm), 1.0)
  _thick_polyline(back, to_tex(model.thenar), model.thenar_width * ss, 1.0)
  front_alpha = np.zeros((h, w), np.float32)
  for f, chain in enumerate(model.fingers):
    target = front_alpha if front[f] else back
    _thick_polyline(target, to_tex(chain), model.finger_widths[f] * ss, 1.0)
  full = np.maximum(back, front_alpha)

  def texture(alpha):
    tex = skin + 6.0 * _smooth_noise(rng, h, w, 8 * s * ss, 1) + 3.0 * _smooth_noise(rng, h, w, 5 * s * ss, 3)
    tex = tex * _edge_shading(alpha, 1.6 * s * ss, 0.3)
    return np.clip(tex, 0, 255).astype(np.float32)

  transforms = hand_h @ tex2can
  back_layer = Layer(texture(back), back, transforms, KIND_HAND_BACK, owner)
  front_layer = None
  if front_alpha.any():
    front_layer = Layer(texture(front_alpha), front_alpha, transforms.copy(), KIND_HAND_FRONT, owner)
  # Full-hand mask in canonical coordinates for vertex sampling.
  return back_layer, front_layer, full


def _sample_vertices(rng: np.random.Generator, full_mask: np.ndarray, num: int, size: float) -> np.ndarray:
  """num points spread over the canonical hand mask: [num, 2] canonical."""
  ys, xs = np.nonzero(full_mask > 0.5)
  replace = len(xs) < num
  idx = rng.choice(len(xs), size=num, replace=replace)
  texel = np.stack([xs[idx], ys[idx]], -1) + rng.uniform(-0.5, 0.5, (num, 2))
  offset = np.array([_HAND_BOX[0], _HAND_BOX[1]]) * size
  return texel / _SUPERSAMPLE - offset


def _pick_hand_placement(rng: np.random.Generator, height: int, width: int, s: float,
                         others: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Shoulder outside an image border and a palm centre inside the image, away from other hands."""
  best = None
  for _ in range(20):
    side = rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])  # bottom, left, right, top
    along = rng.uniform(0.15, 0.85)
    out = 12 * s
    if side == 0:
      shoulder = np.array([along * width, height + out])
    elif side == 1:
      shoulder = np.array([-out, along * height])
    elif side == 2:
      shoulder = np.array([width + out, along * height])
    else:
      shoulder = np.array([along * width, -out])
    palm = np.array([rng.uniform(0.22, 0.78) * width, rng.uniform(0.22, 0.78) * height])
    reach = np.linalg.norm(palm - shoulder)
    sep = min([np.linalg.norm(palm - o) for o in others], default=np.inf)
    score = min(sep / (50 * s), 1.0) + min(reach / (0.35 * min(height, width)), 1.0)
    if best is None or score > best[0]:
      best = (score, shoulder, palm)
    if score >= 2.0:
      break
  return best[1], best[2]


def _box(mask: np.ndarray) -> np.ndarray:
  """[x0, y0, x1, y1] of a [..., H, W] mask stack (x1/y1 exclusive); zeros where empty."""
  rows = mask.any(axis=-1)  # [..., H]
  cols = mask.any(axis=-2)  # [..., W]
  h, w = mask.shape[-2:]
  nonempty = rows.any(axis=-1)
  y0 = np.argmax(rows, axis=-1)
  y1 = h - np.argmax(rows[..., ::-1], axis=-1)
  x0 = np.argmax(cols, axis=-1)
  x1 = w - np.argmax(cols[..., ::-1], axis=-1)
  box = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
  return np.where(nonempty[..., None], box, 0.0).astype(np.float32)


def _outlier_vectors(rng: np.random.Generator, shape: tuple[int, ...], s: float) -> np.ndarray:
  length = rng.uniform(_OUTLIER_MIN_PX, _OUTLIER_MAX_PX, shape) * s
  angle = rng.uniform(0, 2 * np.pi, shape)
  return np.stack([length * np.cos(angle), length * np.sin(angle)], -1)


def generate_clip(config: WorldConfig, seed: int) -> dict[str, np.ndarray]:
  """Generates one clip. Deterministic in (config, seed). See the module docstring for conventions.

  Returns a dict with T = num_frames, N = max_hands, V = num_vertices, M = 4, K = 6:
    frames [T,H,W,3] uint8 RGB; flow, flow_exact [M,K,H,W,2] float32 (flow from MIDDLE_FRAMES[m] to
    MIDDLE_FRAMES[m] + OFFSETS[k]); flow_visible [M,K,H,W] bool; hand_vertices(_exact) [T,N,V,2];
    keypoints [T,N,21,2]; hand_valid, holding [N] bool; person_mask [T,H,W]; person_instance_mask,
    hand_mask, object_mask [T,N,H,W]; hand_box, object_box [T,N,4]; query_point [T,N,2];
    hand_homography [T,N,3,3]; camera_homography [T,3,3]; distractor_mask, moving_distractor_mask [T,H,W].
  """
  return generate_clip_with_layers(config, seed)[0]


def generate_clip_with_layers(config: WorldConfig, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                       list[Layer]]:
  """`generate_clip` plus the per-frame layer-id map [T, H, W] int32 and the layers (for tests and tools)."""
  cfg = config
  if seed < 0:
    raise ValueError(f"generate_clip: seed={seed} must be >= 0")
  scene_seq, noise_seq = np.random.SeedSequence([int(seed), 0x5EED]).spawn(2)
  rng = np.random.default_rng(scene_seq)
  nrng = np.random.default_rng(noise_seq)
  height, width, num_t, n_max = cfg.height, cfg.width, cfg.num_frames, cfg.max_hands
  s = min(height, width) / 128.0
  times = np.arange(num_t, dtype=np.float64) - _TIME_CENTRE
  margin = int(np.ceil(0.3 * max(height, width)))

  if rng.uniform() < cfg.p_camera_motion:
    cams = _camera_motion(rng, height, width, s, times)
  else:
    cams = np.broadcast_to(np.eye(3), (num_t, 3, 3)).copy()

  layers = [_background_layer(rng, height, width, s, margin, cams)]

  # People (hands): sampled first so distractors can be placed near them.
  num_hands = int(rng.integers(cfg.min_hands, cfg.max_hands + 1))
  holding = np.zeros(n_max, bool)
  hand_world = np.zeros((n_max, num_t, 3, 3))
  models: list[_HandModel] = []
  palms: list[np.ndarray] = []
  person_layers: list[list[Layer]] = []
  vertices_canon = np.zeros((n_max, cfg.num_vertices, 2))
  for n in range(num_hands):
    holding[n] = rng.uniform() < cfg.p_hold
    front = np.zeros(5, bool)  # Thumb and fingers drawn in front of the held object.
    if holding[n]:
      front[1:] = rng.uniform(size=4) < 0.6
      if not front[1:].any():
        front[1 + rng.integers(4)] = True
      front[0] = rng.uniform() < 0.5
    model = _hand_geometry(rng, s, bool(holding[n]), front)
    shoulder, palm = _pick_hand_placement(rng, height, width, s, palms)
    palms.append(palm)
    u = palm - shoulder
    u /= np.linalg.norm(u)
    rel = np.deg2rad(rng.uniform(-25, 25))
    u = _rotate(rel)[:2, :2] @ u
    theta0 = np.arctan2(u[0], -u[1])  # Rotation taking canonical "up" (0, -1) to u.
    wrist = palm - u * np.linalg.norm(model.palm_centre)
    hand_world[n] = _hand_motion(rng, wrist, theta0, model.palm_centre, s, cfg.motion_scale, times)
    ref_wrist = apply_homography(_translate(*wrist) @ _rotate(theta0), np.zeros(2))
    wrists = apply_homography(hand_world[n], np.zeros((num_t, 2)))
    arm_world = _arm_motion(shoulder, wrists, ref_wrist)
    skin = _skin_colour(rng)
    hand_img = cams @ hand_world[n]
    arm = _arm_layer(rng, height, width, s, margin, shoulder, ref_wrist, model.size, skin, arm_world, cams, n)
    back_layer, front_layer, full = _hand_layers(rng, model, skin, front, s, hand_img, n)
    vertices_canon[n] = _sample_vertices(rng, full, cfg.num_vertices, model.size)
    stack = [arm, back_layer]
    if holding[n]:
      radius = rng.uniform(5.0, 12.0) * model.size
      tex, alpha, tex2can = _object_layer_data(rng, radius, _SUPERSAMPLE, s)
      # Centred among the fingers, beyond the knuckles, so the palm stays partly visible.
      centre = np.array([rng.uniform(-4, 4), -13.5 - rng.uniform(0.4, 0.9) * radius / model.size]) * model.size
      place = _translate(*centre) @ tex2can
      stack.append(Layer(tex, alpha, hand_img @ place, KIND_OBJECT, n))
    if front_layer is not None:
      stack.append(front_layer)
    models.append(model)
    person_layers.append(stack)

  # Distractors: static ones move with the camera only; moving ones have their own motion or copy a hand's.
  for _ in range(int(rng.integers(cfg.num_static_distractors[0], cfg.num_static_distractors[1] + 1))):
    tex, alpha, tex2can = _object_layer_data(rng, rng.uniform(8, 20) * s, 1.0, s)
    centre = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height])
    place = _translate(*centre) @ _rotate(rng.uniform(0, 2 * np.pi)) @ tex2can
    layers.append(Layer(tex, alpha, cams @ place, KIND_STATIC_DISTRACTOR))
  for _ in range(int(rng.integers(cfg.num_moving_distractors[0], cfg.num_moving_distractors[1] + 1))):
    tex, alpha, tex2can = _object_layer_data(rng, rng.uniform(8, 18) * s, 1.0, s)
    if num_hands > 0 and rng.uniform() < cfg.p_similar_motion:
      n = int(rng.integers(num_hands))
      angle = rng.uniform(0, 2 * np.pi)
      centre = palms[n] + rng.uniform(24, 36) * s * np.array([np.cos(angle), np.sin(angle)])
      centre = np.clip(centre, [0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
      # The hand's world motion relative to clip time 4.5, plus a small drift (approximately similar).
      anchor = _hand_anchor(hand_world[n], times)
      drift = rng.normal(0, 0.15, 2) * s * cfg.motion_scale
      place = _translate(*centre) @ _rotate(rng.uniform(0, 2 * np.pi)) @ tex2can
      world = np.stack([hw @ np.linalg.inv(anchor) @ _translate(*(drift * tp)) @ place
                        for hw, tp in zip(hand_world[n], times)])
      owner = n
    else:
      centre = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
      world = _free_motion(rng, centre, s, cfg.motion_scale, times) @ tex2can
      owner = -1
    layers.append(Layer(tex, alpha, cams @ world, KIND_MOVING_DISTRACTOR, owner))

  order = rng.permutation(num_hands)
  for n in order:
    layers.extend(person_layers[n])

  frames_f, layer_id = render_layers(layers, height, width)

  # Lighting: smooth per-frame gain with max relative change `lighting_change`.
  if cfg.lighting_change > 0:
    omega, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
    gain = 1.0 + cfg.lighting_change * np.sin(omega * times + phase)
    frames_f = frames_f * gain[:, None, None, None].astype(np.float32)
  frames = np.clip(np.rint(frames_f), 0, 255).astype(np.uint8)

  # Exact flow and visibility for each middle frame and offset.
  transforms = np.stack([l.transforms for l in layers])  # [L, T, 3, 3]
  m_count, k_count = len(MIDDLE_FRAMES), len(OFFSETS)
  flow_exact = np.zeros((m_count, k_count, height, width, 2), np.float32)
  flow_visible = np.zeros((m_count, k_count, height, width), bool)
  for mi, t in enumerate(MIDDLE_FRAMES):
    for ki, off in enumerate(OFFSETS):
      f, v = exact_flow(transforms, layer_id, t, t + off)
      flow_exact[mi, ki] = f
      flow_visible[mi, ki] = v

  # Masks.
  kinds = np.array([l.kind for l in layers])
  owners = np.array([l.owner for l in layers])
  kind_map = kinds[layer_id]
  owner_map = owners[layer_id]
  is_hand = (kind_map == KIND_HAND_BACK) | (kind_map == KIND_HAND_FRONT)
  is_person = is_hand | (kind_map == KIND_ARM)
  hand_ids = np.arange(n_max)[None, :, None, None]
  owner_b = owner_map[:, None]
  hand_mask = is_hand[:, None] & (owner_b == hand_ids)
  person_instance_mask = is_person[:, None] & (owner_b == hand_ids)
  object_mask = (kind_map == KIND_OBJECT)[:, None] & (owner_b == hand_ids)
  distractor_mask = (kind_map == KIND_STATIC_DISTRACTOR) | (kind_map == KIND_MOVING_DISTRACTOR)

  # Vertices and keypoints.
  hand_valid = np.arange(n_max) < num_hands
  hand_homography = np.zeros((num_t, n_max, 3, 3))
  vertices = np.zeros((num_t, n_max, cfg.num_vertices, 2))
  keypoints = np.zeros((num_t, n_max, NUM_KEYPOINTS, 2))
  for n in range(num_hands):
    hand_homography[:, n] = cams @ hand_world[n]
    vertices[:, n] = apply_homography(hand_homography[:, n, None], vertices_canon[n][None])
    keypoints[:, n] = apply_homography(hand_homography[:, n, None], models[n].keypoints[None])
  valid_b = hand_valid[None, :, None, None]
  noisy_vertices = vertices + nrng.normal(0, 1, vertices.shape) * cfg.vertex_noise_sigma * valid_b
  noisy_keypoints = keypoints + nrng.normal(0, 1, keypoints.shape) * cfg.vertex_noise_sigma * valid_b
  query_point = np.where(hand_valid[None, :, None], noisy_vertices.mean(axis=2), 0.0)

  # Noisy flow as an estimator would give: Gaussian noise plus a fraction of gross outliers.
  flow = flow_exact.copy()
  if cfg.flow_noise_sigma > 0:
    flow += nrng.standard_normal(flow.shape, dtype=np.float32) * np.float32(cfg.flow_noise_sigma)
  if cfg.flow_outlier_frac > 0:
    where = np.nonzero(nrng.random(flow.shape[:-1], dtype=np.float32) < cfg.flow_outlier_frac)
    flow[where] = flow_exact[where] + _outlier_vectors(nrng, (len(where[0]),), s)

  clip = {
      "frames": frames,
      "flow": flow.astype(np.float32),
      "flow_exact": flow_exact,
      "flow_visible": flow_visible,
      "hand_vertices": noisy_vertices.astype(np.float32),
      "hand_vertices_exact": vertices.astype(np.float32),
      "keypoints": noisy_keypoints.astype(np.float32),
      "hand_valid": hand_valid,
      "holding": holding,
      "person_mask": person_instance_mask.any(axis=1),
      "person_instance_mask": person_instance_mask,
      "hand_mask": hand_mask,
      "object_mask": object_mask,
      "hand_box": _box(hand_mask),
      "object_box": _box(object_mask),
      "query_point": query_point.astype(np.float32),
      "hand_homography": hand_homography.astype(np.float32),
      "camera_homography": cams.astype(np.float32),
      "distractor_mask": distractor_mask,
      "moving_distractor_mask": kind_map == KIND_MOVING_DISTRACTOR,
  }
  return clip, layer_id, layers


def _hand_anchor(hand_world: np.ndarray, times: np.ndarray) -> np.ndarray:
  """The hand's world homography interpolated to clip time 4.5 (mean of the two middle frames)."""
  i = int(np.searchsorted(times, 0.0))
  m = 0.5 * (hand_world[i - 1] / hand_world[i - 1][2, 2] + hand_world[i] / hand_world[i][2, 2])
  return m
