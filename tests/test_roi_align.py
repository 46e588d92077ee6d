"""Tests for handobj_jax.geometry.roi_align.

Reference: a NumPy float64 transcription of the standard aligned RoIAlign
(torchvision's ``aligned=True`` CPU kernel: bin sub-grid, the "beyond one
cell is 0" rule, clamping) written below with explicit loops, in
torchvision's own coordinate convention (pixel centres at +0.5). Boxes of the
project convention are shifted by +0.5 before they are handed to it, so the
tests also check the convention mapping. Tolerances are stated per assertion.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.geometry import roi_align as ra


def _ref_taps(box_tv, height, width, oh, ow, sr, scale):
  """Bilinear taps of the standard aligned RoIAlign for one box (float64).

  Args:
    box_tv: [4] box in torchvision's convention (pixel centres at +0.5).

  Returns:
    taps[i][j] = list of (row, col, weight) whose weighted sum of feature
    rows is output bin (i, j).
  """
  x0, y0, x1, y1 = (float(v) for v in box_tv)
  start_w, start_h = x0 * scale - 0.5, y0 * scale - 0.5
  roi_w, roi_h = x1 * scale - 0.5 - start_w, y1 * scale - 0.5 - start_h
  bin_w, bin_h = roi_w / ow, roi_h / oh
  count = sr * sr
  taps = [[[] for _ in range(ow)] for _ in range(oh)]
  for ph in range(oh):
    for pw in range(ow):
      for iy in range(sr):
        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sr
        for ix in range(sr):
          x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sr
          if y < -1.0 or y > height or x < -1.0 or x > width:
            continue
          yy, xx = max(y, 0.0), max(x, 0.0)
          y_low, x_low = int(yy), int(xx)
          if y_low >= height - 1:
            y_high = y_low = height - 1
            yy = float(y_low)
          else:
            y_high = y_low + 1
          if x_low >= width - 1:
            x_high = x_low = width - 1
            xx = float(x_low)
          else:
            x_high = x_low + 1
          ly, lx = yy - y_low, xx - x_low
          hy, hx = 1.0 - ly, 1.0 - lx
          for r, c, wgt in ((y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
                            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)):
            taps[ph][pw].append((r, c, wgt / count))
  return taps


def _ref_roi_align(feats, boxes, oh, ow, sr, scale):
  """Forward reference [B, R, oh, ow, C] for project-convention boxes."""
  feats = np.asarray(feats, np.float64)
  b_, h, w, c = feats.shape
  out = np.zeros((b_, boxes.shape[1], oh, ow, c))
  for b in range(b_):
    for r in range(boxes.shape[1]):
      taps = _ref_taps(boxes[b, r] + 0.5, h, w, oh, ow, sr, scale)
      for i in range(oh):
        for j in range(ow):
          for (yy, xx, wgt) in taps[i][j]:
            out[b, r, i, j] += wgt * feats[b, yy, xx]
  return out


def _ref_adjoint(cot, boxes, shape, sr, scale):
  """Reference transpose: d<roi_align(F), cot>/dF, [B, H, W, C] float64."""
  b_, h, w, c = shape
  oh, ow = cot.shape[2:4]
  grad = np.zeros(shape)
  for b in range(b_):
    for r in range(boxes.shape[1]):
      taps = _ref_taps(boxes[b, r] + 0.5, h, w, oh, ow, sr, scale)
      for i in range(oh):
        for j in range(ow):
          for (yy, xx, wgt) in taps[i][j]:
            grad[b, yy, xx] += wgt * cot[b, r, i, j]
  return grad


def _feats(rng, b=2, h=12, w=10, c=3):
  return rng.normal(size=(b, h, w, c)).astype(np.float32)


def _tiny_boxes(rng):
  lo = rng.uniform(0, 38, (2, 4, 2))
  return np.concatenate([lo, lo + rng.uniform(0.01, 0.5, (2, 4, 2))], -1)


# Image is 48 x 40 pixels for a 12 x 10 map at stride 4 (spatial_scale 0.25).
_BOX_SETS = {
    "random_inside": lambda rng: np.concatenate(
        [rng.uniform(0, 20, (2, 4, 2)), rng.uniform(20, 39, (2, 4, 2))], -1),
    "at_and_across_border": lambda rng: np.array(
        [[[-0.5, -0.5, 39.5, 47.5], [-6.0, 10.0, 8.0, 20.0],
          [30.0, -7.0, 45.0, 9.0], [35.0, 40.0, 41.0, 52.0]],
         [[-3.0, -3.0, 3.0, 3.0], [38.0, 46.0, 39.4, 47.4],
          [20.0, 44.0, 30.0, 50.0], [-1.9, 5.0, 0.1, 8.0]]]),
    "tiny": lambda rng: _tiny_boxes(rng),
    "larger_than_image": lambda rng: np.array(
        [[[-30.0, -20.0, 70.0, 90.0], [-100.0, -100.0, 200.0, 200.0],
          [-10.0, 5.0, 50.0, 30.0], [5.0, -40.0, 30.0, 100.0]],
         [[-0.5, -0.5, 39.5, 47.5], [-60.0, -60.0, 10.0, 10.0],
          [-4.0, -4.0, 44.0, 52.0], [0.0, 0.0, 39.0, 47.0]]]),
}


@pytest.mark.parametrize("out_sr", [((5, 4), 2), ((3, 3), 1), ((2, 3), 3)])
def test_matches_float64_reference(out_sr):
  (oh, ow), sr = out_sr
  rng = np.random.default_rng(sr)
  feats = _feats(rng)
  names = sorted(_BOX_SETS)
  boxes = np.concatenate([_BOX_SETS[n](rng) for n in names], 1)
  boxes = boxes.astype(np.float32)
  fn = jax.jit(lambda f, b: ra.roi_align(f, b, output_size=(oh, ow),
                                         sampling_ratio=sr))
  res = fn(feats, boxes)
  assert res.features.shape == (2, 4 * len(names), oh, ow, 3)
  assert res.features.dtype == np.float32
  assert np.all(np.asarray(res.valid))
  ref = _ref_roi_align(feats, boxes.astype(np.float64), oh, ow, sr, 0.25)
  for k, name in enumerate(names):
    # 1e-5 on O(1) features (float32 sample positions vs float64).
    np.testing.assert_allclose(res.features[:, 4 * k:4 * k + 4],
                               ref[:, 4 * k:4 * k + 4], atol=1e-5, rtol=0,
                               err_msg=name)


def test_default_size_and_stride_match_reference_on_p2_like_case():
  rng = np.random.default_rng(11)
  feats = _feats(rng, b=1, h=32, w=32, c=2)        # a 128 x 128 image
  boxes = np.array([[[10.3, 20.7, 90.2, 101.9], [-20.0, 60.0, 40.0, 140.0]]],
                   np.float32)
  res = jax.jit(ra.roi_align)(feats, boxes)
  assert res.features.shape == (1, 2, 32, 32, 2)
  ref = _ref_roi_align(feats, boxes.astype(np.float64), 32, 32, 2, 0.25)
  # 1e-5 on O(1) features.
  np.testing.assert_allclose(res.features, ref, atol=1e-5, rtol=0)


def test_torchvision_convention_by_hand():
  # f[y, x] = 10 y + x on an 8 x 8 map (a 32 x 32 image at stride 4).
  ys, xs = np.mgrid[0:8, 0:8].astype(np.float32)
  feats = (10 * ys + xs)[None, :, :, None]
  # Project box [3.5, 7.5, 11.5, 15.5] = torchvision box [4, 8, 12, 16]:
  # feature coordinates u in [0.5, 2.5], v in [1.5, 3.5]. 2 x 2 bins with
  # centres u = 1, 2 and v = 2, 3; the function is linear and no sample is
  # clamped, so each bin is f at its centre.
  # Box [-4, -4, 4, 4]: u, v in [-1.375, 0.625]; one bin, sr = 2 samples per
  # axis at -0.875 (clamped to 0) and 0.125: mean 0.0625 per axis, so
  # 10 * 0.0625 + 0.0625 = 0.6875.
  boxes = np.array([[[3.5, 7.5, 11.5, 15.5], [-4.0, -4.0, 4.0, 4.0]]],
                   np.float32)
  fn = jax.jit(ra.roi_align, static_argnames="output_size")
  out = fn(feats, boxes[:, :1], output_size=(2, 2)).features
  np.testing.assert_allclose(out[0, 0, :, :, 0], [[21.0, 22.0], [31.0, 32.0]],
                             atol=1e-5)
  out = fn(feats, boxes[:, 1:], output_size=(1, 1)).features
  np.testing.assert_allclose(out[0, 0, 0, 0, 0], 0.6875, atol=1e-6)
  # The same numbers from the float64 reference given torchvision's boxes.
  taps = _ref_taps(np.array([4.0, 8.0, 12.0, 16.0]), 8, 8, 2, 2, 2, 0.25)
  val = sum(w * feats[0, r, c, 0] for (r, c, w) in taps[1][0])
  assert abs(val - 31.0) < 1e-9


def _modes(fn, *args):
  eager = fn(*args)
  jitted = jax.jit(fn)(*args)
  vmapped = jax.vmap(fn)(*[jnp.asarray(a)[None] for a in args])
  vmapped = jax.tree_util.tree_map(lambda x: x[0], vmapped)
  return {"eager": eager, "jit": jitted, "vmap": vmapped}


def test_jit_eager_vmap_agree():
  rng = np.random.default_rng(5)
  feats = _feats(rng)
  boxes = np.concatenate([_BOX_SETS["at_and_across_border"](rng),
                          [[[np.nan, 0, 5, 5]], [[5, 5, 1, 9]]]], 1)
  boxes = boxes.astype(np.float32)
  fn = lambda f, b: ra.roi_align(f, b, output_size=(4, 6))  # noqa: E731
  outs = _modes(fn, feats, boxes)
  ref = _ref_roi_align(feats, boxes[:, :4].astype(np.float64), 4, 6, 2, 0.25)
  for mode, res in outs.items():
    np.testing.assert_array_equal(res.valid, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]],
                                  err_msg=mode)
    # 1e-5 against the reference; modes agree to float32 rounding (1e-6).
    np.testing.assert_allclose(res.features[:, :4], ref, atol=1e-5,
                               err_msg=mode)
    np.testing.assert_allclose(res.features, outs["eager"].features, atol=1e-6,
                               err_msg=mode)
    assert np.all(np.asarray(res.features[:, 4]) == 0.0), mode


_INVALID = np.array([
    [np.nan, 0.0, 10.0, 10.0],       # non-finite
    [0.0, 0.0, np.inf, 10.0],
    [10.0, 0.0, 5.0, 10.0],          # inverted
    [0.0, 10.0, 10.0, 5.0],
    [5.0, 0.0, 5.0, 10.0],           # zero width
    [0.0, 7.0, 10.0, 7.0],           # zero height
    [-20.0, 0.0, -0.5, 10.0],        # entirely left of the image (edge -0.5)
    [39.5, 0.0, 60.0, 10.0],         # entirely right (image width 40)
    [0.0, -30.0, 10.0, -0.6],        # above
    [0.0, 47.5, 10.0, 50.0],         # below (image height 48)
], np.float32)


def test_invalid_boxes_give_zeros_flag_and_finite_gradients():
  rng = np.random.default_rng(9)
  feats = _feats(rng, b=1)
  good = np.array([[2.0, 3.0, 20.0, 30.0], [-0.4, 0.0, 1.0, 2.0]], np.float32)
  boxes = np.concatenate([_INVALID, good])[None]
  res = jax.jit(ra.roi_align, static_argnames="output_size")(
      feats, boxes, output_size=(3, 3))
  np.testing.assert_array_equal(res.valid[0], [False] * len(_INVALID)
                                + [True, True])
  assert np.all(np.asarray(res.features[0, :len(_INVALID)]) == 0.0)
  assert np.all(np.isfinite(np.asarray(res.features)))
  assert np.all(ra.roi_align_valid(_INVALID, 48.0, 40.0) == False)  # noqa: E712

  def loss(f, b):
    return jnp.sum(jnp.square(ra.roi_align(f, b, output_size=(3, 3)).features))

  gf, gb = jax.jit(jax.grad(loss, argnums=(0, 1)))(feats, boxes)
  assert np.all(np.isfinite(np.asarray(gf)))
  np.testing.assert_array_equal(gb, 0.0)   # boxes are stop-gradient
  # Only the two valid boxes contribute to the feature gradient.
  gf_good = jax.jit(jax.grad(loss))(feats, boxes[:, len(_INVALID):])
  np.testing.assert_allclose(gf, gf_good, atol=1e-6)


def test_feature_gradient_is_the_reference_adjoint():
  rng = np.random.default_rng(21)
  feats = _feats(rng, b=2, h=9, w=11, c=2)          # a 36 x 44 image
  boxes = np.array([[[3.0, 4.0, 30.0, 20.0], [-5.0, 20.0, 12.0, 40.0]],
                    [[30.0, 1.0, 50.0, 35.0], [10.2, 10.3, 11.0, 12.9]]],
                   np.float32)
  cot = rng.normal(size=(2, 2, 4, 3, 2)).astype(np.float32)
  _, vjp = jax.vjp(lambda f: ra.roi_align(f, boxes, output_size=(4, 3))
                   .features, feats)
  (grad,) = vjp(cot)
  ref = _ref_adjoint(cot.astype(np.float64), boxes.astype(np.float64),
                     feats.shape, 2, 0.25)
  # 1e-5 on O(1) cotangents (each cell sums few taps).
  np.testing.assert_allclose(grad, ref, atol=1e-5, rtol=0)
  # Adjoint identity with the forward reference: <A F, G> = <F, A^T G>.
  lhs = float(np.sum(_ref_roi_align(feats, boxes.astype(np.float64), 4, 3, 2,
                                    0.25) * cot))
  assert abs(lhs - float(np.sum(feats.astype(np.float64) * grad))) < 1e-4


def test_bfloat16_features_keep_their_dtype():
  rng = np.random.default_rng(3)
  feats = _feats(rng)
  boxes = _BOX_SETS["random_inside"](rng).astype(np.float32)
  fn = jax.jit(lambda f: ra.roi_align(f, boxes, output_size=(3, 3)).features)
  out16 = fn(jnp.asarray(feats, jnp.bfloat16))
  out32 = fn(feats)
  assert out16.dtype == jnp.bfloat16
  # bfloat16 inputs and output: ~3 significant digits on O(1) values.
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=3e-2)


def _ref_intersection(a, b):
  lo = np.maximum(a[..., :2], b[..., :2])
  hi = np.minimum(a[..., 2:], b[..., 2:])
  ok = np.all(hi > lo, -1) & np.all(np.isfinite(np.concatenate([lo, hi], -1)), -1)
  return np.where(ok[..., None], np.concatenate([lo, hi], -1), 0.0), ok


def test_box_intersection():
  a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10],
                [0, 0, 10, 10], [np.nan, 0, 10, 10], [2, 3, 8, 9],
                [0, 0, 10, 10]], np.float32)
  b = np.array([[5, 5, 20, 20], [10, 0, 20, 10],   # overlap; edge contact
                [20, 20, 30, 30], [-5, 2, 15, 4],   # disjoint; a strip
                [0, 0, 5, 5], [0, 0, 10, 10],       # NaN; contained
                [3, -5, 4, 20]], np.float32)
  ref_box, ref_ok = _ref_intersection(a.astype(np.float64), b.astype(np.float64))
  for mode, (box, ok) in _modes(ra.box_intersection, a, b).items():
    np.testing.assert_array_equal(ok, [1, 0, 0, 1, 0, 1, 1], err_msg=mode)
    np.testing.assert_array_equal(ok, ref_ok, err_msg=mode)
    np.testing.assert_allclose(box, ref_box, atol=0, err_msg=mode)
  np.testing.assert_allclose(ra.box_intersection(a, b)[0][0], [5, 5, 10, 10])
  # Random pairs against the reference, with broadcasting.
  rng = np.random.default_rng(4)
  p = rng.uniform(0, 50, (6, 5, 2, 2))
  boxes = np.concatenate([p.min(-2), p.max(-2)], -1)
  box, ok = ra.box_intersection(boxes, boxes[:1])
  rbox, rok = _ref_intersection(boxes, boxes[:1])
  np.testing.assert_array_equal(ok, rok)
  np.testing.assert_allclose(box, rbox, atol=1e-5)
  # Empty intersections are invalid RoIs; gradients stay finite.
  assert not bool(ra.roi_align_valid(ra.box_intersection(a[2], b[2])[0], 48, 40))
  g = jax.grad(lambda x: jnp.sum(ra.box_intersection(x, b)[0]))(a)
  assert np.all(np.isfinite(np.asarray(g)))
