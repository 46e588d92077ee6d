r"""COHESIV pseudo-labelled training examples (paper Sec. 3.1 and 3.3): building, storing and reading them.

One example = one middle frame (paper: the 4th-7th frames, `synthetic_world.MIDDLE_FRAMES` = 0-based 3..6)
of one 10-frame source clip, with the responsibility maps of every hand averaged over the +-3 neighbour
offsets (Eq. 1-2, temperature t), computed from the clip's optical flow and hand vertices, and the
pseudo-label masks derived from them. Shapes: N = max hands, H, W = image size, pixels (x, y) = (column,
row) with pixel centres at integer coordinates; flow[..., 0] = dx, flow[..., 1] = dy (pixels).

FEATURES (`features(height, width, max_hands)`):
  image            [H,W,3] uint8   the middle frame
  responsibility   [N,H,W] uint8   per-hand responsibility x 255 (rounded), the +-3-averaged R_k
  query_point      [N,2] float32   mean of the hand's (finite) vertices at this frame (where query_valid)
  query_valid      [N] bool        hand exists, has a finite vertex and its homography fit was ok for >= 1 offset
  hand_box         [N,4] float32   [x0,y0,x1,y1]; the source's `hand_box` if it has one, else the vertex extent
  person_mask      [H,W] bool      person pseudo-label (the source's person segmentation)
  object_mask      [H,W] bool      (sum_k R_k > object_threshold) AND NOT person   (R before rounding)
  background_mask  [H,W] bool      NOT (person OR object)
  flow_next        [H,W,2] float16 flow to the next frame (offset +1), the Flow baseline's input
  gt_hand_mask     [N,H,W] bool    ground truth when the source has `hand_mask`, else zeros
  gt_object_mask   [N,H,W] bool    ground truth when the source has `object_mask`, else zeros
  has_gt           bool            whether gt_* are real annotations
  clip_id          int64           source clip index within its split
  frame            int32           frame index within the clip

Sources (`ClipSource`): any dataset whose clips give, per clip, frames [T,H,W,3] uint8, flow [M,K,H,W,2]
(from MIDDLE_FRAMES[m] to MIDDLE_FRAMES[m] + OFFSETS[k]; NaN/inf marks a missing flow), hand_vertices
[T,N,V,2] (from a hand-pose estimator), hand_valid [N] and person_mask [T,H,W]; optionally hand_box
[T,N,4] and ground-truth hand_mask / object_mask [T,N,H,W]. Built in: a TFDS dataset from
`input_pipeline.datasets` (`config.pseudo.source = 'tfds'`, default) and the synthetic world generated on
the fly (`'generator'`, no source dataset on disk; used by benchmarks and tests).

Storage: `<data_dir>/cohesiv_pseudo/<source_name>_<source_config>/1.0.0/` holds TFRecord shards named
`cohesiv_pseudo-<split>.tfrecord-<i>-of-<S>` (the TFDS default template), `dataset_info.json` /
`features.json` written with `tfds.folder_dataset.write_metadata`, `build_config.json` (the settings the
labels were made with; a different setting is an error, not a silent reuse) and `pseudolabel_report.json`
(clip and example counts, failed clips with reasons). Read with `tfds.builder_from_directory`.

The examples are built by the `pseudolabel` job (`handobj_jax/jobs/pseudolabel.py`: streamed, resumable shard by
shard, multi-host, failed clips reported and skipped; its docstring has the details). This module only
describes and reads them.

Training reads the examples with `train_preprocess` (tf ops): float32 image in [0,1], responsibility
float32 in [0,1], and an optional random horizontal flip applied jointly to the image, masks, flow,
responsibility, query points and boxes (`flip_example`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Protocol

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import synthetic_world

DATASET_NAME = "cohesiv_pseudo"
VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")
MIDDLE_FRAMES = synthetic_world.MIDDLE_FRAMES
OFFSETS = synthetic_world.OFFSETS
_NEXT = OFFSETS.index(1)  # Offset +1: the Flow baseline's flow.
PROGRESS_DIR = "_progress"  # Finished-shard markers of an unfinished build.
BUILD_CONFIG_FILE = "build_config.json"
REPORT_FILE = "pseudolabel_report.json"
# Fields every source clip must have; optional ones are listed in the module docstring.
REQUIRED_FIELDS = ("frames", "flow", "hand_vertices", "hand_valid", "person_mask")

_Z = tfds.features.Encoding.ZLIB
_NONE = tfds.features.Encoding.NONE


def features(height: int, width: int, max_hands: int) -> tfds.features.FeaturesDict:
  """The FeaturesDict of one pseudo-labelled example (see the module docstring)."""
  h, w, n = height, width, max_hands
  t = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "image": t(shape=(h, w, 3), dtype=np.uint8, encoding=_Z),
      "responsibility": t(shape=(n, h, w), dtype=np.uint8, encoding=_Z),
      "query_point": t(shape=(n, 2), dtype=np.float32),
      "query_valid": t(shape=(n,), dtype=np.bool_),
      "hand_box": t(shape=(n, 4), dtype=np.float32),
      "person_mask": t(shape=(h, w), dtype=np.bool_, encoding=_Z),
      "object_mask": t(shape=(h, w), dtype=np.bool_, encoding=_Z),
      "background_mask": t(shape=(h, w), dtype=np.bool_, encoding=_Z),
      "flow_next": t(shape=(h, w, 2), dtype=np.float16, encoding=_NONE),
      "gt_hand_mask": t(shape=(n, h, w), dtype=np.bool_, encoding=_Z),
      "gt_object_mask": t(shape=(n, h, w), dtype=np.bool_, encoding=_Z),
      "has_gt": tfds.features.Scalar(dtype=np.bool_),
      "clip_id": tfds.features.Scalar(dtype=np.int64),
      "frame": tfds.features.Scalar(dtype=np.int32),
  })


# ----------------------------------------------------------------------------------------------------------
# Clip sources.


class ClipSource(Protocol):
  """Random access to the clips of a video dataset, by split and index range."""
  name: str  # Directory name of the pseudo-labelled dataset, e.g. 'synthetic_handobj_small'.
  version: str  # Version of the source data; labels of an older version are refused, not reused.
  height: int
  width: int
  max_hands: int

  def num_clips(self, split: str) -> int:
    ...

  def read(self, split: str, start: int, stop: int) -> Iterator[tuple[int, dict[str, np.ndarray] | Exception]]:
    """Yields (clip index, clip dict) for start <= index < stop, or (index, exception) for a bad clip."""
    ...


def _limit(requested: int, available: int, split: str, allow_more: bool) -> int:
  if requested < 0:
    return available
  if requested > available and not allow_more:
    raise pipeline.DataError(f"config.pseudo.num_clips.{split}={requested} exceeds the {available} clips of "
                             f"split {split!r}")
  return requested


class TfdsClipSource:
  """Clips of a prepared TFDS video dataset (e.g. `synthetic_handobj`), read shard range by shard range."""

  def __init__(self, builder: tfds.core.DatasetBuilder, name: str, num_clips: Mapping[str, int]):
    self.builder = builder
    self.name = name
    self.version = str(builder.info.version)
    feats = builder.info.features
    missing = [f for f in REQUIRED_FIELDS if f not in feats]
    if missing:
      raise pipeline.DataError(f"dataset {builder.info.full_name} lacks the field(s) {missing} that "
                               f"pseudo-labelling needs ({list(REQUIRED_FIELDS)})")
    self.height, self.width = feats["frames"].shape[1:3]
    self.max_hands = feats["hand_vertices"].shape[1]
    self._counts = {}
    for split in SPLITS:
      available = builder.info.splits[split].num_examples if split in builder.info.splits else 0
      self._counts[split] = _limit(num_clips[split], available, split, allow_more=False)

  def num_clips(self, split: str) -> int:
    return self._counts[split]

  def _dataset(self, split: str, start: int, stop: int) -> tf.data.Dataset:
    return self.builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False,
                                   read_config=tfds.ReadConfig(interleave_cycle_length=1))

  def read(self, split, start, stop):
    index = start
    try:
      for clip in tfds.as_numpy(self._dataset(split, start, stop)):
        yield index, clip
        index += 1
      return
    except Exception:  # pylint: disable=broad-except
      pass  # A record failed to decode: read the rest one by one to name the bad clip(s).
    for i in range(index, stop):
      try:
        clip = next(iter(tfds.as_numpy(self._dataset(split, i, i + 1))))
      except Exception as e:  # pylint: disable=broad-except
        yield i, e
        continue
      yield i, clip


class GeneratorClipSource:
  """The synthetic world generated on the fly with a `synthetic_handobj` builder config's sizes and seeds."""

  def __init__(self, builder_config: str, num_clips: Mapping[str, int]):
    from input_pipeline import tfds_synthetic  # pylint: disable=g-import-not-at-top

    configs = {c.name: c for c in tfds_synthetic.BUILDER_CONFIGS}
    if builder_config not in configs:
      raise pipeline.DataError(f"unknown config.data.builder_config {builder_config!r}; choose one of "
                               f"{sorted(configs)}")
    self._cfg = configs[builder_config]
    self._seed = tfds_synthetic.clip_seed
    self.world = self._cfg.world_config()
    self.name = f"synthetic_world_{builder_config}"  # = source_name() of a 'generator' config.
    self.version = str(tfds_synthetic.SyntheticHandobj.VERSION)  # The world the builder would write.
    self.height, self.width, self.max_hands = self.world.height, self.world.width, self.world.max_hands
    default = {"train": self._cfg.num_train, "validation": self._cfg.num_validation, "test": self._cfg.num_test}
    self._counts = {s: _limit(num_clips[s], default[s], s, allow_more=True) for s in SPLITS}

  def num_clips(self, split: str) -> int:
    return self._counts[split]

  def read(self, split, start, stop):
    for i in range(start, stop):
      try:
        yield i, synthetic_world.generate_clip(self.world, self._seed(self._cfg, split, i))
      except Exception as e:  # pylint: disable=broad-except
        yield i, e


