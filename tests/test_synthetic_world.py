"""Tests for the procedural hand-object video world (input_pipeline/synthetic_world.py).

References are independent of the generator's own flow code: cv2.remap for warping frames by flow, NumPy
float64 homography algebra on the returned homographies, and np.nonzero for mask extents.
"""

import dataclasses
import hashlib

import cv2
import numpy as np
import pytest

from input_pipeline import synthetic_world as sw

EXPECTED_KEYS = {
    "frames", "flow", "flow_exact", "flow_visible", "hand_vertices", "hand_vertices_exact", "keypoints",
    "hand_valid", "holding", "person_mask", "person_instance_mask", "hand_mask", "object_mask", "hand_box",
    "object_box", "query_point", "hand_homography", "camera_homography", "distractor_mask",
    "moving_distractor_mask"}


def _config(size=128, **kw):
  return sw.WorldConfig(height=size, width=size, **kw)


def _proj(m, pts):
  hom = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,))], -1) @ np.asarray(m, np.float64).T
  return hom[..., :2] / hom[..., 2:3]


def _warp_error(frames, flow, t, s):
  """|frame_s(p + flow(p)) - frame_t(p)| per pixel (mean over RGB), sampled bilinearly with cv2.remap."""
  h, w = flow.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  warped = cv2.remap(frames[s].astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
  return np.abs(warped - frames[t].astype(np.float32)).mean(-1)


def _interior(layer_id, flow, t, s):
  """Pixels whose 3x3 neighbourhood at t is one layer and whose target's 4 bilinear taps at s are that layer."""
  ids = layer_id[t]
  h, w = ids.shape
  same = np.ones((h, w), bool)
  pad = np.pad(ids, 1, mode="edge")
  for dy in range(3):
    for dx in range(3):
      same &= pad[dy:dy + h, dx:dx + w] == ids
  ys, xs = np.mgrid[0:h, 0:w]
  tx, ty = xs + flow[..., 0], ys + flow[..., 1]
  inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
  for fx in (np.floor, np.ceil):
    for fy in (np.floor, np.ceil):
      qx = np.clip(fx(tx), 0, w - 1).astype(int)
      qy = np.clip(fy(ty), 0, h - 1).astype(int)
      same &= layer_id[s][qy, qx] == ids
  return same & inside


# Bounds: mean abs error (grey levels, per pair) over visible moving pixels / over interior visible moving
# pixels (away from layer edges). Hard-edged layers make the 1-px rim of each surface worst; resampling a
# resampled texture and uint8 rounding are the rest. Over 100 seeds at 128 (20 at 256) the worst pair means
# measured 2.8 / 0.6 (1.2 / 0.35).
_WARP_BOUNDS = {128: (3.0, 1.0), 256: (1.6, 0.6)}


@pytest.mark.parametrize("size,seed,camera", [(128, 0, 0.0), (128, 1, 0.0), (128, 2, 1.0), (128, 3, 0.0),
                                              (256, 0, 0.0), (256, 1, 1.0)])
def test_exact_flow_reproduces_frames(size, seed, camera):
  config = _config(size, p_camera_motion=camera)
  clip, layer_id, _ = sw.generate_clip_with_layers(config, seed)
  frames = clip["frames"]
  all_bound, interior_bound = _WARP_BOUNDS[size]
  for m, t in enumerate(sw.MIDDLE_FRAMES):
    for k, off in enumerate(sw.OFFSETS):
      flow = clip["flow_exact"][m, k]
      moving = np.linalg.norm(flow, axis=-1) > 0.5
      sel = clip["flow_visible"][m, k] & moving
      assert sel.sum() > 100, "expected moving visible pixels in every pair"
      err = _warp_error(frames, flow, t, t + off)
      assert err[sel].mean() < all_bound, (m, k, err[sel].mean())
      inner = sel & _interior(layer_id, flow, t, t + off)
      assert err[inner].mean() < interior_bound, (m, k, err[inner].mean())
      # Sanity check that the test can fail: the zero flow does not reproduce moving pixels.
      assert _warp_error(frames, np.zeros_like(flow), t, t + off)[sel].mean() > err[sel].mean()


def _first_holding_clip(config, seeds=range(50)):
  for seed in seeds:
    clip = sw.generate_clip(config, seed)
    if clip["holding"].any():
      return clip
  raise AssertionError("no holding hand in 50 seeds")


@pytest.mark.parametrize("camera", [0.0, 1.0])
def test_held_object_and_hand_flow_follow_hand_homography(camera):
  clip = _first_holding_clip(_config(p_camera_motion=camera, p_hold=1.0))
  hom = clip["hand_homography"].astype(np.float64)
  for n in np.flatnonzero(clip["holding"]):
    for m, t in enumerate(sw.MIDDLE_FRAMES):
      for k, off in enumerate(sw.OFFSETS):
        rel = hom[t + off, n] @ np.linalg.inv(hom[t, n])
        for mask in (clip["object_mask"][t, n], clip["hand_mask"][t, n]):
          ys, xs = np.nonzero(mask)
          assert len(xs) > 10
          pts = np.stack([xs, ys], -1).astype(np.float64)
          expected = _proj(rel, pts) - pts
          got = clip["flow_exact"][m, k][ys, xs]
          np.testing.assert_allclose(got, expected, atol=1e-3)
    # Exact vertices and (noise-free) keypoints move with the same homography.
    for t in range(1, clip["frames"].shape[0]):
      rel = hom[t, n] @ np.linalg.inv(hom[0, n])
      np.testing.assert_allclose(_proj(rel, clip["hand_vertices_exact"][0, n].astype(np.float64)),
                                 clip["hand_vertices_exact"][t, n], atol=1e-3)
      np.testing.assert_allclose(_proj(rel, clip["keypoints"][0, n].astype(np.float64)),
                                 clip["keypoints"][t, n], atol=1e-3)


def test_background_flow_follows_camera_homography():
  clip = sw.generate_clip(_config(p_camera_motion=1.0), 5)
  cam = clip["camera_homography"].astype(np.float64)
  assert np.abs(cam[0] - np.eye(3)).max() > 1e-3
  for m, t in enumerate(sw.MIDDLE_FRAMES):
    bg = ~(clip["person_mask"][t] | clip["object_mask"][t].any(0) | clip["distractor_mask"][t])
    ys, xs = np.nonzero(bg)
    pts = np.stack([xs, ys], -1).astype(np.float64)
    for k, off in enumerate(sw.OFFSETS):
      expected = _proj(cam[t + off] @ np.linalg.inv(cam[t]), pts) - pts
      np.testing.assert_allclose(clip["flow_exact"][m, k][ys, xs], expected, atol=1e-3)


def test_static_camera_background_has_zero_flow():
  clip = sw.generate_clip(_config(), 6)
  np.testing.assert_array_equal(clip["camera_homography"], np.broadcast_to(np.eye(3), (10, 3, 3)))
  for m, t in enumerate(sw.MIDDLE_FRAMES):
    bg = ~(clip["person_mask"][t] | clip["object_mask"][t].any(0) | clip["distractor_mask"][t])
    assert np.abs(clip["flow_exact"][m][:, bg]).max() < 1e-4


def _reference_box(mask):
  ys, xs = np.nonzero(mask)
  if len(xs) == 0:
    return np.zeros(4, np.float32)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_boxes_and_flags_agree(seed):
  config = _config(max_hands=3 if seed == 3 else 2, p_camera_motion=0.5)
  clip = sw.generate_clip(config, seed)
  assert set(clip) == EXPECTED_KEYS
  num_t, n_max, h, w = config.num_frames, config.max_hands, config.height, config.width
  valid, holding = clip["hand_valid"], clip["holding"]
  assert config.min_hands <= valid.sum() <= config.max_hands
  assert np.all(valid[:valid.sum()])  # Valid hands come first.
  assert not np.any(holding & ~valid)
  for t in range(num_t):
    np.testing.assert_array_equal(clip["person_mask"][t], clip["person_instance_mask"][t].any(0))
    inst = clip["person_instance_mask"][t].astype(int).sum(0)
    assert inst.max() <= 1, "person instances overlap"
    assert not np.any(clip["moving_distractor_mask"][t] & ~clip["distractor_mask"][t])
    assert not np.any(clip["distractor_mask"][t] & clip["person_mask"][t])
    for n in range(n_max):
      hand, obj = clip["hand_mask"][t, n], clip["object_mask"][t, n]
      assert not np.any(hand & obj)
      assert not np.any(hand & ~clip["person_instance_mask"][t, n])
      assert not np.any(obj & clip["person_mask"][t])
      assert not np.any(obj & clip["distractor_mask"][t])
      np.testing.assert_array_equal(clip["hand_box"][t, n], _reference_box(hand))
      np.testing.assert_array_equal(clip["object_box"][t, n], _reference_box(obj))
  for n in range(n_max):
    has_object = clip["object_mask"][:, n].any()
    assert has_object == holding[n]
    if valid[n]:
      assert clip["hand_mask"][:, n].any(axis=(1, 2)).all(), "a valid hand should be visible in every frame"
      # The query point is the mean of the noisy vertices and, when inside the image, lies on or near the
      # hand (a hand that has mostly left the frame at the clip's ends can have its mean outside).
      np.testing.assert_allclose(clip["query_point"][:, n], clip["hand_vertices"][:, n].mean(1), atol=1e-4)
      for t in range(num_t):
        qx, qy = clip["query_point"][t, n]
        ys, xs = np.nonzero(clip["hand_mask"][t, n] | clip["object_mask"][t, n])
        d = np.hypot(xs - qx, ys - qy).min()
        ix, iy = int(np.clip(np.rint(qx), 0, w - 1)), int(np.clip(np.rint(qy), 0, h - 1))
        occluded = (clip["person_mask"][t, iy, ix] and not clip["person_instance_mask"][t, n, iy, ix]) or (
            clip["distractor_mask"][t, iy, ix])
        outside = not (0 <= qx <= w - 1 and 0 <= qy <= h - 1)
        assert d < 4.0 or occluded or outside, (t, n, d)
    else:
      for key in ("hand_vertices", "hand_vertices_exact", "keypoints", "person_instance_mask", "hand_mask",
                  "object_mask", "hand_box", "object_box", "query_point", "hand_homography"):
        assert not np.any(clip[key][:, n]), key
  # Visibility is False wherever the exact target falls outside the image.
  ys, xs = np.mgrid[0:h, 0:w]
  tx = xs + clip["flow_exact"][..., 0]
  ty = ys + clip["flow_exact"][..., 1]
  outside = (tx < -0.5) | (tx > w - 0.5) | (ty < -0.5) | (ty > h - 0.5)
  assert not np.any(clip["flow_visible"] & outside)


def _digest(clip):
  h = hashlib.sha256()
  for key in sorted(clip):
    h.update(key.encode())
    h.update(str(clip[key].dtype).encode() + str(clip[key].shape).encode())
    h.update(np.ascontiguousarray(clip[key]).tobytes())
  return h.hexdigest()


def test_deterministic_per_seed():
  config = _config(flow_noise_sigma=0.5, flow_outlier_frac=0.01, vertex_noise_sigma=1.0, lighting_change=0.2,
                   p_camera_motion=0.5)
  a, b, c = (sw.generate_clip(config, s) for s in (7, 7, 8))
  assert _digest(a) == _digest(b)
  assert _digest(a) != _digest(c)
  assert not np.array_equal(a["frames"], c["frames"])


def test_shapes_and_dtypes():
  config = _config(num_vertices=110, max_hands=3)
  clip = sw.generate_clip(config, 0)
  t, n, v, h, w = 10, 3, 110, 128, 128
  m, k = len(sw.MIDDLE_FRAMES), len(sw.OFFSETS)
  expected = {
      "frames": ((t, h, w, 3), np.uint8), "flow": ((m, k, h, w, 2), np.float32),
      "flow_exact": ((m, k, h, w, 2), np.float32), "flow_visible": ((m, k, h, w), bool),
      "hand_vertices": ((t, n, v, 2), np.float32), "hand_vertices_exact": ((t, n, v, 2), np.float32),
      "keypoints": ((t, n, 21, 2), np.float32), "hand_valid": ((n,), bool), "holding": ((n,), bool),
      "person_mask": ((t, h, w), bool), "person_instance_mask": ((t, n, h, w), bool),
      "hand_mask": ((t, n, h, w), bool), "object_mask": ((t, n, h, w), bool),
      "hand_box": ((t, n, 4), np.float32), "object_box": ((t, n, 4), np.float32),
      "query_point": ((t, n, 2), np.float32), "hand_homography": ((t, n, 3, 3), np.float32),
      "camera_homography": ((t, 3, 3), np.float32), "distractor_mask": ((t, h, w), bool),
      "moving_distractor_mask": ((t, h, w), bool)}
  assert set(clip) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert clip[key].shape == shape, key
    assert clip[key].dtype == dtype, key
    if clip[key].dtype != bool:
      assert np.isfinite(clip[key]).all(), key


def test_noise_knobs():
  sigma, frac, vsig = 0.5, 0.05, 1.5
  clip = sw.generate_clip(_config(flow_noise_sigma=sigma, flow_outlier_frac=frac, vertex_noise_sigma=vsig,
                                  min_hands=2), 11)
  diff = (clip["flow"] - clip["flow_exact"]).astype(np.float64)
  norm = np.linalg.norm(diff, axis=-1)
  # Outliers add a vector of length >= 4 px; Gaussian inliers (sigma 0.5) exceed 3.5 px with probability exp(-24.5) ~ 2e-11.
  outlier = norm > 3.5
  assert abs(outlier.mean() - frac) < 0.005, outlier.mean()
  assert np.all(norm[outlier] >= 4.0 - 1e-3)
  inlier_std = diff[~outlier].std(axis=0)
  np.testing.assert_allclose(inlier_std, sigma, rtol=0.03)
  assert np.abs(diff[~outlier].mean(axis=0)).max() < 0.01
  vdiff = clip["hand_vertices"] - clip["hand_vertices_exact"]
  assert clip["hand_valid"].all()
  np.testing.assert_allclose(vdiff.std(), vsig, rtol=0.05)
  assert abs(vdiff.mean()) < 0.1
  # Without noise the noisy outputs are exact.
  quiet = sw.generate_clip(_config(min_hands=2), 11)
  np.testing.assert_array_equal(quiet["flow"], quiet["flow_exact"])
  np.testing.assert_array_equal(quiet["hand_vertices"], quiet["hand_vertices_exact"])
  # Noise comes from its own stream: the scene itself is unchanged.
  np.testing.assert_array_equal(quiet["frames"], clip["frames"])
  np.testing.assert_array_equal(quiet["flow_exact"], clip["flow_exact"])


def test_lighting_change_is_bounded_gain():
  base = sw.generate_clip(_config(), 12)
  lit = sw.generate_clip(_config(lighting_change=0.3), 12)
  ratios = []
  for t in range(10):
    unsat = (base["frames"][t] > 5) & (base["frames"][t] < 190)
    ratios.append(lit["frames"][t][unsat].astype(float).mean() / base["frames"][t][unsat].astype(float).mean())
  ratios = np.array(ratios)
  assert np.all(np.abs(ratios - 1) <= 0.3 + 0.01), ratios
  assert np.abs(ratios - 1).max() > 0.05, ratios
  np.testing.assert_array_equal(base["flow_exact"], lit["flow_exact"])


def _shift_layers(dx, dy, size=48, frames=4):
  rng = np.random.default_rng(0)
  big = size + 40
  tex = cv2.GaussianBlur(rng.uniform(0, 255, (big, big, 3)).astype(np.float32), (0, 0), 2.0)
  transforms = np.stack([np.array([[1.0, 0, dx * t - 20], [0, 1.0, dy * t - 20], [0, 0, 1]])
                         for t in range(frames)])
  layer = sw.Layer(tex, np.ones((big, big), np.float32), transforms, sw.KIND_BACKGROUND)
  return sw.render_layers([layer], size, size), transforms


@pytest.mark.parametrize("dx,dy", [(2.0, 0.0), (0.0, 3.0)])
def test_translation_xy_convention(dx, dy):
  """A pure x (resp. y) translation gives flow[..., 0] (resp. [..., 1]) only, and shifts image columns."""
  (frames, layer_id), transforms = _shift_layers(dx, dy)
  for t, s in [(0, 1), (1, 3), (3, 0)]:
    flow, visible = sw.exact_flow(transforms[None], layer_id, t, s)
    np.testing.assert_allclose(flow[..., 0], dx * (s - t), atol=1e-9)
    np.testing.assert_allclose(flow[..., 1], dy * (s - t), atol=1e-9)
    # Integer shifts: frame s at (x + dx, y + dy) equals frame t at (x, y), and visibility is exactly
    # "target inside the image".
    sx, sy = int(dx * (s - t)), int(dy * (s - t))
    h, w = layer_id.shape[1:]
    src = frames[t][max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)]
    dst = frames[s][max(0, sy):h - max(0, -sy), max(0, sx):w - max(0, -sx)]
    np.testing.assert_allclose(dst, src, atol=1e-3)
    ys, xs = np.mgrid[0:h, 0:w]
    inside = (xs + sx >= 0) & (xs + sx < w) & (ys + sy >= 0) & (ys + sy < h)
    np.testing.assert_array_equal(visible, inside)


