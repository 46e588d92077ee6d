"""Tests for handobj_jax.geometry.homography.

References: OpenCV (cv2.findHomography method 0, cv2.perspectiveTransform)
and NumPy float64 re-implementations written here. Tolerances are stated at
each assertion.
"""
import cv2
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.geometry import homography as hg
import jax_modes


def _random_h(rng):
  """A random, well-conditioned image-to-image homography (float64)."""
  h = np.eye(3) + rng.normal(0, [[0.1, 0.1, 20], [0.1, 0.1, 20],
                                 [1e-4, 1e-4, 0]])
  return h / h[2, 2]


def _project_np(h, pts):
  pts_h = np.concatenate([pts, np.ones_like(pts[..., :1])], -1) @ h.T
  return pts_h[..., :2] / pts_h[..., 2:]


def _hartley_np(p):
  c = p.mean(0)
  s = np.sqrt(2) / np.sqrt(((p - c) ** 2).sum(1).mean())
  return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]])


def _algebraic_cost_np(h, src, dst):
  """Normalised DLT cost ||A h_n||^2, h_n = T_d H T_s^-1 with ||h_n|| = 1."""
  t_s, t_d = _hartley_np(src), _hartley_np(dst)
  h_n = t_d @ h @ np.linalg.inv(t_s)
  h_n /= np.linalg.norm(h_n)
  sn = _project_np(t_s, src)
  dn = _project_np(t_d, dst)
  x, y = sn.T
  u, v = dn.T
  o, z = np.ones_like(x), np.zeros_like(x)
  a = np.concatenate([
      np.stack([x, y, o, z, z, z, -u * x, -u * y, -u], 1),
      np.stack([z, z, z, x, y, o, -v * x, -v * y, -v], 1)])
  return float(((a @ h_n.ravel()) ** 2).sum())


def _rmse_np(h, src, dst):
  return float(np.sqrt(((_project_np(h, src) - dst) ** 2).sum(1).mean()))


def _assert_same_mapping(h_a, h_b, extent, atol_px=1e-3):
  """Asserts two homographies map an 11 x 11 grid over [0, extent]^2 to the
  same pixels, within atol_px.

  Homographies are compared in pixels, never element-wise: the entries mix
  scales (a translation of 0.1 px next to a perspective term of 1e-5/px), so
  an rtol on the entries is either meaningless for the small ones or depends
  on which float32 kernel (AVX2, AVX-512, AMX, cuSOLVER) the solver ran on.
  """
  g = np.linspace(0.0, extent, 11)
  grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  np.testing.assert_allclose(_project_np(np.asarray(h_a, np.float64), grid),
                             _project_np(np.asarray(h_b, np.float64), grid),
                             atol=atol_px, rtol=0)


@pytest.mark.parametrize("num_pts", [4, 20, 57, 200])
def test_noise_free_fit_matches_opencv(num_pts):
  rng = np.random.default_rng(num_pts)
  for _ in range(5):
    h_true = _random_h(rng)
    src = rng.uniform(0, 640, (num_pts, 2))
    dst = _project_np(h_true, src)
    h, ok = hg.fit_homography(src.astype(np.float32), dst.astype(np.float32))
    assert bool(ok)
    h_cv, _ = cv2.findHomography(src, dst, 0)
    ours = _project_np(np.asarray(h, np.float64), src)
    theirs = _project_np(h_cv, src)
    # 1e-3 px reprojection agreement (float32 vs OpenCV's float64).
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
    assert abs(float(h[2, 2]) - 1.0) < 1e-6


@pytest.mark.parametrize("num_pts", [8, 20, 200])
def test_noisy_fit_costs_within_one_percent_of_opencv(num_pts):
  rng = np.random.default_rng(100 + num_pts)
  for _ in range(10):
    h_true = _random_h(rng)
    src = rng.uniform(0, 640, (num_pts, 2))
    dst = _project_np(h_true, src) + rng.normal(0, 1.0, (num_pts, 2))
    h, ok = hg.fit_homography(src.astype(np.float32), dst.astype(np.float32))
    assert bool(ok)
    h = np.asarray(h, np.float64)
    h_cv, _ = cv2.findHomography(src, dst, 0)
    # Our DLT minimises the normalised algebraic cost, OpenCV refines the
    # reprojection error: each must be within 1% of the other's on both.
    assert _algebraic_cost_np(h, src, dst) <= 1.01 * _algebraic_cost_np(
        h_cv, src, dst)
    assert _rmse_np(h, src, dst) <= 1.01 * _rmse_np(h_cv, src, dst)


