"""Tests for handobj_jax.geometry.pnp.

References: OpenCV (cv2.solvePnP, cv2.solvePnPRansac with EPnP,
cv2.invertAffineTransform), ground-truth poses of synthetic scenes, and a
literal NumPy transcription of the HO-3D protocol's vote selection written
below. Tolerances are stated at each assertion.

Scenes: tests/pnp_scenes.py (a random box 0.4-1.0 m in front of a 512 x 512
camera).
"""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.geometry import pnp
from pnp_scenes import random_box_scene as _scene

NUM_VOTES = 10


def _project(k, rot, t, x):
  q = (x @ rot.T + t) @ k.T
  return q[:, :2] / q[:, 2:]


def _votes(rng, ctrl, k, rot, t, noise, outlier_frac):
  """[21, 10, 2] votes: projections + Gaussian noise; a fraction moved
  40-200 px away in a random direction (outliers)."""
  uv = _project(k, rot, t, ctrl)
  votes = uv[:, None, :] + rng.normal(0, noise, (21, NUM_VOTES, 2))
  bad = rng.random((21, NUM_VOTES)) < outlier_frac
  ang = rng.uniform(0, 2 * np.pi, (21, NUM_VOTES))
  off = rng.uniform(40, 200, (21, NUM_VOTES, 1)) * np.stack(
      [np.cos(ang), np.sin(ang)], -1)
  return np.where(bad[..., None], votes + off, votes)


def _rot_err_deg(ra, rb):
  """Angle of ra^T rb in degrees, accurate near 0 (from the chord)."""
  chord = np.linalg.norm(np.asarray(ra, np.float64) - rb) / (2 * np.sqrt(2))
  return float(np.degrees(2 * np.arcsin(min(chord, 1.0))))


def _add(model, rot, t, rot_p, t_p):
  return float(np.mean(np.linalg.norm(
      model @ rot.T + t - model @ np.asarray(rot_p, np.float64).T
      - np.asarray(t_p, np.float64), axis=1)))


# Every batch is padded to this size, so that the tests share one compiled
# solver (compiling it takes seconds).
_BATCH = 50


def _batch(cases):
  """Stacks per-case (ctrl, votes, valid, K) into solve_pnp's inputs, padded
  to _BATCH examples by repeating the last case."""
  assert len(cases) <= _BATCH
  cases = list(cases) + [cases[-1]] * (_BATCH - len(cases))
  p3, p2, w = pnp.votes_to_correspondences(
      np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]),
      np.stack([c[2] for c in cases]))
  k = np.stack([c[3] for c in cases]).astype(np.float32)
  return p3, p2, w, k


_solve = pnp.solve_pnp    # its body is jitted