def test_generated_clip_flow_direction_matches_hand_translation():
  """End-to-end (x, y) check: the flow at the wrist keypoint follows the keypoint's own motion."""
  clip = sw.generate_clip(_config(), 13)
  n = 0
  t, k = sw.MIDDLE_FRAMES[1], sw.OFFSETS.index(3)
  hand = clip["hand_mask"][t, n]
  kp_t, kp_s = clip["hand_vertices_exact"][t, n], clip["hand_vertices_exact"][t + 3, n]
  xi, yi = np.rint(kp_t[:, 0]).astype(int), np.rint(kp_t[:, 1]).astype(int)
  inside = (xi >= 0) & (xi < 128) & (yi >= 0) & (yi < 128)
  on = inside.copy()
  on[inside] = hand[yi[inside], xi[inside]]
  assert on.sum() > 10
  got = clip["flow_exact"][1, k][yi[on], xi[on]]
  expected = kp_s[on] - kp_t[on]
  # Pixels are up to 0.5 px from the vertex; the local motion field is smooth, so flows agree within 0.5 px.
  assert np.abs(got - expected).max() < 0.5
  assert np.abs(expected).max() > 1.0


@pytest.mark.parametrize("field,value", [
    ("height", 16), ("width", 31), ("num_frames", 5), ("max_hands", 0), ("min_hands", -1),
    ("num_vertices", 50), ("p_hold", 1.5), ("p_camera_motion", -0.1), ("p_similar_motion", 2.0),
    ("num_static_distractors", (2, 1)), ("num_moving_distractors", (-1, 2)), ("flow_noise_sigma", -1.0),
    ("flow_outlier_frac", 1.2), ("vertex_noise_sigma", -0.5), ("lighting_change", 1.0),
    ("motion_scale", -1.0)])
