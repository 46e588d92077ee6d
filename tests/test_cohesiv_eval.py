"""COHESIV evaluation: task composition through the eval path, threshold search through the method wiring,
predicted-query peaks and matching, figures, and the `eval` job end to end on a tiny in-memory dataset
with a random-parameter smoke checkpoint.

Expected values come from hand-made masks whose pixel counts are worked out in the comments (rectangle
areas), brute-force NumPy loops, or OpenCV; never from the code under test.
"""

import json
import os

import cv2
import numpy as np
import pytest

from configs import cohesiv as cohesiv_configs
from handobj_jax import jobs
from handobj_jax.evaluation import cohesiv_eval
from handobj_jax.evaluation import figures
from handobj_jax.jobs import evaluate
from handobj_jax.jobs import train as train_job
from handobj_jax.tasks import cohesiv_task
from handobj_jax.train import checkpoint as ckpt_lib
from handobj_jax.train import trainer
from input_pipeline import pipeline
from memory_builder import MemoryBuilder


def _record(attention, objectness, person, gt_hand, gt_object, valid=None, **kw):
  n, h, w = np.shape(attention)
  zeros = np.zeros((h, w), np.float32)
  hb, ob, ov = cohesiv_eval.gt_boxes(gt_hand, gt_object)
  return cohesiv_eval.ImageRecord(
      image_id="test/0/0", objectness=np.asarray(objectness, np.float32),
      person_sim=np.asarray(person, np.float32), attention=np.asarray(attention, np.float32),
      responsibility=np.zeros((n, h, w), np.float32), flow_magnitude=zeros, saliency=zeros,
      gt_hand=np.asarray(gt_hand, bool), gt_object=np.asarray(gt_object, bool),
      query_valid=np.ones(n, bool) if valid is None else np.asarray(valid, bool), hand_boxes=hb,
      object_boxes=ob, object_valid=ov, **kw)


# ---- IoU composition through the evaluation path ----------------------------------------------------


def test_cohesiv_scores_match_hand_counted_iou():
  """20x20 image, 2 hands. GT: hand0 = rows 0-4 x cols 0-4 (25 px), obj0 = rows 5-9 x cols 0-4 (25 px),
  hand1 = rows 10-14 x cols 10-14 (25 px), hand 1 holds nothing. Prediction (all thresholds 0.5):
  attention0 = 1 on rows 0-9 x cols 0-9, attention1 = 0; person = 1 on rows 0-4, objectness = 1 on rows
  5-9 -> hand0 = rows 0-4 x cols 0-9 (50 px), obj0 = rows 5-9 x cols 0-9 (50 px), query 1 predicts nothing.
    query 0: Hand 25/50, Obj 25/50, Pair 50/100, All 50/(100 + 75 - 50) = 50/125.
    query 1: Hand 0/25, Obj empty/empty (excluded per example), Pair 0/25, All 50/125.
  Per-example: All 0.4, Pair 0.25, Hand 0.25, Obj 0.5. Pooled: All 100/250, Pair 50/125, Hand 25/75,
  Obj 25/50."""
  h = w = 20
  gt_hand = np.zeros((2, h, w), bool)
  gt_obj = np.zeros((2, h, w), bool)
  gt_hand[0, 0:5, 0:5] = True
  gt_obj[0, 5:10, 0:5] = True
  gt_hand[1, 10:15, 10:15] = True
  att = np.zeros((2, h, w), np.float32)
  att[0, 0:10, 0:10] = 1.0
  person = np.zeros((h, w), np.float32)
  person[0:5] = 1.0
  objectness = np.zeros((h, w), np.float32)
  objectness[5:10] = 1.0
  rec = _record(att, objectness, person, gt_hand, gt_obj)
  exs = cohesiv_eval.examples([rec])
  assert len(exs) == 2
  res = cohesiv_eval.score(cohesiv_eval.METHODS["cohesiv"], exs,
                           {"tau1": 0.5, "tau2": 0.5, "tau3": 0.5, "tau4": 0.5})
  expect_pe = {"all": 0.4, "pair": 0.25, "hand": 0.25, "obj": 0.5}
  expect_pooled = {"all": 100 / 250, "pair": 50 / 125, "hand": 25 / 75, "obj": 25 / 50}
  for t in cohesiv_eval.TASKS:
    np.testing.assert_allclose(res[t]["per_example"], expect_pe[t], atol=1e-12, err_msg=t)
    np.testing.assert_allclose(res[t]["pooled"], expect_pooled[t], atol=1e-12, err_msg=t)
  assert res["obj"]["n_nonempty"] == 1 and res["obj"]["n_examples"] == 2
  # Responsibility baseline has All and Pair only (the paper's '-').
  assert set(cohesiv_eval.score(cohesiv_eval.METHODS["responsibility"], exs, {"threshold": 0.5})) == {
      "all", "pair"}