@pytest.mark.parametrize("mode", jax_modes.MODES)
def test_transforms_match_references_in_every_mode(mode):
  rng = np.random.default_rng(7)
  h_true = _random_h(rng)
  src = rng.uniform(0, 320, (30, 2))
  dst = _project_np(h_true, src)
  weights = rng.uniform(0.5, 2.0, 30).astype(np.float32)
  h, ok = jax_modes.run(mode, hg.fit_homography, src.astype(np.float32),
               dst.astype(np.float32), weights)
  assert bool(ok)
  np.testing.assert_allclose(_project_np(np.asarray(h, np.float64), src), dst,
                             atol=1e-3)
  pts = rng.uniform(0, 320, (11, 2))
  out = jax_modes.run(mode, hg.apply_homography, h_true.astype(np.float32),
             pts.astype(np.float32))
  ref = cv2.perspectiveTransform(pts[None], h_true)[0]
  np.testing.assert_allclose(out, ref, atol=1e-3)
  flow = jax_modes.run(mode, lambda m: hg.homography_flow_grid(m, 5, 7),
              h_true.astype(np.float32))
  ys, xs = np.mgrid[0:5, 0:7].astype(np.float64)
  grid = np.stack([xs, ys], -1)
  np.testing.assert_allclose(flow, _project_np(h_true, grid) - grid, atol=1e-3)
  assert flow.shape == (5, 7, 2)


def test_leading_batch_dims_match_per_item_fits():
  rng = np.random.default_rng(3)
  hs = np.stack([_random_h(rng) for _ in range(6)]).reshape(2, 3, 3, 3)
  src = rng.uniform(0, 300, (2, 3, 25, 2))
  dst = np.stack([_project_np(hs[i, j], src[i, j]) for i in range(2)
                  for j in range(3)]).reshape(2, 3, 25, 2)
  h, ok = jax.jit(hg.fit_homography)(src.astype(np.float32),
                                     dst.astype(np.float32))
  assert h.shape == (2, 3, 3, 3) and ok.shape == (2, 3)
  for i in range(2):
    for j in range(3):
      hij, _ = hg.fit_homography(src[i, j].astype(np.float32),
                                 dst[i, j].astype(np.float32))
      # Compared where it matters, in pixels: batched and per-item solvers may differ in float32
      # rounding (on GPU, batched and single SVDs are different cuSOLVER algorithms: entries then
      # differ by ~1e-4 relative, reprojections by < 1e-3 px).
      np.testing.assert_allclose(_project_np(np.asarray(h[i, j], np.float64), src[i, j]),
                                 _project_np(np.asarray(hij, np.float64), src[i, j]), atol=1e-3)
      np.testing.assert_allclose(_project_np(np.asarray(h[i, j], np.float64), src[i, j]),
                                 dst[i, j], atol=1e-3)
      # And over the whole 300 px image, not only at the fitted points.
      _assert_same_mapping(h[i, j], hs[i, j], 300.0)


def _square_plus(n_extra, rng):
  src = np.concatenate([[[0, 0], [100, 0], [100, 100], [0, 100]],
                        rng.uniform(0, 100, (n_extra, 2))]).astype(np.float32)
  return src


def _degenerate_cases():
  rng = np.random.default_rng(0)
  line = np.stack([np.linspace(0, 100, 8), np.linspace(5, 60, 8)], -1)
  cases = {
      "three_points": np.array([[0, 0], [10, 0], [0, 10]], np.float32),
      "collinear": line.astype(np.float32),
      "duplicates": np.array([[0, 0], [10, 0], [0, 10], [10, 0], [0, 10],
                              [0, 0]], np.float32),
      "three_collinear_of_four": np.array([[0, 0], [5, 0], [10, 0], [3, 7]],
                                          np.float32),
      "all_same": np.full((6, 2), 4.0, np.float32),
      "all_nan": np.full((6, 2), np.nan, np.float32),
  }
  nan_leaves_three = _square_plus(2, rng)
  nan_leaves_three[[0, 4, 5]] = np.nan
  cases["nan_leaves_three"] = nan_leaves_three
  return cases


