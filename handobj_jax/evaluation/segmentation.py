"""COHESIV segmentation evaluation (paper Sec. 4.1): All/Pair/Hand/Obj IoU.

NumPy, runs on the host. Masks are bool [H, W] (any leading batch dims where
stated); "query hand n" indexes the N hands of one image.

Tasks, for an image with hands 0..N-1 and query hand n:
  all  = union of every hand and every held object in the image;
  pair = hand n and the object it holds;
  hand = hand n only;
  obj  = the object hand n holds (empty when it holds nothing).
The same composition turns per-hand predictions into the four predicted masks
(`compose_tasks`).

IoU conventions (COHESIV Sec. 4.1 does not state which; both are computed
and reported):
  * per_example: mean over (image, query hand) examples of |P & G| / |P | G|,
    EXCLUDING examples whose union is empty (prediction and ground truth both
    empty, e.g. Obj for a hand that holds nothing and a method that predicts
    nothing). A non-empty prediction for an empty target counts as IoU 0.
  * pooled: sum of intersections / sum of unions over the whole split
    (0/0 -> NaN, only when every example's union is empty).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

TASKS = ("all", "pair", "hand", "obj")


def compose_tasks(hand_masks: np.ndarray, object_masks: np.ndarray,
                  n: int) -> dict[str, np.ndarray]:
  """Builds the four task masks for query hand `n` of one image.

  Works for ground truth and for per-hand predictions alike.

  Args:
    hand_masks: [N, H, W] bool, one mask per hand.
    object_masks: [N, H, W] bool, the object held by each hand (all False when
      the hand holds nothing; two hands holding one object share a mask).
    n: query hand index, 0 <= n < N.

  Returns:
    {'all', 'pair', 'hand', 'obj'} -> [H, W] bool.
  """
  hand_masks = np.asarray(hand_masks, bool)
  object_masks = np.asarray(object_masks, bool)
  if hand_masks.ndim != 3 or hand_masks.shape != object_masks.shape:
    raise ValueError("compose_tasks: hand_masks and object_masks must both be "
                     f"[N, H, W]; got {hand_masks.shape} and "
                     f"{object_masks.shape}")
  if not 0 <= n < hand_masks.shape[0]:
    raise ValueError(f"compose_tasks: query hand n={n} out of range for "
                     f"{hand_masks.shape[0]} hands")
  hand = hand_masks[n]
  obj = object_masks[n]
  return {
      "all": np.any(hand_masks, axis=0) | np.any(object_masks, axis=0),
      "pair": hand | obj,
      "hand": hand.copy(),
      "obj": obj.copy(),
  }


def intersection_union(pred: np.ndarray,
                       gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pixel counts of intersection and union over the last two axes.

  Args:
    pred, gt: [..., H, W] bool, broadcastable against each other.

  Returns:
    (intersection, union), int64 arrays of the broadcast leading shape.
  """
  pred = np.asarray(pred, bool)
  gt = np.asarray(gt, bool)
  if pred.shape[-2:] != gt.shape[-2:]:
    raise ValueError(f"intersection_union: pred {pred.shape} and gt "
                     f"{gt.shape} differ in [H, W]")
  inter = np.sum(pred & gt, axis=(-2, -1), dtype=np.int64)
  union = np.sum(pred | gt, axis=(-2, -1), dtype=np.int64)
  return inter, union


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
  """IoU of two [H, W] masks; NaN when both are empty (example excluded)."""
  inter, union = intersection_union(pred, gt)
  return float(inter) / float(union) if union > 0 else float("nan")


