"""Synthetic 3D hand-object world: a MANO hand grasping a primitive object.

Stands in for HO-3D (labelled frames) and Something-Something (unlabelled
video with hand / object boxes) for the Semi-Hand-Object pose model.

Frames, units and conventions:
  * Camera frame: OpenCV (x right, y down, z forward), metres. Intrinsics K is
    3x3 with u = fx x / z + cx, v = fy y / z + cy; pixel (x, y) = (column, row)
    with pixel centres at integer coordinates. HO-3D's ground truth is in the
    OpenGL camera frame (y up, z backwards); `opengl_to_opencv` converts points
    or poses between the two (the map flips y and z and is its own inverse).
  * Hand: MANO (`handobj_jax.models.mano`), 778 vertices, 21 joints in HO-3D
    order (16 MANO joints: wrist, index 1-3, middle 4-6, little 7-9, ring 10-12,
    thumb 13-15; then fingertips thumb, index, middle, ring, little at the
    configured tip vertex ids). `mano_pose` [48] is axis-angle (global
    rotation, then 15 joints) in the camera frame; with
    `World3DConfig.flat_hand_mean = True` (default) it is the absolute joint
    rotation, otherwise it is relative to MANO's `hands_mean`, i.e. exactly
    what `mano_forward(model, pose, betas, trans, flat_hand_mean=...)` expects.
    `mano_trans` [3] is MANO's translation; joints3d / verts3d are the output of
    that call.
  * Object: a box, cylinder (axis = object z) or ellipsoid centred at the
    object-frame origin with full extents `obj_dims` [3]. Camera-frame points
    are X_cam = obj_rot @ X_obj + obj_trans. `obj_points3d` [P, 3] are the model
    points (object frame): the mesh's distinct vertices followed by area-uniform
    surface samples, so their axis-aligned bounding box is exactly the shape's.
    `obj_diameter` = diagonal of the model points' bounding box (ADD threshold).
  * Object control points (21, the HO-3D protocol of the Semi-Hand-Object
    code): corners, edge midpoints and centre of the model points' axis-aligned
    bounding box [lo, hi] in the object frame, in this order:
      0-7   corners; corner 4 i + 2 j + k = (x_i, y_j, z_k), index 0 = lo, 1 = hi
            (so z changes fastest);
      8-11  midpoints of the 4 edges along x, for (j, k) = 00, 01, 10, 11;
      12-15 midpoints of the 4 edges along y, for (i, k) = 00, 01, 10, 11;
      16-19 midpoints of the 4 edges along z, for (i, j) = 00, 01, 10, 11;
      20    centre.
  * Boxes [x0, y0, x1, y1] float32 pixels: `obj_box` is the box of the 21
    projected control points (HO-3D protocol); `hand_box` is the tight box of
    the 778 projected hand vertices (what a re-projected mesh box is compared
    with in the pseudo-label IoU filter). Neither is clipped to the image; the
    generator re-samples the camera until both lie inside the image.
  * Masks [H, W] bool: visible pixels of the hand / object (disjoint by
    construction: one mesh id per pixel from the z-buffer).

Images are [H, W, 3] uint8 RGB: Lambert-shaded meshes over a smooth random
colour-noise background. Objects carry a colour field tied to their own frame
(`World3DConfig.object_colour_field`): each vertex's colour mixes the object's
albedo with 0.5 + 0.5 * (its unit direction from the object centre), so the
object's orientation, and with it the order of its control points, can be seen
in the image. A plain-coloured box, cylinder or ellipsoid is symmetric: its
pose would be ambiguous, and the pose network's object branch could not learn
it (measured: with field 0, its control-point error did not fall in 2000 steps).
Everything is deterministic per integer seed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from handobj_jax.geometry.camera_frames import opengl_to_opencv  # pylint: disable=unused-import  (re-exported)
from input_pipeline import rasterizer

OBJECT_TYPES = ("box", "cylinder", "ellipsoid")
NUM_CONTROL_POINTS = 21
# MANO joint indices (HO-3D order) used to build the palm frame.
_WRIST, _INDEX_MCP, _MIDDLE_MCP, _LITTLE_MCP, _RING_MCP, _THUMB_CMC = (
    0, 1, 4, 7, 10, 13)
# Finger chains (joint indices, proximal to distal) and their child joint /
# tip used to get the bone direction at rest.
_FINGERS = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "little": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}


@dataclasses.dataclass(frozen=True)
class World3DConfig:
  """Parameters of the synthetic 3D hand-object world.

  Attributes:
    height: image rows.
    width: image columns.
    side: 'right' or 'left' MANO hand.
    mano_path: MANO model file (.pkl) or None for the built-in synthetic
      MANO-shaped model (`synthetic_mano_model`).
    flat_hand_mean: convention of the stored `mano_pose` (see module doc).
    tip_ids: MANO vertex ids of the fingertips (thumb, index, middle, ring,
      little); None = HO-3D's ids from the MANO module.
    obj_types: object shapes to sample from (subset of OBJECT_TYPES).
    obj_size_range: (min, max) full extent of each object axis, metres.
    num_model_points: P, object model points stored per example.
    distance_range: (min, max) camera distance to the hand-object centre, m.
    focal_range: (min, max) focal length as a multiple of the image width.
    principal_jitter: std of the principal point offset from the image centre
      as a fraction of the image size.
    look_at_jitter: std (metres) of the look-at point around the hand-object
      centre.
    beta_std: std of the MANO shape coefficients (clipped at 2.5 std).
    flexion_range: (min, max) overall grasp closure in radians per finger
      joint (middle segment; proximal / distal are scaled from it).
    grasp_gap_range: (min, max) clearance between the palm's joint plane and
      the object surface along the palm normal, metres.
    ambient_range: (min, max) ambient light fraction.
    min_visible_pixels: minimum visible pixels of hand and of object.
    max_attempts: camera / scene re-samples before giving up (ValueError).
    seq_key_interval: frames between motion keyframes in sequences.
    seq_max_rotation_deg: max rotation of the hand-object pair between two
      keyframes (degrees).
    seq_max_translation: max translation between two keyframes (metres).
    seq_grasp_jitter: std (radians) of the finger pose change per keyframe.
    object_colour_field: weight w of the object's orientation colour field:
      vertex colour = (1 - w) albedo + w (0.5 + 0.5 unit(v_obj)); 0 = plain.
  """
  height: int = 128
  width: int = 128
  side: str = "right"
  mano_path: str | None = None
  flat_hand_mean: bool = True
  tip_ids: tuple[int, ...] | None = None
  obj_types: tuple[str, ...] = OBJECT_TYPES
  obj_size_range: tuple[float, float] = (0.04, 0.12)
  num_model_points: int = 1000
  distance_range: tuple[float, float] = (0.4, 0.8)
  focal_range: tuple[float, float] = (1.0, 1.5)
  principal_jitter: float = 0.03
  look_at_jitter: float = 0.02
  beta_std: float = 1.0
  flexion_range: tuple[float, float] = (0.2, 1.0)
  grasp_gap_range: tuple[float, float] = (0.012, 0.025)
  ambient_range: tuple[float, float] = (0.3, 0.5)
  min_visible_pixels: int = 12
  max_attempts: int = 50
  seq_key_interval: int = 8
  seq_max_rotation_deg: float = 25.0
  seq_max_translation: float = 0.03
  seq_grasp_jitter: float = 0.12
  object_colour_field: float = 0.6

  def __post_init__(self):
    def fail(field, msg):
      raise ValueError(f"World3DConfig.{field}: {msg} (got "
                       f"{getattr(self, field)!r})")

    for f in ("height", "width"):
      v = getattr(self, f)
      if not isinstance(v, (int, np.integer)) or v < 16:
        fail(f, "must be an integer >= 16")
    if self.side not in ("right", "left"):
      fail("side", "must be 'right' or 'left'")
    if (not self.obj_types or
        any(t not in OBJECT_TYPES for t in self.obj_types)):
      fail("obj_types", f"must be a non-empty subset of {OBJECT_TYPES}")
    if self.tip_ids is not None and len(self.tip_ids) != 5:
      fail("tip_ids", "must list 5 vertex ids or be None")
    for f in ("obj_size_range", "distance_range", "focal_range",
              "flexion_range", "grasp_gap_range", "ambient_range"):
      v = getattr(self, f)
      if (len(v) != 2 or not np.all(np.isfinite(v)) or v[0] > v[1]):
        fail(f, "must be a finite (min, max) pair with min <= max")
    for f in ("obj_size_range", "distance_range", "focal_range"):
      if getattr(self, f)[0] <= 0:
        fail(f, "must be positive")
    if self.distance_range[0] < 0.1:
      fail("distance_range", "min must be >= 0.1 m (near-plane clearance)")
    if not 0 <= self.ambient_range[0] <= self.ambient_range[1] <= 1:
      fail("ambient_range", "must lie in [0, 1]")
    if self.num_model_points < 64:
      fail("num_model_points", "must be >= 64 (mesh vertices come first)")
    for f in ("principal_jitter", "look_at_jitter", "beta_std",
              "seq_max_rotation_deg", "seq_max_translation",
              "seq_grasp_jitter"):
      v = getattr(self, f)
      if not np.isfinite(v) or v < 0:
        fail(f, "must be finite and >= 0")
    if self.min_visible_pixels < 0:
      fail("min_visible_pixels", "must be >= 0")
    if self.max_attempts < 1:
      fail("max_attempts", "must be >= 1")
    if self.seq_key_interval < 1:
      fail("seq_key_interval", "must be >= 1")
    if not 0.0 <= self.object_colour_field <= 1.0:
      fail("object_colour_field", "must lie in [0, 1]")


# ----------------------------------------------------------------------------
# Objects.


def _box_mesh(dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Box with 4 separate vertices per face (flat normals), 24 V, 12 F."""
  h = np.asarray(dims, np.float64) / 2
  verts, faces = [], []
  for axis in range(3):
    for sign in (-1.0, 1.0):
      u, w = [a for a in range(3) if a != axis]
      quad = []
      for su, sw in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        p = np.zeros(3)
        p[axis], p[u], p[w] = sign * h[axis], su * h[u], sw * h[w]
        quad.append(p)
      b = len(verts)
      # Wind counter-clockwise seen from outside (outward normals).
      if np.cross(quad[1] - quad[0], quad[2] - quad[0])[axis] * sign < 0:
        quad = quad[::-1]
      verts.extend(quad)
      faces.extend([[b, b + 1, b + 2], [b, b + 2, b + 3]])
  return np.array(verts), np.array(faces, np.int32)