@pytest.mark.parametrize("name", sorted(_degenerate_cases()))
def test_degenerate_inputs_give_identity_and_finite_gradients(name):
  src = _degenerate_cases()[name]
  dst = src * 1.5 + 3.0

  def loss(s, d):
    h, _ = hg.fit_homography(s, d)
    return jnp.sum(h * jnp.arange(9.0).reshape(3, 3))

  h, ok = hg.fit_homography(src, dst)
  assert not bool(ok)
  np.testing.assert_array_equal(h, np.eye(3))
  gs, gd = jax.grad(loss, argnums=(0, 1))(src, dst)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gd))


def test_collinear_dst_only_is_rejected():
  rng = np.random.default_rng(2)
  src = rng.uniform(0, 100, (10, 2)).astype(np.float32)
  dst = np.stack([src[:, 0], 2 * src[:, 0] + 1], -1).astype(np.float32)
  _, ok = hg.fit_homography(src, dst)
  assert not bool(ok)


def test_nonfinite_points_and_valid_mask_are_ignored():
  rng = np.random.default_rng(4)
  h_true = _random_h(rng)
  src = rng.uniform(0, 300, (12, 2))
  dst = _project_np(h_true, src)
  src32, dst32 = src.astype(np.float32), dst.astype(np.float32)
  h_clean, ok_clean = hg.fit_homography(src32[3:], dst32[3:])
  bad_src, bad_dst = src32.copy(), dst32.copy()
  bad_src[0, 0] = np.nan
  bad_dst[1, 1] = np.inf
  bad_dst[2] = 1e4  # a gross outlier, excluded by the mask below
  valid = np.ones(12, bool)
  valid[2] = False
  h, ok = hg.fit_homography(bad_src, bad_dst, valid=valid)
  assert bool(ok) and bool(ok_clean)
  # Same fit as without the bad points: 1e-3 px over the 300 px image (the
  # OpenCV parity tolerance; a point not ignored moves it by pixels).
  _assert_same_mapping(h, h_clean, 300.0)
  # Zero weights behave like invalid points.
  w = valid.astype(np.float32)
  h_w, _ = hg.fit_homography(np.nan_to_num(bad_src), np.nan_to_num(
      bad_dst, posinf=0.0), weights=np.where(np.arange(12) < 3, 0.0, w))
  _assert_same_mapping(h_w, h_clean, 300.0)


# 10 points: the QR + SVD solver; 40 points: the normal-equation (eigh) solver.
@pytest.mark.parametrize("num_pts", [10, 40])
def test_gradient_matches_finite_differences(num_pts):
  rng = np.random.default_rng(5)
  h_true = _random_h(rng)
  src = rng.uniform(0, 640, (num_pts, 2))
  dst = _project_np(h_true, src) + rng.normal(0, 1, (num_pts, 2))
  probe = jnp.array([[100.0, 200.0], [300.0, 50.0]])

  def f(s, d):
    h, _ = hg.fit_homography(s, d)
    return jnp.sum(hg.apply_homography(h, probe))

  s32, d32 = src.astype(np.float32), dst.astype(np.float32)
  g_src, g_dst = jax.grad(f, argnums=(0, 1))(s32, d32)
  eps = 0.05
  for i, j in [(0, 0), (3, 1), (7, 0)]:
    for arr, grad, is_src in [(src, g_src, True), (dst, g_dst, False)]:
      plus, minus = arr.copy(), arr.copy()
      plus[i, j] += eps
      minus[i, j] -= eps
      if is_src:
        fd = (f(plus.astype(np.float32), d32)
              - f(minus.astype(np.float32), d32)) / (2 * eps)
      else:
        fd = (f(s32, plus.astype(np.float32))
              - f(s32, minus.astype(np.float32))) / (2 * eps)
      # float32 central differences: absolute 0.02 (gradients are O(1)).
      assert abs(float(grad[i, j]) - float(fd)) < 2e-2


