r"""COHESIV on a user's image or video: hand and held-object masks for query points.

  python -m handobj_jax.predict --checkpoint WORKDIR --image PATH [--query X,Y ...] [--out DIR]
      [--config configs/cohesiv.py:cpu] [--step best|latest] [--max-side 256]
  python -m handobj_jax.predict --checkpoint WORKDIR --video PATH [--every K] [--out DIR] ...

WORKDIR is a training workdir: `checkpoints/` (the best-validation step by default), `inference_stats.npz`
(mean person / object embeddings, required) and `thresholds.json` (written by the eval job; without it the
defaults `DEFAULT_THRESHOLDS` are used and a warning is printed). The model config is `<WORKDIR>/config.json`
when present, else `--config path[:variant]`.

Geometry: the image (any size) is scaled by s = max_side / max(H, W) (default max_side = the training
resolution), then zero-padded on the right and bottom to multiples of 32. A query (x, y) in the original
image maps to ((x + 0.5) s - 0.5, (y + 0.5) s - 0.5) (pixel centres at integers); the maps are cropped to
the unpadded area and resized back to H x W (bilinear) before thresholding, so masks are at full
resolution. Without --query, queries are the peaks of the hand-centre head (mapped back the same way).

Outputs in --out (default: next to the input, `<stem>_cohesiv/`): `<stem>_hand_<i>.png`,
`<stem>_object_<i>.png` (0/255 masks per query i), `<stem>_all.png`, `<stem>_figure.png` (Fig. 3 panel),
`<stem>_queries.json`. Video: every k-th frame processed, `<stem>_annotated.mp4` (or .avi when no MP4
encoder is available) with the hand / object overlay and query dots, plus `frames/<stem>_<t>.png`.

Errors (unreadable file, query outside the image, missing checkpoint/statistics/config): one line on
stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import cv2
import numpy as np

from handobj_jax import console
from handobj_jax import errors

DEFAULT_THRESHOLDS = {"tau1": 0.4, "tau2": 0.25, "tau3": 0.4, "tau4": 0.25}


class PredictError(Exception):
  """Bad input: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------------
# Geometry of resizing (pure).


def fit_size(height: int, width: int, max_side: int) -> tuple[float, int, int, int, int]:
  """(scale, resized h, resized w, padded h, padded w) for an image of height x width."""
  if height < 1 or width < 1:
    raise PredictError(f"empty image ({height} x {width})")
  s = float(max_side) / max(height, width)
  rh, rw = max(1, int(round(height * s))), max(1, int(round(width * s)))
  return s, rh, rw, -(-rh // 32) * 32, -(-rw // 32) * 32


def to_model_points(points: np.ndarray, scale: float) -> np.ndarray:
  """Original-image pixels (x, y) -> resized-image pixels, pixel centres at integers."""
  return (np.asarray(points, np.float64) + 0.5) * scale - 0.5


def to_image_points(points: np.ndarray, scale: float) -> np.ndarray:
  """Inverse of `to_model_points`."""
  return (np.asarray(points, np.float64) + 0.5) / scale - 0.5


def prepare_image(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
  """uint8 [H, W, 3] -> (float32 [Hp, Wp, 3] in [0, 1] padded with zeros, scale, (resized h, w))."""
  h, w = rgb.shape[:2]
  s, rh, rw, ph, pw = fit_size(h, w, max_side)
  interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
  resized = cv2.resize(rgb, (rw, rh), interpolation=interp) if (rh, rw) != (h, w) else rgb
  out = np.zeros((ph, pw, 3), np.float32)
  out[:rh, :rw] = resized.astype(np.float32) / 255.0
  return out, s, (rh, rw)


def map_back(maps: np.ndarray, resized: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
  """[..., Hp, Wp] model-resolution maps -> [..., H, W]: crop the padding, resize bilinearly."""
  maps = np.asarray(maps, np.float32)
  rh, rw = resized
  h, w = size
  lead = maps.shape[:-2]
  flat = maps[..., :rh, :rw].reshape((-1, rh, rw))
  out = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in flat]) if flat.size else \
      np.zeros((0, h, w), np.float32)
  return out.reshape(lead + (h, w))


def parse_query(text: str, height: int, width: int) -> tuple[float, float]:
  """'X,Y' -> (x, y); outside [0, W-1] x [0, H-1] is an error naming the value."""
  parts = text.split(",")
  try:
    if len(parts) != 2:
      raise ValueError
    x, y = float(parts[0]), float(parts[1])
  except ValueError:
    raise PredictError(f"--query {text!r}: expected X,Y in pixels, e.g. --query 120,80") from None
  if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= width - 1 and 0 <= y <= height - 1):
    raise PredictError(f"--query {text!r} lies outside the image (x in [0, {width - 1}], "
                       f"y in [0, {height - 1}])")
  return x, y