def _cylinder_mesh(dims: np.ndarray, segments: int = 32
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Elliptic cylinder along z; side shares vertices, caps are separate."""
  rx, ry, hz = np.asarray(dims, np.float64) / 2
  ang = 2 * np.pi * np.arange(segments) / segments
  ring = np.stack([rx * np.cos(ang), ry * np.sin(ang)], 1)
  bottom = np.concatenate([ring, np.full((segments, 1), -hz)], 1)
  top = np.concatenate([ring, np.full((segments, 1), hz)], 1)
  verts = [bottom, top, bottom.copy(), top.copy(),
           np.array([[0, 0, -hz], [0, 0, hz]])]
  verts = np.concatenate(verts)
  i = np.arange(segments)
  j = (i + 1) % segments
  side = np.concatenate([np.stack([i, j, segments + j], 1),
                         np.stack([i, segments + j, segments + i], 1)])
  cb, ct = 4 * segments, 4 * segments + 1
  cap_b = np.stack([np.full(segments, cb), 2 * segments + j,
                    2 * segments + i], 1)
  cap_t = np.stack([np.full(segments, ct), 3 * segments + i,
                    3 * segments + j], 1)
  return verts, np.concatenate([side, cap_b, cap_t]).astype(np.int32)


def _ellipsoid_mesh(dims: np.ndarray, n_lat: int = 16, n_lon: int = 32
                   ) -> tuple[np.ndarray, np.ndarray]:
  """UV ellipsoid; n_lat even and n_lon % 4 == 0 put vertices on all six
  extreme points, so the vertices' bounding box equals the shape's."""
  h = np.asarray(dims, np.float64) / 2
  theta = np.pi * np.arange(1, n_lat) / n_lat
  phi = 2 * np.pi * np.arange(n_lon) / n_lon
  t, p = np.meshgrid(theta, phi, indexing="ij")
  body = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)],
                  -1).reshape(-1, 3)
  verts = np.concatenate([[[0, 0, 1]], body, [[0, 0, -1]]]) * h
  nb = len(verts) - 1
  faces = []
  j = np.arange(n_lon)
  jn = (j + 1) % n_lon
  faces.append(np.stack([np.zeros(n_lon, int), 1 + jn, 1 + j], 1))
  for r in range(n_lat - 2):
    a, b = 1 + r * n_lon, 1 + (r + 1) * n_lon
    faces.append(np.stack([a + j, a + jn, b + jn], 1))
    faces.append(np.stack([a + j, b + jn, b + j], 1))
  last = 1 + (n_lat - 2) * n_lon
  faces.append(np.stack([np.full(n_lon, nb), last + j, last + jn], 1))
  # Reverse to wind counter-clockwise seen from outside (outward normals).
  return verts, np.concatenate(faces)[:, ::-1].astype(np.int32)


def object_mesh(obj_type: int | str, dims: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
  """Mesh (verts [V, 3], faces [F, 3] int32) of a primitive in its frame."""
  name = OBJECT_TYPES[obj_type] if isinstance(obj_type, (int, np.integer)) \
      else obj_type
  dims = np.asarray(dims, np.float64)
  if dims.shape != (3,) or np.any(~np.isfinite(dims)) or np.any(dims <= 0):
    raise ValueError(f"object dims must be 3 positive extents, got {dims}")
  if name == "box":
    return _box_mesh(dims)
  if name == "cylinder":
    return _cylinder_mesh(dims)
  if name == "ellipsoid":
    return _ellipsoid_mesh(dims)
  raise ValueError(f"unknown object type {obj_type!r}; one of {OBJECT_TYPES}")


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
  """n area-uniform random points [n, 3] on a triangle mesh's surface."""
  tri = verts[faces]
  area = 0.5 * np.linalg.norm(
      np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  f = rng.choice(len(faces), size=n, p=area / area.sum())
  r1, r2 = rng.random(n), rng.random(n)
  s = np.sqrt(r1)
  w = np.stack([1 - s, s * (1 - r2), s * r2], 1)
  return np.einsum("nk,nkd->nd", w, tri[f])


def model_points(verts: np.ndarray, faces: np.ndarray, num: int,
                 rng: np.random.Generator) -> np.ndarray:
  """[num, 3] model points: distinct mesh vertices, then surface samples."""
  uniq = np.unique(np.round(verts, 9), axis=0)
  if len(uniq) > num:
    raise ValueError(f"num_model_points={num} is below the mesh's "
                     f"{len(uniq)} distinct vertices")
  return np.concatenate([uniq, sample_surface(verts, faces, num - len(uniq),
                                              rng)])


def control_points(points: np.ndarray) -> np.ndarray:
  """The 21 control points [..., 21, 3] of the points' axis-aligned box.

  Order (see module docstring): 8 corners (z fastest), 12 edge midpoints
  (edges along x, then y, then z), centre.
  """
  points = np.asarray(points, np.float64)
  lo, hi = points.min(axis=-2), points.max(axis=-2)
  mid = (lo + hi) / 2
  ext = np.stack([lo, hi], axis=-2)  # [..., 2, 3]
  out = []
  for i in range(2):
    for j in range(2):
      for k in range(2):
        out.append(np.stack([ext[..., i, 0], ext[..., j, 1], ext[..., k, 2]],
                            -1))
  for axis in range(3):
    others = [a for a in range(3) if a != axis]
    for a in range(2):
      for b in range(2):
        p = [None, None, None]
        p[axis] = mid[..., axis]
        p[others[0]] = ext[..., a, others[0]]
        p[others[1]] = ext[..., b, others[1]]
        out.append(np.stack(p, -1))
  out.append(mid)
  return np.stack(out, axis=-2)


def bbox_diameter(points: np.ndarray) -> float:
  """Diagonal of the axis-aligned bounding box of [P, 3] points."""
  points = np.asarray(points, np.float64)
  return float(np.linalg.norm(points.max(0) - points.min(0)))


def _support_half_extent(obj_type: str, dims: np.ndarray, rot: np.ndarray,
                         n: np.ndarray) -> float:
  """Half extent of the rotated object along unit direction n (world)."""
  d = rot.T @ n  # direction in the object frame
  h = dims / 2
  if obj_type == "box":
    return float(np.sum(np.abs(d) * h))
  if obj_type == "ellipsoid":
    return float(np.sqrt(np.sum((h * d) ** 2)))
  # Elliptic cylinder along z.
  return float(np.sqrt((h[0] * d[0]) ** 2 + (h[1] * d[1]) ** 2)
               + h[2] * abs(d[2]))


# ----------------------------------------------------------------------------
# MANO.


@functools.lru_cache(maxsize=4)
def _mano(side: str, path: str | None, tip_ids: tuple[int, ...] | None,
          flat_hand_mean: bool):
  """(model, jitted forward(pose, betas, trans) -> (verts, joints))."""
  import jax  # pylint: disable=g-import-not-at-top
  from handobj_jax.models import mano as mano_lib  # pylint: disable=g-import-not-at-top
  if path is None:
    model = mano_lib.synthetic_mano_model(side=side)
  else:
    model = mano_lib.load_mano(path, side)
  tips = mano_lib.HO3D_TIP_IDS if tip_ids is None else tuple(tip_ids)

  @jax.jit
  def forward(pose, betas, trans):
    return mano_lib.mano_forward(model, pose, betas, trans, tip_ids=tips,
                                 flat_hand_mean=flat_hand_mean)

  def run(pose, betas, trans):
    v, j = forward(np.asarray(pose, np.float32), np.asarray(betas, np.float32),
                   np.asarray(trans, np.float32))
    return np.asarray(v, np.float64), np.asarray(j, np.float64)

  return model, run


def mano_layer(side: str, path: str | None, tip_ids: tuple[int, ...], flat_hand_mean: bool):
  """(ManoModel, forward(pose, betas, trans) -> (verts, joints) float64), jitted and cached per arguments; the
  MANO layer real-data builders share with the synthetic world (path None: the synthetic model)."""
  return _mano(side, path, tuple(tip_ids), bool(flat_hand_mean))


def get_mano(config: World3DConfig):
  """(ManoModel, forward) for a config; forward(pose, betas, trans) uses the
  config's flat_hand_mean convention and returns float64 numpy arrays."""
  return _mano(config.side, config.mano_path,
               None if config.tip_ids is None else tuple(config.tip_ids),
               bool(config.flat_hand_mean))


def _unit(v: np.ndarray) -> np.ndarray:
  return v / max(float(np.linalg.norm(v)), 1e-12)


def _palm_frame(rest_joints: np.ndarray, side: str):
  """Palm centre, palm normal (towards the palm side) and finger direction
  from rest-pose joints. For a right hand the palm normal is
  (thumb side) x (finger direction); mirrored for a left hand."""
  j = rest_joints
  centre = np.mean(j[[_WRIST, _INDEX_MCP, _MIDDLE_MCP, _LITTLE_MCP,
                      _RING_MCP]], axis=0)
  finger_dir = _unit(j[_MIDDLE_MCP] - j[_WRIST])
  thumb_side = j[_INDEX_MCP] - j[_LITTLE_MCP]
  thumb_side = _unit(thumb_side - finger_dir * (thumb_side @ finger_dir))
  normal = np.cross(thumb_side, finger_dir)
  if side == "left":
    normal = -normal
  return centre, _unit(normal), finger_dir, thumb_side


def _grasp_pose(rng: np.random.Generator, rest_joints: np.ndarray,
                normal: np.ndarray, closure: float) -> np.ndarray:
  """[15, 3] absolute axis-angle finger rotations of a grasp.

  Each finger flexes about axis (bone x palm normal), which rotates the bone
  towards the palm side; small abduction about the palm normal and twist
  noise are added. The thumb flexes less and towards the palm.
  """
  pose = np.zeros((16, 3))
  for name, chain in _FINGERS.items():
    base = closure * rng.uniform(0.75, 1.25)
    if name == "thumb":
      angles = base * np.array([1.0, 0.5, 0.6])
    else:
      angles = base * np.array([0.8, 1.0, 0.7])
    for depth, jid in enumerate(chain):
      child = chain[depth + 1] if depth + 1 < len(chain) else None
      if child is None:
        d = rest_joints[jid] - rest_joints[chain[depth - 1]]
      else:
        d = rest_joints[child] - rest_joints[jid]
      d = _unit(d - normal * (d @ normal))
      axis = _unit(np.cross(d, normal))
      rot = axis * (angles[depth] + rng.normal(0, 0.05))
      if depth == 0:
        rot = rot + normal * rng.normal(0, 0.12)
      pose[jid] = rot
  return pose[1:]


# ----------------------------------------------------------------------------
# Camera, lighting, background.


def _look_at(cam_pos: np.ndarray, target: np.ndarray, up: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
  """World->camera (R, t) of an OpenCV camera at cam_pos looking at target;
  `up` (world) maps roughly to image up (-y)."""
  z = _unit(target - cam_pos)
  down = -up
  x = np.cross(down, z)
  if np.linalg.norm(x) < 1e-6:  # up parallel to the view direction
    x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9
                 else np.array([0.0, 1.0, 0.0]), z)
  x = _unit(x)
  y = np.cross(z, x)
  r = np.stack([x, y, z])
  return r, -r @ cam_pos


def _random_unit(rng: np.random.Generator) -> np.ndarray:
  return _unit(rng.normal(size=3))


def _intrinsics(rng: np.random.Generator, cfg: World3DConfig) -> np.ndarray:
  f = rng.uniform(*cfg.focal_range) * cfg.width
  fy = f * rng.uniform(0.98, 1.02)
  cx = (cfg.width - 1) / 2 + rng.normal(0, cfg.principal_jitter) * cfg.width
  cy = (cfg.height - 1) / 2 + rng.normal(0, cfg.principal_jitter) * cfg.height
  return np.array([[f, 0, cx], [0, fy, cy], [0, 0, 1]])


def smooth_noise_background(rng: np.random.Generator, height: int,
                            width: int) -> np.ndarray:
  """[H, W, 3] uint8 random smooth colour noise (a few octaves)."""
  img = np.zeros((height, width, 3), np.float32)
  base = rng.uniform(0.15, 0.85, size=3)
  for cells, amp in ((3, 0.35), (7, 0.18), (16, 0.08)):
    grid = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
    img += amp * cv2.resize(grid, (width, height),
                            interpolation=cv2.INTER_CUBIC)
  img = base + img
  # Partially desaturate so that hand and object stand out as in real scenes.
  gray = img.mean(axis=-1, keepdims=True)
  img = gray + rng.uniform(0.3, 0.7) * (img - gray)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _skin_albedo(rng: np.random.Generator) -> np.ndarray:
  tone = rng.uniform(0.35, 1.0)
  base = np.array([0.95, 0.72, 0.58]) * tone + rng.normal(0, 0.03, 3)
  return np.clip(base, 0.05, 1.0)


def _object_albedo(rng: np.random.Generator) -> np.ndarray:
  hsv = np.array([[[rng.uniform(0, 180), rng.uniform(120, 255),
                    rng.uniform(120, 255)]]], np.float32).astype(np.uint8)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255


# ----------------------------------------------------------------------------
# Scenes.


@dataclasses.dataclass
class _Scene:
  """Everything sampled for one hand-object scene (world = MANO rest frame,
  hand global rotation = identity, zero translation)."""
  obj_type: int
  dims: np.ndarray
  obj_verts: np.ndarray
  obj_faces: np.ndarray
  points: np.ndarray
  ctrl: np.ndarray
  betas: np.ndarray
  fingers: np.ndarray  # [15, 3] absolute axis-angle
  rest_joints: np.ndarray
  normal: np.ndarray
  obj_rot_w: np.ndarray  # object -> world
  obj_trans_w: np.ndarray
  centre_w: np.ndarray  # hand-object centre (look-at target)
  k: np.ndarray
  light: np.ndarray
  ambient: float
  hand_albedo: np.ndarray
  obj_albedo: np.ndarray
  background: np.ndarray


def _sample_scene(rng: np.random.Generator, cfg: World3DConfig,
                  forward) -> _Scene:
  """Samples hand shape / grasp, object and its placement, camera K, light."""
  type_name = cfg.obj_types[rng.integers(len(cfg.obj_types))]
  obj_type = OBJECT_TYPES.index(type_name)
  dims = rng.uniform(*cfg.obj_size_range, size=3)
  if type_name == "cylinder":  # round cross-section, free height
    dims[1] = dims[0]
  obj_verts, obj_faces = object_mesh(type_name, dims)
  points = model_points(obj_verts, obj_faces, cfg.num_model_points, rng)
  ctrl = control_points(points)
  betas = np.clip(rng.normal(0, cfg.beta_std, size=10),
                  -2.5 * cfg.beta_std, 2.5 * cfg.beta_std)
  rest_joints = _rest_joints(cfg, betas)
  centre, normal, finger_dir, _ = _palm_frame(rest_joints, cfg.side)
  size = float(np.max(dims))
  # Larger objects: more open hand.
  lo, hi = cfg.flexion_range
  size_frac = (size - cfg.obj_size_range[0]) / max(
      cfg.obj_size_range[1] - cfg.obj_size_range[0], 1e-9)
  closure = hi - (hi - lo) * (0.5 * size_frac + 0.5 * rng.random())
  fingers = _grasp_pose(rng, rest_joints, normal, closure)
  obj_rot = Rotation.random(random_state=rng.integers(2**31)).as_matrix()
  half = _support_half_extent(type_name, dims, obj_rot, normal)
  gap = rng.uniform(*cfg.grasp_gap_range)
  obj_trans = (centre + normal * (half + gap)
               + finger_dir * rng.uniform(0.0, 0.03))
  k = _intrinsics(rng, cfg)
  light = _unit(np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.3),
                          -rng.uniform(0.5, 1.5)]))
  return _Scene(
      obj_type=obj_type, dims=dims, obj_verts=obj_verts, obj_faces=obj_faces,
      points=points, ctrl=ctrl, betas=betas, fingers=fingers,
      rest_joints=rest_joints, normal=normal, obj_rot_w=obj_rot,
      obj_trans_w=obj_trans, centre_w=0.5 * (centre + obj_trans), k=k,
      light=light, ambient=float(rng.uniform(*cfg.ambient_range)),
      hand_albedo=_skin_albedo(rng), obj_albedo=_object_albedo(rng),
      background=smooth_noise_background(rng, cfg.height, cfg.width))


