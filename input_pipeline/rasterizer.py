"""Vectorised NumPy z-buffer triangle rasteriser for the synthetic 3D world.

Frames and conventions:
  * Vertices are given in the OpenCV camera frame: x right, y down, z forward,
    metres. A point projects with the pinhole model u = fx x / z + cx,
    v = fy y / z + cy (K is 3x3; skew K[0, 1] is honoured).
  * Pixel (x, y) = (column, row); pixel centres lie at integer coordinates, so
    pixel (c, r) is covered by a triangle when the point (c, r) lies inside the
    triangle's projection (top-left tie rules are not applied: pixels exactly
    on a shared edge may be claimed by either triangle, the z-buffer decides).
  * Depth is the camera-frame z of the surface point seen through the pixel
    centre (not the ray length). 1/z is interpolated linearly in screen space,
    which is exact for planar triangles; attributes (normals) use
    perspective-correct barycentrics.
  * Near plane: a triangle with any vertex at z < `near` is dropped entirely
    (no clipping). The synthetic world keeps its meshes well in front of the
    camera, so this only removes geometry behind or grazing the camera.

Shapes: meshes are V x 3 float vertices and F x 3 int faces; outputs are
H x W maps. Empty pixels have depth = +inf, triangle id = -1, mesh id = -1.

The implementation enumerates, for every triangle, the pixel centres of its
(image-clipped) bounding box as one flat array of fragments (chunked to bound
memory), keeps those passing the three edge tests, and resolves visibility by
sorting fragments by (pixel, depth) and keeping the first per pixel.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

# Fragments processed per chunk; bounds peak memory to a few hundred MB.
_MAX_FRAGMENTS = 4_000_000


class Fragments(NamedTuple):
  """Visible-surface buffers of a rasterised triangle soup.

  Attributes:
    depth: [H, W] float32 camera-frame z, +inf where empty.
    tri_id: [H, W] int32 index into the faces array, -1 where empty.
    bary: [H, W, 3] float32 perspective-correct barycentric weights of the
      visible triangle's three vertices (zeros where empty).
  """
  depth: np.ndarray
  tri_id: np.ndarray
  bary: np.ndarray


class Rendering(NamedTuple):
  """Output of `render_meshes`.

  Attributes:
    image: [H, W, 3] uint8 shaded image composited over the background.
    depth: [H, W] float32 camera-frame z, +inf where no mesh is visible.
    mesh_id: [H, W] int32 index of the visible mesh, -1 for background.
    tri_id: [H, W] int32 face index within the visible mesh, -1 for background.
    shading: [H, W] float32 Lambert factor in [0, 1] (0 where empty).
  """
  image: np.ndarray
  depth: np.ndarray
  mesh_id: np.ndarray
  tri_id: np.ndarray
  shading: np.ndarray


def _check_k(k: np.ndarray) -> np.ndarray:
  k = np.asarray(k, np.float64)
  if k.shape != (3, 3):
    raise ValueError(f"K must have shape (3, 3), got {k.shape}")
  if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
    raise ValueError(f"K must be finite with positive focal lengths, got {k}")
  return k


def project_points(points: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Pinhole projection of [..., 3] camera-frame points to [..., 2] pixels.

  Points with z <= 0 give non-finite or meaningless pixels; callers filter.
  """
  points = np.asarray(points, np.float64)
  k = np.asarray(k, np.float64)
  z = points[..., 2:3]
  safe_z = np.where(np.abs(z) < 1e-12, 1e-12, z)
  uvw = points @ k.T
  return (uvw[..., :2] / safe_z).astype(np.float64)