@dataclasses.dataclass
class SegmentationMeter:
  """Accumulates per-task IoU statistics; `merge`-able across shards/hosts.

  Per task: sum of intersections and unions (pooled IoU), sum of per-example
  IoUs and the number of examples with a non-empty union (per-example mean),
  and the total number of examples seen.
  """
  inter: dict[str, int] = dataclasses.field(
      default_factory=lambda: {t: 0 for t in TASKS})
  union: dict[str, int] = dataclasses.field(
      default_factory=lambda: {t: 0 for t in TASKS})
  iou_sum: dict[str, float] = dataclasses.field(
      default_factory=lambda: {t: 0.0 for t in TASKS})
  n_valid: dict[str, int] = dataclasses.field(
      default_factory=lambda: {t: 0 for t in TASKS})
  n_total: dict[str, int] = dataclasses.field(
      default_factory=lambda: {t: 0 for t in TASKS})

  def update(self, task: str, pred: np.ndarray, gt: np.ndarray) -> None:
    """Adds examples for one task; pred/gt [..., H, W] (leading = examples)."""
    if task not in TASKS:
      raise ValueError(f"SegmentationMeter: unknown task {task!r}, expected "
                       f"one of {TASKS}")
    inter, union = intersection_union(pred, gt)
    inter = np.atleast_1d(inter).ravel()
    union = np.atleast_1d(union).ravel()
    ok = union > 0
    self.inter[task] += int(inter.sum())
    self.union[task] += int(union.sum())
    self.iou_sum[task] += float(np.sum(inter[ok] / union[ok]))
    self.n_valid[task] += int(ok.sum())
    self.n_total[task] += int(inter.size)

  def update_tasks(self, preds: Mapping[str, np.ndarray],
                   targets: Mapping[str, np.ndarray]) -> None:
    """Adds one example per task present in `preds` (baselines may lack some).

    Raises a ValueError for a predicted task without a target.
    """
    for task, pred in preds.items():
      if task not in targets:
        raise ValueError(f"SegmentationMeter: no target for task {task!r}")
      self.update(task, pred, targets[task])

  def merge(self, other: "SegmentationMeter") -> "SegmentationMeter":
    """Returns a new meter with both meters' statistics."""
    out = SegmentationMeter()
    for field in ("inter", "union", "iou_sum", "n_valid", "n_total"):
      a, b = getattr(self, field), getattr(other, field)
      setattr(out, field, {t: a[t] + b[t] for t in TASKS})
    return out

  def compute(self) -> dict[str, dict[str, float]]:
    """{task: {'per_example', 'pooled', 'n_examples', 'n_nonempty'}}.

    IoUs are fractions in [0, 1] (NaN for a task that saw no non-empty
    example); tasks never updated are omitted.
    """
    out = {}
    for t in TASKS:
      if self.n_total[t] == 0:
        continue
      out[t] = {
          "per_example": (self.iou_sum[t] / self.n_valid[t]
                          if self.n_valid[t] else float("nan")),
          "pooled": (self.inter[t] / self.union[t]
                     if self.union[t] else float("nan")),
          "n_examples": float(self.n_total[t]),
          "n_nonempty": float(self.n_valid[t]),
      }
    return out


def cosine_similarity_map(z: np.ndarray, mean_embedding: np.ndarray,
                          eps: float = 1e-8) -> np.ndarray:
  """Cosine similarity between each pixel embedding and a mean embedding.

  Args:
    z: [..., H, W, F] embeddings.
    mean_embedding: [F] (or broadcastable [..., 1, 1, F]).
    eps: guards zero-norm vectors (their similarity is 0).

  Returns:
    [..., H, W] float32 in [-1, 1].
  """
  z = np.asarray(z, np.float32)
  m = np.asarray(mean_embedding, np.float32)
  if z.shape[-1] != m.shape[-1]:
    raise ValueError(f"cosine_similarity_map: feature dims differ: z "
                     f"{z.shape}, mean_embedding {m.shape}")
  dot = np.sum(z * m, axis=-1)
  nz = np.linalg.norm(z, axis=-1)
  nm = np.linalg.norm(m, axis=-1)
  return (dot / np.maximum(nz * nm, eps)).astype(np.float32)


def cohesiv_masks(objectness_sim: np.ndarray, person_sim: np.ndarray,
                  attention: np.ndarray, tau1: Any, tau2: Any, tau3: Any,
                  tau4: Any) -> tuple[np.ndarray, np.ndarray]:
  """COHESIV inference rule (paper Sec. 3.2, "Inference").

  object = objectness > tau1 AND attention > tau2;
  hand   = person similarity > tau3 AND attention > tau4.

  Args:
    objectness_sim: [..., H, W] cosine similarity to the mean object
      embedding.
    person_sim: [..., H, W] cosine similarity to the mean person embedding.
    attention: [..., H, W] predicted responsibility q^T K of the query hand.
    tau1..tau4: scalars, or arrays broadcastable against the maps (e.g.
      [G, 1, 1] to evaluate G threshold settings at once).

  Returns:
    (hand_mask, obj_mask), bool, broadcast shape.
  """
  obj = (objectness_sim > tau1) & (attention > tau2)
  hand = (person_sim > tau3) & (attention > tau4)
  return hand, obj


@dataclasses.dataclass
class GridSearchResult:
  """Result of `grid_search_thresholds`.

  best_params: {name: value} of the best grid point.
  best_value: the metric there.
  values: metric for every grid point, shape = tuple(len(grid[k]) for k in
    grid order).
  """
  best_params: dict[str, float]
  best_value: float
  values: np.ndarray