def test_apply_homography_safe_division():
  h = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float32)  # w = x
  pts = np.array([[0.0, 5.0], [-0.0, 1.0], [2.0, 4.0]], np.float32)
  out = hg.apply_homography(h, pts)
  assert np.all(np.isfinite(out))
  assert np.all(np.abs(out[:2, 1]) >= 1e8)  # y / ~0: huge, finite
  np.testing.assert_allclose(out[2], [1.0, 2.0], rtol=1e-6)
  grid = hg.homography_flow_grid(h, 3, 4)
  assert np.all(np.isfinite(grid))
  g = jax.grad(lambda p: jnp.sum(hg.apply_homography(h, p)))(pts)
  assert np.all(np.isfinite(g))


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="src shape"):
    hg.fit_homography(np.zeros((5, 2)), np.zeros((6, 2)))
  with pytest.raises(ValueError, match=r"\(x, y\)"):
    hg.fit_homography(np.zeros((5, 3)), np.zeros((5, 3)))


def test_robust_fit_recovers_homography_with_30_percent_outliers():
  rng = np.random.default_rng(11)
  n, n_out = 100, 30
  hs, srcs, dsts, masks = [], [], [], []
  for _ in range(4):
    h_true = _random_h(rng)
    src = rng.uniform(0, 400, (n, 2))
    dst = _project_np(h_true, src) + rng.normal(0, 0.3, (n, 2))
    out_idx = rng.choice(n, n_out, replace=False)
    dst[out_idx] += rng.uniform(30, 150, (n_out, 2)) * rng.choice(
        [-1, 1], (n_out, 2))
    mask = np.ones(n, bool)
    mask[out_idx] = False
    hs.append(h_true)
    srcs.append(src)
    dsts.append(dst)
    masks.append(mask)
  src = np.stack(srcs).astype(np.float32)
  dst = np.stack(dsts).astype(np.float32)
  h_rob, ok, w = jax.jit(hg.fit_homography_robust)(src, dst)
  h_dlt, _ = hg.fit_homography(src, dst)
  for b in range(4):
    clean = _project_np(hs[b], srcs[b])
    err_rob = np.abs(_project_np(np.asarray(h_rob[b], np.float64), srcs[b])
                     - clean).max()
    err_dlt = np.abs(_project_np(np.asarray(h_dlt[b], np.float64), srcs[b])
                     - clean).max()
    assert bool(ok[b])
    assert err_rob < 0.5, err_rob   # noise sigma 0.3 px
    assert err_dlt > 5.0, err_dlt   # plain DLT is pulled by the outliers
    # Outliers get zero weight, most inliers a positive one.
    assert np.all(np.asarray(w[b])[~masks[b]] == 0)
    assert np.mean(np.asarray(w[b])[masks[b]] > 0) > 0.95
  g = jax.jit(jax.grad(
      lambda d: jnp.sum(hg.fit_homography_robust(src, d)[0])))(dst)
  assert np.all(np.isfinite(g))


# --- Property tests --------------------------------------------------------

_NUM_P = 8  # Property tests run with _NUM_P points (QR + SVD solver) and
_NUM_P_LARGE = 40  # with _NUM_P_LARGE (normal-equation solver, P > 16).
_fit_jit = jax.jit(hg.fit_homography)
_grad_jit = jax.jit(jax.grad(
    lambda s, d: jnp.sum(hg.fit_homography(s, d)[0] ** 2), argnums=(0, 1)))


def test_solver_switch_is_where_the_tests_assume():
  assert _NUM_P <= hg._SMALL_P < _NUM_P_LARGE
_coord = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e6, -1e6]))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(_coord, min_size=4 * _NUM_P, max_size=4 * _NUM_P))
def test_property_arbitrary_input_is_nan_free(values):
  _check_nan_free(np.array(values, np.float32).reshape(2, _NUM_P, 2))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(_coord, min_size=4 * _NUM_P_LARGE,
                           max_size=4 * _NUM_P_LARGE))
def test_property_arbitrary_input_is_nan_free_many_points(values):
  _check_nan_free(np.array(values, np.float32).reshape(2, _NUM_P_LARGE, 2))


