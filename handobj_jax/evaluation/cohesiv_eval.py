"""COHESIV inference and its evaluation against the paper's baselines (Sec. 3.2 "Inference", Sec. 4).

Host-side NumPy. Shapes: N = hand slots of an image, K = detected hand-centre peaks, H, W = image size,
F = embedding width. Pixels (x, y) = (column, row), centres at integer coordinates. Masks bool [H, W].

Inference (paper Sec. 3.2):
  objectness = cos(Z, mean object embedding), person similarity = cos(Z, mean person embedding), the
  means taken over >= 500 training pixels whose pseudo-label is object / person
  (`<workdir>/inference_stats.npz`, written by the train job or, when absent, by the eval job);
  attention = clip(q(p)^T K, 0, 1) at the query point p;
  object = objectness > tau1 AND attention > tau2;  hand = person > tau3 AND attention > tau4
  (`segmentation.cohesiv_masks`). Thresholds are fitted on validation by `segmentation.grid_search_thresholds`
  and frozen for test (`<workdir>/thresholds.json`).

One evaluation *record* is one image (`ImageRecord`): the maps every method needs, computed once. One
evaluation *example* is (record, query hand n) for each hand n with a valid query and ground truth; its
targets are `segmentation.compose_tasks(gt_hand, gt_object, n)`.

Methods (`METHODS`): rows of the paper's Tables 1-4. Each maps (record, n, thresholds) to task masks with
a leading grid axis G, so one function serves both the grid search and the frozen test evaluation.
  cohesiv          the paper's rule, queries at ground-truth hand points (the dataset's query_point).
  pred_query       the same frozen thresholds, queries = hand-centre peaks matched to GT hands
                   (Table 4 "COHESIV w/ Predicted Query"); an unmatched hand gets empty masks (counted,
                   not skipped), All = union over every detected peak.
  saliency         spectral residual saliency > t, scored against all four tasks (a training-free stand-in
                   for the paper's learned saliency network [51]: not the paper's numbers).
  flow             |flow to the next frame| > t px, all four tasks.
  responsibility   binarised responsibility pseudo-labels, All and Pair only (paper: '-' for Hand/Obj).
  bbox             filled boxes: ground-truth hand / object boxes (tight boxes of the GT masks), or the
                   user's detections file; no thresholds.
  attention_only   inference ablation: attention > t, All and Pair only.
  embeddings_only  inference ablation: person > tau3 is the hand, objectness > tau1 the object, no
                   attention, so no individuation (the same masks for every query).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from handobj_jax.evaluation import baselines
from handobj_jax.evaluation import segmentation

TASKS = segmentation.TASKS
THRESHOLDS_FILE = "thresholds.json"
STATS_FILE = "inference_stats.npz"

# Default grids. Cosine thresholds include -1 (condition off), attention thresholds span (0, 1).
COS_GRID = (-1.0, -0.25, 0.0, 0.2, 0.4, 0.55, 0.7, 0.85)
ATTENTION_GRID = (0.05, 0.15, 0.25, 0.35, 0.5, 0.65, 0.8)
UNIT_GRID = tuple(np.round(np.linspace(0.02, 0.98, 25), 4).tolist())
FLOW_GRID = tuple(np.round(np.geomspace(0.05, 8.0, 24), 4).tolist())
FINE_COS_GRID = tuple(np.round(np.linspace(-0.5, 0.95, 14), 4).tolist())


# ------------------------------------------------------------------------------------------------------
# Inference statistics and maps.


def load_inference_stats(path: str) -> dict[str, np.ndarray]:
  """Reads the mean embeddings npz (keys person_embedding, object_embedding [F], ...)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no inference statistics at {path!r}")
  with np.load(path) as data:
    out = {k: data[k] for k in data.files}
  for key in ("person_embedding", "object_embedding"):
    if key not in out:
      raise ValueError(f"{path}: missing array {key!r} (has {sorted(out)})")
    if out[key].ndim != 1 or not np.all(np.isfinite(out[key])):
      raise ValueError(f"{path}: {key!r} must be a finite [F] vector, got shape {out[key].shape}")
  return out