def test_noise_free_matches_opencv_and_ground_truth():
  rng = np.random.default_rng(0)
  scenes = [_scene(rng) for _ in range(20)]
  cases = []
  for ctrl, _, k, rot, t in scenes:
    votes = _votes(rng, ctrl, k, rot, t, 0.0, 0.0)
    cases.append((ctrl, votes, np.ones((21, NUM_VOTES), bool), k))
  res = _solve(*_batch(cases))
  assert np.all(np.asarray(res.ok))
  for i, (ctrl, _, k, rot, t) in enumerate(scenes):
    ok, rvec, tvec = cv2.solvePnP(ctrl, _project(k, rot, t, ctrl), k, None,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    assert ok
    rot_cv, t_cv = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
    rot_j, t_j = np.asarray(res.rotation[i]), np.asarray(res.translation[i])
    # 0.05 degrees and 0.5 mm, against ground truth and against OpenCV.
    assert _rot_err_deg(rot_j, rot) <= 0.05
    assert np.linalg.norm(t_j - t) <= 5e-4
    assert _rot_err_deg(rot_j, rot_cv) <= 0.05
    assert np.linalg.norm(t_j - t_cv) <= 5e-4
    # A proper rotation (float32): det +1, orthonormal to 1e-5.
    assert abs(np.linalg.det(rot_j) - 1.0) < 1e-5
    np.testing.assert_allclose(rot_j @ rot_j.T, np.eye(3), atol=1e-5)
    assert int(res.num_inliers[i]) == 21 * NUM_VOTES
    assert float(res.rms_error[i]) < 0.05     # pixels


def test_least_squares_refinement_matches_opencv_iterative():
  # Without outliers and robust=False, solve_pnp minimises the plain sum of
  # squared reprojection errors, like cv2.solvePnP(SOLVEPNP_ITERATIVE).
  rng = np.random.default_rng(12)
  scenes = [_scene(rng) for _ in range(_BATCH)]
  cases = [(ctrl, _votes(rng, ctrl, k, rot, t, 2.0, 0.0),
            np.ones((21, NUM_VOTES), bool), k)
           for ctrl, _, k, rot, t in scenes]
  p3, p2, w, kk = _batch(cases)
  res = pnp.solve_pnp(p3, p2, w, kk, robust=False)
  assert np.all(np.asarray(res.ok))
  for i, (ctrl, _, k, _, _) in enumerate(scenes[:20]):
    obj = np.asarray(p3[i], np.float64)
    img = np.asarray(p2[i], np.float64)
    _, rvec, tvec = cv2.solvePnP(obj, img, k, None,
                                 flags=cv2.SOLVEPNP_ITERATIVE)
    rot_cv, t_cv = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
    rms_cv = np.sqrt(np.mean(np.sum(np.square(
        _project(k, rot_cv, t_cv, obj) - img), -1)))
    rot_j = np.asarray(res.rotation[i], np.float64)
    rms_j = np.sqrt(np.mean(np.sum(np.square(
        _project(k, rot_j, np.asarray(res.translation[i], np.float64), obj)
        - img), -1)))
    # Same optimum: RMS within 1e-4 relative (float32), poses within 0.01
    # degrees and 0.1 mm.
    assert rms_j <= rms_cv * (1 + 1e-4) + 1e-5
    assert abs(float(res.rms_error[i]) - rms_j) < 1e-3 * rms_j
    assert _rot_err_deg(rot_j, rot_cv) <= 0.01
    assert np.linalg.norm(np.asarray(res.translation[i]) - t_cv) <= 1e-4


def test_noise_and_outliers_comparable_to_opencv_ransac(capsys):
  rng = np.random.default_rng(1)
  num = 50
  scenes = [_scene(rng) for _ in range(num)]
  cases = []
  for ctrl, _, k, rot, t in scenes:
    votes = _votes(rng, ctrl, k, rot, t, 1.5, 0.3)
    cases.append((ctrl, votes, np.ones((21, NUM_VOTES), bool), k))
  res = _solve(*_batch(cases))
  cv2.setRNGSeed(0)
  rows = []
  for i, ((ctrl, model, k, rot, t), case) in enumerate(zip(scenes, cases)):
    rot_cv, t_cv, ok_cv = pnp.solve_pnp_opencv(ctrl, case[1], case[2], k)
    diameter = np.linalg.norm(model.max(0) - model.min(0))
    rows.append([
        _add(model, rot, t, res.rotation[i], res.translation[i]),
        _add(model, rot, t, rot_cv, t_cv),
        _rot_err_deg(res.rotation[i], rot), _rot_err_deg(rot_cv, rot),
        np.linalg.norm(np.asarray(res.translation[i]) - t),
        np.linalg.norm(t_cv - t), diameter, bool(res.ok[i]), ok_cv])
  r = np.array(rows, np.float64)
  add_j, add_cv, dia = r[:, 0], r[:, 1], r[:, 6]
  with capsys.disabled():
    print(f"\nPnP, {num} scenes, 21 x {NUM_VOTES} votes, 1.5 px noise, 30% "
          "outliers (40-200 px away)")
    print(f"{'solver':28s} {'ok':>5s} {'med ADD mm':>10s} {'ADD-0.1D':>9s} "
          f"{'med rot deg':>11s} {'med t mm':>9s}")
    for name, col, ok_col in (("JAX solve_pnp", 0, 7),
                              ("OpenCV RANSAC EPnP", 1, 8)):
      print(f"{name:28s} {np.mean(r[:, ok_col]):5.2f} "
            f"{1e3 * np.median(r[:, col]):10.3f} "
            f"{np.mean(r[:, col] <= 0.1 * dia):9.2f} "
            f"{np.median(r[:, 2 + col]):11.3f} "
            f"{1e3 * np.median(r[:, 4 + col]):9.3f}")
  # "Comparable": median ADD within 1.5x OpenCV's + 0.5 mm, and ADD-0.1D
  # success at most one scene (2%) below OpenCV's.
  assert np.median(add_j) <= 1.5 * np.median(add_cv) + 5e-4
  assert np.mean(add_j <= 0.1 * dia) >= np.mean(add_cv <= 0.1 * dia) - 0.02
  assert np.all(np.asarray(res.ok))


def _fallback_cases():
  rng = np.random.default_rng(2)
  ctrl, _, k, rot, t = _scene(rng)
  good = _votes(rng, ctrl, k, rot, t, 0.5, 0.0)
  valid = np.ones((21, NUM_VOTES), bool)
  cases = {}
  five = np.zeros_like(valid)
  five[[0, 3, 6, 9, 12], 0] = True
  cases["five_votes"] = (ctrl, good, five, k)
  cases["no_votes"] = (ctrl, good, np.zeros_like(valid), k)
  one_point = np.zeros_like(valid)
  one_point[4] = True                           # 10 votes of one point
  cases["one_control_point"] = (ctrl, good, one_point, k)
  nan_votes = good.copy()
  nan_votes[:, :, 0] = np.nan
  cases["nan_votes"] = (ctrl, nan_votes, valid, k)
  cases["nan_points3d"] = (np.full_like(ctrl, np.nan), good, valid, k)
  cases["inf_intrinsics"] = (ctrl, good, valid, np.where(np.eye(3) > 0, np.inf, k))
  cases["singular_intrinsics"] = (ctrl, good, valid, np.zeros((3, 3)))
  flat = ctrl.copy()
  flat[:, 2] = 0.01                             # coplanar 3D points
  cases["coplanar"] = (flat, _votes(rng, flat, k, rot, t, 0.0, 0.0), valid, k)
  line = ctrl.copy()
  line[:, 1:] = 0.0                             # collinear 3D points
  cases["collinear"] = (line, _votes(rng, line, k, rot, t, 0.0, 0.0), valid, k)
  behind = t * np.array([1.0, 1.0, -1.0])       # object behind the camera
  cases["behind_camera"] = (ctrl, _votes(rng, ctrl, k, rot, behind, 0.0, 0.0),
                            valid, k)
  return cases, (ctrl, good, valid, k)


def test_fallback_cases_and_finite_gradients():
  cases, good = _fallback_cases()
  names = sorted(cases)
  p3, p2, w, k = _batch([cases[n] for n in names] + [good])
  res = _solve(p3, p2, w, k)
  ok = np.asarray(res.ok)
  for i, name in enumerate(names):
    assert not ok[i], name
    np.testing.assert_array_equal(res.rotation[i], np.eye(3), err_msg=name)
    np.testing.assert_array_equal(res.translation[i], [0, 0, 1], err_msg=name)
    assert int(res.num_inliers[i]) == 0 and float(res.rms_error[i]) == 0.0
  assert ok[-1]                                 # the control case
  for field in res:
    assert np.all(np.isfinite(np.asarray(field, np.float32)))

  def loss(p3, p2, w, k):
    r = pnp.solve_pnp(p3, p2, w, k)
    return jnp.sum(r.rotation) + jnp.sum(r.translation) + jnp.sum(r.rms_error)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(p3, p2, w, k)
  for g in grads:
    # Not meant to be differentiated: stop_gradient gives exact zeros.
    np.testing.assert_array_equal(g, 0.0)


def test_partly_invalid_inputs_still_solve():
  rng = np.random.default_rng(3)
  ctrl, _, k, rot, t = _scene(rng)
  votes = _votes(rng, ctrl, k, rot, t, 0.0, 0.0)
  valid = np.ones((21, NUM_VOTES), bool)
  votes[::2, 3] = np.nan                        # NaN votes are ignored
  valid[:, 5:] = False                          # and so are invalid ones
  votes[:, 7] = 1e9                             # (these are invalid)
  p3, p2, w, kk = _batch([(ctrl, votes, valid, k)])
  res = _solve(p3, p2, w, kk)
  assert bool(res.ok[0])
  assert int(res.num_inliers[0]) == 21 * 5 - 11
  assert _rot_err_deg(res.rotation[0], rot) <= 0.05
  assert np.linalg.norm(np.asarray(res.translation[0]) - t) <= 5e-4


def test_jit_eager_vmap_agree():
  rng = np.random.default_rng(4)
  cases, truth = [], []
  for _ in range(2):
    ctrl, _, k, rot, t = _scene(rng)
    cases.append((ctrl, _votes(rng, ctrl, k, rot, t, 1.0, 0.2),
                  np.ones((21, NUM_VOTES), bool), k))
    truth.append((rot, t))
  cases.append(_fallback_cases()[0]["five_votes"])
  args = _batch(cases)
  outs = {
      "eager": pnp.solve_pnp(*args),
      "jit": jax.jit(pnp.solve_pnp)(*args),
      "vmap": jax.vmap(pnp.solve_pnp)(*args),
  }
  for mode, res in outs.items():
    np.testing.assert_array_equal(res.ok[:3], [True, True, False],
                                  err_msg=mode)
    # Batched and single linear-algebra kernels may round differently: the
    # poses agree to 1e-4 (rotation entries) and 0.05 mm.
    np.testing.assert_allclose(res.rotation, outs["eager"].rotation,
                               atol=1e-4, err_msg=mode)
    np.testing.assert_allclose(res.translation, outs["eager"].translation,
                               atol=5e-5, err_msg=mode)
    for i, (rot, t) in enumerate(truth):
      # 1 px noise: within 1 degree and 1 cm of the truth.
      assert _rot_err_deg(res.rotation[i], rot) < 1.0, mode
      assert np.linalg.norm(np.asarray(res.translation[i]) - t) < 0.01, mode


def test_batch_shapes_broadcast():
  rng = np.random.default_rng(6)
  ctrl, _, k, rot, t = _scene(rng)
  cases = [(ctrl, _votes(rng, ctrl, k, rot, t, 0.5, 0.0),
            np.ones((21, NUM_VOTES), bool), k) for _ in range(6)]
  p3, p2, w, _ = _batch(cases)
  # Leading dims [2, 3]; one K and one set of 3D points for all.
  res = pnp.solve_pnp(p3[0], p2[:6].reshape(2, 3, -1, 2),
                      w[:6].reshape(2, 3, -1), k.astype(np.float32))
  assert res.rotation.shape == (2, 3, 3, 3) and res.ok.shape == (2, 3)
  assert np.all(np.asarray(res.ok))
  for rr in np.asarray(res.rotation).reshape(-1, 3, 3):
    assert _rot_err_deg(rr, rot) < 0.5


# --- Vote selection ------------------------------------------------------------


def _literal_votes(xs, ys, confs, num_votes, threshold):
  """The released evaluation loop, transcribed literally (one example).

  xs, ys, confs: [G, N]. Returns per control point the list of kept (x, y).
  """
  confs = confs.copy()
  g, n = confs.shape
  kept = [[] for _ in range(n)]
  for _ in range(min(g, num_votes)):
    best = confs.argmax(axis=0)
    mask = confs[best, np.arange(n)] > threshold
    for i in range(n):
      if mask[i]:
        kept[i].append((xs[best[i], i], ys[best[i], i]))
    confs[best, np.arange(n)] = 0
  return kept


@pytest.mark.parametrize("num_g,quantum", [(64, 0.1), (64, 0.0), (5, 0.25)])
def test_select_votes_is_the_literal_rule(num_g, quantum):
  rng = np.random.default_rng(num_g + int(100 * quantum))
  n = 21
  confs = rng.uniform(0, 1, (3, num_g, n))
  if quantum:
    confs = np.round(confs / quantum) * quantum    # many exact ties
  confs[:, :, 2] = rng.uniform(0, 0.5, (3, num_g))  # all at or below 0.5
  confs[0, :, 3] = 0.5 + 1e-3                     # all tied above threshold
  confs = confs.astype(np.float32)
  pts = rng.uniform(0, 512, (3, num_g, n, 2)).astype(np.float32)
  for fn in (pnp.select_votes, jax.jit(pnp.select_votes)):
    votes, valid = fn(pts, confs)
    assert votes.shape == (3, n, 10, 2) and valid.shape == (3, n, 10)
    for b in range(3):
      ref = _literal_votes(pts[b, ..., 0], pts[b, ..., 1], confs[b], 10, 0.5)
      for i in range(n):
        got = np.asarray(votes[b, i])[np.asarray(valid[b, i])]
        # Kept votes come first, in the rule's order.
        assert np.all(np.asarray(valid[b, i])[:len(ref[i])])
        np.testing.assert_array_equal(got, np.array(ref[i]).reshape(-1, 2))
  assert not np.any(np.asarray(valid)[:, 2])


def test_select_votes_vmap_and_threshold():
  rng = np.random.default_rng(8)
  confs = rng.uniform(0, 1, (2, 16, 4)).astype(np.float32)
  confs[0, 0, 0] = np.nan                        # counts as 0
  pts = rng.uniform(0, 9, (2, 16, 4, 2)).astype(np.float32)
  v1, m1 = pnp.select_votes(pts, confs, num_votes=3, threshold=0.2)
  v2, m2 = jax.vmap(lambda p, c: pnp.select_votes(p, c, num_votes=3,
                                                  threshold=0.2))(pts, confs)
  np.testing.assert_array_equal(v1, v2)
  np.testing.assert_array_equal(m1, m2)
  ref = _literal_votes(pts[0, ..., 0], pts[0, ..., 1],
                       np.nan_to_num(confs[0], nan=0.0), 3, 0.2)
  np.testing.assert_array_equal(np.asarray(v1[0, 0])[np.asarray(m1[0, 0])],
                                np.array(ref[0]).reshape(-1, 2))
  with pytest.raises(ValueError):
    pnp.select_votes(pts, confs, threshold=-0.1)


def test_votes_to_correspondences_layout():
  ctrl = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
  votes = np.arange(21 * 4 * 2, dtype=np.float32).reshape(21, 4, 2)
  valid = np.zeros((21, 4), bool)
  valid[5, 2] = True
  p3, p2, w = pnp.votes_to_correspondences(ctrl, votes, valid)
  assert p3.shape == (84, 3) and p2.shape == (84, 2) and w.shape == (84,)
  np.testing.assert_array_equal(p3[5 * 4 + 2], ctrl[5])
  np.testing.assert_array_equal(p2[5 * 4 + 2], votes[5, 2])
  assert float(w.sum()) == 1.0 and float(w[5 * 4 + 2]) == 1.0


# --- Coordinate helpers ----------------------------------------------------------


def test_crop_to_image_inverts_the_crop_affine():
  rng = np.random.default_rng(9)
  for _ in range(5):
    # A crop affine as the data pipeline makes them: scale, rotation, shift.
    ang, s = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 3.0)
    a = np.array([[s * np.cos(ang), -s * np.sin(ang), rng.uniform(-300, 300)],
                  [s * np.sin(ang), s * np.cos(ang), rng.uniform(-300, 300)]])
    img = rng.uniform(0, 640, (7, 2))
    crop = img @ a[:, :2].T + a[:, 2]
    back = pnp.crop_to_image(crop.astype(np.float32), a.astype(np.float32))
    # 1e-3 px (float32 at coordinates of a few hundred pixels).
    np.testing.assert_allclose(back, img, atol=1e-3)
    inv = cv2.invertAffineTransform(a)
    np.testing.assert_allclose(back, crop @ inv[:, :2].T + inv[:, 2],
                               atol=1e-3)
  # Broadcasting: one affine per example over [B, N, V, 2] votes.
  a = np.tile(np.array([[2.0, 0.0, 10.0], [0.0, 2.0, -4.0]], np.float32),
              (3, 1, 1))
  pts = rng.uniform(0, 100, (3, 21, 10, 2)).astype(np.float32)
  out = pnp.crop_to_image(pts, a[:, None])
  np.testing.assert_allclose(out, (pts - [10.0, -4.0]) / 2.0, atol=1e-4)
  # A singular affine gives finite zeros.
  out = pnp.crop_to_image(pts[0], np.zeros((2, 3), np.float32))
  np.testing.assert_array_equal(out, 0.0)


