r"""Job `eval`: COHESIV inference on the pseudo-labelled splits, the paper's baselines, report and figures.

  python -m handobj_jax.main --config=configs/cohesiv.py:cpu --config.job=eval --workdir=/tmp/cohesiv_cpu

It reads the same config as the training run of that workdir (only `job` changes). Steps:
  1. Opens the pseudo-labelled dataset of `config.data` (built on first use, as for training) and restores
     the best-validation checkpoint of `<workdir>/checkpoints` (the latest when none is marked best).
  2. Mean person / object embeddings: `<workdir>/inference_stats.npz` (written by the train job), else
     computed here from the training split (>= `config.inference_stats.min_pixels` pixels each) and stored.
  3. One forward pass per image of the fit split (validation) and the test split: Z -> objectness and person
     similarity, attention at the ground-truth query points, hand-centre peaks -> predicted queries ->
     their attention; baseline inputs (responsibility, flow, spectral residual saliency, GT boxes).
  4. Thresholds of every method by grid search on validation (`settings.fit_task`/`fit_statistic`, default
     pooled Pair IoU), frozen and stored in `<workdir>/thresholds.json` (reused while the checkpoint step
     and the grids are unchanged), then scored on test: per-example and pooled IoU.
  5. `<workdir>/eval/report.md` + `report.json` (Tables 1 and 2 shaped, both IoU statistics, thresholds,
     split sizes) and `<workdir>/eval/figures/*.png` (Fig. 3 panels of the first test images).

Several processes: each runs a host copy of the model over a contiguous block of each split
(`pipeline.host_block`), the per-image records are gathered in split order (`multihost.concat_examples`), every
process fits and scores the same records, and process 0 alone writes the thresholds, report and figures.

Settings: `config.eval` when the config has that block, else the defaults of `config_lib.cohesiv_eval`
(logged at start). Keys: fit_split, test_split, fit_task, fit_statistic, max_images (0 = all),
batch_size, num_figures, saliency_width, center_threshold, nms_radius, max_peaks, match_distance,
detections_file ('' = ground-truth boxes for Supervised Bounding Box; else a JSON of
`baselines.boxes_from_detections_file` keyed 'split/clip_id/frame'), extra_checkpoints ('' or
'LABEL=WORKDIR@CONFIG_FILE[:VARIANT];...': more checkpoints evaluated as Table 2 rows, e.g. the ResNet
ablation; the variants attention_only / embeddings_only are scored with their ablation's inference rule),
refit (ignore a stored thresholds.json).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from handobj_jax import config_lib
from handobj_jax import console
from handobj_jax import jobs
from handobj_jax import multihost
from handobj_jax import preemption
from handobj_jax import viz
from handobj_jax.evaluation import baselines
from handobj_jax.evaluation import cohesiv_eval
from handobj_jax.evaluation import figures
from handobj_jax.evaluation import segmentation
from handobj_jax.models import cohesiv

CONFIG_JSON = "config.json"


def settings_of(config) -> ml_collections.ConfigDict:
  """`config.eval` if the config has one (missing keys filled from the defaults), else the defaults
  (`config_lib.cohesiv_eval`: a workdir trained before the eval block existed)."""
  s = config_lib.cohesiv_eval(int(config.batch_size))
  if "eval" in config:
    unknown = sorted(set(config.eval.keys()) - set(s.keys()))
    if unknown:
      raise jobs.JobInputError(f"unknown config.eval key(s) {unknown}; known: {sorted(s.keys())}")
    s.update(config.eval.to_dict())
  if s.fit_task not in segmentation.TASKS:
    raise jobs.JobInputError(f"config.eval.fit_task={s.fit_task!r}; expected one of {segmentation.TASKS}")
  if s.fit_statistic not in ("pooled", "per_example"):
    raise jobs.JobInputError(f"config.eval.fit_statistic={s.fit_statistic!r}; expected pooled or per_example")
  return s


# ------------------------------------------------------------------------------------------------------
# Configs and models (shared with `handobj_jax.predict`).


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """'path/to/config.py[:variant]' -> its get_config(variant); a .json path -> a ConfigDict of it."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise jobs.JobInputError(f"config file {path!r} not found")
  if path.endswith(".json"):
    with open(path) as f:
      try:
        return ml_collections.ConfigDict(json.load(f))
      except json.JSONDecodeError as e:
        raise jobs.JobInputError(f"config file {path!r} is not valid JSON: {e}") from None
  module_spec = importlib.util.spec_from_file_location(f"_cfg_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)
  except Exception as e:  # A config file is Python: report any failure in one line.
    raise jobs.JobInputError(f"config {spec!r} failed: {type(e).__name__}: {e}") from None


def config_for_workdir(workdir: str, spec: str | None) -> ml_collections.ConfigDict:
  """The model config of a workdir: `spec` when given, else `<workdir>/config.json`."""
  if spec:
    return load_config_file(spec)
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.isfile(path):
    return load_config_file(path)
  raise jobs.JobInputError(f"{workdir} has no {CONFIG_JSON}; pass the training config with --config "
                           "path[:variant] (e.g. configs/cohesiv.py:cpu)")


@dataclasses.dataclass
class LoadedModel:
  """A restored COHESIV network: `variables` for `net.apply`, the checkpoint `step`."""
  config: Any
  net: cohesiv.CohesivNet
  variables: dict[str, Any]
  step: int
  task: Any
  state: Any
  mesh: Any

  def __post_init__(self):
    net = self.net

    def fwd(variables, images, points):
      out = net.apply(variables, images, train=False)
      res = {"z": out["z"], "q": out["q"], "k": out["k"],
             "attention": cohesiv.attention_map(out["q"], out["k"], points).attention}
      if "center" in out:
        res["center"] = out["center"]
      return res

    self.jitted_forward = jax.jit(fwd)  # (variables, images, points) -> device outputs (benchmarks use it).
    self._att = jax.jit(lambda q, k, p: cohesiv.attention_map(q, k, p).attention)

  def forward(self, images: np.ndarray, points: np.ndarray) -> dict[str, Any]:
    """images [B, H, W, 3] float32 in [0, 1] (H, W multiples of 32), points [B, P, 2] -> z [B,H,W,F],
    attention [B,P,H,W], center [B,H,W] (NumPy), q / k (device arrays, for `attention`)."""
    out = self.jitted_forward(self.variables, np.asarray(images, np.float32), np.asarray(points, np.float32))
    host = jax.device_get({k: v for k, v in out.items() if k not in ("q", "k")})
    host.update(q=out["q"], k=out["k"])
    return host

  def attention(self, q, k, points: np.ndarray) -> np.ndarray:
    return np.asarray(jax.device_get(self._att(q, k, np.asarray(points, np.float32))))


def load_model(config, workdir: str, best: bool = True) -> LoadedModel:
  """Restores `<workdir>/checkpoints` (best-validation step, else the latest) for `config.model`."""
  from handobj_jax.jobs import train as train_job  # pylint: disable=g-import-not-at-top
  from handobj_jax.tasks import cohesiv_task  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) or not any(d.isdigit() for d in os.listdir(ckpt_dir)):
    raise jobs.JobInputError(f"no checkpoint under {ckpt_dir}: train first (job 'train') or point at a "
                             "training workdir")
  task = cohesiv_task.CohesivTask(config)
  mesh = pipeline.make_data_mesh()
  example = {"image": np.zeros((1, 64, 64, 3), np.float32)}
  try:
    state, step = train_job.restore_state(task, config, workdir, mesh, example, best=best)
  except (ValueError, KeyError) as e:
    raise jobs.JobInputError(f"cannot restore the checkpoint in {ckpt_dir} with this config's model "
                             f"({config.model.encoder}): {type(e).__name__}: {str(e).splitlines()[0]}"
                             ) from None
  # One host-local copy on one device: each process runs its own images with no collective (with several
  # processes the replicated state spans devices this process cannot address).
  variables = jax.device_put(multihost.host_copy({"params": state.params, "batch_stats": state.batch_stats}),
                             jax.local_devices()[0])
  return LoadedModel(config=config, net=task.net, variables=variables, step=int(step), task=task,
                     state=state, mesh=mesh)