def rasterize(verts: np.ndarray, faces: np.ndarray, k: np.ndarray,
              height: int, width: int, *, near: float = 1e-3) -> Fragments:
  """Z-buffer rasterisation of one triangle soup (see module docstring).

  Args:
    verts: [V, 3] camera-frame vertices (metres, OpenCV frame).
    faces: [F, 3] integer vertex indices.
    k: [3, 3] intrinsics.
    height: image rows H.
    width: image columns W.
    near: triangles with any vertex z < near are dropped.

  Returns:
    Fragments with [H, W] depth / tri_id and [H, W, 3] barycentrics.
  """
  verts = np.asarray(verts, np.float64)
  faces = np.asarray(faces)
  if verts.ndim != 2 or verts.shape[1] != 3:
    raise ValueError(f"verts must have shape (V, 3), got {verts.shape}")
  if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(
      faces.dtype, np.integer):
    raise ValueError(f"faces must be integer (F, 3), got {faces.shape} "
                     f"{faces.dtype}")
  if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
    raise ValueError(f"faces index out of range [0, {len(verts)})")
  if int(height) <= 0 or int(width) <= 0:
    raise ValueError(f"height/width must be positive, got {height}x{width}")
  k = _check_k(k)
  height, width = int(height), int(width)

  depth = np.full((height, width), np.inf, np.float64)
  tri_id = np.full((height, width), -1, np.int32)
  bary = np.zeros((height, width, 3), np.float32)
  if faces.size == 0:
    return Fragments(depth.astype(np.float32), tri_id, bary)

  finite = np.all(np.isfinite(verts), axis=1)
  tri = verts[faces]  # [F, 3, 3]
  z = tri[..., 2]
  keep = np.all(z >= near, axis=1) & np.all(finite[faces], axis=1)
  uv = project_points(tri, k)  # [F, 3, 2]
  # Signed doubled area in pixel space; drop degenerate triangles.
  e1 = uv[:, 1] - uv[:, 0]
  e2 = uv[:, 2] - uv[:, 0]
  area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
  keep &= np.abs(area) > 1e-12
  x0 = np.ceil(np.min(uv[..., 0], axis=1))
  x1 = np.floor(np.max(uv[..., 0], axis=1))
  y0 = np.ceil(np.min(uv[..., 1], axis=1))
  y1 = np.floor(np.max(uv[..., 1], axis=1))
  with np.errstate(invalid="ignore"):
    x0 = np.clip(x0, 0, width)
    x1 = np.clip(x1, -1, width - 1)
    y0 = np.clip(y0, 0, height)
    y1 = np.clip(y1, -1, height - 1)
  keep &= (x1 >= x0) & (y1 >= y0)
  idx = np.nonzero(keep)[0]
  if idx.size == 0:
    return Fragments(depth.astype(np.float32), tri_id, bary)

  bw = (x1[idx] - x0[idx] + 1).astype(np.int64)
  bh = (y1[idx] - y0[idx] + 1).astype(np.int64)
  counts = bw * bh
  # Split triangles into chunks of bounded fragment count.
  cum = np.cumsum(counts)
  starts = [0]
  while starts[-1] < idx.size:
    base = cum[starts[-1] - 1] if starts[-1] > 0 else 0
    end = int(np.searchsorted(cum, base + _MAX_FRAGMENTS, side="right"))
    starts.append(max(end, starts[-1] + 1))
  inv_z = 1.0 / z

  best_pix, best_d, best_t, best_b = [], [], [], []
  for s, e in zip(starts[:-1], starts[1:]):
    t_idx = idx[s:e]
    c = counts[s:e]
    total = int(c.sum())
    rep = np.repeat(np.arange(t_idx.size), c)
    offs = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
    w_rep = bw[s:e][rep]
    px = x0[t_idx][rep] + offs % w_rep
    py = y0[t_idx][rep] + offs // w_rep
    t_rep = t_idx[rep]
    p = uv[t_rep]  # [N, 3, 2]
    a = area[t_rep]
    # Edge functions: w_i is the doubled signed area opposite vertex i.
    def edge(pa, pb):
      return ((pb[:, 0] - pa[:, 0]) * (py - pa[:, 1])
              - (pb[:, 1] - pa[:, 1]) * (px - pa[:, 0]))
    w0 = edge(p[:, 1], p[:, 2]) / a
    w1 = edge(p[:, 2], p[:, 0]) / a
    w2 = 1.0 - w0 - w1
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    if not np.any(inside):
      continue
    w = np.stack([w0, w1, w2], axis=1)[inside]
    t_in = t_rep[inside]
    iz = np.sum(w * inv_z[t_in], axis=1)
    d = 1.0 / iz
    pw = w * inv_z[t_in] * d[:, None]  # perspective-correct barycentrics
    pix = (py[inside] * width + px[inside]).astype(np.int64)
    best_pix.append(pix)
    best_d.append(d)
    best_t.append(t_in)
    best_b.append(pw)

  if best_pix:
    pix = np.concatenate(best_pix)
    d = np.concatenate(best_d)
    t = np.concatenate(best_t)
    b = np.concatenate(best_b)
    # Nearest fragment per pixel; ties broken by the lower triangle index.
    order = np.lexsort((t, d, pix))
    pix_sorted = pix[order]
    first = np.ones(order.size, bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    sel = order[first]
    flat = pix[sel]
    depth.reshape(-1)[flat] = d[sel]
    tri_id.reshape(-1)[flat] = t[sel]
    bary.reshape(-1, 3)[flat] = b[sel]
  return Fragments(depth.astype(np.float32), tri_id, bary)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals [V, 3] (zero vector if isolated)."""
  verts = np.asarray(verts, np.float64)
  faces = np.asarray(faces)
  tri = verts[faces]
  fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  vn = np.zeros_like(verts)
  for i in range(3):
    np.add.at(vn, faces[:, i], fn)
  norm = np.linalg.norm(vn, axis=1, keepdims=True)
  return vn / np.maximum(norm, 1e-12)


def render_meshes(meshes: Sequence[tuple[np.ndarray, np.ndarray]],
                  k: np.ndarray, height: int, width: int, *,
                  albedo: np.ndarray,
                  light_dir: np.ndarray = (0.0, 0.0, -1.0),
                  ambient: float = 0.35,
                  background: np.ndarray | None = None,
                  smooth: bool = True,
                  near: float = 1e-3,
                  vertex_colors: Sequence[np.ndarray | None] | None = None) -> Rendering:
  """Renders several meshes with Lambert shading over a background.

  Args:
    meshes: sequence of (verts [V_m, 3], faces [F_m, 3]) in the camera frame.
    k: [3, 3] intrinsics.
    height: image rows H.
    width: image columns W.
    albedo: [M, 3] per-mesh RGB albedo in [0, 1].
    light_dir: [3] direction from the surface towards a distant light, camera
      frame (default: light at the camera, (0, 0, -1)).
    ambient: ambient fraction a; intensity = a + (1 - a) max(0, n . l).
    background: [H, W, 3] uint8 image shown where no mesh is drawn
      (default black).
    smooth: interpolate area-weighted vertex normals (True) or use the flat
      face normal (False). Normals are flipped to face the camera, so open or
      inconsistently wound meshes shade correctly.
    near: near plane, see `rasterize`.
    vertex_colors: optional per mesh, None or [V_m, 3] RGB factors in [0, 1] multiplying that mesh's albedo,
      interpolated with perspective-correct barycentrics (a texture tied to the mesh's vertices).

  Returns:
    Rendering with image, depth, mesh id, per-mesh face id and shading.
  """
  if not meshes:
    raise ValueError("meshes must contain at least one (verts, faces) pair")
  albedo = np.asarray(albedo, np.float64)
  if albedo.shape != (len(meshes), 3):
    raise ValueError(f"albedo must have shape ({len(meshes)}, 3), got "
                     f"{albedo.shape}")
  light = np.asarray(light_dir, np.float64).reshape(3)
  light_norm = np.linalg.norm(light)
  if not np.isfinite(light_norm) or light_norm < 1e-12:
    raise ValueError(f"light_dir must be a finite non-zero 3-vector, got "
                     f"{light_dir}")
  light = light / light_norm
  if not 0.0 <= ambient <= 1.0:
    raise ValueError(f"ambient must be in [0, 1], got {ambient}")
  if background is None:
    background = np.zeros((height, width, 3), np.uint8)
  background = np.asarray(background)
  if background.shape != (height, width, 3):
    raise ValueError(f"background must have shape ({height}, {width}, 3), "
                     f"got {background.shape}")

  if vertex_colors is not None and len(vertex_colors) != len(meshes):
    raise ValueError(f"vertex_colors must have one entry per mesh ({len(meshes)}), got {len(vertex_colors)}")
  all_v, all_f, mesh_of_face, face_local, normals, colours = [], [], [], [], [], []
  offset = 0
  for m, (v, f) in enumerate(meshes):
    v = np.asarray(v, np.float64)
    f = np.asarray(f)
    if v.ndim != 2 or v.shape[1] != 3:
      raise ValueError(f"meshes[{m}] verts must be (V, 3), got {v.shape}")
    all_v.append(v)
    all_f.append(f + offset)
    mesh_of_face.append(np.full(len(f), m, np.int32))
    face_local.append(np.arange(len(f), dtype=np.int32))
    normals.append(vertex_normals(v, f))
    c = None if vertex_colors is None else vertex_colors[m]
    if c is not None and np.shape(c) != (len(v), 3):
      raise ValueError(f"vertex_colors[{m}] must be ({len(v)}, 3), got {np.shape(c)}")
    colours.append(np.ones((len(v), 3)) if c is None else np.asarray(c, np.float64))
    offset += len(v)
  verts = np.concatenate(all_v)
  faces = np.concatenate(all_f).astype(np.int64)
  vn = np.concatenate(normals)
  frag = rasterize(verts, faces, k, height, width, near=near)

  hit = frag.tri_id >= 0
  t = frag.tri_id[hit]
  mesh_face = np.concatenate(mesh_of_face)
  local_face = np.concatenate(face_local)
  mesh_id = np.full((height, width), -1, np.int32)
  tri_local = np.full((height, width), -1, np.int32)
  mesh_id[hit] = mesh_face[t]
  tri_local[hit] = local_face[t]

  tri = verts[faces[t]]  # [N, 3, 3]
  if smooth:
    n = np.sum(frag.bary[hit][..., None] * vn[faces[t]], axis=1)
  else:
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
  # Face the viewer: the view vector from the surface to the camera is -p.
  p = np.sum(frag.bary[hit][..., None] * tri, axis=1)
  flip = np.sum(n * p, axis=1) > 0
  n[flip] *= -1.0
  lam = ambient + (1.0 - ambient) * np.clip(n @ light, 0.0, 1.0)
  shading = np.zeros((height, width), np.float32)
  shading[hit] = lam
  image = background.astype(np.float64) / 255.0
  vc = np.concatenate(colours)
  texture = np.sum(frag.bary[hit][..., None] * vc[faces[t]], axis=1)
  image[hit] = albedo[mesh_id[hit]] * texture * lam[:, None]
  image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  return Rendering(image=image, depth=frag.depth, mesh_id=mesh_id,
                   tri_id=tri_local, shading=shading)


def box_of(points2d: np.ndarray) -> np.ndarray:
  """The tight box [x0, y0, x1, y1] (float32) of [..., N, 2] points."""
  points2d = np.asarray(points2d)
  return np.concatenate([points2d.min(-2), points2d.max(-2)], -1).astype(np.float32)


def convex_hull_mask(points2d: np.ndarray, height: int, width: int) -> np.ndarray:
  """[H, W] bool: pixels (centres at integers) inside the convex hull of [N, 2] points (1/16 px fill)."""
  import cv2  # pylint: disable=g-import-not-at-top
  mask = np.zeros((height, width), np.uint8)
  pts = np.asarray(points2d, np.float64)
  pts = pts[np.all(np.isfinite(pts), axis=1)]
  if len(pts) >= 3:
    shift = 4
    limit = 4 * max(height, width)
    fixed = np.round(np.clip(pts, -limit, limit) * (1 << shift)).astype(np.int32)
    hull = cv2.convexHull(fixed.reshape(-1, 1, 2))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=shift)
  return mask.astype(bool)