def test_config_validation(field, value):
  with pytest.raises(ValueError, match=field):
    sw.WorldConfig(**{field: value})


def test_config_validation_hand_range():
  with pytest.raises(ValueError, match="max_hands"):
    sw.WorldConfig(max_hands=1, min_hands=2)
  # Valid edge cases construct fine.
  dataclasses.replace(sw.WorldConfig(), height=32, width=40, min_hands=0, max_hands=1, num_vertices=100)


def test_zero_hands_clip():
  clip = sw.generate_clip(_config(min_hands=0, max_hands=1, p_hold=1.0), 0)
  for seed in range(20):
    clip = sw.generate_clip(_config(min_hands=0, max_hands=1), seed)
    if not clip["hand_valid"].any():
      break
  assert not clip["hand_valid"].any()
  assert not clip["person_mask"].any() and not clip["holding"].any()
  assert np.isfinite(clip["query_point"]).all() and not clip["query_point"].any()


def test_similar_motion_distractor_moves_like_its_hand():
  """The paper's "accidentally similar motion": a distractor copying a hand's homography up to a small drift."""
  # motion_scale 1: the drift bound below is in px at that scale (drift scales with motion).
  config = _config(p_similar_motion=1.0, num_moving_distractors=(1, 1), num_static_distractors=(0, 0),
                   motion_scale=1.0)
  clip, layer_id, layers = sw.generate_clip_with_layers(config, 3)
  (idx,) = [i for i, l in enumerate(layers) if l.kind == sw.KIND_MOVING_DISTRACTOR]
  n = layers[idx].owner
  assert clip["hand_valid"][n]
  hom = clip["hand_homography"].astype(np.float64)
  m, t = 1, sw.MIDDLE_FRAMES[1]
  ys, xs = np.nonzero(layer_id[t] == idx)
  np.testing.assert_array_equal(clip["moving_distractor_mask"][t], layer_id[t] == idx)
  assert len(xs) > 20
  pts = np.stack([xs, ys], -1).astype(np.float64)
  for k, off in enumerate(sw.OFFSETS):
    got = clip["flow_exact"][m, k][ys, xs]
    hand_pred = _proj(hom[t + off, n] @ np.linalg.inv(hom[t, n]), pts) - pts
    # Drift is N(0, 0.15 px/frame) per axis: |off| <= 3 frames keeps it within ~2 px here.
    assert np.abs(got - hand_pred).max() < 2.0, off
    assert np.abs(got).max() > 0.5
