"""Baselines of the COHESIV evaluation (paper Sec. 4.2, Tables 1 and 3).

NumPy, host side. Masks are bool [H, W]; boxes are [x0, y0, x1, y1] float
pixels with pixel centres at integer coordinates; flow[..., 0] = dx (columns),
flow[..., 1] = dy (rows).

* Flow: |flow| > threshold; the same mask is scored against all four tasks.
* Thresholded Responsibility: binarised responsibility pseudo-labels; the
  union over hands for All, the queried hand's map for Pair (no Hand/Obj).
* Saliency: the paper uses a learned saliency network (Zhao & Wu 2019, its
  ref. [51]); this project substitutes the training-free spectral residual
  saliency of Hou & Zhang (CVPR 2007), so its numbers are not the paper's
  Saliency row. The map is scored against all four tasks after a threshold.
* Supervised Bounding Box: filled boxes of the hand and its object; boxes
  come from ground truth or from a user-supplied detections JSON
  (`boxes_from_detections_file`).

Thresholds are fitted on validation with
`segmentation.grid_search_thresholds`; `*_predict_fn` helpers below plug in.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import cv2
import numpy as np
from scipy import ndimage

from handobj_jax.evaluation import segmentation

TASKS = segmentation.TASKS


def same_mask_for_all_tasks(mask: np.ndarray) -> dict[str, np.ndarray]:
  """One class-agnostic mask scored against All, Pair, Hand and Obj."""
  mask = np.asarray(mask, bool)
  return {t: mask for t in TASKS}


# ----------------------------------------------------------------------------
# Flow.


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
  """[..., H, W, 2] flow (dx, dy) in pixels -> [..., H, W] float32 norm."""
  flow = np.asarray(flow, np.float32)
  if flow.shape[-1] != 2:
    raise ValueError(f"flow_magnitude: flow must be [..., H, W, 2], got "
                     f"{flow.shape}")
  return np.sqrt(np.sum(np.square(flow), axis=-1))


def flow_baseline_mask(flow: np.ndarray, threshold: float) -> np.ndarray:
  """Flow baseline: pixels whose flow magnitude exceeds `threshold` pixels."""
  return flow_magnitude(flow) > threshold


def score_map_predict_fn(inputs: Mapping[str, Any],
                         params: Mapping[str, np.ndarray]) -> dict[str,
                                                                   np.ndarray]:
  """`predict_fn` for a single threshold on one score map, all four tasks.

  Args:
    inputs: {'score': [H, W] float} (flow magnitude, saliency, ...).
    params: {'threshold': [G]}.

  Returns:
    {task: [G, H, W] bool}, the same mask for every task.
  """
  score = np.asarray(inputs["score"])
  mask = score[None] > np.asarray(params["threshold"])[:, None, None]
  return same_mask_for_all_tasks(mask)


# ----------------------------------------------------------------------------
# Thresholded responsibility.


def responsibility_baseline(responsibilities: np.ndarray, n: int,
                            threshold: float) -> dict[str, np.ndarray]:
  """Binarised responsibility pseudo-labels (All and Pair only).

  Args:
    responsibilities: [N, H, W] per-hand responsibility maps in [0, 1].
    n: query hand index.
    threshold: binarisation threshold (scalar or [G, 1, 1] array).

  Returns:
    {'all': union over hands of (r_k > threshold), 'pair': r_n > threshold}.
  """
  r = np.asarray(responsibilities, np.float32)
  if r.ndim != 3:
    raise ValueError(f"responsibility_baseline: responsibilities must be "
                     f"[N, H, W], got {r.shape}")
  if not 0 <= n < r.shape[0]:
    raise ValueError(f"responsibility_baseline: n={n} out of range for "
                     f"{r.shape[0]} hands")
  thr = np.asarray(threshold)
  binary = r > thr[..., None, :, :] if thr.ndim == 3 else r > thr
  return {"all": np.any(binary, axis=-3), "pair": binary[..., n, :, :]}


def responsibility_predict_fn(
    inputs: Mapping[str, Any],
    params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`predict_fn`: inputs {'responsibilities': [N,H,W], 'n'}, params
  {'threshold': [G]} -> {'all', 'pair'}: [G, H, W]."""
  thr = np.asarray(params["threshold"])[:, None, None]
  return responsibility_baseline(inputs["responsibilities"], int(inputs["n"]),
                                 thr)