# ------------------------------------------------------------------------------------------------------
# Model.


class Predictor:
  """A restored model, its mean embeddings and thresholds; `__call__` runs one RGB image."""

  def __init__(self, workdir: str, config_spec: str | None, step: str = "best", max_side: int = 0):
    from handobj_jax import jobs  # pylint: disable=g-import-not-at-top
    from handobj_jax.evaluation import cohesiv_eval  # pylint: disable=g-import-not-at-top
    from handobj_jax.jobs import evaluate  # pylint: disable=g-import-not-at-top

    if not os.path.isdir(workdir):
      raise PredictError(f"--checkpoint {workdir!r} is not a directory")
    try:
      self.config = evaluate.config_for_workdir(workdir, config_spec)
      stats_path = os.path.join(workdir, cohesiv_eval.STATS_FILE)
      if not os.path.isfile(stats_path):
        raise PredictError(f"{stats_path} not found: run the train or eval job for this workdir first")
      self.stats = cohesiv_eval.load_inference_stats(stats_path)
      self.model = evaluate.load_model(self.config, workdir, best=(step == "best"))
    except (jobs.JobInputError, ValueError) as e:
      raise PredictError(str(e)) from None
    th_path = os.path.join(workdir, cohesiv_eval.THRESHOLDS_FILE)
    self.thresholds = dict(DEFAULT_THRESHOLDS)
    self.thresholds_source = "defaults"
    if os.path.isfile(th_path):
      try:
        self.thresholds = dict(cohesiv_eval.load_thresholds(th_path)["methods"]["cohesiv"]["params"])
        self.thresholds_source = th_path
      except (ValueError, KeyError) as e:
        raise PredictError(f"{th_path}: no usable COHESIV thresholds ({e})") from None
    else:
      console.warn(f"{th_path} not found (run the eval job to fit thresholds); using {DEFAULT_THRESHOLDS}")
    data = self.config.data
    default_side = {"tiny": 64, "small": 128}.get(str(data.builder_config), 256)
    self.max_side = int(max_side) or default_side
    self.eval_settings = evaluate.settings_of(self.config)

  def __call__(self, rgb: np.ndarray, queries: np.ndarray | None) -> dict[str, Any]:
    """rgb uint8 [H, W, 3]; queries [P, 2] original pixels, or None (hand-centre head).

    Returns: queries [P, 2], attention [P, H, W], hand / object [P, H, W] bool, all [H, W] bool,
    z [h, w, F] (model resolution, unpadded), image_small uint8 [h, w, 3], scale, source ('user'/'head').
    """
    from handobj_jax.evaluation import cohesiv_eval  # pylint: disable=g-import-not-at-top
    from handobj_jax.evaluation import segmentation  # pylint: disable=g-import-not-at-top
    from handobj_jax.jobs import evaluate  # pylint: disable=g-import-not-at-top

    h, w = rgb.shape[:2]
    x, s, (rh, rw) = prepare_image(rgb, self.max_side)
    source = "user"
    if queries is None:
      out = self.model.forward(x[None], np.zeros((1, 1, 2), np.float32))
      if "center" not in out:
        raise PredictError("this model has no hand-centre head: pass --query X,Y")
      radius, _ = evaluate.peak_settings(self.eval_settings, rh, rw)
      centre = out["center"][0].copy()
      centre[rh:], centre[:, rw:] = -np.inf, -np.inf
      pts, _ = cohesiv_eval.detect_peaks(centre, self.eval_settings.center_threshold, radius,
                                         self.eval_settings.max_peaks)
      queries = to_image_points(pts, s)
      source = "head"
      model_pts = pts
    else:
      model_pts = to_model_points(queries, s)
    queries = np.asarray(queries, np.float64).reshape(-1, 2)
    out = self.model.forward(x[None], np.asarray(model_pts, np.float32).reshape(1, -1, 2)
                             if len(queries) else np.zeros((1, 1, 2), np.float32))
    att_small = out["attention"][0][:len(queries)]
    obj_sim, person_sim = cohesiv_eval.similarity_maps(out["z"][0], self.stats)
    attention = map_back(att_small, (rh, rw), (h, w))
    obj_full = map_back(obj_sim, (rh, rw), (h, w))
    person_full = map_back(person_sim, (rh, rw), (h, w))
    t = self.thresholds
    hand, obj = segmentation.cohesiv_masks(obj_full[None], person_full[None], attention, t["tau1"],
                                           t["tau2"], t["tau3"], t["tau4"])
    return {"queries": queries, "attention": attention, "hand": hand, "object": obj,
            "all": np.any(hand | obj, axis=0) if len(queries) else np.zeros((h, w), bool),
            "z": out["z"][0][:rh, :rw], "scale": s, "source": source,
            "image_small": np.clip(x[:rh, :rw] * 255.0 + 0.5, 0, 255).astype(np.uint8),
            "attention_small": att_small[:, :rh, :rw]}