def test_invalid_queries_are_not_evaluated_and_do_not_predict():
  h = w = 8
  gt_hand = np.zeros((2, h, w), bool)
  gt_hand[0, :2, :2] = gt_hand[1, 5:, 5:] = True
  att = np.ones((2, h, w), np.float32)
  rec = cohesiv_eval.make_record(
      image_id="v/1/3", image=np.zeros((h, w, 3), np.uint8), z_maps=(np.ones((h, w)), np.ones((h, w))),
      attention=att, responsibility=np.zeros((2, h, w), np.uint8), flow=np.zeros((h, w, 2), np.float16),
      gt_hand=gt_hand, gt_object=np.zeros((2, h, w), bool), query_valid=np.array([True, False]),
      has_gt=True)
  assert rec.query_valid.tolist() == [True, False]
  assert np.all(rec.attention[1] == 0)  # an invalid hand's attention cannot leak into All
  assert len(cohesiv_eval.examples([rec])) == 1
  no_gt = cohesiv_eval.make_record(
      image_id="v/1/4", image=np.zeros((h, w, 3), np.uint8), z_maps=(np.ones((h, w)), np.ones((h, w))),
      attention=att, responsibility=np.zeros((2, h, w), np.uint8), flow=np.zeros((h, w, 2), np.float16),
      gt_hand=gt_hand, gt_object=np.zeros((2, h, w), bool), query_valid=np.array([True, True]),
      has_gt=False)
  assert cohesiv_eval.examples([no_gt]) == []


# ---- Threshold search through the wiring -------------------------------------------------------------


def test_grid_search_finds_the_constructed_cohesiv_optimum():
  """Pixel classes (objectness, attention, person) built so that IoU = 1 only at tau1 in [0.5, 0.6),
  tau2 in [0.45, 0.55), tau3 in [0.8, 0.9), tau4 in [0.2, 0.3): on the default grids that is exactly
  (0.55, 0.5, 0.85, 0.25). Classes: object (0.6, 0.55, 0); objectness distractor (0.5, 0.55, 0);
  object-attention distractor (0.6, 0.45, 0); hand (0, 0.3, 0.9); person distractor (0, 0.3, 0.8);
  hand-attention distractor (0, 0.2, 0.9); background zeros. Any hand-rule inclusion of object pixels
  would include the objectness distractor too (same attention and person), so the object must come from
  the object rule."""
  h, w = 6, 10
  obj = np.zeros((h, w), np.float32)
  att = np.zeros((h, w), np.float32)
  per = np.zeros((h, w), np.float32)
  gt_h = np.zeros((1, h, w), bool)
  gt_o = np.zeros((1, h, w), bool)
  classes = [((0.6, 0.55, 0.0), "o"), ((0.5, 0.55, 0.0), ""), ((0.6, 0.45, 0.0), ""),
             ((0.0, 0.3, 0.9), "h"), ((0.0, 0.3, 0.8), ""), ((0.0, 0.2, 0.9), "")]
  for col, ((o, a, p), kind) in enumerate(classes):
    obj[:, col], att[:, col], per[:, col] = o, a, p
    if kind == "o":
      gt_o[0, :, col] = True
    if kind == "h":
      gt_h[0, :, col] = True
  rec = _record(att[None], obj, per, gt_h, gt_o)
  params, value = cohesiv_eval.fit_thresholds(cohesiv_eval.METHODS["cohesiv"],
                                              cohesiv_eval.examples([rec]), "pair", "pooled")
  assert value == 1.0
  assert params == {"tau1": 0.55, "tau2": 0.5, "tau3": 0.85, "tau4": 0.25}
  # The frozen thresholds reproduce IoU 1 on every task at test time.
  res = cohesiv_eval.score(cohesiv_eval.METHODS["cohesiv"], cohesiv_eval.examples([rec]), params)
  assert all(res[t]["pooled"] == 1.0 for t in cohesiv_eval.TASKS)