def similarity_maps(z: np.ndarray, stats: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(objectness, person similarity), each [..., H, W] float32 in [-1, 1], from Z [..., H, W, F]."""
  return (segmentation.cosine_similarity_map(z, stats["object_embedding"]),
          segmentation.cosine_similarity_map(z, stats["person_embedding"]))


# ------------------------------------------------------------------------------------------------------
# Hand-centre peaks (predicted queries).


def detect_peaks(heatmap: np.ndarray, threshold: float, nms_radius: int,
                 max_peaks: int) -> tuple[np.ndarray, np.ndarray]:
  """Local maxima of a hand-centre heatmap with non-maximum suppression.

  A pixel is a peak when it is the maximum of its (2r+1)^2 window and > threshold. Peaks are then taken in
  decreasing score order, dropping any within `nms_radius` px (Euclidean) of one already kept (plateaus of
  equal values thus give one peak).

  Args:
    heatmap: [H, W] float; non-finite values never peak.
    threshold: minimum score.
    nms_radius: suppression radius in pixels (>= 1).
    max_peaks: at most this many peaks.

  Returns:
    (points [K, 2] float32 (x, y), scores [K] float32), K <= max_peaks, best first.
  """
  h = np.asarray(heatmap, np.float32)
  if h.ndim != 2:
    raise ValueError(f"detect_peaks: heatmap must be [H, W], got {h.shape}")
  r = max(int(nms_radius), 1)
  clean = np.where(np.isfinite(h), h, -np.inf)
  local_max = ndimage.maximum_filter(clean, size=2 * r + 1, mode="nearest")
  ys, xs = np.nonzero((clean >= local_max) & (clean > threshold))
  order = np.argsort(-clean[ys, xs], kind="stable")
  kept: list[tuple[int, int]] = []
  for i in order:
    if len(kept) >= max_peaks:
      break
    x, y = int(xs[i]), int(ys[i])
    if all((x - kx) ** 2 + (y - ky) ** 2 > r * r for kx, ky in kept):
      kept.append((x, y))
  points = np.asarray(kept, np.float32).reshape(-1, 2)
  scores = np.asarray([clean[y, x] for x, y in kept], np.float32)
  return points, scores


def match_peaks_to_hands(points: np.ndarray, hand_boxes: np.ndarray, hand_valid: np.ndarray,
                         max_distance: float) -> np.ndarray:
  """Assigns detected peaks to ground-truth hands, one to one.

  A (hand, peak) pair is a candidate when the peak lies inside the hand's box ([x0, y0, x1, y1],
  inclusive) or within `max_distance` px of the box centre. Candidates are taken greedily by increasing
  distance to the box centre.

  Args:
    points: [K, 2] peaks (x, y).
    hand_boxes: [N, 4] ground-truth hand boxes.
    hand_valid: [N] bool, hands to match.
    max_distance: pixels.

  Returns:
    [N] int: the matched peak index, -1 for none.
  """
  points = np.asarray(points, np.float64).reshape(-1, 2)
  boxes = np.asarray(hand_boxes, np.float64).reshape(-1, 4)
  valid = np.asarray(hand_valid, bool).reshape(-1)
  n, k = boxes.shape[0], points.shape[0]
  match = np.full(n, -1, np.int64)
  if k == 0:
    return match
  centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
  dist = np.linalg.norm(points[None, :, :] - centres[:, None, :], axis=-1)  # [N, K]
  inside = ((points[None, :, 0] >= boxes[:, None, 0]) & (points[None, :, 0] <= boxes[:, None, 2]) &
            (points[None, :, 1] >= boxes[:, None, 1]) & (points[None, :, 1] <= boxes[:, None, 3]))
  ok = (inside | (dist <= max_distance)) & valid[:, None] & np.isfinite(dist)
  used = np.zeros(k, bool)
  for flat in np.argsort(np.where(ok, dist, np.inf), axis=None, kind="stable"):
    i, j = divmod(int(flat), k)
    if not ok[i, j]:
      break
    if match[i] < 0 and not used[j]:
      match[i], used[j] = j, True
  return match


# ------------------------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass
class ImageRecord:
  """Everything the methods need about one image (see the module docstring).

  objectness, person_sim [H, W]; attention [N, H, W] at the GT query points (0 for invalid hands);
  pred_attention [K, H, W] at the detected peaks, pred_match [N] (peak index or -1);
  responsibility [N, H, W] in [0, 1]; flow_magnitude, saliency [H, W]; gt_hand, gt_object [N, H, W];
  query_valid [N] (valid query AND ground truth available); hand_boxes / object_boxes [N, 4] and
  object_valid [N] for the box baseline; image_id 'split/clip/frame'.
  """
  image_id: str
  objectness: np.ndarray
  person_sim: np.ndarray
  attention: np.ndarray
  responsibility: np.ndarray
  flow_magnitude: np.ndarray
  saliency: np.ndarray
  gt_hand: np.ndarray
  gt_object: np.ndarray
  query_valid: np.ndarray
  hand_boxes: np.ndarray
  object_boxes: np.ndarray
  object_valid: np.ndarray
  pred_attention: np.ndarray | None = None
  pred_match: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.objectness.shape)


_RECORD_ARRAYS = ("objectness", "person_sim", "attention", "responsibility", "flow_magnitude", "saliency",
                  "gt_hand", "gt_object", "query_valid", "hand_boxes", "object_boxes", "object_valid")


def records_to_arrays(records: Sequence[ImageRecord], max_peaks: int) -> dict[str, np.ndarray]:
  """Stacks records into arrays with a leading image axis (to gather them across processes); the
  predicted-query attention is padded to `max_peaks` with its count kept. Inverse: `records_from_arrays`."""
  if not records:
    raise ValueError("records_to_arrays: no records")
  out = {k: np.stack([getattr(r, k) for r in records]) for k in _RECORD_ARRAYS}
  out["image_id"] = np.asarray([r.image_id.encode() for r in records], dtype="S128")
  if records[0].pred_attention is not None:
    att = np.zeros((len(records), max_peaks) + records[0].shape, np.float32)
    count = np.zeros(len(records), np.int32)
    for i, r in enumerate(records):
      count[i] = len(r.pred_attention)
      att[i, :count[i]] = r.pred_attention
    out.update(pred_attention=att, pred_count=count, pred_match=np.stack([r.pred_match for r in records]))
  return out


def records_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[ImageRecord]:
  """The records that `records_to_arrays` stacked."""
  records = []
  for i in range(len(arrays["image_id"])):
    kwargs = {k: arrays[k][i] for k in _RECORD_ARRAYS}
    if "pred_attention" in arrays:
      kwargs.update(pred_attention=arrays["pred_attention"][i, :int(arrays["pred_count"][i])],
                    pred_match=arrays["pred_match"][i])
    records.append(ImageRecord(image_id=arrays["image_id"][i].decode(), **kwargs))
  return records


def mask_box(mask: np.ndarray) -> np.ndarray:
  """Tight inclusive box [x0, y0, x1, y1] of a bool [H, W] mask; NaNs when empty."""
  ys, xs = np.nonzero(np.asarray(mask, bool))
  if xs.size == 0:
    return np.full(4, np.nan, np.float32)
  return np.asarray([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def gt_boxes(gt_hand: np.ndarray, gt_object: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(hand_boxes [N, 4], object_boxes [N, 4], object_valid [N]) from ground-truth masks [N, H, W]."""
  hands = np.stack([mask_box(m) for m in gt_hand])
  objs = np.stack([mask_box(m) for m in gt_object])
  return hands, objs, np.any(gt_object, axis=(-2, -1))


