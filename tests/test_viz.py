"""Tests for handobj_jax.viz, the one home of the drawing helpers.

References: OpenCV's colour map and PNG reader, a NumPy float64 eigh PCA written here, and constructed
images whose expected pixels are known.
"""

import cv2
import numpy as np
import pytest

from handobj_jax import viz


def test_viridis_matches_opencv_clips_and_maps_nan_to_lo():
  u8 = np.arange(256, dtype=np.uint8)[None]
  ref = cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS)[..., ::-1]  # BGR -> RGB
  np.testing.assert_array_equal(viz.viridis(u8 / 255.0), ref)
  # Outside [lo, hi] clips to the end colours; NaN takes the colour of lo.
  v = viz.viridis(np.array([[-3.0, 4.0, np.nan, 10.0, 20.0, 15.0]]), lo=10.0, hi=20.0)
  np.testing.assert_array_equal(v[0, [0, 2, 3]], np.broadcast_to(ref[0, 0], (3, 3)))
  np.testing.assert_array_equal(v[0, 1], ref[0, 0])
  np.testing.assert_array_equal(v[0, 4], ref[0, 255])
  np.testing.assert_array_equal(v[0, 5], ref[0, 128])  # 0.5 * 255 = 127.5 rounds to 128
  assert v.dtype == np.uint8 and v.shape == (1, 6, 3)