def _rest_joints(cfg: World3DConfig, betas: np.ndarray) -> np.ndarray:
  """Rest-pose joints (absolute zero pose) under either pose convention."""
  model, forward = get_mano(cfg)
  pose = np.zeros(48)
  if not cfg.flat_hand_mean:
    pose[3:] = -np.asarray(model.hands_mean, np.float64)
  return forward(pose, betas, np.zeros(3))[1]


def _sample_camera(rng: np.random.Generator, cfg: World3DConfig,
                   scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
  """World->camera (R, t): random viewpoint at a random distance."""
  dist = rng.uniform(*cfg.distance_range)
  view = _random_unit(rng)
  target = scene.centre_w + rng.normal(0, cfg.look_at_jitter, size=3)
  cam_pos = scene.centre_w + dist * view
  return _look_at(cam_pos, target, _random_unit(rng))


def _mano_params(cfg: World3DConfig, model, scene: _Scene, fingers: np.ndarray,
                 rot: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray,
                                                              np.ndarray]:
  """MANO (pose [48], trans [3]) of the hand after the rigid map X -> rot X +
  trans of its rest frame. MANO rotates about the rest wrist joint J0."""
  j0 = scene.rest_joints[_WRIST]
  pose = np.zeros(48)
  pose[:3] = Rotation.from_matrix(rot).as_rotvec()
  pose[3:] = fingers.reshape(-1)
  if not cfg.flat_hand_mean:
    pose[3:] -= np.asarray(model.hands_mean, np.float64)
  return pose, rot @ j0 + trans - j0


def _render_frame(cfg: World3DConfig, scene: _Scene, hand_verts: np.ndarray,
                  faces: np.ndarray, obj_rot: np.ndarray, obj_trans: np.ndarray
                 ) -> rasterizer.Rendering:
  obj_cam = scene.obj_verts @ obj_rot.T + obj_trans
  return rasterizer.render_meshes(
      [(hand_verts, faces), (obj_cam, scene.obj_faces)], scene.k, cfg.height,
      cfg.width, albedo=np.stack([scene.hand_albedo, np.ones(3)]),
      light_dir=scene.light, ambient=scene.ambient,
      background=scene.background,
      vertex_colors=[None, object_colours(scene.obj_verts, scene.obj_albedo,
                                          cfg.object_colour_field)])


def object_colours(obj_verts: np.ndarray, albedo: np.ndarray,
                   weight: float) -> np.ndarray:
  """[V, 3] vertex colours: (1 - w) albedo + w (0.5 + 0.5 unit(v)), with v the
  vertex in the object frame (centred on the object)."""
  v = np.asarray(obj_verts, np.float64)
  unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
  return (1.0 - weight) * np.asarray(albedo, np.float64)[None] + weight * (
      0.5 + 0.5 * unit)


def _in_view(cfg: World3DConfig, *boxes: np.ndarray) -> bool:
  return all(b[0] >= 0 and b[1] >= 0 and b[2] <= cfg.width - 1 and
             b[3] <= cfg.height - 1 for b in boxes)


def _frame_labels(cfg, model, scene, fingers, rot_c, trans_c, forward):
  """Camera-frame labels of one frame (no rendering)."""
  pose, mtrans = _mano_params(cfg, model, scene, fingers, rot_c, trans_c)
  verts, joints = forward(pose, scene.betas, mtrans)
  obj_rot = rot_c @ scene.obj_rot_w
  obj_trans = rot_c @ scene.obj_trans_w + trans_c
  ctrl3d = scene.ctrl @ obj_rot.T + obj_trans
  k = scene.k
  proj = lambda p: rasterizer.project_points(p, k)
  corners3d = scene.obj_verts @ obj_rot.T + obj_trans
  return dict(
      mano_pose=pose, mano_trans=mtrans, verts3d=verts, joints3d=joints,
      joints2d=proj(joints), obj_rot=obj_rot, obj_trans=obj_trans,
      obj_ctrl3d=ctrl3d, obj_ctrl2d=proj(ctrl3d),
      hand_box=rasterizer.box_of(proj(verts)), obj_box=rasterizer.box_of(proj(ctrl3d)),
      _obj_mesh_box=rasterizer.box_of(proj(corners3d)))


def _f32(x):
  return np.asarray(x, np.float32)


def generate_example(config: World3DConfig, seed: int) -> dict[str, Any]:
  """One labelled frame (see module docstring for frames and units).

  Returns:
    dict with image [H, W, 3] uint8, K [3, 3], joints3d [21, 3],
    joints2d [21, 2], verts3d [778, 3], mano_pose [48], mano_betas [10],
    mano_trans [3], obj_rot [3, 3], obj_trans [3], obj_points3d [P, 3],
    obj_ctrl3d [21, 3], obj_ctrl2d [21, 2], obj_type int32, obj_dims [3],
    obj_diameter float32, hand_box [4], obj_box [4], hand_mask [H, W] bool,
    obj_mask [H, W] bool, side str. Float arrays are float32.
  """
  if not isinstance(config, World3DConfig):
    raise ValueError(f"config must be a World3DConfig, got {type(config)}")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
  model, forward = get_mano(config)
  faces = np.asarray(model.faces)
  scene = _sample_scene(rng, config, forward)
  for _ in range(config.max_attempts):
    rot_c, trans_c = _sample_camera(rng, config, scene)
    lab = _frame_labels(config, model, scene, scene.fingers, rot_c, trans_c,
                        forward)
    if not _in_view(config, lab["hand_box"], lab["obj_box"],
                    lab["_obj_mesh_box"]):
      continue
    ren = _render_frame(config, scene, lab["verts3d"], faces, lab["obj_rot"],
                        lab["obj_trans"])
    hand_mask, obj_mask = ren.mesh_id == 0, ren.mesh_id == 1
    if min(hand_mask.sum(), obj_mask.sum()) >= config.min_visible_pixels:
      break
  else:
    raise ValueError(f"seed {seed}: no valid camera in max_attempts="
                     f"{config.max_attempts}; widen distance_range or shrink "
                     "focal_range")
  return dict(
      image=ren.image, K=_f32(scene.k), joints3d=_f32(lab["joints3d"]),
      joints2d=_f32(lab["joints2d"]), verts3d=_f32(lab["verts3d"]),
      mano_pose=_f32(lab["mano_pose"]), mano_betas=_f32(scene.betas),
      mano_trans=_f32(lab["mano_trans"]), obj_rot=_f32(lab["obj_rot"]),
      obj_trans=_f32(lab["obj_trans"]), obj_points3d=_f32(scene.points),
      obj_ctrl3d=_f32(lab["obj_ctrl3d"]), obj_ctrl2d=_f32(lab["obj_ctrl2d"]),
      obj_type=np.int32(scene.obj_type), obj_dims=_f32(scene.dims),
      obj_diameter=np.float32(bbox_diameter(scene.points)),
      hand_box=lab["hand_box"], obj_box=lab["obj_box"], hand_mask=hand_mask,
      obj_mask=obj_mask, side=config.side)


def _motion(rng: np.random.Generator, cfg: World3DConfig, num_frames: int,
            scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Smooth per-frame rigid motion (rotation [T, 3, 3], translation [T, 3])
  and finger-pose interpolation weights; keyframes every seq_key_interval
  frames, rotations slerped and translations cubic-interpolated."""
  n_keys = max(2, int(np.ceil((num_frames - 1) / cfg.seq_key_interval)) + 1)
  key_t = np.arange(n_keys) * cfg.seq_key_interval
  rots = [Rotation.identity()]
  trans = [np.zeros(3)]
  max_ang = np.deg2rad(cfg.seq_max_rotation_deg) * scale
  for _ in range(n_keys - 1):
    step = Rotation.from_rotvec(_random_unit(rng) * rng.uniform(0, max_ang))
    rots.append(step * rots[-1])
    trans.append(trans[-1] + rng.uniform(-1, 1, 3) * cfg.seq_max_translation
                 * scale)
  t = np.arange(num_frames, dtype=np.float64)
  slerp = Slerp(key_t, Rotation.concatenate(rots))
  rot = slerp(np.minimum(t, key_t[-1])).as_matrix()
  from scipy.interpolate import CubicSpline  # pylint: disable=g-import-not-at-top
  spline = CubicSpline(key_t, np.stack(trans), bc_type="clamped")
  return rot, spline(t), key_t


def generate_sequence(config: World3DConfig, seed: int,
                      num_frames: int) -> dict[str, Any]:
  """An unlabelled video of a hand moving a grasped object.

  The hand-object pair moves rigidly (slerped rotation about its centre and a
  cubic translation path, keyframes every `seq_key_interval` frames) while
  the grasp changes slowly (finger pose interpolated between keyframe grasps;
  the object stays fixed relative to the palm). Camera intrinsics, light and
  background are static.

  Returns:
    dict with the training inputs / weak labels
      frames [T, H, W, 3] uint8, hand_boxes [T, 4], obj_boxes [T, 4],
    and the hidden ground truth under a 'gt/' prefix: gt/K [3, 3],
    gt/joints3d [T, 21, 3], gt/joints2d [T, 21, 2], gt/verts3d [T, 778, 3],
    gt/mano_pose [T, 48], gt/mano_trans [T, 3], gt/mano_betas [10],
    gt/obj_rot [T, 3, 3], gt/obj_trans [T, 3], gt/obj_ctrl3d [T, 21, 3],
    gt/obj_ctrl2d [T, 21, 2], gt/obj_points3d [P, 3], gt/obj_type,
    gt/obj_dims [3], gt/obj_diameter, gt/hand_mask [T, H, W],
    gt/obj_mask [T, H, W], gt/side.
  """
  if not isinstance(config, World3DConfig):
    raise ValueError(f"config must be a World3DConfig, got {type(config)}")
  if int(num_frames) < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  num_frames = int(num_frames)
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
  model, forward = get_mano(config)
  faces = np.asarray(model.faces)
  scene = _sample_scene(rng, config, forward)
  n_keys = max(2, int(np.ceil((num_frames - 1) / config.seq_key_interval)) + 1)
  key_fingers = [scene.fingers] + [
      scene.fingers + rng.normal(0, config.seq_grasp_jitter,
                                 scene.fingers.shape)
      for _ in range(n_keys - 1)]
  labels = None
  for attempt in range(config.max_attempts):
    rot_c, trans_c = _sample_camera(rng, config, scene)
    # Later attempts shrink the motion; the last one is a static clip.
    scale = 1.0 - attempt / max(config.max_attempts - 1, 1)
    m_rot, m_trans, key_t = _motion(rng, config, num_frames, scale)
    frames = []
    ok = True
    for i in range(num_frames):
      # Rotate the pair about its centre, then move it, in the camera frame.
      c = rot_c @ scene.centre_w + trans_c
      r = m_rot[i] @ rot_c
      t = m_rot[i] @ (trans_c - c) + c + m_trans[i]
      seg = min(int(i // config.seq_key_interval), n_keys - 2)
      w = (i - key_t[seg]) / config.seq_key_interval
      w = w * w * (3 - 2 * w)  # smoothstep between keyframe grasps
      fingers = (1 - w) * key_fingers[seg] + w * key_fingers[seg + 1]
      lab = _frame_labels(config, model, scene, fingers, r, t, forward)
      if not _in_view(config, lab["hand_box"], lab["obj_box"],
                      lab["_obj_mesh_box"]):
        ok = False
        break
      frames.append(lab)
    if ok:
      labels = frames
      break
  if labels is None:
    raise ValueError(f"seed {seed}: sequence left the image in all "
                     f"max_attempts={config.max_attempts}")
  images, hand_masks, obj_masks = [], [], []
  for lab in labels:
    ren = _render_frame(config, scene, lab["verts3d"], faces, lab["obj_rot"],
                        lab["obj_trans"])
    images.append(ren.image)
    hand_masks.append(ren.mesh_id == 0)
    obj_masks.append(ren.mesh_id == 1)
  stack = lambda key: _f32(np.stack([lab[key] for lab in labels]))
  out = {
      "frames": np.stack(images),
      "hand_boxes": stack("hand_box"),
      "obj_boxes": stack("obj_box"),
      "gt/K": _f32(scene.k),
      "gt/mano_betas": _f32(scene.betas),
      "gt/obj_points3d": _f32(scene.points),
      "gt/obj_type": np.int32(scene.obj_type),
      "gt/obj_dims": _f32(scene.dims),
      "gt/obj_diameter": np.float32(bbox_diameter(scene.points)),
      "gt/hand_mask": np.stack(hand_masks),
      "gt/obj_mask": np.stack(obj_masks),
      "gt/side": config.side,
  }
  for key in ("joints3d", "joints2d", "verts3d", "mano_pose", "mano_trans",
              "obj_rot", "obj_trans", "obj_ctrl3d", "obj_ctrl2d"):
    out["gt/" + key] = stack(key)
  return out
