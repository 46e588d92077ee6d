"""Crops with scale, rotation and translation (geometry/crop.py) against OpenCV and NumPy float64, and the
camera identity the pose augmentation relies on: A proj_K(X) = proj_K'(R3 X)."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.geometry import crop

RNG = np.random.default_rng(7)


def _affine_cv2(centre, side, out, angle):
  """The same similarity built with OpenCV (float64): rotate about the centre, scale, move to the crop centre."""
  s = out / side
  m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -np.degrees(angle), s)
  m[:, 2] += (out - 1) / 2.0 - np.asarray(centre, np.float64)
  return m


@pytest.mark.parametrize("angle", [0.0, 0.7, -2.5, np.pi])
def test_crop_affine_matches_opencv_and_inverts(angle):
  centre, side, out = np.array([37.3, 51.8]), 61.5, 96
  a = np.asarray(crop.crop_affine(centre, side, out, angle), np.float64)
  np.testing.assert_allclose(a, _affine_cv2(centre, side, out, angle), atol=1e-4)
  inv = np.asarray(crop.invert_affine(jnp.asarray(a, jnp.float32)))
  np.testing.assert_allclose(inv, cv2.invertAffineTransform(a), atol=1e-4)
  # The centre lands on the crop centre; a point 'side/2' to the right lands on the crop's right edge
  # (rotated by the angle, which turns content clockwise on screen for positive angles).
  pts = np.array([centre, centre + [side / 2, 0]], np.float32)
  mapped = np.asarray(crop.apply_affine(jnp.asarray(a, jnp.float32), pts))
  half = (out - 1) / 2
  np.testing.assert_allclose(mapped[0], [half, half], atol=1e-3)
  np.testing.assert_allclose(mapped[1], [half + out / 2 * np.cos(angle), half + out / 2 * np.sin(angle)],
                             atol=1e-3)


@pytest.mark.parametrize("angle,side", [(0.0, 50.0), (0.4, 80.0), (-1.9, 140.0)])
def test_warp_image_matches_cv2_warpaffine(angle, side):
  img = RNG.uniform(0, 255, size=(60, 80, 3)).astype(np.float32)
  a = np.asarray(crop.crop_affine(np.array([41.0, 27.5]), side, 48, angle), np.float64)
  ref = cv2.warpAffine(img, a, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0)
  got = np.asarray(jax.jit(crop.warp_image, static_argnums=2)(img, a.astype(np.float32), 48))
  # OpenCV quantises the bilinear weights to 1/32 px (INTER_BITS = 5): up to ~1/64 of the pixel range, so
  # 255/64 ~ 4 gray levels at the worst pixels; on average far less.
  err = np.abs(got - ref)
  # Border pixels (one neighbour inside, one outside) also differ by OpenCV's rounding; compare inside.
  inner = cv2.warpAffine(np.ones((60, 80), np.float32), a, (48, 48), flags=cv2.INTER_NEAREST) > 0
  inner = cv2.erode(inner.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
  assert err[inner].max() < 4.5 and err[inner].mean() < 0.6
  outside = cv2.warpAffine(np.ones((60, 80), np.float32), a, (48, 48), flags=cv2.INTER_LINEAR) == 0
  assert np.all(got[outside] == 0)  # Sources fully outside the image read 0.


def test_warp_image_exact_against_numpy_bilinear():
  img = RNG.uniform(0, 1, size=(20, 30, 2)).astype(np.float32)
  a = np.asarray(crop.crop_affine(np.array([14.2, 9.7]), 17.0, 12, 0.3), np.float64)
  got = np.asarray(crop.warp_image(img, a.astype(np.float32), 12), np.float64)
  inv = cv2.invertAffineTransform(a)
  ref = np.zeros((12, 12, 2))
  for yo in range(12):
    for xo in range(12):
      sx, sy = inv @ [xo, yo, 1.0]
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = x0 + dx, y0 + dy
        wgt = (1 - abs(sx - x)) * (1 - abs(sy - y))
        if 0 <= x < 30 and 0 <= y < 20:
          ref[yo, xo] += wgt * img[y, x]
  np.testing.assert_allclose(got, ref, atol=2e-5)


def test_in_plane_rotation_is_a_camera_roll():
  """A proj_K(X) == proj_K'(R3 X) for a similarity crop A: labels, camera and image move together."""
  k = np.array([[420.0, 0, 61.0], [0, 431.0, 70.0], [0, 0, 1]], np.float32)  # fx != fy: still exact.
  x = np.concatenate([RNG.uniform(-0.1, 0.1, (50, 2)), RNG.uniform(0.4, 0.8, (50, 1))], 1).astype(np.float32)
  for angle in (0.0, 1.1, -3.0):
    a = crop.crop_affine(jnp.array([60.0, 66.0]), 83.0, 128, angle)
    lhs = crop.apply_affine(a, (x @ k.T)[:, :2] / x[:, 2:])
    k2 = crop.crop_intrinsics(jnp.asarray(k), a)
    x2 = crop.rotate_points(crop.rotation_about_optical_axis(jnp.float32(angle)), jnp.asarray(x))
    rhs = (x2 @ k2.T)[:, :2] / x2[:, 2:]
    np.testing.assert_allclose(np.asarray(lhs), np.asarray(rhs), atol=2e-3)
    if angle == 0.0:  # No rotation: the plain pinhole matrix of the scaled, shifted image.
      kk = np.asarray(k2)
      assert kk[0, 1] == 0 and kk[1, 0] == 0 and kk[0, 0] == pytest.approx(420.0 * 128 / 83.0, rel=1e-5)
    np.testing.assert_allclose(float(crop.crop_angle(a)), np.arctan2(np.sin(angle), np.cos(angle)), atol=1e-5)


def test_boxes_and_degenerate_inputs_are_finite():
  pts = jnp.array([[[1.0, 5.0], [3.0, -2.0], [np.nan, 1.0]]])
  np.testing.assert_allclose(np.asarray(crop.boxes_of(pts)), [[1.0, -2.0, 3.0, 5.0]])
  assert np.all(np.asarray(crop.boxes_of(pts, jnp.zeros((1, 3), bool))) == 0)
  centre, side = crop.union_square(jnp.array([0.0, 0, 10, 4]), jnp.array([8.0, 2, 12, 20]), 1.5)
  np.testing.assert_allclose(np.asarray(centre), [6.0, 10.0])
  assert float(side) == pytest.approx(30.0)
  for bad in (0.0, -3.0, np.nan, np.inf):
    a = np.asarray(crop.crop_affine(jnp.array([5.0, 5.0]), bad, 32, 0.2))
    assert np.isfinite(a).all()
    assert np.isfinite(np.asarray(crop.warp_image(jnp.ones((8, 8, 1)), jnp.asarray(a), 16))).all()
  assert np.isfinite(np.asarray(crop.invert_affine(jnp.zeros((2, 3))))).all()