def test_pca_components_match_an_eigh_reference():
  """Z = a u1 + b u2 + c u3 + mean, std(a) > std(b) > std(c), u orthonormal in F = 8: the components are
  (up to the fixed sign) the eigenvectors of the covariance (NumPy float64 eigh), z-scored."""
  rng = np.random.default_rng(1)
  h, w, f = 12, 15, 8
  basis, _ = np.linalg.qr(rng.normal(size=(f, f)))
  coef = rng.normal(size=(h * w, 3)) * np.array([5.0, 2.0, 0.7])
  z = (coef @ basis[:, :3].T + rng.normal(size=f)).reshape(h, w, f)
  comps = viz.pca_components(z).reshape(-1, 3)
  x = z.reshape(-1, f) - z.reshape(-1, f).mean(0)
  _, evecs = np.linalg.eigh(x.T @ x)
  ref = x @ evecs[:, ::-1][:, :3]
  ref /= ref.std(axis=0)
  # Scores are z-scored (O(1), unit standard deviation): absolute tolerance in standard deviations.
  for k in range(3):
    sign = np.sign(np.dot(ref[:, k], comps[:, k]))
    np.testing.assert_allclose(comps[:, k], sign * ref[:, k], atol=1e-5)
  np.testing.assert_allclose(comps.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(comps.std(0), 1, atol=1e-5)
  rgb = viz.pca_rgb(z)
  assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
  expect = np.round(np.clip((comps.reshape(h, w, 3) + viz.Z_RANGE) / (2 * viz.Z_RANGE), 0, 1) * 255)
  assert np.max(np.abs(rgb.astype(int) - expect)) <= 1


def test_pca_rgb_of_rank_one_constant_and_non_finite_embeddings():
  rng = np.random.default_rng(0)
  a = np.linspace(-1, 1, 16 * 16).reshape(16, 16)
  # Rank 1 (plus tiny noise): red follows the dominant direction u, increasing with a * sign of u's
  # largest-magnitude entry (the sign convention), for u and -u alike.
  u = rng.normal(size=8)
  for direction in (u, -u):
    z = a[..., None] * direction * 10 + 1e-3 * rng.normal(size=(16, 16, 8))
    rgb = viz.pca_rgb(z.astype(np.float32))
    sign = np.sign(direction[np.argmax(np.abs(direction))])
    assert sign * np.corrcoef(rgb[..., 0].ravel().astype(float), a.ravel())[0, 1] > 0.99
  # Exactly rank 1: the missing components are mid-grey.
  r1 = viz.pca_rgb(np.arange(16.0).reshape(4, 4, 1) * np.ones(5))
  assert np.all(r1[..., 1:] == 128) and r1[..., 0].std() > 0
  # Constant: all mid-grey; F < 3 is padded with grey.
  assert np.all(viz.pca_rgb(np.ones((4, 4, 5))) == 128)
  assert np.all(viz.pca_rgb(a[..., None])[..., 1:] == 128)
  # Non-finite values count as 0 (a diverged model still gets a picture, not a LinAlgError).
  bad = z.copy()
  bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf
  out = viz.pca_rgb(bad)
  assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
  with pytest.raises(ValueError, match=r"\[H, W, F\]"):
    viz.pca_components(np.zeros((4, 4)))


def test_upscale_blocks_points_and_copies():
  img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  up = viz.upscale(img, 4)
  assert up.shape == (8, 12, 3)
  np.testing.assert_array_equal(up, np.repeat(np.repeat(img, 4, axis=0), 4, axis=1))
  # The centre of pixel (x=2, y=1)'s 4 x 4 block: (8 + 1.5, 4 + 1.5).
  np.testing.assert_allclose(viz.upscale_points([[2.0, 1.0]], 4), [[9.5, 5.5]])
  same = viz.upscale(img, 1)
  np.testing.assert_array_equal(same, img)
  same[0, 0] = 255  # Always a new array: drawing on it leaves the input alone.
  assert img[0, 0, 0] == 0
  assert viz.upscale(np.zeros((2, 3), bool).view(np.uint8), 2).shape == (4, 6)


def test_overlay_points_skeleton_and_caption():
  img = np.full((20, 30, 3), 100, np.uint8)
  mask = np.zeros((20, 30), bool)
  mask[:5, :5] = True
  over = viz.overlay_masks(img, [mask, mask[::-1]], [(255, 0, 0), (0, 255, 0)], opacity=1.0)
  assert tuple(over[0, 0]) == (255, 0, 0) and tuple(over[19, 0]) == (0, 255, 0)
  assert tuple(over[10, 10]) == (100, 100, 100) and tuple(img[0, 0]) == (100, 100, 100)
  half = viz.overlay_masks(img, [mask], [(200, 200, 200)], opacity=0.5)
  assert tuple(half[0, 0]) == (150, 150, 150)
  dots = viz.draw_query_points(img.copy(), np.array([[10.0, 8.0], [np.nan, 1.0]]), (0, 0, 255), radius=3)
  assert tuple(dots[8, 10]) == (0, 0, 255)
  # The white rim reaches one pixel further than the dot alone (anti-aliased edges).
  alone = viz.draw_points(img.copy(), np.array([[10.0, 8.0]]), (0, 0, 255), radius=3)
  assert tuple(alone[8, 15]) == (100, 100, 100) and dots[8, 15, 0] > 100 and dots[8, 15, 0] == dots[8, 15, 2]
  # Skeletons: a straight hand along row 10, per joint order; non-finite keypoints are skipped.
  for order in viz.HAND_CHAINS:
    kp = np.stack([np.linspace(2, 27, 21), np.full(21, 10.0)], -1)
    kp[5] = np.nan
    sk = viz.draw_skeleton(img.copy(), kp, order=order)
    assert (sk[10] != 100).any() and (sk[:5] == 100).all()
  with pytest.raises(ValueError, match="order"):
    viz.draw_skeleton(img.copy(), kp, order="mano")
  assert (viz.label(img.copy(), "hi")[:14, :20] != 100).any()


def test_flow_colours_direction_and_magnitude():
  flow = np.array([[[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, 0.0]]])
  rgb = viz.flow_to_rgb(flow, max_magnitude=3.0)
  hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
  assert abs(int(hsv[0, 0, 0]) - 0) <= 1 and abs(int(hsv[0, 1, 0]) - 45) <= 1  # 0 and 90 degrees
  assert abs(int(hsv[0, 2, 0]) - 90) <= 1                                       # 180 degrees
  assert hsv[0, 0, 2] == 255 and hsv[0, 3, 2] == 0                             # value = magnitude


def test_write_png_round_trip_and_error(tmp_path):
  rgb = np.zeros((4, 5, 3), np.uint8)
  rgb[..., 0] = 200  # red
  viz.write_png(str(tmp_path / "rgb.png"), rgb)
  np.testing.assert_array_equal(cv2.imread(str(tmp_path / "rgb.png"))[..., ::-1], rgb)
  mask = np.eye(4, dtype=bool)
  viz.write_png(str(tmp_path / "mask.png"), mask)
  np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED), mask * 255)
  with pytest.raises(OSError, match="missing_dir"):
    viz.write_png(str(tmp_path / "missing_dir" / "x.png"), rgb)