def test_box_to_pixels():
  rng = np.random.default_rng(10)
  uv = rng.uniform(0, 1, (4, 5, 2)).astype(np.float32)
  boxes = np.concatenate([rng.uniform(0, 100, (4, 2)),
                          rng.uniform(150, 300, (4, 2))], -1).astype(np.float32)
  out = jax.jit(pnp.box_to_pixels)(uv, boxes)
  ref = boxes[:, None, :2] + uv * (boxes[:, None, 2:] - boxes[:, None, :2])
  np.testing.assert_allclose(out, ref, atol=1e-4)
  np.testing.assert_allclose(pnp.box_to_pixels(np.array([[0.0, 0.0], [1.0, 1.0]]),
                                               boxes[0]),
                             boxes[0].reshape(2, 2), atol=1e-5)


# --- Host path -------------------------------------------------------------------


def test_opencv_host_path_and_its_fallback():
  rng = np.random.default_rng(11)
  ctrl, _, k, rot, t = _scene(rng)
  votes = _votes(rng, ctrl, k, rot, t, 0.5, 0.0)
  valid = np.ones((21, NUM_VOTES), bool)
  few = np.zeros_like(valid)
  few[:5, 0] = True                             # 5 votes < 6
  rots, ts, oks = pnp.solve_pnp_opencv(
      ctrl, np.stack([votes, votes]), np.stack([valid, few]), k)
  assert rots.shape == (2, 3, 3) and ts.shape == (2, 3)
  assert oks[0] and not oks[1]
  assert _rot_err_deg(rots[0], rot) < 0.5 and np.linalg.norm(ts[0] - t) < 5e-3
  np.testing.assert_array_equal(rots[1], np.eye(3))
  np.testing.assert_array_equal(ts[1], [0.0, 0.0, 1.0])
  # Exactly 6 votes is enough for the host path.
  six = few.copy()
  six[5, 0] = True
  _, _, ok6 = pnp.solve_pnp_opencv(ctrl, votes, six, k)
  assert ok6