def source_name(config: ml_collections.ConfigDict) -> str:
  """Directory name of the pseudo-labels of `config.data` with `config.pseudo.source`."""
  if config.pseudo.source == "generator":
    return f"synthetic_world_{config.data.builder_config}"
  return f"{config.data.name}_{config.data.builder_config}"


def make_source(config: ml_collections.ConfigDict) -> ClipSource:
  """The clip source named by `config.pseudo.source` ('tfds' or 'generator') for `config.data`."""
  num_clips = {s: int(config.pseudo.num_clips[s]) for s in SPLITS}
  if config.pseudo.source == "generator":
    if config.data.name != "synthetic_handobj":
      raise pipeline.DataError(f"config.pseudo.source='generator' needs config.data.name='synthetic_handobj', "
                               f"got {config.data.name!r}")
    return GeneratorClipSource(config.data.builder_config, num_clips)
  if config.pseudo.source == "tfds":
    from input_pipeline import datasets  # pylint: disable=g-import-not-at-top

    builder = datasets.get_builder(config.data)
    return TfdsClipSource(builder, source_name(config), num_clips)
  raise pipeline.DataError(f"unknown config.pseudo.source {config.pseudo.source!r}; choose 'tfds' or "
                           f"'generator'")


# ----------------------------------------------------------------------------------------------------------
# Per-clip checks and host-side preparation.


