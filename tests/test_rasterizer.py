"""Tests of the NumPy z-buffer rasteriser against independent references.

References: OpenCV's polygon fill (coverage), analytic ray-plane depth in
float64 (depth), geometric occlusion order (z-buffer), the analytic
silhouette of a sphere (area). Speed is measured in
benchmarks/bench_synthetic.py (`bench_rasterizer`), not asserted here.
"""
import cv2
import numpy as np
import pytest

from input_pipeline import rasterizer

H, W = 96, 128
K = np.array([[110.0, 0.0, 63.5], [0.0, 105.0, 47.5], [0.0, 0.0, 1.0]])


def _unproject(px: np.ndarray, z: np.ndarray) -> np.ndarray:
  """Pixels [N, 2] at depths [N] -> camera points [N, 3] (inverse pinhole)."""
  ones = np.ones((len(px), 1))
  rays = np.concatenate([px, ones], 1) @ np.linalg.inv(K).T
  return rays * z[:, None]


def _quad(corners_px, depths):
  verts = _unproject(np.asarray(corners_px, np.float64),
                     np.asarray(depths, np.float64))
  return verts, np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _dist_to_boundary(mask: np.ndarray) -> np.ndarray:
  """Chebyshev distance (pixels) of each pixel to the other label."""
  m = mask.astype(np.uint8)
  inside = cv2.distanceTransform(m, cv2.DIST_C, 3)
  outside = cv2.distanceTransform(1 - m, cv2.DIST_C, 3)
  return np.where(mask, inside, outside)


@pytest.mark.parametrize("corners", [
    [(10.3, 8.7), (100.2, 20.1), (40.6, 80.4)],            # triangle
    [(20.5, 10.25), (110.75, 15.5), (95.1, 85.9), (15.3, 70.2)],  # quad
    [(-20.0, -10.0), (60.0, 30.0), (10.0, 120.0)],          # leaves image
])
def test_coverage_matches_cv2_fillpoly_within_edge_pixels(corners):
  """Coverage equals cv2.fillPoly's (sub-pixel, shift=8) except on pixels at
  most 1 px from the polygon boundary, where the two fill rules may differ."""
  n = len(corners)
  verts = _unproject(np.asarray(corners, np.float64), np.full(n, 0.7))
  faces = np.array([[0, i, i + 1] for i in range(1, n - 1)], np.int32)
  frag = rasterizer.rasterize(verts, faces, K, H, W)
  ours = frag.tri_id >= 0
  ref = np.zeros((H, W), np.uint8)
  pts = np.round(np.asarray(corners) * 256).astype(np.int32)
  cv2.fillPoly(ref, [pts], 1, lineType=cv2.LINE_8, shift=8)
  ref = ref.astype(bool)
  differ = ours != ref
  # Exact reference for the edge band: pixel centre inside by a margin.
  assert ours.sum() > 500
  assert np.all(_dist_to_boundary(ref)[differ] <= 1), np.argwhere(differ)
  assert differ.sum() <= 0.1 * ref.sum()


def test_depth_of_plane_is_analytic():
  """A tilted plane n.X = d rendered as a quad: depth at each pixel centre
  equals the ray-plane intersection z = d / (n . K^-1 [x, y, 1]) (1e-4 m)."""
  normal = np.array([0.3, -0.2, 1.0])
  normal /= np.linalg.norm(normal)
  dist = 0.9
  corners = np.array([(5.0, 4.0), (120.0, 6.0), (118.0, 90.0), (3.0, 88.0)])
  rays = np.concatenate([corners, np.ones((4, 1))], 1) @ np.linalg.inv(K).T
  z = dist / (rays @ normal)
  verts, faces = _quad(corners, z)
  frag = rasterizer.rasterize(verts, faces, K, H, W)
  hit = frag.tri_id >= 0
  assert hit.sum() > 0.8 * (115 * 84)
  ys, xs = np.nonzero(hit)
  rays_px = np.stack([xs, ys, np.ones_like(xs)], 1) @ np.linalg.inv(K).T
  z_ref = dist / (rays_px @ normal)
  np.testing.assert_allclose(frag.depth[hit], z_ref, atol=1e-4, rtol=0)
  assert np.all(np.isinf(frag.depth[~hit]))
  assert np.all(frag.tri_id[~hit] == -1)
  # Perspective-correct barycentrics reproduce the 3D point.
  tri = verts[faces[frag.tri_id[hit]]]
  p = np.sum(frag.bary[hit][..., None] * tri, axis=1)
  np.testing.assert_allclose(p[:, 2], z_ref, atol=1e-4)
  np.testing.assert_allclose(p, rays_px * z_ref[:, None], atol=1e-4)