def make_record(*, image_id: str, image: np.ndarray, z_maps: tuple[np.ndarray, np.ndarray],
                attention: np.ndarray, responsibility: np.ndarray, flow: np.ndarray,
                gt_hand: np.ndarray, gt_object: np.ndarray, query_valid: np.ndarray, has_gt: bool,
                saliency_width: int = 64, pred_attention: np.ndarray | None = None,
                pred_match: np.ndarray | None = None,
                detections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                query_points: np.ndarray | None = None) -> ImageRecord:
  """Builds an `ImageRecord` from one example's model outputs and stored fields.

  Args:
    image_id: 'split/clip_id/frame' (the key of a detections file).
    image: [H, W, 3] uint8.
    z_maps: (objectness, person_sim) [H, W] from `similarity_maps`.
    attention: [N, H, W] at the GT query points.
    responsibility: [N, H, W] uint8 (x255) or float in [0, 1].
    flow: [H, W, 2] flow to the next frame.
    gt_hand, gt_object: [N, H, W] bool.
    query_valid: [N] bool.
    has_gt: False -> no hand is evaluated.
    saliency_width: working width of the spectral residual.
    pred_attention, pred_match: predicted-query attention [K, H, W] and matches [N].
    detections: optional {image_id: (hand_boxes, object_boxes, object_valid)}; the detected hand box
      holding (or nearest to) each GT query point becomes that hand's box.
    query_points: [N, 2], needed with `detections`.
  """
  valid = np.asarray(query_valid, bool) & bool(has_gt) & np.any(gt_hand, axis=(-2, -1))
  att = np.where(np.asarray(query_valid, bool)[:, None, None], np.asarray(attention, np.float32), 0.0)
  r = np.asarray(responsibility)
  r = r.astype(np.float32) / 255.0 if r.dtype == np.uint8 else r.astype(np.float32)
  if detections is not None:
    if image_id not in detections:
      raise ValueError(f"detections file has no entry for image {image_id!r}")
    hands_b, objs_b, objs_v = _detections_for_queries(detections[image_id], query_points)
  else:
    hands_b, objs_b, objs_v = gt_boxes(gt_hand, gt_object)
  return ImageRecord(
      image_id=image_id, objectness=np.asarray(z_maps[0], np.float32),
      person_sim=np.asarray(z_maps[1], np.float32), attention=att, responsibility=r,
      flow_magnitude=baselines.flow_magnitude(flow),
      saliency=baselines.spectral_residual_saliency(image, width=saliency_width),
      gt_hand=np.asarray(gt_hand, bool), gt_object=np.asarray(gt_object, bool), query_valid=valid,
      hand_boxes=hands_b, object_boxes=objs_b, object_valid=objs_v,
      pred_attention=None if pred_attention is None else np.asarray(pred_attention, np.float32),
      pred_match=None if pred_match is None else np.asarray(pred_match, np.int64))