# ----------------------------------------------------------------------------
# Spectral residual saliency (Hou & Zhang 2007).


def spectral_residual_saliency(image: np.ndarray,
                               width: int = 64,
                               blur_sigma: float = 3.0,
                               average_size: int = 3) -> np.ndarray:
  """Spectral residual saliency map, upsampled to the input size.

  Steps: grey image resized to `width` columns (aspect kept); log amplitude
  spectrum minus its local `average_size` x `average_size` box average (the
  spectrum is periodic, hence wrap-around borders); inverse FFT with the
  original phase; squared magnitude; Gaussian blur (`blur_sigma` in
  downscaled pixels; Hou & Zhang smooth with a Gaussian too, the width is a
  free parameter here); bilinear resize back; normalised to [0, 1].

  Args:
    image: [H, W, 3] uint8 RGB, [H, W, 3] float in [0, 1], or [H, W] grey.
    width: working width in pixels.
    blur_sigma: Gaussian sigma in working pixels (0 disables the blur).
    average_size: box size of the local average of the log spectrum.

  Returns:
    [H, W] float32 saliency in [0, 1] (all zeros for a constant image).
  """
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 3:
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    rgb = img.astype(np.float64) / scale
    grey = rgb @ np.array([0.299, 0.587, 0.114])
  elif img.ndim == 2:
    grey = img.astype(np.float64)
    if img.dtype == np.uint8:
      grey /= 255.0
  else:
    raise ValueError(f"spectral_residual_saliency: image must be [H, W, 3] or "
                     f"[H, W], got {img.shape}")
  h, w = grey.shape
  if h < 2 or w < 2:
    raise ValueError(f"spectral_residual_saliency: image too small {img.shape}")
  small_w = int(width)
  small_h = max(2, int(round(h * small_w / w)))
  small = cv2.resize(grey.astype(np.float32), (small_w, small_h),
                     interpolation=cv2.INTER_AREA).astype(np.float64)
  spec = np.fft.fft2(small)
  log_amp = np.log(np.abs(spec) + 1e-12)
  phase = np.angle(spec)
  residual = log_amp - ndimage.uniform_filter(log_amp, size=average_size,
                                              mode="wrap")
  recon = np.fft.ifft2(np.exp(residual + 1j * phase))
  sal = np.square(np.abs(recon))
  if blur_sigma > 0:
    sal = ndimage.gaussian_filter(sal, blur_sigma, mode="reflect")
  sal = cv2.resize(sal.astype(np.float32), (w, h),
                   interpolation=cv2.INTER_LINEAR)
  lo, hi = float(sal.min()), float(sal.max())
  if not np.isfinite(hi) or hi - lo <= 1e-12 * max(abs(hi), 1.0):
    return np.zeros((h, w), np.float32)
  return ((sal - lo) / (hi - lo)).astype(np.float32)


# ----------------------------------------------------------------------------
# Supervised bounding boxes.


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Union of filled boxes: pixel (x, y) is inside iff x0 <= x <= x1 and
  y0 <= y <= y1 (pixel centres at integer coordinates).

  Args:
    boxes: [K, 4] float [x0, y0, x1, y1]; K may be 0; rows with NaN are
      skipped (no box).
    height, width: mask size.

  Returns:
    [H, W] bool.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  ys = np.arange(height, dtype=np.float32)[:, None]
  xs = np.arange(width, dtype=np.float32)[None, :]
  mask = np.zeros((height, width), bool)
  for x0, y0, x1, y1 in boxes:
    if np.isnan([x0, y0, x1, y1]).any():
      continue
    mask |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
  return mask