def grid_search_thresholds(
    predict_fn: Callable[[Any, dict[str, np.ndarray]], Mapping[str,
                                                               np.ndarray]],
    examples: Iterable[tuple[Any, Mapping[str, np.ndarray]]],
    grid: Mapping[str, Sequence[float]],
    task: str = "pair",
    statistic: str = "pooled",
    chunk_size: int = 256,
) -> GridSearchResult:
  """Exhaustive threshold search maximising one IoU statistic on a split.

  The whole grid (1-4 thresholds, e.g. COHESIV's tau1..tau4 or a baseline's
  single threshold) is evaluated vectorised: `predict_fn` receives each
  threshold as a 1-D array of G grid points and returns masks with a leading
  G axis. The grid is processed in chunks of `chunk_size` points to bound
  memory. Ties resolve to the first maximum in grid (C) order.

  Args:
    predict_fn: (inputs, params) -> {task: [G, H, W] bool}, where params maps
      each grid name to a [G] float array. Only `task` is read. Reshape params
      to [G, 1, 1] inside to broadcast against [H, W] maps.
    examples: iterable of (inputs, targets) where targets = {task: [H, W]
      bool}; it is materialised once (a list) since it is visited per chunk.
    grid: ordered {name: candidate values}.
    task: which task's IoU to maximise.
    statistic: 'pooled' or 'per_example' (see module docstring).
    chunk_size: grid points per `predict_fn` call.

  Returns:
    GridSearchResult.
  """
  if task not in TASKS:
    raise ValueError(f"grid_search_thresholds: unknown task {task!r}")
  if statistic not in ("pooled", "per_example"):
    raise ValueError(f"grid_search_thresholds: statistic must be 'pooled' or "
                     f"'per_example', got {statistic!r}")
  if not 1 <= len(grid) <= 4:
    raise ValueError(f"grid_search_thresholds: expected 1-4 thresholds, got "
                     f"{list(grid)}")
  names = list(grid)
  axes = [np.asarray(grid[k], np.float64).ravel() for k in names]
  for k, a in zip(names, axes):
    if a.size == 0:
      raise ValueError(f"grid_search_thresholds: grid[{k!r}] is empty")
  shape = tuple(a.size for a in axes)
  mesh = np.meshgrid(*axes, indexing="ij")
  flat = [m.ravel() for m in mesh]
  g_total = flat[0].size
  examples = list(examples)
  if not examples:
    raise ValueError("grid_search_thresholds: no examples")
  inter = np.zeros(g_total, np.int64)
  union = np.zeros(g_total, np.int64)
  iou_sum = np.zeros(g_total, np.float64)
  n_valid = np.zeros(g_total, np.int64)
  for start in range(0, g_total, chunk_size):
    sl = slice(start, min(start + chunk_size, g_total))
    params = {k: f[sl] for k, f in zip(names, flat)}
    for inputs, targets in examples:
      pred = np.asarray(predict_fn(inputs, params)[task], bool)
      gt = np.asarray(targets[task], bool)
      pred = np.broadcast_to(pred, (sl.stop - sl.start,) + gt.shape)
      i, u = intersection_union(pred, gt[None])
      inter[sl] += i
      union[sl] += u
      ok = u > 0
      iou_sum[sl] += np.where(ok, i / np.maximum(u, 1), 0.0)
      n_valid[sl] += ok
  if statistic == "pooled":
    values = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
  else:
    values = np.where(n_valid > 0, iou_sum / np.maximum(n_valid, 1), np.nan)
  if np.all(np.isnan(values)):
    raise ValueError("grid_search_thresholds: metric undefined for every grid"
                     " point (all unions empty)")
  best = int(np.nanargmax(values))
  return GridSearchResult(
      best_params={k: float(f[best]) for k, f in zip(names, flat)},
      best_value=float(values[best]),
      values=values.reshape(shape))


def cohesiv_predict_fn(inputs: Mapping[str, np.ndarray],
                       params: Mapping[str, np.ndarray]) -> dict[str,
                                                                 np.ndarray]:
  """`predict_fn` for `grid_search_thresholds` with COHESIV's four thresholds.

  Args:
    inputs: {'objectness_sim': [N, H, W], 'person_sim': [N, H, W] (the same
      image map repeated per hand is fine), 'attention': [N, H, W] (per query
      hand), 'n': query index}.
    params: {'tau1'..'tau4': [G]}.

  Returns:
    {task: [G, H, W] bool}.
  """
  t = {k: np.asarray(params[k])[:, None, None, None]
       for k in ("tau1", "tau2", "tau3", "tau4")}
  hand, obj = cohesiv_masks(np.asarray(inputs["objectness_sim"])[None],
                            np.asarray(inputs["person_sim"])[None],
                            np.asarray(inputs["attention"])[None],
                            t["tau1"], t["tau2"], t["tau3"], t["tau4"])
  n = int(inputs["n"])  # hand, obj: [G, N, H, W]
  return {
      "all": np.any(hand | obj, axis=1),
      "pair": hand[:, n] | obj[:, n],
      "hand": hand[:, n],
      "obj": obj[:, n],
  }


def product_grid(grid: Mapping[str, Sequence[float]]) -> list[dict[str,
                                                                   float]]:
  """All combinations of a grid as a list of dicts (for loops / reports)."""
  names = list(grid)
  return [dict(zip(names, vals))
          for vals in itertools.product(*(list(grid[k]) for k in names))]