class ClipError(ValueError):
  """A clip that cannot be pseudo-labelled; the message is the reason written to the report."""


@dataclasses.dataclass
class Prepared:
  """Device inputs of one clip (M = 4 middle frames) and what the examples need besides the labels."""
  flow: np.ndarray  # [M,K,H,W,2] float16, non-finite values zeroed.
  flow_valid: np.ndarray  # [M,K] bool: every value of that flow finite.
  vertices: np.ndarray  # [M,N,V,2] float32.
  hand_valid: np.ndarray  # [N] bool.
  person: np.ndarray  # [M,H,W] bool.
  clip: dict[str, np.ndarray]


def prepare_clip(clip: Mapping[str, Any], height: int, width: int, max_hands: int) -> Prepared:
  """Checks one source clip and extracts the device inputs; raises ClipError naming the problem."""
  missing = [f for f in REQUIRED_FIELDS if f not in clip]
  if missing:
    raise ClipError(f"missing field(s) {missing}")
  c = {k: np.asarray(v) for k, v in clip.items()}
  frames, flow, verts = c["frames"], c["flow"], c["hand_vertices"]
  num_t = frames.shape[0] if frames.ndim == 4 else 0
  need_t = max(MIDDLE_FRAMES) + max(OFFSETS) + 1
  m, k = len(MIDDLE_FRAMES), len(OFFSETS)
  checks = [
      ("frames", frames, (num_t, height, width, 3)),
      ("flow", flow, (m, k, height, width, 2)),
      ("hand_vertices", verts, (num_t, max_hands, verts.shape[2] if verts.ndim == 4 else -1, 2)),
      ("hand_valid", c["hand_valid"], (max_hands,)),
      ("person_mask", c["person_mask"], (num_t, height, width)),
  ]
  for opt, shape in (("hand_box", (num_t, max_hands, 4)), ("hand_mask", (num_t, max_hands, height, width)),
                     ("object_mask", (num_t, max_hands, height, width))):
    if opt in c:
      checks.append((opt, c[opt], shape))
  if num_t < need_t:
    raise ClipError(f"frames has shape {frames.shape}; need [T>={need_t},{height},{width},3]")
  for name, arr, shape in checks:
    if arr.shape != shape:
      raise ClipError(f"field {name!r} has shape {arr.shape}, expected {shape}")
  if frames.dtype != np.uint8:
    raise ClipError(f"frames dtype {frames.dtype}, expected uint8")
  hand_valid = c["hand_valid"].astype(bool)
  if not hand_valid.any():
    raise ClipError("no valid hands")
  finite = np.isfinite(flow)
  flow_valid = finite.all(axis=(2, 3, 4))
  if not flow_valid.any(axis=1).all():
    bad = [MIDDLE_FRAMES[i] for i in np.nonzero(~flow_valid.any(axis=1))[0]]
    raise ClipError(f"non-finite flow at every offset of middle frame(s) {bad}")
  flow16 = np.where(finite, flow, 0).astype(np.float16)
  mid = list(MIDDLE_FRAMES)
  return Prepared(flow=flow16, flow_valid=flow_valid, vertices=verts[mid].astype(np.float32),
                   hand_valid=hand_valid, person=c["person_mask"][mid].astype(bool), clip=c)