@pytest.mark.parametrize("near_first", [True, False])
def test_occlusion_order_of_two_quads(near_first):
  """Where two quads overlap the nearer wins regardless of submission order;
  elsewhere each shows itself; mesh ids and depths follow."""
  near_v, f = _quad([(10, 10), (80, 10), (80, 70), (10, 70)], [0.5] * 4)
  far_v, _ = _quad([(40, 30), (120, 30), (120, 90), (40, 90)], [0.8] * 4)
  meshes = [(near_v, f), (far_v, f)] if near_first else [(far_v, f),
                                                         (near_v, f)]
  near_id = 0 if near_first else 1
  out = rasterizer.render_meshes(
      meshes, K, H, W, albedo=np.array([[1.0, 0, 0], [0, 0, 1.0]]))
  assert out.mesh_id[50, 60] == near_id          # overlap
  assert out.mesh_id[20, 20] == near_id          # near only
  assert out.mesh_id[85, 100] == 1 - near_id     # far only
  assert out.mesh_id[5, 5] == -1                 # background
  np.testing.assert_allclose(out.depth[50, 60], 0.5, atol=1e-5)
  np.testing.assert_allclose(out.depth[85, 100], 0.8, atol=1e-5)
  # Interpenetrating case: a quad tilted through the other's depth plane.
  # Reference per pixel: analytic ray-plane depth of the tilted quad.
  big_v, _ = _quad([(10, 10), (120, 10), (120, 70), (10, 70)], [0.5] * 4)
  tilt_v, _ = _quad([(40, 30), (120, 30), (120, 90), (40, 90)],
                    [0.3, 0.9, 0.9, 0.3])
  out2 = rasterizer.render_meshes([(big_v, f), (tilt_v, f)], K, H, W,
                                  albedo=np.ones((2, 3)))
  n = np.cross(tilt_v[1] - tilt_v[0], tilt_v[3] - tilt_v[0])
  ys, xs = np.mgrid[31:70, 41:120]
  rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T
  z_tilt = (n @ tilt_v[0]) / (rays @ n)
  clear = np.abs(z_tilt - 0.5) > 2e-3
  expect = np.where(z_tilt < 0.5, 1, 0)
  got = out2.mesh_id[31:70, 41:120]
  assert clear.sum() > 1000 and (expect[clear] == 1).any() and (
      expect[clear] == 0).any()
  np.testing.assert_array_equal(got[clear], expect[clear])


def test_near_plane_drops_triangles_behind_camera():
  v, f = _quad([(10, 10), (80, 10), (80, 70), (10, 70)], [0.5] * 4)
  behind = v * np.array([1.0, 1.0, -1.0])
  frag = rasterizer.rasterize(behind, f, K, H, W)
  assert np.all(frag.tri_id == -1)
  straddle = v.copy()
  straddle[1, 2] = -0.1  # only face 0 uses vertex 1
  frag = rasterizer.rasterize(straddle, f, K, H, W)
  assert np.all(frag.tri_id != 0) and np.any(frag.tri_id == 1)


def test_shading_and_background_compositing():
  """Lambert: a fronto-parallel quad lit head-on gets albedo; lit at 60
  degrees gets ambient + (1 - ambient) cos 60; background is unchanged."""
  v, f = _quad([(20, 20), (100, 20), (100, 80), (20, 80)], [0.6] * 4)
  bg = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
  albedo = np.array([[0.8, 0.4, 0.2]])
  out = rasterizer.render_meshes([(v, f)], K, H, W, albedo=albedo,
                                 light_dir=(0, 0, -1), ambient=0.2,
                                 background=bg)
  hit = out.mesh_id == 0
  np.testing.assert_array_equal(out.image[~hit], bg[~hit])
  np.testing.assert_allclose(out.image[50, 60], albedo[0] * 255, atol=1)
  light = np.array([np.sin(np.pi / 3), 0, -np.cos(np.pi / 3)])
  out = rasterizer.render_meshes([(v, f)], K, H, W, albedo=albedo,
                                 light_dir=light, ambient=0.2, smooth=False)
  np.testing.assert_allclose(out.shading[hit], 0.2 + 0.8 * 0.5, atol=1e-5)