def test_flow_threshold_search_matches_brute_force():
  """Flow baseline: the fitted threshold is the grid value a brute-force loop over the grid picks."""
  rng = np.random.default_rng(0)
  recs = []
  for i in range(3):
    mag = rng.gamma(2.0, 0.8, size=(16, 16)).astype(np.float32)
    gt = np.zeros((1, 16, 16), bool)
    gt[0] = mag > 1.3
    gt[0, :2] = ~gt[0, :2]  # noise: no threshold is perfect
    rec = _record(np.zeros((1, 16, 16)), np.zeros((16, 16)), np.zeros((16, 16)), gt,
                  np.zeros((1, 16, 16), bool))
    rec.flow_magnitude = mag
    recs.append(rec)
  params, value = cohesiv_eval.fit_thresholds(cohesiv_eval.METHODS["flow"], cohesiv_eval.examples(recs))
  best, best_t = -1.0, None
  for t in cohesiv_eval.FLOW_GRID:
    inter = sum(np.sum((r.flow_magnitude > t) & r.gt_hand[0]) for r in recs)
    union = sum(np.sum((r.flow_magnitude > t) | r.gt_hand[0]) for r in recs)
    if inter / union > best:
      best, best_t = inter / union, t
  assert params == {"threshold": best_t}
  np.testing.assert_allclose(value, best, rtol=1e-12)


# ---- Predicted queries -------------------------------------------------------------------------------