# ------------------------------------------------------------------------------------------------------
# Inference statistics.


def ensure_inference_stats(model: LoadedModel, config, workdir: str, builder) -> dict[str, np.ndarray]:
  """`<workdir>/inference_stats.npz`, computed from the training split and stored when absent."""
  from handobj_jax.jobs import train as train_job  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, cohesiv_eval.STATS_FILE)
  # One decision for all processes: each one computing alone would leave the others waiting at its collectives.
  if not multihost.any_process(not os.path.isfile(path)):
    try:
      return cohesiv_eval.load_inference_stats(path)
    except ValueError as e:
      raise jobs.JobInputError(str(e)) from None
  console.say(f"{path} not found: computing the mean embeddings from the training split")
  host_bs = pipeline.host_batch_size(config.batch_size, model.mesh)
  ds = pipeline.load_split(builder, "train").map(train_job.select_fields)
  steps = pipeline.eval_num_batches(builder, "train", host_bs)  # The same count on every process.
  batches = pipeline.global_batches(pipeline.eval_dataset(ds, batch_size=host_bs, num_batches=steps),
                                    model.mesh, source=train_job.data_source(builder, "train"))
  stats = train_job.inference_stats(model.task, model.state, model.mesh, batches,
                                    config.inference_stats.min_pixels, config.inference_stats.min_images)
  stats["checkpoint_step"] = np.int64(model.step)
  train_job.save_inference_stats(workdir, stats)
  multihost.sync("inference_stats_written")
  return stats


