"""Tests for the pseudo-label filters (Semi-Hand-Object Sec. 5.1.1-5.1.2): each accepts a constructed good
example and rejects a crafted bad one, thresholds come from the config, degenerate input stays finite.

The good examples are ground-truth frames of the synthetic video world (`synthetic_3d.generate_sequence`,
seed 6: a hand whose shape is not degenerate). References: closed-form constructions (a known weak-perspective
camera) and NumPy float64 (IoU, shape statistics).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import handobj_pose_semi
from handobj_jax.semi import filters
from input_pipeline import synthetic_3d

T = 8


@functools.lru_cache(maxsize=None)
def _clip(seed=6):
  cfg = synthetic_3d.World3DConfig(height=128, width=128, num_model_points=1000)
  seq = synthetic_3d.generate_sequence(cfg, seed, T)
  j3 = seq["gt/joints3d"]
  return dict(joints2d=seq["gt/joints2d"].astype(np.float32), joints3d=(j3 - j3[:, :1]).astype(np.float32),
              verts3d=(seq["gt/verts3d"] - j3[:, :1]).astype(np.float32),
              theta=seq["gt/mano_pose"].astype(np.float32),
              beta=np.tile(seq["gt/mano_betas"], (T, 1)).astype(np.float32),
              hand_box=seq["hand_boxes"].astype(np.float32))


def _frame(i=0):
  return {k: v[i] for k, v in _clip().items()}


def _cfg(**overrides):
  c = handobj_pose_semi.filters()
  for k, v in overrides.items():
    c[k] = v
  return c


def _spatial(pred, **overrides):
  out = jax.jit(lambda p: filters.spatial_masks(p, _cfg(**overrides)))(
      {k: jnp.asarray(v) for k, v in pred.items()})
  return jax.device_get(out)


def test_weak_perspective_fit_recovers_a_known_camera():
  rng = np.random.default_rng(0)
  x3 = rng.normal(0, 0.05, (5, 21, 3)).astype(np.float32)
  s = rng.uniform(100, 900, 5).astype(np.float32)
  t = rng.uniform(-50, 300, (5, 2)).astype(np.float32)
  x2 = s[:, None, None] * x3[..., :2] + t[:, None]
  s_fit, t_fit, ok = jax.jit(filters.weak_perspective_fit)(x3, x2)
  assert np.all(ok)
  np.testing.assert_allclose(s_fit, s, rtol=1e-5)
  np.testing.assert_allclose(t_fit, t, atol=1e-3)
  np.testing.assert_allclose(filters.weak_perspective_project(s_fit, t_fit, x3), x2, atol=1e-3)


def test_weak_perspective_fit_degenerate_is_finite_and_flagged():
  x3 = np.zeros((2, 21, 3), np.float32)
  x2 = np.ones((2, 21, 2), np.float32)
  x3[1] = np.nan
  s, t, ok = filters.weak_perspective_fit(x3, x2)
  assert not np.any(ok)
  assert np.all(np.isfinite(s)) and np.all(np.isfinite(t))
  # A mirrored fit (negative scale) is no camera either.
  x3 = np.random.default_rng(1).normal(size=(21, 3)).astype(np.float32)
  assert not filters.weak_perspective_fit(x3, -3.0 * x3[:, :2])[2]


def test_box_iou_against_numpy_float64():
  rng = np.random.default_rng(2)
  lo = rng.uniform(0, 100, (200, 2, 2))
  wh = rng.uniform(-5, 60, (200, 2, 2))             # Some empty boxes.
  a = np.concatenate([lo[:, 0], lo[:, 0] + wh[:, 0]], -1)
  b = np.concatenate([lo[:, 1], lo[:, 1] + wh[:, 1]], -1)

  def ref(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    area = lambda x: max(x[2] - x[0], 0.0) * max(x[3] - x[1], 0.0)
    u = area(a) + area(b) - iw * ih
    return iw * ih / u if u > 0 else 0.0

  expected = np.array([ref(x, y) for x, y in zip(a, b)])
  np.testing.assert_allclose(filters.box_iou(a.astype(np.float32), b.astype(np.float32)), expected, atol=1e-5)
  assert float(filters.box_iou(np.zeros(4), np.zeros(4))) == 0.0


def test_ground_truth_frames_pass_every_spatial_filter():
  out = _spatial(_clip())
  for name in ("finite", "camera", "iou", "reprojection", "bone_length", "joint_angle"):
    assert np.all(out[name]), (name, out)
  # Flexion is positive towards the palm: a grasping hand's MCP / PIP joints bend that way on average.
  angles = np.asarray(filters.flexion_angles(_clip()["joints3d"]))
  assert np.median(angles[:, [3, 4, 6, 7, 9, 10, 12, 13]]) > 10.0


def test_iou_filter_rejects_a_misplaced_box_and_reads_its_threshold():
  good = _frame()
  box = good["hand_box"]
  w = box[2] - box[0]
  bad = dict(good, hand_box=box + np.asarray([0.6 * w, 0, 0.6 * w, 0], np.float32))
  assert _spatial(good)["iou"] and not _spatial(bad)["iou"]
  iou = float(_spatial(good)["values_iou"])
  assert 0.6 < iou < 0.99
  assert not _spatial(good, min_iou=iou + 0.005)["iou"]


def test_reprojection_filter_rejects_2d_joints_of_another_pose():
  good = _frame()
  rng = np.random.default_rng(3)
  bad = dict(good, joints2d=good["joints2d"][rng.permutation(21)])
  assert _spatial(good)["reprojection"] and not _spatial(bad)["reprojection"]
  d = float(_spatial(good)["values_reproj"])
  assert not _spatial(good, max_reproj=0.9 * d)["reprojection"]
  # The normalisation is independent of image and hand size: scaling and shifting J2D changes nothing.
  moved = dict(good, joints2d=3.0 * good["joints2d"] + 40.0)
  np.testing.assert_allclose(_spatial(moved)["values_reproj"], d, rtol=1e-4)


def test_bone_filter_rejects_a_collapsed_bone():
  good = _frame()
  j = good["joints3d"].copy()
  j[2] = j[1] + 0.05 * (j[2] - j[1])                    # Index proximal phalanx at 5% of its length.
  bad = dict(good, joints3d=j)
  assert _spatial(good)["bone_length"] and not _spatial(bad)["bone_length"]
  assert not _spatial(good, min_bone=float(_spatial(good)["values_min_bone"]) + 0.01)["bone_length"]
  # Normalised: a uniformly scaled hand has the same bone ratios.
  np.testing.assert_allclose(filters.bone_lengths(2.5 * good["joints3d"]), filters.bone_lengths(good["joints3d"]),
                             rtol=1e-5)


def _bend(j, joint, child_chain, degrees, axis):
  """Rotates the joints of `child_chain` about `joint` by `degrees` around `axis`."""
  from scipy.spatial.transform import Rotation  # pylint: disable=g-import-not-at-top
  r = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
  j = j.copy()
  j[list(child_chain)] = (j[list(child_chain)] - j[joint]) @ r.T + j[joint]
  return j


def test_angle_filter_rejects_hyperextension_and_overflexion():
  good = _frame()
  j = good["joints3d"]
  a0 = np.asarray(filters.flexion_angles(j))
  # Bend the middle finger's PIP (joint 5; its chain 0-4-5-6-18) about the axis that increases flexion.
  inc, out = j[5] - j[4], j[6] - j[5]
  normal = np.cross(j[1] - j[0], j[7] - j[0])
  axis = np.cross(inc, normal)                           # Rotating inc towards the palm normal.
  flexed = _bend(j, 5, (6, 18), 100.0, axis)
  extended = _bend(j, 5, (6, 18), -(a0[7] + 40.0), axis)
  a_flex = np.asarray(filters.flexion_angles(flexed))
  a_ext = np.asarray(filters.flexion_angles(extended))
  assert a_flex[7] > 90.0 and a_flex[7] > a0[7]
  np.testing.assert_allclose(a_ext[7], -40.0, atol=0.5)
  assert _spatial(good)["joint_angle"]
  assert not _spatial(dict(good, joints3d=flexed))["joint_angle"]
  assert not _spatial(dict(good, joints3d=extended))["joint_angle"]
  assert _spatial(dict(good, joints3d=extended), angle_tol_deg=45.0)["joint_angle"]


def test_angles_of_a_mirrored_left_hand_match():
  j = _clip()["joints3d"]
  left = j * np.asarray([-1.0, 1.0, 1.0], np.float32)
  np.testing.assert_allclose(filters.flexion_angles(left, side="left"), filters.flexion_angles(j), atol=1e-3)
  with pytest.raises(ValueError, match="side"):
    filters.flexion_angles(j, side="up")


def test_non_finite_predictions_are_rejected_with_finite_values():
  bad = dict(_frame())
  bad["joints3d"] = bad["joints3d"].copy()
  bad["joints3d"][4] = np.nan
  zero = {k: np.zeros_like(v) for k, v in _frame().items()}
  for pred in (bad, zero):
    out = _spatial(pred)
    assert not (out["finite"] and out["camera"] and out["iou"] and out["bone_length"])
    for k, v in out.items():
      assert np.all(np.isfinite(v)) or k == "values_reproj", (k, v)
    assert np.isfinite(out["values_reproj"])


def test_neighbour_index_pairs_frames_within_clips():
  clip = np.asarray([3, 3, 1, 3, 1, 7])
  frame = np.asarray([5, 2, 0, 9, 4, 0])
  nb = filters.neighbour_index(clip, frame)
  # clip 3 frames 2 (i1), 5 (i0), 9 (i3): i1 -> i0 (its successor), i0 -> i1, i3 -> i0.
  assert nb.tolist() == [1, 0, 4, 0, 2, -1]


def test_smoothness_rejects_a_jittered_frame_and_a_pose_jump():
  clip = _clip()
  ids, frames = np.zeros(T, int), np.arange(T)
  c = _cfg()
  assert filters.select(clip, ids, frames, c)["keep"].all()
  side = float(np.max(clip["hand_box"][4, 2:] - clip["hand_box"][4, :2]))
  jit = dict(clip, joints2d=clip["joints2d"].copy())
  jit["joints2d"][4] += np.random.default_rng(4).normal(0, 0.3 * side, (21, 2)).astype(np.float32)
  masks = filters.select(jit, ids, frames, c)["masks"]
  assert masks["smooth_2d"].tolist() == [i not in (4, 5) for i in range(T)]
  jump = dict(clip, theta=clip["theta"].copy())
  jump["theta"][6, 3:] += 0.2
  masks = filters.select(jump, ids, frames, c)["masks"]
  assert masks["smooth_theta"].tolist() == [i not in (6, 7) for i in range(T)]
  # A whole-hand shift across the image is no change of pose.
  moved = dict(clip, joints2d=clip["joints2d"] + np.arange(T, dtype=np.float32)[:, None, None] * 15.0)
  assert filters.select(moved, ids, frames, c)["masks"]["smooth_2d"].all()
  # A clip of one frame has no neighbour: rejected.
  one = {k: v[:1] for k, v in clip.items()}
  assert not filters.select(one, ids[:1], frames[:1], c)["masks"]["smooth_2d"][0]


def test_shape_filter_removes_the_outlier_beta_against_numpy():
  clip = _clip()
  rng = np.random.default_rng(5)
  beta = clip["beta"] + rng.normal(0, 0.02, clip["beta"].shape).astype(np.float32)
  beta[3] += 1.5
  keep, ratio = filters.shape_mask(beta, np.zeros(T, np.int32), np.ones(T, bool), 1, 2.0)
  b64 = beta.astype(np.float64)
  dev = np.linalg.norm(b64 - b64.mean(0), axis=1)
  sigma = np.sqrt(np.mean(dev ** 2))
  np.testing.assert_allclose(ratio, dev / sigma, rtol=1e-4)
  assert np.asarray(keep).tolist() == [i != 3 for i in range(T)]
  # Only confident frames count, and only they can be kept.
  conf = np.ones(T, bool)
  conf[3] = False
  keep, _ = filters.shape_mask(beta, np.zeros(T, np.int32), conf, 1, 2.0)
  assert not keep[3] and keep.sum() >= 5


def test_select_counts_removals_in_order_and_ablations_skip_groups():
  clip = _clip()
  pred = {k: np.concatenate([v, v]) for k, v in clip.items()}
  pred["hand_box"] = pred["hand_box"].copy()
  pred["hand_box"][2] += 200.0                           # IoU fails on frame 2 of clip 0.
  pred["theta"] = pred["theta"].copy()
  pred["theta"][T + 5, 3:] += 0.3                        # Smoothness fails on frames 5, 6 of clip 1.
  ids = np.repeat([10, 20], T)
  frames = np.tile(np.arange(T), 2)
  res = filters.select(pred, ids, frames, _cfg())
  removed = dict(res["removed"])
  assert [n for n, _ in res["removed"]] == ["finite", "camera", "iou", "reprojection", "bone_length",
                                             "joint_angle", "smooth_2d", "smooth_theta", "shape"]
  assert removed["iou"] == 1 and removed["smooth_theta"] == 2
  assert sum(removed.values()) == 2 * T - res["keep"].sum()
  no_spatial = filters.select(pred, ids, frames, _cfg(), use_spatial=False)
  assert no_spatial["keep"][2] and not no_spatial["keep"][T + 5]
  no_temporal = filters.select(pred, ids, frames, _cfg(), use_temporal=False)
  assert not no_temporal["keep"][2] and no_temporal["keep"][T + 5]
