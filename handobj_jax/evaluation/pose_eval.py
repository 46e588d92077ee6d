"""The pose evaluation report: Tables 1 and 2 of Semi-Hand-Object in shape, as markdown and JSON.

Rows are trained models (the run itself and `config.eval.compare` rows, e.g. the CR ablation). Columns:
hand joint and mesh errors after Procrustes alignment (mm), F@5 / F@15 (%) and AUCs (Table 1; HO-3D's
official metrics), then object ADD-0.1D (% of frames) per object group and their mean (Table 2), for the
protocol's PnP (OpenCV solvePnPRansac + EPnP) and, in a second table, the project's batched device solver;
REP-5 too. The test protocol (oracle boxes and root joint) is stated in the report.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from handobj_jax import fileio

PROTOCOL = ("Test protocol (the released supervised code's): the hand box, the object box (projected "
            "control points) and the hand's root joint are taken from the ground truth (oracle boxes and "
            "root; on HO-3D's evaluation split, its given hand box and root); joints and vertices are the "
            "predicted root-relative ones plus the true root. Hand errors are in mm; AUC over 0-50 mm; F-scores "
            "at 5 / 15 mm on Procrustes-aligned vertices; 2D px: the mean distance of the network's 2D joints to "
            "the true ones, in image pixels. ADD-0.1D: % of frames whose mean model-point distance is below 10% "
            "of the object's model-point box diagonal; REP-5: % of frames whose mean reprojection error is below "
            "5 px; ADD mean: the mean model-point distance. Objects are grouped by object (by shape in the "
            "synthetic world). Metrics are computed in the OpenCV camera frame; every one of them is invariant "
            "to the OpenGL flip that HO-3D submissions use.")

HAND_COLUMNS = (("Joint", "joint_error_procrustes_mm", "{:.1f}"), ("Mesh", "mesh_error_procrustes_mm", "{:.1f}"),
                ("F@5", "fscore_5mm", "pct"), ("F@15", "fscore_15mm", "pct"),
                ("Joint AUC", "joint_auc_procrustes", "pct"), ("Mesh AUC", "mesh_auc_procrustes", "pct"),
                ("Joint (unaligned)", "joint_error_unaligned_mm", "{:.1f}"),
                ("Joint (sc-tr)", "joint_error_sc_tr_mm", "{:.1f}"), ("2D px", "joints2d_error_px", "{:.1f}"))


def _fmt(value: float, how: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return f"{100.0 * value:.1f}" if how == "pct" else how.format(value)


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x


def make_report(rows: Sequence[dict[str, Any]], dataset: str, split: str, settings) -> dict[str, Any]:
  """The JSON-able report of evaluated rows (see `jobs.pose.evaluate_workdir` for a row's keys)."""
  groups = sorted({g for r in rows if r["objects"] for g in r["objects"]["cv"]["add_success"]})
  return {
      "dataset": dataset, "split": split, "protocol": PROTOCOL, "object_groups": groups,
      "vote_rule": {"num_votes": int(settings.num_votes), "threshold": float(settings.vote_threshold)},
      "rows": [{k: _jsonable(v) for k, v in r.items() if k not in ("figures", "faces", "predictions")}
               for r in rows],
  }


def markdown(report: dict[str, Any]) -> str:
  rows = report["rows"]
  groups = report["object_groups"]
  lines = [f"# Hand-object pose on {report['dataset']} ({report['split']} split, "
           f"{rows[0]['num_images']} images)", "", report["protocol"], ""]
  hand_rows = [r for r in rows if r.get("hand")]
  if hand_rows:
    lines += [f"## Hands (Table 1 shape; {hand_rows[0].get('num_hand_gt', rows[0]['num_images'])} frames with hand "
              "ground truth)", "",
              "| model | CR | " + " | ".join(c[0] for c in HAND_COLUMNS) + " |",
              "|---|---|" + "---|" * len(HAND_COLUMNS)]
    for r in hand_rows:
      lines.append(f"| {r['label']} | {r['cr']} | " +
                   " | ".join(_fmt(r["hand"].get(key), how) for _, key, how in HAND_COLUMNS) + " |")
    names = list(hand_rows[0]["hand"].get("official", {}))
    if names:
      lines += ["", "The official HO-3D evaluation's numbers, under its names (errors in cm; scores.txt holds the "
                "first row in the official file layout):", "",
                "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
      for r in hand_rows:
        lines.append(f"| {r['label']} | " + " | ".join(f"{r['hand']['official'][n]:.4f}" for n in names) + " |")
  else:
    lines += ["## Hands", "", "No hand ground truth in this split (HO-3D's evaluation split without the released "
              "evaluation annotations): the hand is scored by the official server from the submission file."]
  obj_rows = [r for r in rows if r.get("objects")]
  for solver, title in (("cv", "OpenCV solvePnPRansac + EPnP (the protocol)"),
                        ("dev", "the batched device solver (geometry.pnp.solve_pnp)")):
    if not obj_rows:
      break
    lines += ["", f"## Objects, ADD-0.1D % (Table 2 shape): PnP by {title}", "",
              "| model | CR | " + " | ".join(groups) + " | mean | REP-5 mean | ADD mean mm | PnP ok % |",
              "|---|---|" + "---|" * (len(groups) + 4)]
    for r in obj_rows:
      o = r["objects"][solver]
      cells = [_fmt(o["add_success"].get(g), "{:.1f}") for g in groups]
      add_mm = 1000.0 * float(np.mean(list(o["add_mean_m"].values()))) if o["add_mean_m"] else float("nan")
      lines.append(f"| {r['label']} | {r['cr']} | " + " | ".join(cells) +
                   f" | {_fmt(o['add_success_mean'], '{:.1f}')} | {_fmt(o['rep5_mean'], '{:.1f}')} | "
                   f"{_fmt(add_mm, '{:.1f}')} | {_fmt(o['pnp_ok_percent'], '{:.1f}')} |")
  if obj_rows:
    counts = obj_rows[0]["objects"]["cv"]["num_frames"]
    lines += ["", "Frames per object group: " + ", ".join(f"{g} {counts.get(g, 0)}" for g in groups) +
              f". Votes kept per image (mean, of 21 x {report['vote_rule']['num_votes']}): " +
              ", ".join(f"{r['label']} {r['mean_votes']:.0f}" for r in obj_rows) + "."]
  else:
    lines += ["", "No object ground truth in this split: no object metrics."]
  if report.get("submission"):
    sub = report["submission"]
    lines += ["", f"HO-3D submission: {sub['zip']} ({sub['count']} frames; read back and checked: shapes, OpenGL "
              f"frame, evaluation.txt order, largest wrist-to-given-root gap {1000 * sub['root_max_gap_m']:.4f} mm)."]
  lines += ["Checkpoints: " + "; ".join(f"{r['label']}: {r['workdir']} step {r['step']}" for r in rows) + "."]
  return "\n".join(lines) + "\n"


def write_report(out_dir: str, report: dict[str, Any]) -> tuple[str, str]:
  """Writes report.md and report.json (process 0 only; atomically); returns their paths."""
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  md_path, json_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")
  if jax.process_index() == 0:
    for path, text in ((md_path, markdown(report)), (json_path, json.dumps(report, indent=1))):
      fileio.write_text_atomic(path, text)
  return md_path, json_path