def test_degenerate_and_bad_input():
  v = np.array([[0, 0, 1.0], [0.1, 0, 1.0], [0.2, 0, 1.0]])  # collinear
  frag = rasterizer.rasterize(v, np.array([[0, 1, 2]]), K, H, W)
  assert np.all(frag.tri_id == -1) and np.all(np.isinf(frag.depth))
  frag = rasterizer.rasterize(np.zeros((0, 3)), np.zeros((0, 3), int), K, H,
                              W)
  assert np.all(frag.tri_id == -1)
  nan_v = np.array([[np.nan, 0, 1.0], [0.1, 0, 1.0], [0, 0.1, 1.0]])
  frag = rasterizer.rasterize(nan_v, np.array([[0, 1, 2]]), K, H, W)
  assert np.all(frag.tri_id == -1)
  with pytest.raises(ValueError, match="faces"):
    rasterizer.rasterize(v, np.array([[0, 1, 5]]), K, H, W)
  with pytest.raises(ValueError, match="K"):
    rasterizer.rasterize(v, np.array([[0, 1, 2]]), np.eye(2), H, W)
  with pytest.raises(ValueError, match="albedo"):
    rasterizer.render_meshes([(v, np.array([[0, 1, 2]]))], K, H, W,
                             albedo=np.ones((2, 3)))


def _sphere(n_lat, n_lon, radius, centre):
  th = np.linspace(0, np.pi, n_lat)
  ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
  t, p = np.meshgrid(th, ph, indexing="ij")
  v = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)],
               -1).reshape(-1, 3) * radius + centre
  f = []
  for i in range(n_lat - 1):
    for j in range(n_lon):
      a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
      f += [[a, b, a + n_lon], [b, b + n_lon, a + n_lon]]
  return v, np.array(f, np.int32)


@pytest.mark.parametrize("size", [128, 256])
def test_hand_sized_scene_occlusion_and_silhouette(size):
  """A 792-vertex / ~1500-face "hand" plus a nearer object: the object hides
  the hand at its centre pixel, and its silhouette area matches the analytic
  sphere projection (-5% / +1%: the polyhedron is inscribed)."""
  hand_v, hand_f = _sphere(24, 33, 0.05, [0, 0, 0.5])   # 792 V, ~1500 F
  obj_v, obj_f = _sphere(16, 32, 0.04, [0.03, 0.02, 0.45])
  k = np.array([[1.2 * size, 0, (size - 1) / 2], [0, 1.2 * size,
                                                   (size - 1) / 2], [0, 0, 1]])
  out = rasterizer.render_meshes([(hand_v, hand_f), (obj_v, obj_f)], k, size,
                                 size, albedo=np.ones((2, 3)))
  assert (out.mesh_id == 0).any()
  u, v = np.round(rasterizer.project_points(np.array([[0.03, 0.02, 0.45]]),
                                            k)[0]).astype(int)
  assert out.mesh_id[v, u] == 1   # the object (front at z 0.41) over the hand
  # Silhouette of the object sphere alone: apparent radius f r / sqrt(d^2-r^2).
  out = rasterizer.render_meshes([(obj_v, obj_f)], k, size, size,
                                 albedo=np.ones((1, 3)))
  d = np.linalg.norm([0.03, 0.02, 0.45])
  r_px = 1.2 * size * 0.04 / np.sqrt(d**2 - 0.04**2)
  area = (out.mesh_id == 0).sum()
  # The polyhedral sphere is inscribed: its area is slightly below the disc.
  assert 0.95 * np.pi * r_px**2 < area < 1.01 * np.pi * r_px**2


def test_vertex_colours_interpolate_perspective_correctly():
  """A tilted quad whose left vertices are red and right vertices blue: each pixel's colour is the
  perspective-correct interpolation of the vertex colours (checked against the barycentrics of `rasterize`),
  lit head-on so shading is 1; a mesh without colours keeps its albedo."""
  v, f = _quad([(20, 20), (100, 20), (100, 80), (20, 80)], [0.5, 1.0, 1.0, 0.5])
  colours = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0], [1.0, 0, 0]])
  out = rasterizer.render_meshes([(v, f)], K, H, W, albedo=np.ones((1, 3)), ambient=1.0,
                                 vertex_colors=[colours])
  frag = rasterizer.rasterize(v, f, K, H, W)
  hit = frag.tri_id >= 0
  expected = np.sum(frag.bary[hit][..., None] * colours[f[frag.tri_id[hit]]], axis=1) * 255
  np.testing.assert_allclose(out.image[hit], np.round(expected), atol=1)
  # Perspective-correct, not screen-linear: half-way across the screen is not half-way in colour.
  row = out.image[50, 20:101].astype(float)
  mid = row[len(row) // 2]
  assert abs(mid[0] - mid[2]) > 20
  plain = rasterizer.render_meshes([(v, f)], K, H, W, albedo=np.array([[0.2, 0.4, 0.6]]), ambient=1.0,
                                   vertex_colors=[None])
  np.testing.assert_allclose(plain.image[50, 60], [51, 102, 153], atol=1)
  with pytest.raises(ValueError, match="vertex_colors"):
    rasterizer.render_meshes([(v, f)], K, H, W, albedo=np.ones((1, 3)), vertex_colors=[colours[:2]])
