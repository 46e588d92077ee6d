"""Tests for handobj_jax.evaluation.segmentation with hand-made masks."""

import math

import numpy as np
import pytest

from handobj_jax.evaluation import segmentation as seg


def _rect(h, w, y0, y1, x0, x1):
  m = np.zeros((h, w), bool)
  m[y0:y1, x0:x1] = True
  return m


def test_compose_tasks_two_hands_one_without_object():
  h, w = 6, 8
  hands = np.stack([_rect(h, w, 0, 2, 0, 2), _rect(h, w, 4, 6, 6, 8)])
  objs = np.stack([_rect(h, w, 0, 2, 2, 4), np.zeros((h, w), bool)])
  t0 = seg.compose_tasks(hands, objs, 0)
  t1 = seg.compose_tasks(hands, objs, 1)
  assert t0["all"].sum() == 4 + 4 + 4 and np.array_equal(t0["all"], t1["all"])
  assert t0["pair"].sum() == 8 and t0["hand"].sum() == 4
  assert t0["obj"].sum() == 4
  assert t1["pair"].sum() == 4 and t1["obj"].sum() == 0
  with pytest.raises(ValueError, match="out of range"):
    seg.compose_tasks(hands, objs, 2)


def test_iou_known_values_and_empty_conventions():
  a = _rect(4, 4, 0, 2, 0, 2)  # 4 px
  b = _rect(4, 4, 1, 3, 1, 3)  # 4 px, overlap 1
  assert seg.iou(a, b) == pytest.approx(1 / 7)
  assert seg.iou(a, a) == 1.0
  empty = np.zeros((4, 4), bool)
  assert seg.iou(empty, a) == 0.0  # empty prediction
  assert seg.iou(a, empty) == 0.0  # empty ground truth
  assert math.isnan(seg.iou(empty, empty))  # both empty: excluded


def test_meter_per_example_vs_pooled_and_exclusion():
  a = _rect(4, 4, 0, 2, 0, 2)
  b = _rect(4, 4, 1, 3, 1, 3)
  empty = np.zeros((4, 4), bool)
  full = np.ones((4, 4), bool)
  m = seg.SegmentationMeter()
  m.update("obj", a, b)          # 1/7
  m.update("obj", empty, empty)  # excluded from per-example
  m.update("obj", full, a)       # 4/16
  m.update("obj", a, empty)      # 0/4
  r = m.compute()["obj"]
  assert r["per_example"] == pytest.approx((1 / 7 + 4 / 16 + 0) / 3)
  assert r["pooled"] == pytest.approx((1 + 4 + 0) / (7 + 16 + 4))
  assert r["n_examples"] == 4 and r["n_nonempty"] == 3
  assert set(m.compute()) == {"obj"}


def test_meter_all_zero_images():
  m = seg.SegmentationMeter()
  z = np.zeros((2, 5, 5), bool)
  m.update("all", z, z)
  r = m.compute()["all"]
  assert math.isnan(r["per_example"]) and math.isnan(r["pooled"])
  assert r["n_examples"] == 2


def test_meter_merge_equals_single_pass():
  rng = np.random.default_rng(0)
  preds = rng.random((10, 4, 7, 9)) > 0.6
  gts = rng.random((10, 4, 7, 9)) > 0.7
  gts[3] = False
  preds[3, 1] = False
  single = seg.SegmentationMeter()
  a, b = seg.SegmentationMeter(), seg.SegmentationMeter()
  for i in range(10):
    dp = dict(zip(seg.TASKS, preds[i]))
    dg = dict(zip(seg.TASKS, gts[i]))
    single.update_tasks(dp, dg)
    (a if i < 4 else b).update_tasks(dp, dg)
  merged = a.merge(b).compute()
  ref = single.compute()
  for t in seg.TASKS:
    for k in ("per_example", "pooled", "n_examples", "n_nonempty"):
      np.testing.assert_allclose(merged[t][k], ref[t][k], rtol=1e-12)
  # Independent per-example check for one task.
  ious = [seg.iou(preds[i, 1], gts[i, 1]) for i in range(10)]
  np.testing.assert_allclose(ref["pair"]["per_example"], np.nanmean(ious),
                             rtol=1e-12)