def _check_nan_free(arr):
  h, ok = _fit_jit(arr[0], arr[1])
  assert np.all(np.isfinite(h))
  if not bool(ok):
    np.testing.assert_array_equal(h, np.eye(3))
  gs, gd = _grad_jit(arr[0], arr[1])
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gd))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    kind=st.sampled_from(["collinear", "few_distinct", "few_valid"]),
    num_p=st.sampled_from([_NUM_P, _NUM_P_LARGE]),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-2, 6))
def test_property_degenerate_structures_are_flagged(kind, num_p, seed,
                                                    log_scale):
  rng = np.random.default_rng(seed)
  scale = 10.0 ** log_scale
  if kind == "collinear":
    t = rng.uniform(-1, 1, num_p)
    direction = rng.normal(size=2)
    src = rng.normal(size=2) + t[:, None] * direction
  elif kind == "few_distinct":
    base = rng.normal(size=(3, 2))
    src = base[rng.integers(0, 3, num_p)]
  else:
    src = rng.normal(size=(num_p, 2))
    src[rng.permutation(num_p)[:num_p - 3]] = np.nan
  src = (src * scale).astype(np.float32)
  dst = (src * 0.9 + 0.05 * scale).astype(np.float32)
  h, ok = _fit_jit(src, dst)
  assert not bool(ok)
  np.testing.assert_array_equal(h, np.eye(3))
  gs, gd = _grad_jit(src, dst)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gd))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-1, 5),
                  rel_offset=st.floats(-20, 20),
                  grid_shape=st.sampled_from([(4, 2), (8, 5)]))
def test_property_well_posed_fits_are_ok_and_accurate(seed, log_scale,
                                                      rel_offset, grid_shape):
  rng = np.random.default_rng(seed)
  scale = 10.0 ** log_scale
  # Offsets up to 20x the spread: a pixel-frame H of a tiny patch far from
  # the origin is ill-conditioned in float32 (see the module docstring).
  offset = rel_offset * scale
  # Points in general position: a jittered grid (min distance ~0.3 scale);
  # 8 points use the QR + SVD solver, 40 the normal-equation solver.
  grid = np.stack(np.meshgrid(np.arange(grid_shape[0]),
                              np.arange(grid_shape[1])), -1).reshape(-1, 2)
  src = (grid + rng.uniform(-0.2, 0.2, grid.shape)) * scale + offset
  h_true = np.eye(3)
  h_true[:2, :2] += rng.normal(0, 0.1, (2, 2))
  h_true[:2, 2] = rng.normal(0, 0.1 * scale, 2)
  dst = _project_np(h_true, src)
  h, ok = _fit_jit(src.astype(np.float32), dst.astype(np.float32))
  assert bool(ok)
  err = np.abs(_project_np(np.asarray(h, np.float64), src) - dst).max()
  # Relative float32 accuracy, with the coordinate magnitude as reference.
  assert err < 1e-3 * scale, err


@pytest.mark.parametrize("num_pts", [20, 778])
def test_normal_equation_solver_on_thin_point_sets(num_pts):
  """The eigh solver squares the condition number; its refinement step must
  keep accepted fits at 1e-3 px, and sets too thin for float32 are flagged.

  A strip 3% as high as wide (e.g. 19 x 640 px) is accepted; one 0.1% as
  high (0.6 px) is rejected rather than returned with a large error (1%
  is near the rank threshold: accepted or not depending on the points).
  """
  rng = np.random.default_rng(num_pts)
  for aspect, accept in ((0.03, True), (0.001, False)):
    for _ in range(5):
      h_true = _random_h(rng)
      src = rng.uniform(0, 640, (num_pts, 2))
      src[:, 1] = 320 + (src[:, 1] - 320) * aspect
      dst = _project_np(h_true, src)
      h, ok = _fit_jit(src.astype(np.float32), dst.astype(np.float32))
      assert bool(ok) == accept, (aspect, bool(ok))
      if accept:
        err = np.abs(_project_np(np.asarray(h, np.float64), src) - dst).max()
        assert err < 1e-3, err  # px, the OpenCV parity tolerance
      else:
        np.testing.assert_array_equal(h, np.eye(3))