def _detections_for_queries(entry, query_points):
  """Reorders a detection entry to the GT hands: detected box containing the query, else nearest."""
  hands, objs, objs_v = entry
  q = np.asarray(query_points, np.float64).reshape(-1, 2)
  n = q.shape[0]
  out_h = np.full((n, 4), np.nan, np.float32)
  out_o = np.full((n, 4), np.nan, np.float32)
  out_v = np.zeros(n, bool)
  if len(hands) == 0:
    return out_h, out_o, out_v
  centres = 0.5 * (hands[:, :2] + hands[:, 2:])
  for i in range(n):
    inside = ((q[i, 0] >= hands[:, 0]) & (q[i, 0] <= hands[:, 2]) & (q[i, 1] >= hands[:, 1]) &
              (q[i, 1] <= hands[:, 3]))
    d = np.linalg.norm(centres - q[i], axis=-1) - 1e9 * inside
    j = int(np.argmin(d))
    out_h[i], out_o[i], out_v[i] = hands[j], objs[j], objs_v[j]
  return out_h, out_o, out_v


def examples(records: Sequence[ImageRecord]) -> list[tuple[tuple[ImageRecord, int], dict[str, np.ndarray]]]:
  """(inputs=(record, n), targets={task: [H, W]}) for every evaluated query hand."""
  out = []
  for rec in records:
    for n in np.flatnonzero(rec.query_valid):
      out.append(((rec, int(n)), segmentation.compose_tasks(rec.gt_hand, rec.gt_object, int(n))))
  return out


# ------------------------------------------------------------------------------------------------------
# Methods.