def _vertex_box(verts: np.ndarray) -> np.ndarray:
  """[N,V,2] -> [N,4] extent of the finite vertices (zeros for a hand without any)."""
  fin = np.isfinite(verts).all(-1)
  big = np.float32(np.inf)
  lo = np.where(fin[..., None], verts, big).min(axis=1)
  hi = np.where(fin[..., None], verts, -big).max(axis=1)
  box = np.concatenate([lo, hi], -1)
  return np.where(fin.any(-1)[:, None], box, 0.0).astype(np.float32)


def clip_examples(prep: Prepared, clip_id: int, labels: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
  """The 4 examples (middle frames in order) of one clip, given its device outputs (leading axis M)."""
  c = prep.clip
  has_gt = "hand_mask" in c and "object_mask" in c
  out = []
  for mi, t in enumerate(MIDDLE_FRAMES):
    verts = c["hand_vertices"][t].astype(np.float32)  # [N,V,2]
    fin = np.isfinite(verts).all(-1)
    count = fin.sum(-1)
    mean = np.where(fin[..., None], verts, 0.0).sum(1) / np.maximum(count, 1)[:, None]
    present = prep.hand_valid & (count > 0)
    query_valid = present & labels["ok"][mi].any(axis=0)
    box = c["hand_box"][t].astype(np.float32) if "hand_box" in c else _vertex_box(verts)
    zeros_n = np.zeros((prep.hand_valid.shape[0],) + prep.person.shape[1:], bool)
    out.append({
        "image": c["frames"][t],
        "responsibility": labels["responsibility"][mi],
        "query_point": np.where(present[:, None], mean, 0.0).astype(np.float32),
        "query_valid": query_valid,
        "hand_box": np.where(prep.hand_valid[:, None], box, 0.0).astype(np.float32),
        "person_mask": prep.person[mi],
        "object_mask": labels["object_mask"][mi],
        "background_mask": labels["background_mask"][mi],
        "flow_next": prep.flow[mi, _NEXT],
        "gt_hand_mask": c["hand_mask"][t].astype(bool) if has_gt else zeros_n,
        "gt_object_mask": c["object_mask"][t].astype(bool) if has_gt else zeros_n,
        "has_gt": has_gt,
        "clip_id": np.int64(clip_id),
        "frame": np.int32(t),
    })
  return out


# ----------------------------------------------------------------------------------------------------------
# Storage (written by the `pseudolabel` job, handobj_jax/jobs/pseudolabel.py).


def shard_filename(split: str, index: int, num_shards: int) -> str:
  """The TFDS default name of shard `index` of `num_shards` of `split`."""
  return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def output_dir(data_dir: str, source_name: str) -> str:
  return os.path.join(data_dir, DATASET_NAME, source_name, VERSION)


def rebuild_hint(directory: str) -> str:
  """How to rebuild damaged pseudo-labels: shards are resumable, so only the damaged one needs redoing."""
  return (f"to rebuild, delete the damaged shard with its marker in {directory}/{PROGRESS_DIR}/ and "
          f"{directory}/dataset_info.json (or the whole directory), then rerun: missing shards are rebuilt")


def read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def read_report(builder_or_dir: tfds.core.DatasetBuilder | str) -> dict[str, Any]:
  out = builder_or_dir if isinstance(builder_or_dir, str) else os.fspath(builder_or_dir.data_dir)
  return read_json(os.path.join(out, REPORT_FILE))


# ----------------------------------------------------------------------------------------------------------
# Training-time preprocessing (tf ops).


def _flip_x(x: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  return tf.cast(width, x.dtype) - 1.0 - x


def flip_example(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Horizontal mirror of one example (image columns x -> W - 1 - x), every field consistently.

  Images/masks/flow [.., H, W(, C)] are reversed along W and flow dx changes sign; query points map
  x -> W - 1 - x (pixel centres at integers) where `query_valid` says the hand is there (validity is that
  explicit field, never a coordinate value; other points are left as stored); boxes [x0, y0, x1, y1] with
  x1 one past the last column map to [W - x1, y0, W - x0, y1], all of them (an empty box, x1 <= x0, stays
  empty). Applying it twice is the identity.
  """
  ex = dict(example)
  width = tf.shape(ex["image"])[1]
  for key in ("image", "person_mask", "object_mask", "background_mask"):
    ex[key] = tf.reverse(ex[key], axis=[1])
  for key in ("responsibility", "gt_hand_mask", "gt_object_mask"):
    ex[key] = tf.reverse(ex[key], axis=[-1])
  flow = tf.reverse(ex["flow_next"], axis=[1])
  ex["flow_next"] = tf.concat([-flow[..., :1], flow[..., 1:]], axis=-1)
  qp = ex["query_point"]
  flipped_qp = tf.concat([_flip_x(qp[..., :1], width), qp[..., 1:]], axis=-1)
  ex["query_point"] = tf.where(tf.cast(ex["query_valid"], tf.bool)[..., None], flipped_qp, qp)
  box = ex["hand_box"]
  w = tf.cast(width, box.dtype)
  ex["hand_box"] = tf.stack([w - box[..., 2], box[..., 1], w - box[..., 0], box[..., 3]], axis=-1)
  return ex


def train_preprocess(example: Mapping[str, tf.Tensor], flip_prob: float = 0.0,
                     seed: int | None = None) -> dict[str, tf.Tensor]:
  """Decodes for training: image float32 [H,W,3] in [0,1], responsibility float32 [N,H,W] in [0,1].

  With flip_prob > 0, mirrors the whole example (`flip_example`) with that probability (a seeded stateful
  tf.random op: deterministic for a deterministic tf.data pipeline and a fixed global TF seed). Every other
  field keeps its stored dtype.
  """
  ex = dict(example)
  if flip_prob > 0:
    coin = tf.random.uniform([], seed=seed) < flip_prob
    flipped = flip_example(ex)
    ex = {k: tf.cond(coin, lambda k=k: flipped[k], lambda k=k: ex[k]) for k in ex}
  ex["image"] = tf.cast(ex["image"], tf.float32) / 255.0
  ex["responsibility"] = tf.cast(ex["responsibility"], tf.float32) / 255.0
  return ex