# ------------------------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass
class SplitData:
  records: list[cohesiv_eval.ImageRecord]
  figure_inputs: list[dict[str, np.ndarray]]  # image, z, query_point, query_valid, id (first few images)


def peak_settings(s, height: int, width: int) -> tuple[int, float]:
  radius = int(s.nms_radius) or max(2, min(height, width) // 16)
  return radius, float(s.match_distance) or 2.0 * radius


def build_records(model: LoadedModel, builder, split: str, stats, s, detections=None,
                  num_figures: int = 0) -> SplitData:
  """Runs the model over `split` and builds one `ImageRecord` per image (see cohesiv_eval)."""
  from handobj_jax.jobs import train as train_job  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  total = builder.info.splits[split].num_examples
  if s.max_images:
    total = min(total, int(s.max_images))
  # With several processes, process p scores a contiguous block of the images; `multihost.concat_examples`
  # puts the blocks back in split order, so every process then holds the records of a 1-process run.
  try:
    block, total, _ = pipeline.host_block(split, total)
  except pipeline.DataError as e:
    raise jobs.JobInputError(str(e)) from None
  ds = pipeline.load_split(builder, block, per_host=False)
  records, figs = [], []
  meter = console.Progress(total, f"eval {split}", unit="image")
  for batch in pipeline.numpy_batches(pipeline.eval_dataset(ds, batch_size=int(s.batch_size)),
                                      train_job.data_source(builder, split)):
    preemption.check(f"while evaluating {split} (nothing written yet)")
    keep = np.asarray(batch[pipeline.MASK_KEY], bool)
    images = batch["image"].astype(np.float32) / 255.0
    out = model.forward(images, batch["query_point"])
    height, width = images.shape[1:3]
    radius, match_dist = peak_settings(s, height, width)
    peaks = []
    if "center" in out:
      for b in range(len(images)):
        pts, _ = cohesiv_eval.detect_peaks(out["center"][b], s.center_threshold, radius, s.max_peaks)
        peaks.append(pts)
      padded = np.zeros((len(images), int(s.max_peaks), 2), np.float32)
      for b, pts in enumerate(peaks):
        padded[b, :len(pts)] = pts
      pred_att = model.attention(out["q"], out["k"], padded)
    obj_sim, person_sim = cohesiv_eval.similarity_maps(out["z"], stats)
    for b in np.flatnonzero(keep):
      image_id = f"{split}/{int(batch['clip_id'][b])}/{int(batch['frame'][b])}"
      kwargs = {}
      if "center" in out:
        gt_hb, _, _ = cohesiv_eval.gt_boxes(batch["gt_hand_mask"][b], batch["gt_object_mask"][b])
        match = cohesiv_eval.match_peaks_to_hands(peaks[b], gt_hb, batch["query_valid"][b], match_dist)
        kwargs = dict(pred_attention=pred_att[b, :len(peaks[b])], pred_match=match)
      records.append(cohesiv_eval.make_record(
          image_id=image_id, image=batch["image"][b], z_maps=(obj_sim[b], person_sim[b]),
          attention=out["attention"][b], responsibility=batch["responsibility"][b],
          flow=batch["flow_next"][b], gt_hand=batch["gt_hand_mask"][b],
          gt_object=batch["gt_object_mask"][b], query_valid=batch["query_valid"][b],
          has_gt=bool(batch["has_gt"][b]), saliency_width=int(s.saliency_width), detections=detections,
          query_points=batch["query_point"][b], **kwargs))
      if len(figs) < num_figures:
        figs.append({"image": batch["image"][b], "z": out["z"][b], "query_point": batch["query_point"][b],
                     "query_valid": np.asarray(batch["query_valid"][b], bool), "id": image_id,
                     "attention": out["attention"][b], "objectness": obj_sim[b],
                     "person_sim": person_sim[b]})
    meter.advance(int(keep.sum()))
  meter.close()
  if jax.process_count() > 1:
    records = cohesiv_eval.records_from_arrays(multihost.concat_examples(
        cohesiv_eval.records_to_arrays(records, int(s.max_peaks))))
  return SplitData(records, figs)


# ------------------------------------------------------------------------------------------------------
# Fitting and scoring.


def grid_signature(method: cohesiv_eval.Method) -> dict[str, list[float]]:
  return {k: [float(v) for v in vals] for k, vals in method.grid.items()}


def fit_and_score(val_records, test_records, method_keys, s, stored: dict | None, step: int,
                  methods=None) -> tuple[dict, dict]:
  """Thresholds fitted on validation (or reused from `stored` when step and grids match) and test scores.

  Returns ({key: {'label','params','val_value','fit_task'}}, {key: test stats}).
  """
  methods = methods or cohesiv_eval.METHODS
  val_ex = cohesiv_eval.examples(val_records)
  test_ex = cohesiv_eval.examples(test_records)
  if not val_ex:
    raise jobs.JobInputError(f"the {s.fit_split} split has no evaluable query (valid query and ground "
                             "truth): cannot fit thresholds")
  if not test_ex:
    raise jobs.JobInputError(f"the {s.test_split} split has no evaluable query (valid query and ground "
                             "truth)")
  thresholds, results = {}, {}
  for key in method_keys:
    m = methods[key]
    if m.thresholds_from:
      th = dict(thresholds[m.thresholds_from])
      th.update(label=m.label, fitted_for=m.thresholds_from)
    else:
      old = (stored or {}).get(key)
      reuse = (old is not None and not s.refit and old.get("checkpoint_step") == step and
               old.get("grid") == grid_signature(m) and old.get("fit_task") == s.fit_task and
               old.get("fit_statistic") == s.fit_statistic)
      if reuse:
        th = dict(old)
      else:
        t0 = time.time()
        params, value = cohesiv_eval.fit_thresholds(m, val_ex, s.fit_task, s.fit_statistic)
        th = {"label": m.label, "params": params, "val_value": value, "fit_task": s.fit_task,
              "fit_statistic": s.fit_statistic, "grid": grid_signature(m), "checkpoint_step": step}
        console.say(f"  fitted {m.label}: {params} (validation {s.fit_statistic} {s.fit_task} IoU "
                    f"{value:.4f}, {time.time() - t0:.1f} s)")
    thresholds[key] = th
    results[key] = cohesiv_eval.score(m, test_ex, th["params"])
  return thresholds, results


def _row(key, label, tasks, res):
  return {"method": key, "label": label, "tasks": list(tasks), "test": res}


def _parse_extra(spec: str) -> list[tuple[str, str, str]]:
  out = []
  for item in filter(None, (p.strip() for p in spec.split(";"))):
    label, eq, rest = item.partition("=")
    workdir, at, cfg = rest.partition("@")
    if not eq or not label or not workdir:
      raise jobs.JobInputError(f"config.eval.extra_checkpoints entry {item!r}: expected "
                               "LABEL=WORKDIR[@CONFIG_FILE[:VARIANT]]")
    out.append((label.strip(), os.path.abspath(os.path.expanduser(workdir.strip())), cfg.strip()))
  return out


# ------------------------------------------------------------------------------------------------------
# The job.


def run(config, workdir: str) -> dict[str, Any]:
  from handobj_jax.jobs import train as train_job  # pylint: disable=g-import-not-at-top

  s = settings_of(config)
  logging.info("eval settings: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(s.items())))
  detections = None
  if s.detections_file:
    try:
      detections = baselines.boxes_from_detections_file(s.detections_file)
    except (FileNotFoundError, ValueError) as e:
      raise jobs.JobInputError(str(e)) from None
  builder = train_job.open_pseudolabelled(config)
  for split in (s.fit_split, s.test_split, "train"):
    if split not in builder.info.splits:
      raise jobs.JobInputError(f"dataset {builder.info.full_name} has no split {split!r}")
  model = load_model(config, workdir)
  stats = ensure_inference_stats(model, config, workdir, builder)
  t0 = time.time()
  val = build_records(model, builder, s.fit_split, stats, s, detections)
  test = build_records(model, builder, s.test_split, stats, s, detections, num_figures=int(s.num_figures))
  console.say(f"forward passes: {len(val.records)} {s.fit_split} + {len(test.records)} {s.test_split} "
              f"images ({time.time() - t0:.1f} s)")

  th_path = os.path.join(workdir, cohesiv_eval.THRESHOLDS_FILE)
  stored = None
  if os.path.isfile(th_path) and not s.refit:
    try:
      stored = cohesiv_eval.load_thresholds(th_path)["methods"]
    except ValueError as e:
      console.warn(f"ignoring {th_path}: {e}")
  keys = list(dict.fromkeys(cohesiv_eval.TABLE1 + cohesiv_eval.TABLE2))
  has_center = all(r.pred_match is not None for r in val.records + test.records)
  if not has_center:
    keys.remove("pred_query")
  thresholds, results = fit_and_score(val.records, test.records, keys, s, stored, model.step)

  m = cohesiv_eval.METHODS
  table1 = [_row(k, m[k].label, m[k].tasks, results[k]) for k in cohesiv_eval.TABLE1]
  table2 = [_row(k, m[k].label, m[k].tasks, results[k]) for k in cohesiv_eval.TABLE2 if k in results]
  notes = []
  for label, extra_dir, cfg_spec in _parse_extra(s.extra_checkpoints):
    row, th = _evaluate_extra(label, extra_dir, cfg_spec, config, builder, s, detections)
    table2.insert(len(table2) - (1 if has_center else 0), row)
    thresholds[f"extra:{label}"] = th
  if not has_center:
    notes.append("The model has no hand-centre head: the 'COHESIV w/ Predicted Query' row is omitted.")
  notes += [
      "Saliency is the training-free spectral residual (Hou & Zhang 2007), a stand-in for the paper's "
      "learned saliency network [51]; one mask scored against all four tasks, like Flow.",
      "Flow is the magnitude of the stored flow to the next frame (`flow_next`).",
      ("Supervised Bounding Box uses the ground-truth hand/object boxes (tight boxes of the GT masks): an "
       "upper reference, not a detector." if detections is None else
       f"Supervised Bounding Box uses the detections in {s.detections_file}."),
      "Attention-Only / Embeddings-Only here are inference ablations of this checkpoint (one of the two "
      "cues switched off at test time); the paper's rows are models trained with one loss only: evaluate "
      "such checkpoints with config.eval.extra_checkpoints.",
      "Predicted queries: hand-centre peaks (threshold "
      f"{s.center_threshold}, NMS radius {peak_settings(s, *test.records[0].shape)[0]} px, at most "
      f"{s.max_peaks}) matched one-to-one to GT hands (inside the box or near its centre); an unmatched "
      "hand is scored with empty masks; COHESIV's thresholds are reused unchanged.",
      "Per-example IoU excludes examples whose prediction and target are both empty "
      "(`segmentation` module docstring).",
  ]
  report = {
      "dataset": f"{config.data.name}:{config.data.builder_config}",
      "checkpoint": f"{workdir}/checkpoints step {model.step}",
      "test_split": s.test_split,
      "split_sizes": {s.fit_split: {"images": len(val.records),
                                    "queries": len(cohesiv_eval.examples(val.records))},
                      s.test_split: {"images": len(test.records),
                                     "queries": len(cohesiv_eval.examples(test.records))}},
      "fit": {"split": s.fit_split, "task": s.fit_task, "statistic": s.fit_statistic},
      "query_source": "ground-truth hands (query_point of valid hands)",
      "thresholds": {k: {kk: v[kk] for kk in ("label", "params", "val_value") if kk in v}
                     for k, v in thresholds.items()},
      "table1": table1, "table2": table2, "notes": notes,
      "inference_stats": {"pixel_counts": np.asarray(stats.get("pixel_counts", [])).tolist()},
  }
  out_dir = os.path.join(workdir, "eval")
  md_path, json_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")
  fig_paths = []
  if console.is_main_process():  # Every process holds the same report; process 0 writes it.
    cohesiv_eval.save_thresholds(th_path, {"checkpoint_step": model.step,
                                           "methods": {k: v for k, v in thresholds.items()
                                                       if not k.startswith("extra:")}})
    md_path, json_path = cohesiv_eval.write_report(out_dir, report)
    fig_paths = write_figures(os.path.join(out_dir, "figures"), test.figure_inputs,
                              thresholds["cohesiv"]["params"])
    with open(md_path) as f:
      console.say(f.read().rstrip())
  multihost.sync("cohesiv_eval_written")
  console.say(f"wrote {md_path}, {json_path}, {th_path} and {len(fig_paths)} figures in "
              f"{os.path.join(out_dir, 'figures')}")
  return {"report": report, "report_md": md_path, "report_json": json_path, "thresholds": th_path,
          "figures": fig_paths}


def _evaluate_extra(label, extra_dir, cfg_spec, main_config, builder, s, detections):
  """One more checkpoint (e.g. the ResNet ablation) as a Table 2 row, its thresholds fitted the same way."""
  cfg = config_for_workdir(extra_dir, cfg_spec or None)
  if cfg.data.to_dict() != main_config.data.to_dict():
    raise jobs.JobInputError(f"extra checkpoint {label!r}: its config.data differs from this run's; "
                             "rows must be evaluated on the same splits")
  model = load_model(cfg, extra_dir)
  stats = ensure_inference_stats(model, cfg, extra_dir, builder)
  val = build_records(model, builder, s.fit_split, stats, s, detections)
  test = build_records(model, builder, s.test_split, stats, s, detections)
  variant = cfg_spec.partition(":")[2]
  key = variant if variant in ("attention_only", "embeddings_only") else "cohesiv"
  base = cohesiv_eval.METHODS[key]
  method = dataclasses.replace(base, label=label)
  th, res = fit_and_score(val.records, test.records, [key], s, None, model.step, {key: method})
  return _row(f"extra:{label}", label, method.tasks, res[key]), th[key]


def write_figures(out_dir: str, figure_inputs, params) -> list[str]:
  """Fig. 3 panels of the given images with COHESIV's frozen thresholds."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for f in figure_inputs:
    hands = np.flatnonzero(f["query_valid"])
    hand, obj = segmentation.cohesiv_masks(f["objectness"][None], f["person_sim"][None],
                                           f["attention"][hands], params["tau1"], params["tau2"],
                                           params["tau3"], params["tau4"])
    panel = figures.cohesiv_figure(f["image"], f["z"], f["query_point"][hands], f["attention"][hands],
                                   hand, obj)
    path = os.path.join(out_dir, f["id"].replace("/", "_") + ".png")
    viz.write_png(path, panel)
    paths.append(path)
  return paths