PredictFn = Callable[[tuple[ImageRecord, int], Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A table row: `predict(inputs, params)` -> {task: [G, H, W]}; `grid` empty = no thresholds;
  `thresholds_from` = reuse another method's fitted thresholds (not refitted)."""
  label: str
  tasks: tuple[str, ...]
  grid: Mapping[str, Sequence[float]]
  predict: PredictFn
  thresholds_from: str | None = None
  needs_pred_query: bool = False


def _cohesiv(inputs, params):
  rec, n = inputs
  maps = {"objectness_sim": np.broadcast_to(rec.objectness, rec.attention.shape),
          "person_sim": np.broadcast_to(rec.person_sim, rec.attention.shape),
          "attention": rec.attention, "n": n}
  return segmentation.cohesiv_predict_fn(maps, params)


def _pred_query(inputs, params):
  rec, n = inputs
  if rec.pred_attention is None or rec.pred_match is None:
    raise ValueError(f"record {rec.image_id}: no predicted-query attention (centre head missing?)")
  t = {k: np.asarray(params[k])[:, None, None, None] for k in ("tau1", "tau2", "tau3", "tau4")}
  g = t["tau1"].shape[0]
  h, w = rec.shape
  if rec.pred_attention.shape[0] == 0:
    empty = np.zeros((g, h, w), bool)
    return {task: empty for task in TASKS}
  hand, obj = segmentation.cohesiv_masks(rec.objectness[None, None], rec.person_sim[None, None],
                                         rec.pred_attention[None], t["tau1"], t["tau2"], t["tau3"],
                                         t["tau4"])  # [G, K, H, W]
  j = int(rec.pred_match[n])
  out = {"all": np.any(hand | obj, axis=1)}
  if j < 0:
    empty = np.zeros((g, h, w), bool)
    out.update(pair=empty, hand=empty, obj=empty)
  else:
    out.update(pair=hand[:, j] | obj[:, j], hand=hand[:, j], obj=obj[:, j])
  return out


def _saliency(inputs, params):
  return baselines.score_map_predict_fn({"score": inputs[0].saliency}, params)


def _flow(inputs, params):
  return baselines.score_map_predict_fn({"score": inputs[0].flow_magnitude}, params)


def _responsibility(inputs, params):
  rec, n = inputs
  return baselines.responsibility_predict_fn({"responsibilities": rec.responsibility, "n": n}, params)


def _bbox(inputs, params):
  del params
  rec, n = inputs
  h, w = rec.shape
  masks = baselines.bbox_baseline_tasks(rec.hand_boxes, rec.object_boxes, rec.object_valid, n, h, w)
  return {k: v[None] for k, v in masks.items()}


def _attention_only(inputs, params):
  rec, n = inputs
  binary = rec.attention[None] > np.asarray(params["threshold"])[:, None, None, None]
  return {"all": np.any(binary, axis=1), "pair": binary[:, n]}


def _embeddings_only(inputs, params):
  rec, _ = inputs
  obj = rec.objectness[None] > np.asarray(params["tau1"])[:, None, None]
  hand = rec.person_sim[None] > np.asarray(params["tau3"])[:, None, None]
  both = hand | obj
  return {"all": both, "pair": both, "hand": hand, "obj": obj}


COHESIV_GRID = {"tau1": COS_GRID, "tau2": ATTENTION_GRID, "tau3": COS_GRID, "tau4": ATTENTION_GRID}

METHODS: dict[str, Method] = {
    "cohesiv": Method("COHESIV", TASKS, COHESIV_GRID, _cohesiv),
    "saliency": Method("Saliency (spectral residual)", TASKS, {"threshold": UNIT_GRID}, _saliency),
    "flow": Method("Flow", TASKS, {"threshold": FLOW_GRID}, _flow),
    "responsibility": Method("Thresholded Responsibility", ("all", "pair"), {"threshold": UNIT_GRID},
                             _responsibility),
    "bbox": Method("Supervised Bounding Box", TASKS, {}, _bbox),
    "attention_only": Method("Attention-Only (inference ablation)", ("all", "pair"),
                             {"threshold": UNIT_GRID}, _attention_only),
    "embeddings_only": Method("Embeddings-Only (inference ablation)", TASKS,
                              {"tau1": FINE_COS_GRID, "tau3": FINE_COS_GRID}, _embeddings_only),
    "pred_query": Method("COHESIV w/ Predicted Query", TASKS, {}, _pred_query, thresholds_from="cohesiv",
                         needs_pred_query=True),
}
# Table 1 (baselines) and Table 2 (ablations) rows, in the paper's order.
TABLE1 = ("cohesiv", "saliency", "flow", "responsibility", "bbox")
TABLE2 = ("cohesiv", "attention_only", "embeddings_only", "pred_query")


def fit_thresholds(method: Method, exs: Sequence, task: str = "pair", statistic: str = "pooled",
                   chunk_size: int = 512) -> tuple[dict[str, float], float]:
  """Grid search of `method`'s thresholds on `exs` (validation); ({} , nan) for threshold-free methods."""
  if not method.grid:
    return {}, float("nan")
  fit_task = task if task in method.tasks else method.tasks[0]
  res = segmentation.grid_search_thresholds(method.predict, exs, method.grid, task=fit_task,
                                            statistic=statistic, chunk_size=chunk_size)
  return res.best_params, res.best_value


def score(method: Method, exs: Sequence, params: Mapping[str, float]) -> dict[str, dict[str, float]]:
  """IoU statistics of `method` with frozen `params` ({} for none): SegmentationMeter.compute()."""
  meter = segmentation.SegmentationMeter()
  arr = {k: np.asarray([v], np.float64) for k, v in params.items()}
  if method.grid and set(arr) != set(method.grid):
    raise ValueError(f"{method.label}: thresholds {sorted(arr)} do not match the grid {sorted(method.grid)}")
  for inputs, targets in exs:
    preds = method.predict(inputs, arr if method.grid or method.thresholds_from else {})
    meter.update_tasks({t: np.asarray(preds[t])[0] for t in method.tasks}, targets)
  return meter.compute()


# ------------------------------------------------------------------------------------------------------
# Thresholds file and reports.


def save_thresholds(path: str, thresholds: Mapping[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(thresholds, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def load_thresholds(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no thresholds file at {path!r}")
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(data, dict) or "methods" not in data:
    raise ValueError(f"{path}: expected an object with a 'methods' field")
  return data


def _fmt(value: float | None) -> str:
  if value is None:
    return "-"
  return "nan" if not math.isfinite(value) else f"{100.0 * value:.1f}"


def results_table(rows: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]], statistic: str,
                  dataset: str, tasks_of: Mapping[str, Sequence[str]]) -> str:
  """Markdown table: rows = methods, columns = All/Pair/Hand/Obj of `dataset`, IoU in %; '-' for a task
  the method cannot produce (as in the paper)."""
  head = f"| Method | {dataset} All | Pair | Hand | Obj |\n|---|---|---|---|---|\n"
  lines = []
  for label, res in rows:
    cells = [_fmt(res[t][statistic]) if t in tasks_of[label] and t in res else "-" for t in TASKS]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return head + "\n".join(lines) + "\n"


def write_report(out_dir: str, report: Mapping[str, Any]) -> tuple[str, str]:
  """Writes `report.json` and `report.md` under `out_dir`.

  `report` fields: dataset, checkpoint, split_sizes {split: {images, queries}}, fit {split, task,
  statistic}, thresholds {method: {...}}, table1 / table2: lists of {method, label, tasks, test: {task:
  stats}}, notes: [str]. Returns (markdown path, json path).
  """
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "report.json")
  with open(json_path, "w") as f:
    json.dump(report, f, indent=1, default=_json_default)
  md = [f"# COHESIV evaluation: {report['dataset']}\n",
        f"Checkpoint: `{report['checkpoint']}`.\n",
        "Queries come from the ground-truth hands (the dataset's `query_point` of each valid hand), except "
        "the row 'COHESIV w/ Predicted Query' (hand-centre head peaks, matched to GT hands).\n",
        f"Thresholds fitted by grid search on the `{report['fit']['split']}` split maximising "
        f"{report['fit']['statistic']} {report['fit']['task'].capitalize()} IoU, frozen for "
        f"`{report['test_split']}`.\n",
        "## Split sizes\n", "| split | images | query examples |\n|---|---|---|"]
  for split, sizes in report["split_sizes"].items():
    md.append(f"| {split} | {sizes['images']} | {sizes['queries']} |")
  md.append("")
  for name, title in (("table1", "Table 1: COHESIV vs. baselines"), ("table2", "Table 2: ablations")):
    rows = [(r["label"], r["test"]) for r in report[name]]
    tasks_of = {r["label"]: r["tasks"] for r in report[name]}
    for statistic, text in (("per_example", "per-example mean IoU (mIoU, %)"),
                            ("pooled", "pooled IoU over the split (sum of intersections / sum of "
                                       "unions, %)")):
      md.append(f"## {title}, {report['test_split']} split, {text}\n")
      md.append(results_table(rows, statistic, report["dataset"], tasks_of))
  md.append("## Thresholds (frozen)\n")
  md.append("| Method | thresholds | validation value |\n|---|---|---|")
  for key, th in report["thresholds"].items():
    params = ", ".join(f"{k}={v:g}" for k, v in th["params"].items()) or "none"
    md.append(f"| {th['label']} | {params} | {_fmt(th.get('val_value'))} |")
  md.append("")
  if report.get("notes"):
    md.append("## Notes\n")
    md.extend(f"- {n}" for n in report["notes"])
  md_path = os.path.join(out_dir, "report.md")
  with open(md_path, "w") as f:
    f.write("\n".join(md) + "\n")
  return md_path, json_path


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
