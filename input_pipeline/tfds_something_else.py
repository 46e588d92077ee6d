"""TFDS builder `something_else`: unlabelled hand-object clips from Something-Something v2 with the
Something-Else box annotations (the video data of Semi-Hand-Object Sec. 5), read from a user's download.

Nothing is downloaded. `config.data.manual_dir` holds (the published layouts):

  manual_dir/
    annotations/*.json        Something-Else boxes (bounding_box_smthsmth_part1..4.json, or any *.json of that
                              form): {video_id: [{"name": "<video_id>/0001.jpg",
                                                 "labels": [{"box2d": {"x1", "y1", "x2", "y2"},
                                                             "category": "hand" or a noun,
                                                             "standard_category": "hand" or "0000", "0001"...},
                                                            ...]}, ...]}
    frames/<video_id>/0001.jpg ...   the frames those names refer to (extracted from the videos, as the
                              annotations were), or instead
    videos/<video_id>.webm    the Something-Something v2 video (any container OpenCV reads: .webm, .mp4, .avi);
                              annotation frame k (1-based name) is the video's frame k - 1
    something-something-v2-validation.json   optional, [{"id": "<video_id>", ...}]: these videos form the
                              `validation` split; the other annotated videos are `train`.

Clips: runs of `num_frames` consecutive annotated frames that each have a hand box and a box of the first
placeholder object ("0000", the object the action is about), cut without overlap from each video. The hand of a
frame is the hand box that overlaps the object box most (ties: the larger), i.e. the hand acting on the object.
Each frame is resized, aspect preserved, to fit `image_size` x `image_size` and padded with black at the
bottom / right; boxes are mapped the same way (`scale` is stored to map back to the source pixels).

Something-Else has no hand side: `side` is 'unknown' (the pseudo-label job treats it as right).

A video whose frames cannot be read (missing, unreadable, too short) is reported in the log with its id and
reason and skipped; the build goes on. The build fails with one line only when nothing usable is found.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax import console
from input_pipeline import pipeline

SIDES = ("right", "left", "unknown")
VIDEO_EXTENSIONS = (".webm", ".mp4", ".avi", ".mkv")


@dataclasses.dataclass
class SomethingElseConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  num_frames: int = 16


def _box(label: dict[str, Any]) -> np.ndarray:
  b = label["box2d"]
  x0, x1 = sorted((float(b["x1"]), float(b["x2"])))
  y0, y1 = sorted((float(b["y1"]), float(b["y2"])))
  return np.asarray([x0, y0, x1, y1], np.float32)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def frame_boxes(frame: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
  """(hand box, object box) of one annotated frame (module docstring), or None without both."""
  hands, objects = [], []
  for label in frame.get("labels", []):
    cat = str(label.get("standard_category", label.get("category", "")))
    if cat == "hand" or label.get("category") == "hand":
      hands.append(_box(label))
    elif cat == "0000":
      objects.append(_box(label))
  if not hands or not objects:
    return None
  obj = objects[0]
  area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
  hand = max(hands, key=lambda h: (_overlap(h, obj), area(h)))
  return hand, obj


def frame_number(name: str) -> int:
  """'<video_id>/0007.jpg' -> 7."""
  return int(os.path.splitext(os.path.basename(name))[0])


def clips_of_video(frames: list[dict[str, Any]], num_frames: int) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
  """Non-overlapping runs of `num_frames` consecutive frame numbers with both boxes."""
  usable = {}
  for f in frames:
    boxes = frame_boxes(f)
    if boxes is not None:
      usable[frame_number(f["name"])] = boxes
  clips, run = [], []
  for k in sorted(usable):
    if run and k != run[-1][0] + 1:
      run = []
    run.append((k, *usable[k]))
    if len(run) == num_frames:
      clips.append(run)
      run = []
  return clips


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
  """Resize (aspect kept) to fit size x size, pad black at the bottom / right; returns (image, scale)."""
  h, w = image.shape[:2]
  scale = size / max(h, w)
  nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
  out = np.zeros((size, size, 3), np.uint8)
  out[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  return out, scale


class VideoReadError(Exception):
  pass


def read_frames(root: str, video_id: str, numbers: list[int]) -> list[np.ndarray]:
  """RGB frames `numbers` (1-based) of a video: from frames/<id>/NNNN.jpg, else from videos/<id>.<ext>."""
  frame_dir = os.path.join(root, "frames", video_id)
  if os.path.isdir(frame_dir):
    out = []
    for k in numbers:
      path = os.path.join(frame_dir, f"{k:04d}.jpg")
      img = cv2.imread(path, cv2.IMREAD_COLOR)
      if img is None:
        raise VideoReadError(f"{path} is missing or unreadable")
      out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return out
  paths = [os.path.join(root, "videos", video_id + ext) for ext in VIDEO_EXTENSIONS]
  path = next((p for p in paths if os.path.isfile(p)), None)
  if path is None:
    raise VideoReadError(f"neither {frame_dir}/ nor videos/{video_id}.{{webm,mp4,avi,mkv}} exists")
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise VideoReadError(f"{path}: OpenCV cannot open it")
  wanted, got, index = set(k - 1 for k in numbers), {}, 0
  try:
    while len(got) < len(wanted):
      ok, img = cap.read()
      if not ok:
        break
      if index in wanted:
        got[index] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
      index += 1
  finally:
    cap.release()
  missing = sorted(k + 1 for k in wanted - set(got))
  if missing:
    raise VideoReadError(f"{path}: {index} frames decoded, frames {missing[:3]}... are missing")
  return [got[k - 1] for k in numbers]


def load_annotations(root: str) -> dict[str, list[dict[str, Any]]]:
  paths = sorted(glob.glob(os.path.join(root, "annotations", "*.json")))
  if not paths:
    raise pipeline.DataError(f"no Something-Else box annotations: {os.path.join(root, 'annotations')}/*.json "
                             "is empty or missing (config.data.manual_dir)")
  out: dict[str, list] = {}
  for path in paths:
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError) as e:
      raise pipeline.DataError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
      raise pipeline.DataError(f"{path}: expected {{video_id: [frames]}}, got a {type(data).__name__}")
    out.update({str(k): v for k, v in data.items()})
  return out


def validation_ids(root: str) -> set[str]:
  path = os.path.join(root, "something-something-v2-validation.json")
  if not os.path.isfile(path):
    return set()
  try:
    with open(path) as f:
      return {str(e["id"]) for e in json.load(f)}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise pipeline.DataError(f"{path}: expected a JSON list of {{'id': ...}} ({e})") from None


class SomethingElse(pipeline.ReportingBuilder, tfds.core.GeneratorBasedBuilder):
  """Hand-object clips of Something-Something v2 with Something-Else boxes (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [SomethingElseConfig(name="default", description="16-frame clips at 256 px"),
                     SomethingElseConfig(name="small", description="16-frame clips at 128 px", image_size=128),
                     SomethingElseConfig(name="tiny", description="4-frame clips at 64 px (tests)", image_size=64,
                                         num_frames=4)]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, t = c.image_size, c.num_frames
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "frame_numbers": tfds.features.Tensor(shape=(t,), dtype=np.int64),
        "frames": tfds.features.Sequence(tfds.features.Image(shape=(s, s, 3)), length=t),
        "hand_boxes": tfds.features.Tensor(shape=(t, 4), dtype=np.float32),
        "obj_boxes": tfds.features.Tensor(shape=(t, 4), dtype=np.float32),
        "scale": tfds.features.Tensor(shape=(), dtype=np.float32),
        "side": tfds.features.ClassLabel(names=SIDES),
    }), description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    annotations = load_annotations(root)
    val = validation_ids(root)
    train_ids = sorted(k for k in annotations if k not in val)
    val_ids = sorted(k for k in annotations if k in val)
    return {"train": self._generate_examples(root, annotations, train_ids, "train"),
            "validation": self._generate_examples(root, annotations, val_ids, "validation")}

  def _generate_examples(self, root: str, annotations, ids: list[str], split: str) -> Iterator[Any]:
    return self.reported(split, len(ids), self._examples(root, annotations, ids, split))

  def _examples(self, root, annotations, ids, split):
    c = self.builder_config
    skipped = 0
    for video_id in ids:
      try:
        clips = clips_of_video(list(annotations[video_id]), c.num_frames)
        if not clips:
          continue
        numbers = [k for clip in clips for k, _, _ in clip]
        images = read_frames(root, video_id, numbers)
      except (VideoReadError, KeyError, TypeError, ValueError) as e:
        skipped += 1
        console.warn(f"something_else/{split}: video {video_id} skipped: {e}")
        logging.warning("something_else: video %s skipped: %s", video_id, e)
        continue
      for ci, clip in enumerate(clips):
        frames, scale = [], 1.0
        for j in range(len(clip)):
          img, scale = letterbox(images[ci * c.num_frames + j], c.image_size)
          frames.append(img)
        yield f"{video_id}_{ci}", {
            "video_id": video_id, "frame_numbers": np.asarray([k for k, _, _ in clip], np.int64),
            "frames": frames, "hand_boxes": np.stack([h for _, h, _ in clip]) * scale,
            "obj_boxes": np.stack([o for _, _, o in clip]) * scale, "scale": np.float32(scale),
            "side": "unknown"}
    if skipped:
      logging.warning("something_else/%s: %d videos skipped", split, skipped)


def build(data_dir: str, manual_dir: str, config_name: str = "default") -> tfds.core.DatasetBuilder:
  if manual_dir and os.path.isdir(manual_dir) and not glob.glob(os.path.join(manual_dir, "annotations", "*.json")):
    raise pipeline.DataError(f"no Something-Else box annotations: {os.path.join(manual_dir, 'annotations')}/*.json "
                             "is empty or missing (config.data.manual_dir)")
  return pipeline.prepare_manual(SomethingElse, data_dir, manual_dir, config_name, "Something-Else")
