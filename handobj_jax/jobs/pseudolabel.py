"""Jobs `pseudolabel` and `responsibility_baseline` (COHESIV Sec. 3.1 and 4.2).

* `pseudolabel`: builds (resumably) the pseudo-labelled dataset of `config.data` with
  `cohesiv_examples.ensure_pseudolabelled` and copies its report (counts, failed clips) to
  `<workdir>/pseudolabel_report.json`. Multi-host: every host labels its own shards (see
  `input_pipeline/cohesiv_examples.py`); host 0 writes the metadata and the report.
* `responsibility_baseline`: the Thresholded-Responsibility baseline. The stored per-hand responsibilities
  R_k (in [0, 1]) are binarised with one threshold: All = union over hands of (R_k > thr), Pair = R_n > thr
  for query hand n (`evaluation.baselines.responsibility_baseline`). The examples are (middle frame, query
  hand) with a non-empty ground-truth hand mask. For each task and each IoU statistic (per-example mean and
  pooled over the split, `evaluation.segmentation`), the threshold is grid-searched on validation and the
  test IoU is reported with it. Writes `<workdir>/responsibility_baseline.{json,md}` and prints the table.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from handobj_jax import jobs
from handobj_jax.evaluation import baselines
from handobj_jax.evaluation import segmentation
from input_pipeline import cohesiv_examples
from input_pipeline import pipeline

BASELINE_TASKS = ("all", "pair")
STATISTICS = ("per_example", "pooled")


def _ensure(config) -> tfds.core.DatasetBuilder:
  try:
    data_dir = pipeline.resolve_data_dir(config.data.data_dir)
    return cohesiv_examples.ensure_pseudolabelled(config, data_dir)
  except pipeline.DataError as e:
    raise jobs.JobInputError(str(e)) from None


def run(config, workdir: str) -> dict[str, Any]:
  builder = _ensure(config)
  report = cohesiv_examples.read_report(builder)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, cohesiv_examples.REPORT_FILE), "w") as f:
      json.dump(report, f, indent=1, sort_keys=True)
    print(f"pseudo-labels at {builder.data_dir}")
    for split, info in report["splits"].items():
      print(f"  {split}: {info['examples']} examples from {info['clips']} clips "
            f"({info['failed_clips']} failed)")
    for f in report["failed"]:
      print(f"  failed: {f['split']} clip {f['clip_id']}: {f['reason']}")
  return report


# ----------------------------------------------------------------------------------------------------------
# Thresholded-Responsibility baseline.


def _uint8_predict_fn(inputs, params):
  r = np.asarray(inputs["responsibilities"], np.float32) / 255.0
  return baselines.responsibility_predict_fn({"responsibilities": r, "n": inputs["n"]}, params)


def baseline_examples(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[dict, dict]]:
  """(inputs, targets) per (example, query hand) with ground truth; responsibilities kept uint8."""
  out = []
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
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
  table = baseline_markdown(results, cohesiv_examples.source_name(config))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "responsibility_baseline.json"), "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(workdir, "responsibility_baseline.md"), "w") as f:
      f.write(table)
    print(table)
  logging.info("responsibility baseline:\n%s", table)
  return results
