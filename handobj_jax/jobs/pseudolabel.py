"""Jobs `pseudolabel` and `responsibility_baseline` (COHESIV Sec. 3.1 and 4.2): the device job that builds
the pseudo-labelled examples described in `input_pipeline/cohesiv_examples.py`, and the baseline on them.

* `pseudolabel`: builds (resumably) the pseudo-labelled dataset of `config.data` (`ensure_pseudolabelled`)
  and copies its report (counts, failed clips) to `<workdir>/pseudolabel_report.json`.
* `responsibility_baseline`: the Thresholded-Responsibility baseline. The stored per-hand responsibilities
  R_k (in [0, 1]) are binarised with one threshold: All = union over hands of (R_k > thr), Pair = R_n > thr
  for query hand n (`evaluation.baselines.responsibility_baseline`). The examples are (middle frame, query
  hand) with a non-empty ground-truth hand mask. For each task and each IoU statistic (per-example mean and
  pooled over the split, `evaluation.segmentation`), the threshold is grid-searched on validation and the
  test IoU is reported with it. Writes `<workdir>/responsibility_baseline.{json,md}` and prints the table.

Building is streamed and resumable: shard i of a split holds the examples of clips [i*S_c, (i+1)*S_c)
(S_c = `config.pseudo.shard_clips`) in clip then frame order. Each shard is written to a temporary name and
atomically renamed, then a small `_progress/<shard>.json` (example count, bytes, failed clips) marks it
finished; a restart skips finished shards and redoes the rest, so no example is lost or duplicated. A stop
request (SIGTERM, Ctrl-C) ends the job after the current shard. The metadata is written only when every
shard is finished. Memory holds one batch of clips plus one shard writer, independent of the number of clips.

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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax import console
from handobj_jax import fileio
from handobj_jax import jobs
from handobj_jax import multihost
from handobj_jax import preemption
from handobj_jax.evaluation import baselines
from handobj_jax.evaluation import segmentation
from handobj_jax.geometry import responsibility as resp_lib
from input_pipeline import cohesiv_examples as ce
from input_pipeline import pipeline


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


def _stack_batch(slots: list[ce.Prepared | None], template: ce.Prepared) -> dict[str, np.ndarray]:
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
    return ce.shard_filename(self.split, self.index, self.num_shards)


def _plan(source: ce.ClipSource, shard_clips: int) -> list[_Shard]:
  shards = []
  for split in ce.SPLITS:
    n = source.num_clips(split)
    count = math.ceil(n / shard_clips)
    for i in range(count):
      shards.append(_Shard(split, i, count, i * shard_clips, min(n, (i + 1) * shard_clips), len(shards)))
  return shards


def _build_settings(config: ml_collections.ConfigDict, source: ce.ClipSource) -> dict[str, Any]:
  p = config.pseudo
  return {
      "source": source.name,
      "source_version": source.version,
      "num_clips": {s: source.num_clips(s) for s in ce.SPLITS},
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


def _check_settings(out: str, settings: dict[str, Any]) -> None:
  path = os.path.join(out, ce.BUILD_CONFIG_FILE)
  if tf.io.gfile.exists(path):
    old = ce.read_json(path)
    if old != settings:
      diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      changes = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
      raise pipeline.DataError(f"{out} was built with different settings ({changes}); delete it or use another "
                               f"config.data.data_dir")
  else:
    _write_json_atomic(path, settings)


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
                       source: ce.ClipSource | None = None) -> str:
  """Builds (or finishes building) the pseudo-labelled dataset; returns its directory. See the docstring."""
  source = ce.make_source(config) if source is None else source
  p = config.pseudo
  if p.shard_clips < 1 or p.batch_clips < 1:
    raise pipeline.DataError(f"config.pseudo.shard_clips={p.shard_clips} and batch_clips={p.batch_clips} "
                             f"must be >= 1")
  out = ce.output_dir(data_dir, source.name)
  progress = os.path.join(out, ce.PROGRESS_DIR)
  tf.io.gfile.makedirs(progress)
  settings = _build_settings(config, source)
  _check_settings(out, settings)
  feats = ce.features(source.height, source.width, source.max_hands)

  devices = jax.local_devices()
  cpu_limit = devices[0].platform == "cpu" and len(devices) > 1
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
  if todo:
    console.say(f"pseudo-labelling {source.name}: {total_clips} clips in {len(todo)} shards "
                f"({len(mine) - len(todo)} already done) -> {out}")
    if cpu_limit:
      console.say(f"  on 1 of this process's {len(jax.local_devices())} CPU devices: jaxlib 0.10's CPU LAPACK "
                  "kernels can deadlock when several devices run the robust fit at once (other processes still "
                  "label their own shards)")
  meter = console.Progress(total_clips, "pseudo-labels", unit="clip")
  done_clips = failed_clips = 0
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
        for ex in ce.clip_examples(prep, clip_id, {k: v[b] for k, v in host_out.items()}):
          # Re-serialised with sorted map keys: byte-identical shards whichever process wrote them.
          proto = tf.train.Example.FromString(feats.serialize_example(ex))
          writer.write(proto.SerializeToString(deterministic=True))

    slots: list[ce.Prepared | None] = []
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
          prep = ce.prepare_clip(clip, source.height, source.width, source.max_hands)
        except ce.ClipError as e:
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
    logging.info("pseudolabel %s: shard %s done (%d examples, %d failed clips)", source.name, shard.filename,
                 writer.count, len(failed))
    failed_clips += len(failed)
    meter.update(done_clips, **({"failed clips": failed_clips} if failed_clips else {}))
    preemption.check(f"after shard {shard.filename} (finished shards are kept)")
  meter.close()

  if hosts > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("cohesiv_pseudolabel_shards_done")
  if host == 0:
    _finalize(out, plan, feats, source)
  if hosts > 1:
    multihost_utils.sync_global_devices("cohesiv_pseudolabel_metadata_done")
  return out


def _finalize(out: str, plan: list[_Shard], feats: tfds.features.FeaturesDict, source: ce.ClipSource) -> None:
  """Writes the failure report and the TFDS metadata once every shard is finished."""
  progress = os.path.join(out, ce.PROGRESS_DIR)
  split_infos, report = [], {"splits": {}, "failed": []}
  for split in ce.SPLITS:
    shards = [s for s in plan if s.split == split]
    if not shards:
      continue
    infos = []
    for s in shards:
      path = os.path.join(progress, s.filename + ".json")
      if not tf.io.gfile.exists(path):
        raise RuntimeError(f"pseudolabel: shard {s.filename} is not finished; rerun the job")
      infos.append(ce.read_json(path))
    for info in infos:
      report["failed"].extend(info["failed"])
    n_ex = sum(i["num_examples"] for i in infos)
    report["splits"][split] = {"clips": sum(i["num_clips"] for i in infos), "examples": n_ex,
                               "failed_clips": sum(len(i["failed"]) for i in infos)}
    template = tfds.core.ShardedFileTemplate(data_dir=out, dataset_name=ce.DATASET_NAME, split=split,
                                              filetype_suffix="tfrecord")
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[i["num_examples"] for i in infos],
                                           num_bytes=sum(i["num_bytes"] for i in infos),
                                           filename_template=template))
  for name in tf.io.gfile.listdir(out):  # Temporary files of killed runs.
    if name.startswith(".tmp-"):
      tf.io.gfile.remove(os.path.join(out, name))
  _write_json_atomic(os.path.join(out, ce.REPORT_FILE), report)
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=feats, split_infos=split_infos, version=ce.VERSION, check_data=False,
      description=f"COHESIV pseudo-labels of {source.name} (see input_pipeline/cohesiv_examples.py).")
  logging.info("pseudolabel: wrote metadata of %s: %s", out, report["splits"])


def ensure_pseudolabelled(config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
  """Opens the pseudo-labelled dataset of `config.data` under `data_dir`, building it first if needed."""
  p = config.pseudo
  out = ce.output_dir(data_dir, ce.source_name(config))
  # One decision for all processes: the build has barriers, so a process that saw another's finished build
  # and skipped it would leave the others waiting.
  if multihost.any_process(not tf.io.gfile.exists(os.path.join(out, "dataset_info.json"))):
    out = build_pseudolabels(config, data_dir)
  else:
    settings_path = os.path.join(out, ce.BUILD_CONFIG_FILE)
    old = ce.read_json(settings_path) if tf.io.gfile.exists(settings_path) else {}
    now = {"shard_clips": int(p.shard_clips), "temperature": float(p.temperature), "robust": bool(p.robust),
           "robust_threshold": float(p.robust_threshold), "object_threshold": float(p.object_threshold)}
    diff = sorted(k for k in now if old.get(k) != now[k])
    if diff:
      raise pipeline.DataError(f"{out} was built with different config.pseudo settings "
                               f"({', '.join(f'{k}: {old.get(k)!r} there, {now[k]!r} now' for k in diff)}); "
                               f"delete it or use another config.data.data_dir")
  return pipeline.open_prepared(out, ce.rebuild_hint(out))


# ----------------------------------------------------------------------------------------------------------
# The jobs.

BASELINE_TASKS = ("all", "pair")
STATISTICS = ("per_example", "pooled")


def _ensure(config) -> tfds.core.DatasetBuilder:
  return ensure_pseudolabelled(config, pipeline.resolve_data_dir(config.data.data_dir))


def run(config, workdir: str) -> dict[str, Any]:
  builder = _ensure(config)
  report = ce.read_report(builder)
  if jax.process_index() == 0:
    fileio.write_text_atomic(os.path.join(workdir, ce.REPORT_FILE), json.dumps(report, indent=1, sort_keys=True))
  console.say(f"pseudo-labels at {builder.data_dir}")
  for split, info in report["splits"].items():
    console.say(f"  {split}: {info['examples']} examples from {info['clips']} clips "
                f"({info['failed_clips']} failed)")
  for f in report["failed"]:
    console.say(f"  failed: {f['split']} clip {f['clip_id']}: {f['reason']}")
  return report


# ----------------------------------------------------------------------------------------------------------
# Thresholded-Responsibility baseline.


def _uint8_predict_fn(inputs, params):
  r = np.asarray(inputs["responsibilities"], np.float32) / 255.0
  return baselines.responsibility_predict_fn({"responsibilities": r, "n": inputs["n"]}, params)


def baseline_examples(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[dict, dict]]:
  """(inputs, targets) per (example, query hand) with ground truth; responsibilities kept uint8."""
  out = []
  source = pipeline.DataSource(builder, split, ce.rebuild_hint(os.fspath(builder.data_dir)))
  for ex in pipeline.numpy_batches(builder.as_dataset(split=split, shuffle_files=False), source):
    if not ex["has_gt"]:
      continue
    for n in range(ex["gt_hand_mask"].shape[0]):
      if not ex["gt_hand_mask"][n].any():
        continue
      tasks = segmentation.compose_tasks(ex["gt_hand_mask"], ex["gt_object_mask"], n)
      out.append(({"responsibilities": ex["responsibility"], "n": n},
                  {t: tasks[t] for t in BASELINE_TASKS}))
  return out


def evaluate_responsibility_baseline(builder: tfds.core.DatasetBuilder, num_thresholds: int) -> dict[str, Any]:
  """Thresholds searched on validation, IoU reported on validation and test (see the module docstring)."""
  if num_thresholds < 2:
    raise jobs.JobInputError(f"config.baseline.num_thresholds={num_thresholds} must be >= 2")
  examples = {s: baseline_examples(builder, s) for s in ("validation", "test")}
  for split, ex in examples.items():
    if not ex:
      raise jobs.JobInputError(f"{builder.data_dir}: split {split!r} has no example with ground truth")
  grid = {"threshold": np.linspace(0.0, 1.0, num_thresholds)}
  results: dict[str, Any] = {"num_queries": {s: len(v) for s, v in examples.items()}, "tasks": {}}
  for task in BASELINE_TASKS:
    results["tasks"][task] = {}
    for stat in STATISTICS:
      search = segmentation.grid_search_thresholds(_uint8_predict_fn, examples["validation"], grid, task=task,
                                                   statistic=stat)
      thr = search.best_params["threshold"]
      meter = segmentation.SegmentationMeter()
      for inputs, targets in examples["test"]:
        pred = _uint8_predict_fn(inputs, {"threshold": np.array([thr])})[task][0]
        meter.update(task, pred, targets[task])
      test = meter.compute()[task]
      results["tasks"][task][stat] = {"threshold": thr, "validation": search.best_value, "test": test[stat],
                                      "test_all_statistics": test}
  return results


def baseline_markdown(results: dict[str, Any], name: str) -> str:
  lines = [f"Thresholded Responsibility on {name} (IoU x 100; threshold grid-searched on validation per task "
           f"and statistic; queries: {results['num_queries']})", "",
           "| task | statistic | threshold | validation IoU | test IoU |", "|---|---|---|---|---|"]
  for task, per_stat in results["tasks"].items():
    for stat, r in per_stat.items():
      lines.append(f"| {task} | {stat} | {r['threshold']:.2f} | {100 * r['validation']:.1f} | "
                   f"{100 * r['test']:.1f} |")
  return "\n".join(lines) + "\n"


def run_baseline(config, workdir: str) -> dict[str, Any]:
  builder = _ensure(config)
  results = evaluate_responsibility_baseline(builder, int(config.baseline.num_thresholds))
  results["dataset"] = os.fspath(builder.data_dir)
  table = baseline_markdown(results, ce.source_name(config))
  if jax.process_index() == 0:
    fileio.write_text_atomic(os.path.join(workdir, "responsibility_baseline.json"),
                             json.dumps(results, indent=1, sort_keys=True))
    fileio.write_text_atomic(os.path.join(workdir, "responsibility_baseline.md"), table)
  console.say(table)
  return results
