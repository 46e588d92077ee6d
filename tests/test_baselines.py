"""Tests for handobj_jax.evaluation.baselines."""

import json

import numpy as np
import pytest

from handobj_jax.evaluation import baselines as bl
from handobj_jax.evaluation import segmentation as seg


def test_flow_baseline_magnitude_and_all_tasks():
  flow = np.zeros((4, 5, 2), np.float32)
  flow[1, 2] = (3.0, 4.0)   # |f| = 5
  flow[2, 3] = (0.0, -1.0)  # |f| = 1, along rows
  mag = bl.flow_magnitude(flow)
  assert mag[1, 2] == pytest.approx(5.0) and mag[2, 3] == pytest.approx(1.0)
  m = bl.flow_baseline_mask(flow, 2.0)
  assert m.sum() == 1 and m[1, 2]
  tasks = bl.same_mask_for_all_tasks(m)
  assert set(tasks) == set(seg.TASKS)
  with pytest.raises(ValueError, match="flow"):
    bl.flow_magnitude(np.zeros((4, 5, 3)))


def test_flow_threshold_fitted_by_grid_search():
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(3):
    flow = rng.normal(size=(8, 8, 2)).astype(np.float32) * 0.3
    gt = np.zeros((8, 8), bool)
    gt[2:5, 3:6] = True
    flow[gt] += (4.0, 0.0)
    targets = {t: gt for t in seg.TASKS}
    examples.append(({"score": bl.flow_magnitude(flow)}, targets))
  res = seg.grid_search_thresholds(bl.score_map_predict_fn, examples,
                                   {"threshold": np.linspace(0, 5, 21)})
  assert res.best_value == pytest.approx(1.0)
  # Perfect separation for any threshold in [max background, min foreground);
  # ties resolve to the first (smallest) such grid value.
  bg = max(e[0]["score"][~e[1]["all"]].max() for e in examples)
  fg = min(e[0]["score"][e[1]["all"]].min() for e in examples)
  thr = res.best_params["threshold"]
  assert bg <= thr < fg
  assert thr - 0.25 < bg


def test_responsibility_baseline_all_and_pair():
  r = np.zeros((2, 3, 4), np.float32)
  r[0, 0, 0] = 0.9
  r[1, 2, 3] = 0.7
  r[1, 1, 1] = 0.3
  out = bl.responsibility_baseline(r, 1, 0.5)
  assert set(out) == {"all", "pair"}
  assert out["all"].sum() == 2 and out["all"][0, 0] and out["all"][2, 3]
  assert out["pair"].sum() == 1 and out["pair"][2, 3]
  # Vectorised thresholds agree with scalar calls.
  v = bl.responsibility_predict_fn({"responsibilities": r, "n": 0},
                                   {"threshold": np.array([0.2, 0.8])})
  for g, thr in enumerate((0.2, 0.8)):
    s = bl.responsibility_baseline(r, 0, thr)
    np.testing.assert_array_equal(v["all"][g], s["all"])
    np.testing.assert_array_equal(v["pair"][g], s["pair"])


def test_spectral_residual_odd_blob_scores_highest():
  rng = np.random.default_rng(1)
  h, w = 96, 128
  # Regular texture (periodic stripes) + noise, one odd blob.
  yy, xx = np.mgrid[0:h, 0:w]
  img = 0.5 + 0.2 * np.sin(2 * np.pi * xx / 8.0)
  img += rng.normal(scale=0.02, size=(h, w))
  cy, cx, r = 30, 90, 7
  blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
  img[blob] = 1.0
  rgb = (np.clip(img, 0, 1)[..., None] * 255).repeat(3, -1).astype(np.uint8)
  sal = bl.spectral_residual_saliency(rgb)
  assert sal.shape == (h, w) and sal.dtype == np.float32
  assert sal.min() >= 0.0 and sal.max() == pytest.approx(1.0)
  py, px = np.unravel_index(np.argmax(sal), sal.shape)
  assert np.hypot(py - cy, px - cx) <= 2 * r
  ring = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (2 * r) ** 2
  assert sal[ring].mean() > 3 * sal[~ring].mean()


def test_spectral_residual_constant_image_is_finite_zero():
  sal = bl.spectral_residual_saliency(np.full((20, 30), 0.5))
  assert np.all(sal == 0.0)


def test_boxes_to_mask_inclusive_pixel_centres():
  m = bl.boxes_to_mask(np.array([[1.0, 2.0, 3.0, 2.5]]), 5, 6)
  want = np.zeros((5, 6), bool)
  want[2, 1:4] = True  # rows with centre y in [2, 2.5], cols x in [1, 3]
  np.testing.assert_array_equal(m, want)
  assert not bl.boxes_to_mask(np.zeros((0, 4)), 3, 3).any()


def test_bbox_baseline_tasks():
  hb = np.array([[0, 0, 1, 1], [4, 4, 5, 5]], np.float32)
  ob = np.array([[2, 0, 3, 1], [np.nan] * 4], np.float32)
  t = bl.bbox_baseline_tasks(hb, ob, np.array([True, False]), 1, 6, 6)
  assert t["hand"].sum() == 4 and t["obj"].sum() == 0
  assert t["pair"].sum() == 4 and t["all"].sum() == 12


def test_boxes_from_detections_file(tmp_path):
  p = tmp_path / "dets.json"
  p.write_text(json.dumps({
      "img_1": {"hand_boxes": [[0, 0, 4, 4], [5, 5, 9, 9]],
                "object_boxes": [[1, 1, 3, 3], None]},
      "img_2": {"hand_boxes": [], "object_boxes": []},
  }))
  d = bl.boxes_from_detections_file(str(p))
  hands, objs, valid = d["img_1"]
  np.testing.assert_array_equal(hands[1], [5, 5, 9, 9])
  np.testing.assert_array_equal(valid, [True, False])
  np.testing.assert_array_equal(objs[0], [1, 1, 3, 3])
  assert d["img_2"][0].shape == (0, 4)


def test_boxes_from_detections_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    bl.boxes_from_detections_file(str(tmp_path / "nope.json"))
  cases = [
      ({"a": {"hand_boxes": [[0, 0, 1, 1]]}}, "object_boxes"),
      ({"a": {"hand_boxes": [[0, 0, 1]], "object_boxes": [None]}},
       r"'hand_boxes'\[0\]"),
      ({"a": {"hand_boxes": [[0, 0, 1, 1]], "object_boxes": []}},
       "entries"),
      ({"a": {"hand_boxes": [[3, 0, 1, 1]], "object_boxes": [None]}},
       "x1 < x0"),
  ]
  for k, (content, pattern) in enumerate(cases):
    p = tmp_path / f"bad{k}.json"
    p.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=pattern):
      bl.boxes_from_detections_file(str(p))
  p = tmp_path / "broken.json"
  p.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    bl.boxes_from_detections_file(str(p))