def test_cosine_similarity_map():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(3, 4, 5)).astype(np.float32)
  z[0, 0] = 0.0
  mu = rng.normal(size=5)
  got = seg.cosine_similarity_map(z, mu)
  for i in range(3):
    for j in range(4):
      v = z[i, j].astype(np.float64)
      nv = np.linalg.norm(v)
      want = 0.0 if nv == 0 else v @ mu / (nv * np.linalg.norm(mu))
      assert got[i, j] == pytest.approx(want, abs=1e-6)


def test_cohesiv_masks_rule():
  obj_sim = np.array([[0.9, 0.9, 0.1, 0.1]])
  per_sim = np.array([[0.1, 0.9, 0.9, 0.1]])
  att = np.array([[0.8, 0.2, 0.8, 0.8]])
  hand, obj = seg.cohesiv_masks(obj_sim, per_sim, att, 0.5, 0.5, 0.5, 0.1)
  np.testing.assert_array_equal(obj, [[True, False, False, False]])
  np.testing.assert_array_equal(hand, [[False, True, True, False]])


def test_grid_search_finds_known_single_threshold_optimum():
  # Score map: a ramp; gt = pixels with score > 0.55. The grid contains 0.55.
  rng = np.random.default_rng(2)
  examples = []
  for _ in range(3):
    score = rng.random((6, 7))
    gt = score > 0.55
    examples.append(({"score": score},
                     {t: gt for t in seg.TASKS}))

  def predict(inputs, params):
    m = inputs["score"][None] > params["threshold"][:, None, None]
    return {"pair": m}

  grid = {"threshold": np.round(np.linspace(0.05, 0.95, 19), 4)}
  res = seg.grid_search_thresholds(predict, examples, grid, task="pair",
                                   chunk_size=4)
  assert res.best_params["threshold"] == pytest.approx(0.55)
  assert res.best_value == pytest.approx(1.0)
  assert res.values.shape == (19,)
  # Table agrees with an independent loop for every grid point.
  for k, thr in enumerate(grid["threshold"]):
    i = sum(((e[0]["score"] > thr) & e[1]["pair"]).sum() for e in examples)
    u = sum(((e[0]["score"] > thr) | e[1]["pair"]).sum() for e in examples)
    assert res.values[k] == pytest.approx(i / u)


def test_grid_search_four_thresholds_cohesiv():
  # Constructed so that only (tau1, tau2, tau3, tau4) = (0.5, 0.3, 0.6, 0.2)
  # recovers the ground truth exactly (values between the grid points).
  rng = np.random.default_rng(3)
  n_hands, h, w = 2, 8, 8
  examples = []
  for _ in range(2):
    obj_sim = rng.choice([0.45, 0.55], size=(h, w))
    per_sim = rng.choice([0.55, 0.65], size=(h, w))
    att = rng.choice([0.15, 0.25, 0.35], size=(n_hands, h, w))
    hand = (per_sim > 0.6) & (att > 0.2)
    obj = (obj_sim > 0.5) & (att > 0.3)
    targets = seg.compose_tasks(hand, obj, 0)
    inputs = {"objectness_sim": np.broadcast_to(obj_sim, (n_hands, h, w)),
              "person_sim": np.broadcast_to(per_sim, (n_hands, h, w)),
              "attention": att, "n": 0}
    examples.append((inputs, targets))
  grid = {"tau1": [0.4, 0.5, 0.6], "tau2": [0.1, 0.2, 0.3, 0.4],
          "tau3": [0.5, 0.6, 0.7], "tau4": [0.1, 0.2, 0.3]}
  for task in ("pair", "all"):
    res = seg.grid_search_thresholds(seg.cohesiv_predict_fn, examples, grid,
                                     task=task, statistic="per_example",
                                     chunk_size=20)
    assert res.best_value == pytest.approx(1.0)
    assert res.best_params == pytest.approx(
        {"tau1": 0.5, "tau2": 0.3, "tau3": 0.6, "tau4": 0.2})
    assert res.values.shape == (3, 4, 3, 3)
    assert np.sum(res.values > 1 - 1e-12) == 1


def test_grid_search_bad_args():
  with pytest.raises(ValueError, match="1-4 thresholds"):
    seg.grid_search_thresholds(lambda i, p: {}, [(None, {})],
                               {k: [0.1] for k in "abcde"})
  with pytest.raises(ValueError, match="statistic"):
    seg.grid_search_thresholds(lambda i, p: {}, [(None, {})], {"a": [0.1]},
                               statistic="mean")