def _brute_force_peaks(hm, thr, r):
  h, w = hm.shape
  cands = []
  for y in range(h):
    for x in range(w):
      win = hm[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
      if hm[y, x] > thr and hm[y, x] >= win.max():
        cands.append((hm[y, x], x, y))
  cands.sort(key=lambda c: -c[0])
  kept = []
  for s, x, y in cands:
    if all((x - a) ** 2 + (y - b) ** 2 > r * r for a, b in kept):
      kept.append((x, y))
  return kept


def test_detect_peaks_and_match_on_a_constructed_heatmap():
  h, w = 40, 64
  yy, xx = np.mgrid[0:h, 0:w]
  hm = (1.0 * np.exp(-((xx - 10) ** 2 + (yy - 20) ** 2) / 8.0) +
        0.8 * np.exp(-((xx - 50) ** 2 + (yy - 12) ** 2) / 8.0) +
        0.2 * np.exp(-((xx - 30) ** 2 + (yy - 30) ** 2) / 8.0)).astype(np.float32)
  hm[0, 0] = np.nan
  pts, scores = cohesiv_eval.detect_peaks(hm, 0.3, 3, 4)
  assert pts.tolist() == [[10.0, 20.0], [50.0, 12.0]]
  assert _brute_force_peaks(np.nan_to_num(hm, nan=-1), 0.3, 3) == [(10, 20), (50, 12)]
  assert scores[0] > scores[1] > 0.3
  # A plateau gives one peak.
  flat = np.zeros((10, 10), np.float32)
  flat[4:6, 4:6] = 1.0
  assert len(cohesiv_eval.detect_peaks(flat, 0.5, 2, 4)[0]) == 1
  # Matching: hand 0's box holds peak 1, hand 1's box holds peak 0, hand 2 invalid, hand 3 far away.
  boxes = np.array([[45, 5, 56, 18], [4, 14, 16, 26], [8, 18, 12, 22], [30, 30, 34, 34]], np.float32)
  match = cohesiv_eval.match_peaks_to_hands(pts, boxes, np.array([True, True, False, True]), 4.0)
  assert match.tolist() == [1, 0, -1, -1]
  # One peak, two overlapping hands: the nearer centre wins, the other gets nothing.
  two = np.array([[0, 0, 20, 20], [5, 5, 30, 30]], np.float32)
  assert cohesiv_eval.match_peaks_to_hands(np.array([[9.0, 9.0]]), two, np.ones(2, bool), 0).tolist() == [
      0, -1]


def test_predicted_query_row_scores_unmatched_hand_as_empty():
  """Hand 0 matched to peak 0 whose attention covers exactly its GT pair; hand 1 unmatched: Pair IoU 0."""
  h = w = 10
  gt_hand = np.zeros((2, h, w), bool)
  gt_hand[0, :3, :3] = True
  gt_hand[1, 6:, 6:] = True
  pred_att = np.zeros((1, h, w), np.float32)
  pred_att[0, :3, :3] = 1.0
  rec = _record(np.zeros((2, h, w)), np.zeros((h, w)), np.ones((h, w)), gt_hand,
                np.zeros((2, h, w), bool), pred_attention=pred_att, pred_match=np.array([0, -1]))
  res = cohesiv_eval.score(cohesiv_eval.METHODS["pred_query"], cohesiv_eval.examples([rec]),
                           {"tau1": 0.5, "tau2": 0.5, "tau3": 0.5, "tau4": 0.5})
  np.testing.assert_allclose(res["pair"]["per_example"], 0.5)  # (1 + 0) / 2
  np.testing.assert_allclose(res["pair"]["pooled"], 9 / (9 + 16))
  np.testing.assert_allclose(res["all"]["pooled"], 2 * 9 / (2 * 25))  # 9 of 25 GT pixels, twice


# ---- Figures -----------------------------------------------------------------------------------------


def test_figure_shapes_and_colours():
  h, w = 16, 24
  img = np.full((h, w, 3), 100, np.uint8)
  hand = np.zeros((h, w), bool)
  obj = np.zeros((h, w), bool)
  hand[:4, :8] = True
  obj[2:8, 4:12] = True
  over = figures.hand_object_overlay(img, hand, obj, opacity=1.0)
  assert tuple(over[0, 0]) == (0, 255, 0)  # hand only: green
  assert tuple(over[6, 10]) == (0, 0, 255)  # object only: blue
  assert tuple(over[3, 5]) == (0, 255, 255)  # both: cyan
  assert tuple(over[12, 20]) == (100, 100, 100)
  assert tuple(figures.all_masks_overlay(img, hand, opacity=1.0)[0, 0]) == (255, 0, 0)
  z = np.random.default_rng(0).normal(size=(h, w, 6))
  att = np.zeros((2, h, w))
  panel = figures.cohesiv_figure(img, z, np.array([[5.0, 3.0], [20.0, 12.0]]), att,
                                 np.stack([hand, hand]), np.stack([obj, obj]), min_tile=48)
  scale = 2  # ceil(48 / 24)
  assert panel.shape == (2 * h * scale, 5 * w * scale, 3)
  # The blue query dot is centred on the upscaled pixel (5, 3) of the first tile.
  cx, cy = 5 * scale, 3 * scale
  assert tuple(panel[cy, cx]) == figures.QUERY_RGB
  assert tuple(panel[h * scale + 12 * scale, 20 * scale]) == figures.QUERY_RGB


# ---- The eval job end to end -------------------------------------------------------------------------

SIZE = 32


def tiny_examples(num: int, seed: int) -> dict[str, np.ndarray]:
  """Examples in the pseudo-label format (FEATURES in the input_pipeline.cohesiv_examples docstring), random images, rectangle GT."""
  rng = np.random.default_rng(seed)
  n = 2
  d = {k: [] for k in ("image", "responsibility", "query_point", "query_valid", "hand_box", "person_mask",
                       "object_mask", "background_mask", "flow_next", "gt_hand_mask", "gt_object_mask",
                       "has_gt", "clip_id", "frame")}
  for i in range(num):
    gh = np.zeros((n, SIZE, SIZE), bool)
    go = np.zeros((n, SIZE, SIZE), bool)
    x0, y0 = rng.integers(0, 12, size=2)
    gh[0, y0:y0 + 8, x0:x0 + 6] = True
    go[0, y0 + 8:y0 + 14, x0:x0 + 10] = True
    gh[1, 20:28, 22:30] = True
    img = rng.integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
    img[gh.any(0)] = (220, 170, 140)
    img[go.any(0)] = (30, 60, 200)
    d["image"].append(img)
    d["responsibility"].append(((gh | go) * 230).astype(np.uint8))
    d["query_point"].append(np.array([[x0 + 3, y0 + 4], [26, 24]], np.float32))
    d["query_valid"].append(np.array([True, i % 2 == 0]))
    d["hand_box"].append(np.array([[x0, y0, x0 + 6, y0 + 8], [22, 20, 30, 28]], np.float32))
    d["person_mask"].append(gh.any(0))
    d["object_mask"].append(go.any(0))
    d["background_mask"].append(~(gh | go).any(0))
    flow = rng.normal(scale=0.2, size=(SIZE, SIZE, 2))
    flow[(gh | go)[0]] += 2.0
    d["flow_next"].append(flow.astype(np.float16))
    d["gt_hand_mask"].append(gh)
    d["gt_object_mask"].append(go)
    d["has_gt"].append(True)
    d["clip_id"].append(np.int64(i))
    d["frame"].append(np.int32(3))
  return {k: np.stack(v) for k, v in d.items()}


def smoke_config():
  config = cohesiv_configs.get_config("smoke")
  config.unlock()
  config.job = "eval"
  return config


def make_workdir(path: str, config) -> str:
  """A workdir with one checkpoint of random smoke-model parameters (step 1)."""
  task = cohesiv_task.CohesivTask(config)
  mesh = pipeline.make_data_mesh()
  make, _ = trainer.init_state(task, config, mesh, {"image": np.zeros((1, SIZE, SIZE, 3), np.float32)})
  ckpt = ckpt_lib.Checkpointer(path)
  try:
    ckpt.save(1, make(), {"epoch": 0}, val_loss=1.0)
  finally:
    ckpt.close()
  return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval_job"))
  config = smoke_config()
  make_workdir(workdir, config)
  builder = MemoryBuilder({"train": tiny_examples(4, 0), "validation": tiny_examples(4, 1),
                           "test": tiny_examples(4, 2)})
  orig = train_job.open_pseudolabelled
  train_job.open_pseudolabelled = lambda cfg: builder
  try:
    out = evaluate.run(config, workdir)
  finally:
    train_job.open_pseudolabelled = orig
  return workdir, out, config, builder


@pytest.mark.slow  # ~40 s on 2 shared cores: init + checkpoint + stats + forward + grid searches.
def test_eval_job_writes_report_thresholds_figures(evaluated):
  workdir, out, _, _ = evaluated
  assert os.path.isfile(os.path.join(workdir, "inference_stats.npz"))  # computed from train and stored
  report = json.load(open(os.path.join(workdir, "eval", "report.json")))
  assert [r["label"] for r in report["table1"]] == [
      "COHESIV", "Saliency (spectral residual)", "Flow", "Thresholded Responsibility",
      "Supervised Bounding Box"]
  assert [r["method"] for r in report["table2"]] == ["cohesiv", "attention_only", "embeddings_only",
                                                     "pred_query"]
  # Split sizes: 4 images each; queries: hand 0 always, hand 1 on even examples -> 6.
  assert report["split_sizes"] == {"validation": {"images": 4, "queries": 6},
                                   "test": {"images": 4, "queries": 6}}
  # Ground-truth boxes of rectangle masks are exact: Supervised Bounding Box scores 100 %.
  bbox = report["table1"][4]["test"]
  assert all(bbox[t]["pooled"] == 1.0 and bbox[t]["per_example"] == 1.0 for t in ("all", "pair", "hand"))
  md = open(os.path.join(workdir, "eval", "report.md")).read()
  assert "per-example" in md and "pooled" in md and "ground-truth hands" in md
  lines = [l for l in md.splitlines()
           if l.startswith("| Thresholded Responsibility |") and len(l.split("|")) == 7]
  assert len(lines) == 2  # Table 1 per-example and pooled; its Hand/Obj cells are '-'
  assert all(l.split("|")[4].strip() == "-" and l.split("|")[5].strip() == "-" for l in lines)
  assert md.count("| Method | synthetic_handobj:tiny All | Pair | Hand | Obj |") == 4
  th = json.load(open(os.path.join(workdir, "thresholds.json")))
  assert th["checkpoint_step"] == 1
  assert set(th["methods"]["cohesiv"]["params"]) == {"tau1", "tau2", "tau3", "tau4"}
  assert th["methods"]["cohesiv"]["params"]["tau2"] in cohesiv_eval.ATTENTION_GRID
  assert len(out["figures"]) == 4
  panel = cv2.imread(out["figures"][0])
  assert panel.shape[1] == 5 * 192 and panel.shape[0] % 192 == 0


@pytest.mark.slow
def test_eval_job_reuses_frozen_thresholds(evaluated, capsys):
  workdir, _, config, builder = evaluated
  before = open(os.path.join(workdir, "thresholds.json")).read()
  orig = train_job.open_pseudolabelled
  train_job.open_pseudolabelled = lambda cfg: builder
  try:
    evaluate.run(config, workdir)
  finally:
    train_job.open_pseudolabelled = orig
  assert "fitted COHESIV" not in capsys.readouterr().out
  assert json.load(open(os.path.join(workdir, "thresholds.json"))) == json.loads(before)


def test_eval_job_bad_inputs_are_job_input_errors(tmp_path):
  config = smoke_config()
  with pytest.raises(jobs.JobInputError, match="no checkpoint"):
    evaluate.load_model(config, str(tmp_path))
  config.eval = {"fit_task": "everything"}
  with pytest.raises(jobs.JobInputError, match="fit_task"):
    evaluate.settings_of(config)
  with pytest.raises(jobs.JobInputError, match="LABEL=WORKDIR"):
    evaluate._parse_extra("nolabel")
  assert "eval" in jobs.JOBS


def test_bbox_baseline_from_a_detections_file_is_matched_to_queries(tmp_path):
  """Detected boxes listed in the other order than the GT hands are assigned by the query point; the
  box mask of hand 0 = cols 0-4 x rows 0-4 (25 px) vs GT 5x5 at the same place -> Hand IoU 1."""
  h = w = 16
  gt_hand = np.zeros((2, h, w), bool)
  gt_hand[0, 0:5, 0:5] = True
  gt_hand[1, 10:14, 10:14] = True
  path = tmp_path / "det.json"
  path.write_text(json.dumps({"test/7/3": {"hand_boxes": [[10, 10, 13, 13], [0, 0, 4, 4]],
                                           "object_boxes": [None, [0, 5, 4, 9]]}}))
  from handobj_jax.evaluation import baselines  # pylint: disable=import-outside-toplevel
  dets = baselines.boxes_from_detections_file(str(path))
  kw = dict(image=np.zeros((h, w, 3), np.uint8), z_maps=(np.zeros((h, w)), np.zeros((h, w))),
            attention=np.zeros((2, h, w)), responsibility=np.zeros((2, h, w), np.uint8),
            flow=np.zeros((h, w, 2)), gt_hand=gt_hand, gt_object=np.zeros((2, h, w), bool),
            query_valid=np.ones(2, bool), has_gt=True, detections=dets,
            query_points=np.array([[2.0, 2.0], [12.0, 12.0]]))
  rec = cohesiv_eval.make_record(image_id="test/7/3", **kw)
  np.testing.assert_array_equal(rec.hand_boxes, [[0, 0, 4, 4], [10, 10, 13, 13]])
  assert rec.object_valid.tolist() == [True, False]
  res = cohesiv_eval.score(cohesiv_eval.METHODS["bbox"], cohesiv_eval.examples([rec]), {})
  assert res["hand"]["pooled"] == 1.0
  np.testing.assert_allclose(res["obj"]["pooled"], 0.0)  # a 25 px box, no GT object
  with pytest.raises(ValueError, match="no entry for image"):
    cohesiv_eval.make_record(image_id="test/7/4", **kw)