# ------------------------------------------------------------------------------------------------------
# Outputs.


def read_image(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise PredictError(f"--image {path!r}: no such file")
  bgr = cv2.imread(path, cv2.IMREAD_COLOR)
  if bgr is None:
    raise PredictError(f"--image {path!r}: not a readable image (OpenCV could not decode it)")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def annotate(rgb: np.ndarray, result: dict[str, Any]) -> np.ndarray:
  """Full-resolution overlay: hand green / object blue / overlap cyan per query, and the query dots."""
  from handobj_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  hand = np.any(result["hand"], axis=0) if len(result["queries"]) else np.zeros(rgb.shape[:2], bool)
  obj = np.any(result["object"], axis=0) if len(result["queries"]) else np.zeros(rgb.shape[:2], bool)
  out = figures.hand_object_overlay(rgb, hand, obj)
  return figures.draw_queries(out, result["queries"], radius=max(3, max(rgb.shape[:2]) // 100))


def figure(rgb: np.ndarray, result: dict[str, Any]) -> np.ndarray:
  """Fig. 3 panel at model resolution (one row per query)."""
  from handobj_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  small = result["image_small"]
  sh, sw = small.shape[:2]
  q = to_model_points(result["queries"], result["scale"])
  hand = map_back(result["hand"].astype(np.float32), rgb.shape[:2], (sh, sw)) > 0.5 if len(q) else \
      np.zeros((0, sh, sw), bool)
  obj = map_back(result["object"].astype(np.float32), rgb.shape[:2], (sh, sw)) > 0.5 if len(q) else \
      np.zeros((0, sh, sw), bool)
  return figures.cohesiv_figure(small, result["z"], q, result["attention_small"], hand, obj)


def write_outputs(out_dir: str, stem: str, rgb: np.ndarray, result: dict[str, Any]) -> list[str]:
  from handobj_jax import viz  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = []

  def put(name, img):
    path = os.path.join(out_dir, f"{stem}_{name}.png")
    viz.write_png(path, img)
    paths.append(path)

  for i in range(len(result["queries"])):
    put(f"hand_{i}", result["hand"][i])
    put(f"object_{i}", result["object"][i])
  put("all", result["all"])
  put("figure", figure(rgb, result))
  put("annotated", annotate(rgb, result))
  qpath = os.path.join(out_dir, f"{stem}_queries.json")
  with open(qpath, "w") as f:
    json.dump({"queries_xy": np.round(result["queries"], 2).tolist(), "source": result["source"],
               "image_size_hw": list(rgb.shape[:2]), "model_scale": result["scale"],
               "mask_pixels": {"hand": [int(m.sum()) for m in result["hand"]],
                               "object": [int(m.sum()) for m in result["object"]]}}, f, indent=1)
  paths.append(qpath)
  return paths


def run_video(predictor: Predictor, path: str, every: int, queries_text: Sequence[str], out_dir: str,
              stem: str, max_frames: int) -> list[str]:
  if not os.path.isfile(path):
    raise PredictError(f"--video {path!r}: no such file")
  cap = cv2.VideoCapture(path)
  ok, bgr = cap.read() if cap.isOpened() else (False, None)
  if not ok:
    cap.release()
    raise PredictError(f"--video {path!r}: not a readable video (OpenCV could not decode a frame)")
  fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
  h, w = bgr.shape[:2]
  queries = (np.asarray([parse_query(q, h, w) for q in queries_text]) if queries_text else None)
  frame_dir = os.path.join(out_dir, "frames")
  os.makedirs(frame_dir, exist_ok=True)
  video_path = os.path.join(out_dir, f"{stem}_annotated.mp4")
  writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"mp4v"), max(fps / every, 1.0), (w, h))
  if not writer.isOpened():
    video_path = os.path.join(out_dir, f"{stem}_annotated.avi")
    writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"MJPG"), max(fps / every, 1.0), (w, h))
  paths, t, done = [], 0, 0
  total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
  total = -(-total // every) if total > 0 else None
  if total and max_frames:
    total = min(total, max_frames)
  meter = console.Progress(total, "video", unit="frame")
  try:
    while ok:
      if t % every == 0:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        result = predictor(rgb, queries)
        frame = annotate(rgb, result)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        p = os.path.join(frame_dir, f"{stem}_{t:06d}.png")
        cv2.imwrite(p, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        paths.append(p)
        done += 1
        meter.update(done)
        if max_frames and done >= max_frames:
          break
      ok, bgr = cap.read()
      t += 1
  finally:
    cap.release()
    writer.release()
    meter.close()
  return [video_path] + paths


# ------------------------------------------------------------------------------------------------------
# CLI.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m handobj_jax.predict", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="training workdir (holds checkpoints/)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--image", help="input image (any size)")
  src.add_argument("--video", help="input video")
  p.add_argument("--query", action="append", default=[], help="X,Y query pixel (repeatable)")
  p.add_argument("--out", default="", help="output directory")
  p.add_argument("--config", default="", help="config path[:variant] when WORKDIR has no config.json")
  p.add_argument("--step", choices=("best", "latest"), default="best")
  p.add_argument("--max-side", type=int, default=0, help="model input size (longer side, px)")
  p.add_argument("--every", type=int, default=5, help="video: process every k-th frame")
  p.add_argument("--max-frames", type=int, default=0, help="video: stop after this many (0 = all)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.every < 1:
      raise PredictError(f"--every {args.every}: must be >= 1")
    if args.max_side != 0 and not 32 <= args.max_side <= 4096:
      raise PredictError(f"--max-side {args.max_side}: must be 0 (the training resolution) or a size in "
                         "pixels between 32 and 4096")
    if args.max_frames < 0:
      raise PredictError(f"--max-frames {args.max_frames}: must be >= 0 (0 = every frame)")
    src = args.image or args.video
    stem = os.path.splitext(os.path.basename(src))[0]
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(src)), f"{stem}_cohesiv")
    if args.image:
      rgb = read_image(args.image)  # Fail on bad input before loading the model.
      h, w = rgb.shape[:2]
      queries = np.asarray([parse_query(q, h, w) for q in args.query]) if args.query else None
    elif not os.path.isfile(args.video):
      raise PredictError(f"--video {args.video!r}: no such file")
    predictor = Predictor(os.path.abspath(args.checkpoint), args.config or None, args.step, args.max_side)
    if args.image:
      result = predictor(rgb, queries)
      paths = write_outputs(out_dir, stem, rgb, result)
      print(f"{len(result['queries'])} quer{'y' if len(result['queries']) == 1 else 'ies'} "
            f"({result['source']}): {np.round(result['queries'], 1).tolist()}; thresholds from "
            f"{predictor.thresholds_source}")
    else:
      paths = run_video(predictor, args.video, args.every, args.query, out_dir, stem, args.max_frames)
    print("wrote:\n  " + "\n  ".join(paths))
  except (PredictError, errors.InputError, OSError) as e:
    sys.stderr.write(f"error: {str(e).splitlines()[0]}\n")
    return 2
  except KeyboardInterrupt:
    sys.stderr.write("\ninterrupted: the files already written are complete\n")
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