def bbox_baseline_tasks(hand_boxes: np.ndarray, object_boxes: np.ndarray,
                        object_valid: np.ndarray, n: int, height: int,
                        width: int) -> dict[str, np.ndarray]:
  """Supervised Bounding Box baseline for query hand `n`, all four tasks.

  Args:
    hand_boxes: [N, 4] boxes of the image's hands.
    object_boxes: [N, 4] box of the object each hand holds.
    object_valid: [N] bool, False where the hand holds nothing.
    n: query hand index.
    height, width: image size.

  Returns:
    {task: [H, W] bool}.
  """
  hand_boxes = np.asarray(hand_boxes, np.float32).reshape(-1, 4)
  object_boxes = np.asarray(object_boxes, np.float32).reshape(-1, 4)
  object_valid = np.asarray(object_valid, bool).reshape(-1)
  k = hand_boxes.shape[0]
  if object_boxes.shape[0] != k or object_valid.shape[0] != k:
    raise ValueError(f"bbox_baseline_tasks: {k} hand boxes but "
                     f"{object_boxes.shape[0]} object boxes and "
                     f"{object_valid.shape[0]} object_valid flags")
  hands = np.stack([boxes_to_mask(b, height, width) for b in hand_boxes])
  objs = np.stack([
      boxes_to_mask(b, height, width) if v else np.zeros((height, width),
                                                         bool)
      for b, v in zip(object_boxes, object_valid)
  ])
  return segmentation.compose_tasks(hands, objs, n)


def _parse_box(value: Any, where: str) -> np.ndarray:
  arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
  if arr is None or arr.shape != (4,) or not np.all(np.isfinite(arr)):
    raise ValueError(f"{where}: expected a box [x0, y0, x1, y1] of 4 finite "
                     f"numbers, got {value!r}")
  if arr[2] < arr[0] or arr[3] < arr[1]:
    raise ValueError(f"{where}: box {value!r} has x1 < x0 or y1 < y0")
  return arr.astype(np.float32)


def boxes_from_detections_file(
    path: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Reads per-image hand / held-object boxes supplied by the user.

  Format (JSON):
    {"<image_id>": {"hand_boxes": [[x0, y0, x1, y1], ...],
                    "object_boxes": [[x0, y0, x1, y1] or null, ...]}, ...}
  object_boxes[i] is the box of the object held by hand i (null: none) and
  must have as many entries as hand_boxes. Pixel coordinates of the image the
  masks are evaluated at.

  Args:
    path: JSON file.

  Returns:
    {image_id: (hand_boxes [N, 4] float32, object_boxes [N, 4] float32 (NaN
    rows where missing), object_valid [N] bool)}.

  Raises:
    FileNotFoundError: no such file (message names it).
    ValueError: malformed JSON or field (message names file, image and field).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"boxes_from_detections_file: no detections file "
                            f"at {path!r}")
  with open(path, "r") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"boxes_from_detections_file: {path!r} is not valid "
                       f"JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"boxes_from_detections_file: {path!r} must hold an "
                     f"object mapping image ids to entries, got "
                     f"{type(data).__name__}")
  out = {}
  for image_id, entry in data.items():
    where = f"{path}: image {image_id!r}"
    if not isinstance(entry, dict):
      raise ValueError(f"{where}: entry must be an object with 'hand_boxes' "
                       f"and 'object_boxes'")
    for field in ("hand_boxes", "object_boxes"):
      if field not in entry:
        raise ValueError(f"{where}: missing field {field!r}")
      if not isinstance(entry[field], list):
        raise ValueError(f"{where}: field {field!r} must be a list")
    hands_raw, objs_raw = entry["hand_boxes"], entry["object_boxes"]
    if len(objs_raw) != len(hands_raw):
      raise ValueError(f"{where}: 'object_boxes' has {len(objs_raw)} entries "
                       f"but 'hand_boxes' has {len(hands_raw)}")
    hands = np.zeros((len(hands_raw), 4), np.float32)
    objs = np.full((len(hands_raw), 4), np.nan, np.float32)
    valid = np.zeros((len(hands_raw),), bool)
    for i, b in enumerate(hands_raw):
      hands[i] = _parse_box(b, f"{where}: field 'hand_boxes'[{i}]")
    for i, b in enumerate(objs_raw):
      if b is None:
        continue
      objs[i] = _parse_box(b, f"{where}: field 'object_boxes'[{i}]")
      valid[i] = True
    out[str(image_id)] = (hands, objs, valid)
  return out
