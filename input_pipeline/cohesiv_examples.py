r"""COHESIV pseudo-labelled training examples (paper Sec. 3.1 and 3.3): building, storing and reading them.

One example = one middle frame (paper: the 4th-7th frames, `synthetic_world.MIDDLE_FRAMES` = 0-based 3..6)
of one 10-frame source clip, with the responsibility maps of every hand averaged over the +-3 neighbour
offsets (Eq. 1-2, temperature t), computed from the clip's optical flow and hand vertices, and the
pseudo-label masks derived from them. Shapes: N = max hands, H, W = image size, pixels (x, y) = (column,
row) with pixel centres at integer coordinates; flow[..., 0] = dx, flow[..., 1] = dy (pixels).

FEATURES (`features(height, width, max_hands)`):
  image            [H,W,3] uint8   the middle frame
  responsibility   [N,H,W] uint8   per-hand responsibility x 255 (rounded), the +-3-averaged R_k
  query_point      [N,2] float32   mean of the hand's (finite) vertices at this frame; 0 for absent hands
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

Building is streamed and resumable: shard i of a split holds the examples of clips [i*S_c, (i+1)*S_c)
(S_c = `config.pseudo.shard_clips`) in clip then frame order. Each shard is written to a temporary name and
atomically renamed, then a small `_progress/<shard>.json` (example count, bytes, failed clips) marks it
finished; a restart skips finished shards and redoes the rest, so no example is lost or duplicated. The
metadata is written only when every shard is finished. Memory holds one batch of clips plus one shard
writer, independent of the number of clips.

Responsibilities are computed on device: one jitted function over [B clips, 4 middle frames], the batch
sharded over a ('data',) mesh of this host's local accelerators (a single device on CPU; no collectives:
hosts never wait on each other while labelling). Clips keep fixed slots in their batch (a failed clip's
slot is zero-filled) and every computation is per clip (the robust fit draws the same RANSAC samples for
every fit), so a clip's labels depend only on the clip and the settings (not on its batch, the batch size
or the device count).

Multi-host: shards are numbered globally over splits; host h writes the shards with number % P == h (P =
process count) under their global names, so shard files never collide and a restart with a different
host count still finds the finished ones. After a barrier, host 0 writes the metadata and the report.

Failures: a clip that cannot be labelled (decoding error, missing field, wrong shape, no valid hand,
non-finite flow at every offset of a middle frame) is logged with its id and reason, recorded in the
report and skipped: a split holds 4 x (clips - failed) examples. Hands whose fits all fail keep their
example with query_valid False.

Training reads the examples with `train_preprocess` (tf ops): float32 image in [0,1], responsibility
float32 in [0,1], and an optional random horizontal flip applied jointly to the image, masks, flow,
responsibility, query points and boxes (`flip_example`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax.geometry import responsibility as resp_lib
from input_pipeline import pipeline
from input_pipeline import synthetic_world

DATASET_NAME = "cohesiv_pseudo"
VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")
MIDDLE_FRAMES = synthetic_world.MIDDLE_FRAMES
OFFSETS = synthetic_world.OFFSETS
_NEXT = OFFSETS.index(1)  # Offset +1: the Flow baseline's flow.
_PROGRESS_DIR = "_progress"
_BUILD_CONFIG = "build_config.json"
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
class _Prepared:
  """Device inputs of one clip (M = 4 middle frames) and what the examples need besides the labels."""
  flow: np.ndarray  # [M,K,H,W,2] float16, non-finite values zeroed.
  flow_valid: np.ndarray  # [M,K] bool: every value of that flow finite.
  vertices: np.ndarray  # [M,N,V,2] float32.
  hand_valid: np.ndarray  # [N] bool.
  person: np.ndarray  # [M,H,W] bool.
  clip: dict[str, np.ndarray]


def prepare_clip(clip: Mapping[str, Any], height: int, width: int, max_hands: int) -> _Prepared:
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
  return _Prepared(flow=flow16, flow_valid=flow_valid, vertices=verts[mid].astype(np.float32),
                   hand_valid=hand_valid, person=c["person_mask"][mid].astype(bool), clip=c)


def _vertex_box(verts: np.ndarray) -> np.ndarray:
  """[N,V,2] -> [N,4] extent of the finite vertices (zeros for a hand without any)."""
  fin = np.isfinite(verts).all(-1)
  big = np.float32(np.inf)
  lo = np.where(fin[..., None], verts, big).min(axis=1)
  hi = np.where(fin[..., None], verts, -big).max(axis=1)
  box = np.concatenate([lo, hi], -1)
  return np.where(fin.any(-1)[:, None], box, 0.0).astype(np.float32)


def clip_examples(prep: _Prepared, clip_id: int, labels: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
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
# Device computation.


def label_batch(flow: jax.Array, flow_valid: jax.Array, vertices: jax.Array, hand_valid: jax.Array,
                person: jax.Array, *, temperature: float, robust: bool, robust_threshold: float,
                object_threshold: float) -> dict[str, jax.Array]:
  """Responsibilities and pseudo-labels of a batch of clips (pure; jit it).

  Args:
    flow: [B,M,K,H,W,2] (any float dtype; computed in float32).
    flow_valid: [B,M,K] bool.
    vertices: [B,M,N,V,2] hand vertices at the middle frames.
    hand_valid: [B,N] bool.
    person: [B,M,H,W] bool.

  Returns:
    responsibility [B,M,N,H,W] uint8 (R x 255 rounded), ok [B,M,K,N] bool (fit ok per offset and hand),
    object_mask and background_mask [B,M,H,W] bool.
  """
  m = flow.shape[1]
  hv = jnp.broadcast_to(hand_valid[:, None], (hand_valid.shape[0], m, hand_valid.shape[1]))
  r, ok = resp_lib.clip_responsibility(flow.astype(jnp.float32), flow_valid, vertices, None, hv,
                                       temperature=temperature, robust=robust,
                                       robust_threshold=robust_threshold)
  labels = resp_lib.pseudo_labels(r, person, object_threshold=object_threshold)
  r_u8 = jnp.round(jnp.clip(labels["hand_resp"], 0.0, 1.0) * 255.0).astype(jnp.uint8)
  return {"responsibility": r_u8, "ok": ok, "object_mask": labels["object_mask"],
          "background_mask": labels["background_mask"]}


def _label_fn(pseudo: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Callable[..., dict[str, jax.Array]]:
  return _cached_label_fn(float(pseudo.temperature), bool(pseudo.robust), float(pseudo.robust_threshold),
                          float(pseudo.object_threshold), mesh)


@functools.lru_cache(maxsize=8)
def _cached_label_fn(temperature: float, robust: bool, robust_threshold: float, object_threshold: float,
                     mesh: jax.sharding.Mesh) -> Callable[..., dict[str, jax.Array]]:
  """jit(shard_map(label_batch)) over the batch axis.

  shard_map keeps every device on its own clips (the SPMD partitioner would otherwise insert an all-gather,
  and collectives between host devices can deadlock). A clip's labels are independent of its batch slot, of
  the batch size and of the device count: every computation is per clip, and the robust fit draws the same
  RANSAC samples for every fit. The batch is not vmapped over single clips: clip_responsibility is batched
  already, and under vmap its fused per-pixel path degrades (see its docstring).
  """
  def labels(flow, flow_valid, vertices, hand_valid, person):
    return label_batch(flow, flow_valid, vertices, hand_valid, person, temperature=temperature, robust=robust,
                       robust_threshold=robust_threshold, object_threshold=object_threshold)

  spec = jax.sharding.PartitionSpec("data")
  fn = jax.shard_map(labels, mesh=mesh, in_specs=spec, out_specs=spec)
  return jax.jit(lambda flow, flow_valid, vertices, hand_valid, person: fn(flow, flow_valid, vertices,
                                                                          hand_valid, person))


def _stack_batch(slots: list[_Prepared | None], template: _Prepared) -> dict[str, np.ndarray]:
  """Host batch from fixed slots; empty slots (failed clips, padding) are zeros (all offsets invalid)."""
  def get(field):
    ref = getattr(template, field)
    return np.stack([getattr(p, field) if p is not None else np.zeros_like(ref) for p in slots])

  n_v = max(p.vertices.shape[2] for p in slots if p is not None)
  for p in slots:  # Sources may differ in vertex count between clips; pad with NaN (= excluded).
    if p is not None and p.vertices.shape[2] != n_v:
      pad = np.full(p.vertices.shape[:2] + (n_v - p.vertices.shape[2], 2), np.nan, np.float32)
      p.vertices = np.concatenate([p.vertices, pad], axis=2)
  tmpl_v = np.zeros(template.vertices.shape[:2] + (n_v, 2), np.float32)
  return {
      "flow": get("flow"),
      "flow_valid": get("flow_valid"),
      "vertices": np.stack([p.vertices if p is not None else tmpl_v for p in slots]),
      "hand_valid": get("hand_valid"),
      "person": get("person"),
  }


# ----------------------------------------------------------------------------------------------------------
# Building.


@dataclasses.dataclass(frozen=True)
class _Shard:
  split: str
  index: int  # Within the split.
  num_shards: int  # Of the split.
  start: int  # Clip range.
  stop: int
  global_index: int

  @property
  def filename(self) -> str:
    return f"{DATASET_NAME}-{self.split}.tfrecord-{self.index:05d}-of-{self.num_shards:05d}"


def _plan(source: ClipSource, shard_clips: int) -> list[_Shard]:
  shards = []
  for split in SPLITS:
    n = source.num_clips(split)
    count = math.ceil(n / shard_clips)
    for i in range(count):
      shards.append(_Shard(split, i, count, i * shard_clips, min(n, (i + 1) * shard_clips), len(shards)))
  return shards


def output_dir(data_dir: str, source_name: str) -> str:
  return os.path.join(data_dir, DATASET_NAME, source_name, VERSION)


def _build_settings(config: ml_collections.ConfigDict, source: ClipSource) -> dict[str, Any]:
  p = config.pseudo
  return {
      "source": source.name,
      "source_version": source.version,
      "num_clips": {s: source.num_clips(s) for s in SPLITS},
      "shard_clips": int(p.shard_clips),
      "temperature": float(p.temperature),
      "robust": bool(p.robust),
      "robust_threshold": float(p.robust_threshold),
      "object_threshold": float(p.object_threshold),
      "height": int(source.height),
      "width": int(source.width),
      "max_hands": int(source.max_hands),
  }


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{jax.process_index()}-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _check_settings(out: str, settings: dict[str, Any]) -> None:
  path = os.path.join(out, _BUILD_CONFIG)
  if tf.io.gfile.exists(path):
    old = _read_json(path)
    if old != settings:
      diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      changes = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
      raise pipeline.DataError(f"{out} was built with different settings ({changes}); delete it or use another "
                               f"config.data.data_dir")
  else:
    _write_json_atomic(path, settings)


def _fmt_s(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _ShardWriter:
  """Streams serialized examples into a temporary TFRecord file, renamed into place on `commit`."""

  def __init__(self, out: str, shard: _Shard):
    self.path = os.path.join(out, shard.filename)
    self.tmp = os.path.join(out, f".tmp-{jax.process_index()}-{shard.filename}")
    self._writer = tf.io.TFRecordWriter(self.tmp)
    self.count = 0

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def commit(self) -> int:
    self._writer.close()
    size = tf.io.gfile.stat(self.tmp).length
    tf.io.gfile.rename(self.tmp, self.path, overwrite=True)
    return size


def build_pseudolabels(config: ml_collections.ConfigDict, data_dir: str,
                       source: ClipSource | None = None) -> str:
  """Builds (or finishes building) the pseudo-labelled dataset; returns its directory. See the docstring."""
  source = make_source(config) if source is None else source
  p = config.pseudo
  if p.shard_clips < 1 or p.batch_clips < 1:
    raise pipeline.DataError(f"config.pseudo.shard_clips={p.shard_clips} and batch_clips={p.batch_clips} "
                             f"must be >= 1")
  out = output_dir(data_dir, source.name)
  progress = os.path.join(out, _PROGRESS_DIR)
  tf.io.gfile.makedirs(progress)
  settings = _build_settings(config, source)
  _check_settings(out, settings)
  feats = features(source.height, source.width, source.max_hands)

  devices = jax.local_devices()
  if devices[0].platform == "cpu":
    # Host "devices" share the same cores, so sharding buys nothing; and with several of them (e.g.
    # --xla_force_host_platform_device_count=2, jax 0.10.2) the robust fit's program was seen to hang
    # forever when run sharded, with or without shard_map. Accelerators use every local device.
    devices = devices[:1]
  mesh = pipeline.make_data_mesh(devices)
  n_dev = mesh.devices.size
  batch = int(math.ceil(p.batch_clips / n_dev) * n_dev)
  label_fn = _label_fn(p, mesh)

  plan = _plan(source, int(p.shard_clips))
  host, hosts = jax.process_index(), jax.process_count()
  mine = [s for s in plan if s.global_index % hosts == host]
  todo = [s for s in mine if not tf.io.gfile.exists(os.path.join(progress, s.filename + ".json"))]
  total_clips = sum(s.stop - s.start for s in todo)
  logging.info("pseudolabel %s -> %s: host %d/%d, %d of its %d shards to do (%d clips), batch %d clips on "
               "%d device(s)", source.name, out, host, hosts, len(todo), len(mine), total_clips, batch, n_dev)
  done_clips, shards_written = 0, 0
  t0 = time.perf_counter()
  for shard in todo:
    writer = _ShardWriter(out, shard)
    failed: list[dict[str, Any]] = []

    def fail(clip_id, reason, shard=shard, failed=failed):
      logging.warning("pseudolabel: skipping %s clip %d: %s", shard.split, clip_id, reason)
      failed.append({"split": shard.split, "clip_id": int(clip_id), "reason": reason})

    pending = None  # (slots, ids, device outputs) of the batch in flight.

    def finish(pending_batch):
      slots, ids, outputs = pending_batch
      host_out = {k: np.asarray(v) for k, v in outputs.items()}
      for b, (prep, clip_id) in enumerate(zip(slots, ids)):
        if prep is None:
          continue
        for ex in clip_examples(prep, clip_id, {k: v[b] for k, v in host_out.items()}):
          # Re-serialised with sorted map keys: byte-identical shards whichever process wrote them.
          proto = tf.train.Example.FromString(feats.serialize_example(ex))
          writer.write(proto.SerializeToString(deterministic=True))

    slots: list[_Prepared | None] = []
    ids: list[int] = []
    clip_iter = source.read(shard.split, shard.start, shard.stop)
    for pos in range(shard.start, shard.stop):
      clip_id, clip = next(clip_iter)
      if clip_id != pos:
        raise RuntimeError(f"clip source {source.name} returned clip {clip_id} for index {pos}")
      prep = None
      if isinstance(clip, Exception):
        fail(clip_id, f"read error: {type(clip).__name__}: {clip}")
      else:
        try:
          prep = prepare_clip(clip, source.height, source.width, source.max_hands)
        except ClipError as e:
          fail(clip_id, str(e))
      slots.append(prep)
      ids.append(clip_id)
      if len(slots) == batch or pos == shard.stop - 1:
        if any(s is not None for s in slots):
          template = next(s for s in slots if s is not None)
          padded = slots + [None] * (batch - len(slots))
          host_batch = _stack_batch(padded, template)
          # One program in flight at a time (the partitioned program may hold collectives, and two queued
          # ones can deadlock on host devices); clips are still read while the device computes.
          if pending is not None:
            finish(pending)
            pending = None
          dev = next(pipeline.global_batches([host_batch], mesh))
          pending = (slots, ids, label_fn(**dev))
        slots, ids = [], []
    if pending is not None:
      finish(pending)
    num_bytes = writer.commit()
    _write_json_atomic(os.path.join(progress, shard.filename + ".json"),
                       {"num_examples": writer.count, "num_bytes": num_bytes, "failed": failed,
                        "num_clips": shard.stop - shard.start})
    done_clips += shard.stop - shard.start
    shards_written += 1
    elapsed = time.perf_counter() - t0
    rate = done_clips / max(elapsed, 1e-9)
    logging.info("pseudolabel %s: shard %s done (%d examples, %d failed clips); %d/%d clips this run, "
                 "%.2f clips/s, ETA %s", source.name, shard.filename, writer.count, len(failed), done_clips,
                 total_clips, rate, _fmt_s((total_clips - done_clips) / max(rate, 1e-9)))
    if p.debug_sleep_after_shard_s > 0:  # Tests kill the job here.
      time.sleep(float(p.debug_sleep_after_shard_s))

  if hosts > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("cohesiv_pseudolabel_shards_done")
  if host == 0:
    _finalize(out, plan, feats, source)
  if hosts > 1:
    multihost_utils.sync_global_devices("cohesiv_pseudolabel_metadata_done")
  return out


def _finalize(out: str, plan: list[_Shard], feats: tfds.features.FeaturesDict, source: ClipSource) -> None:
  """Writes the failure report and the TFDS metadata once every shard is finished."""
  progress = os.path.join(out, _PROGRESS_DIR)
  split_infos, report = [], {"splits": {}, "failed": []}
  for split in SPLITS:
    shards = [s for s in plan if s.split == split]
    if not shards:
      continue
    infos = []
    for s in shards:
      path = os.path.join(progress, s.filename + ".json")
      if not tf.io.gfile.exists(path):
        raise RuntimeError(f"pseudolabel: shard {s.filename} is not finished; rerun the job")
      infos.append(_read_json(path))
    for info in infos:
      report["failed"].extend(info["failed"])
    n_ex = sum(i["num_examples"] for i in infos)
    report["splits"][split] = {"clips": sum(i["num_clips"] for i in infos), "examples": n_ex,
                               "failed_clips": sum(len(i["failed"]) for i in infos)}
    template = tfds.core.ShardedFileTemplate(data_dir=out, dataset_name=DATASET_NAME, split=split,
                                              filetype_suffix="tfrecord")
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[i["num_examples"] for i in infos],
                                           num_bytes=sum(i["num_bytes"] for i in infos),
                                           filename_template=template))
  for name in tf.io.gfile.listdir(out):  # Temporary files of killed runs.
    if name.startswith(".tmp-"):
      tf.io.gfile.remove(os.path.join(out, name))
  _write_json_atomic(os.path.join(out, REPORT_FILE), report)
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=feats, split_infos=split_infos, version=VERSION, check_data=False,
      description=f"COHESIV pseudo-labels of {source.name} (see input_pipeline/cohesiv_examples.py).")
  logging.info("pseudolabel: wrote metadata of %s: %s", out, report["splits"])


def ensure_pseudolabelled(config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
  """Opens the pseudo-labelled dataset of `config.data` under `data_dir`, building it first if needed."""
  p = config.pseudo
  out = output_dir(data_dir, source_name(config))
  if not tf.io.gfile.exists(os.path.join(out, "dataset_info.json")):
    out = build_pseudolabels(config, data_dir)
  else:
    settings_path = os.path.join(out, _BUILD_CONFIG)
    old = _read_json(settings_path) if tf.io.gfile.exists(settings_path) else {}
    now = {"shard_clips": int(p.shard_clips), "temperature": float(p.temperature), "robust": bool(p.robust),
           "robust_threshold": float(p.robust_threshold), "object_threshold": float(p.object_threshold)}
    diff = sorted(k for k in now if old.get(k) != now[k])
    if diff:
      raise pipeline.DataError(f"{out} was built with different config.pseudo settings "
                               f"({', '.join(f'{k}: {old.get(k)!r} there, {now[k]!r} now' for k in diff)}); "
                               f"delete it or use another config.data.data_dir")
  return tfds.builder_from_directory(out)


def read_report(builder_or_dir: tfds.core.DatasetBuilder | str) -> dict[str, Any]:
  out = builder_or_dir if isinstance(builder_or_dir, str) else os.fspath(builder_or_dir.data_dir)
  return _read_json(os.path.join(out, REPORT_FILE))


# ----------------------------------------------------------------------------------------------------------
# Training-time preprocessing (tf ops).


def _flip_x(x: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  return tf.cast(width, x.dtype) - 1.0 - x


def flip_example(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Horizontal mirror of one example (image columns x -> W - 1 - x), every field consistently.

  Images/masks/flow [.., H, W(, C)] are reversed along W and flow dx changes sign; query points map
  x -> W - 1 - x (pixel centres at integers); boxes [x0, y0, x1, y1] with x1 one past the last column map to
  [W - x1, y0, W - x0, y1] (all-zero boxes of absent hands stay zero). Applying it twice is the identity.
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
  absent = tf.reduce_all(tf.equal(qp, 0.0), axis=-1, keepdims=True)
  flipped_qp = tf.concat([_flip_x(qp[..., :1], width), qp[..., 1:]], axis=-1)
  ex["query_point"] = tf.where(absent, qp, flipped_qp)
  box = ex["hand_box"]
  w = tf.cast(width, box.dtype)
  empty = tf.reduce_all(tf.equal(box, 0.0), axis=-1, keepdims=True)
  flipped_box = tf.stack([w - box[..., 2], box[..., 1], w - box[..., 0], box[..., 3]], axis=-1)
  ex["hand_box"] = tf.where(empty, box, flipped_box)
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
