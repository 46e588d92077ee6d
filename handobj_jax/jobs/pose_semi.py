r"""Job `pose_pseudolabel`: hand pseudo-labels from unlabelled video (Semi-Hand-Object Sec. 5.1).

  python -m handobj_jax.main --config=configs/handobj_pose_semi.py[:variant] \
      --config.teacher_workdir=SUPERVISED_WORKDIR --workdir=DIR

1. Restores the teacher: `<teacher_workdir>/config.json` and its best-validation checkpoint (a `pose_train`
   workdir).
2. Runs the TTA ensemble (`semi.tta`, `config.tta.transforms`) on every frame of every clip of
   `config.data` (`config.data.split`), jitted, all transforms of a batch of frames in one forward pass,
   the frames sharded over this host's devices. The given hand box is enlarged by the teacher's
   `data.hand_box_scale` (its training boxes are the tight mesh box times that factor).
3. Streams the results in chunks of `config.chunk_clips` clips to `<workdir>/pseudo_labels/chunks/
   chunk_NNNNN.npz`, each written atomically; a restart skips finished chunks and redoes the rest, so no
   frame is lost or duplicated. A stop request (SIGTERM, Ctrl-C) ends the job after the current chunk.
4. When every chunk is there: the filters (`semi.filters.select`, thresholds `config.filters`) over all
   frames, and `<workdir>/pseudo_labels/pseudo_labels.npz` (every frame's prediction, each filter's mask,
   `keep`), `report.md` / `report.json` (frames removed by each filter, in order; with hidden ground truth,
   the pseudo-labels' errors before and after each filter, and of the frames each filter rejects) and
   `contact_sheet.png` (accepted frames and rejected ones with the filter that rejected them).

Errors against the hidden ground truth (the synthetic video's `gt`; a real dataset has none and the report
says so): PA-MPJPE (Procrustes-aligned root-relative joints, mm), MPJPE (root-relative, camera frame, mm)
and the 2D joint error (pixels), per frame, averaged.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from handobj_jax import console
from handobj_jax import fileio
from handobj_jax import jobs
from handobj_jax import preemption
from handobj_jax import viz
from handobj_jax.evaluation import ho3d
from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import pnp
from handobj_jax.jobs import train as train_job
from handobj_jax.semi import filters as filters_lib
from handobj_jax.semi import tta
from handobj_jax.tasks import pose_task
from input_pipeline import datasets
from input_pipeline import pipeline

OUT_DIR = "pseudo_labels"
LABELS_FILE = "pseudo_labels.npz"
PRED_KEYS = ("joints2d", "joints3d", "verts3d", "theta", "beta", "tta_spread_px")


def load_teacher(teacher_workdir: str):
  """(teacher config, task, variables, step) of a `pose_train` workdir."""
  from handobj_jax.jobs import evaluate as cohesiv_eval_job  # pylint: disable=g-import-not-at-top
  if not teacher_workdir:
    raise jobs.JobInputError("config.teacher_workdir is empty: pass the workdir of a pose_train run "
                             "(configs/handobj_pose.py), e.g. --config.teacher_workdir=/tmp/pose_cpu")
  teacher_workdir = os.path.abspath(os.path.expanduser(teacher_workdir))
  if not os.path.isdir(teacher_workdir):
    raise jobs.JobInputError(f"config.teacher_workdir={teacher_workdir}: no such directory")
  config = cohesiv_eval_job.config_for_workdir(teacher_workdir, None)
  if config.get("job") != "pose_train":
    raise jobs.JobInputError(f"config.teacher_workdir={teacher_workdir} holds a {config.get('job')!r} run; "
                             "the teacher must be a pose_train workdir")
  task = pose_task.HandObjectPoseTask(config)
  mesh = pipeline.make_data_mesh()
  state, step = train_job.restore_state(task, config, teacher_workdir, mesh, None)
  return config, task, {"params": state.params, "batch_stats": state.batch_stats}, step


def make_label_fn(task: pose_task.HandObjectPoseTask, transforms, hand_box_scale: float, crop_scale: float):
  """jit-able (variables, frames [B,H,W,3] uint8, hand_box, obj_box [B,4], is_left [B]) -> TTA outputs."""

  def label(variables, frames, hand_box, obj_box, is_left):
    def model_fn(crops, hb, ob):
      out = task.net.apply(variables, crops, hb, ob, False)
      mano = task.hand_mesh(out["theta"], out["beta"])
      return dict(joints2d=pnp.box_to_pixels(out["joints_uv"], hb), joints3d=mano["joints"],
                  verts3d=mano["verts"], theta=out["theta"], beta=out["beta"])

    net_box = crop_lib.scale_boxes(hand_box, hand_box_scale)
    return tta.tta_predict(model_fn, frames, net_box, obj_box, is_left, transforms, task.image_size,
                           crop_scale)

  return label


def _clip_frames(example: dict[str, Any]) -> dict[str, np.ndarray]:
  frames = np.asarray(example["frames"])
  t = frames.shape[0]
  out = {"frames": frames, "hand_box": np.asarray(example["hand_boxes"], np.float32),
         "obj_box": np.asarray(example["obj_boxes"], np.float32),
         "is_left": np.full((t,), int(example.get("side", 0)) == 1)}
  gt = example.get("gt")
  if gt is not None:
    j3 = np.asarray(gt["joints3d"], np.float32)
    out["gt_joints3d"] = j3 - j3[:, :1]
    out["gt_joints2d"] = np.asarray(gt["joints2d"], np.float32)
  return out


def _chunk_path(out_dir: str, index: int) -> str:
  return os.path.join(out_dir, "chunks", f"chunk_{index:05d}.npz")


def _label_chunk(label_fn, variables, clips: list[tuple[int, dict[str, np.ndarray]]], batch_size: int,
                 sharding) -> dict[str, np.ndarray]:
  frames = {k: np.concatenate([c[k] for _, c in clips]) for k in clips[0][1] if k != "frames"}
  images = np.concatenate([c["frames"] for _, c in clips])
  n = len(images)
  frames["clip_index"] = np.concatenate([np.full(len(c["frames"]), i, np.int64) for i, c in clips])
  frames["frame_index"] = np.concatenate([np.arange(len(c["frames"]), dtype=np.int64) for _, c in clips])
  outs: dict[str, list[np.ndarray]] = {k: [] for k in PRED_KEYS}
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    real = idx < n
    idx = np.where(real, idx, 0)  # Pad the last batch with copies of frame 0 (dropped below).
    args = (images[idx], frames["hand_box"][idx], frames["obj_box"][idx], frames["is_left"][idx])
    out = jax.device_get(label_fn(variables, *jax.device_put(args, sharding)))
    for k in PRED_KEYS:
      outs[k].append(np.asarray(out[k])[real])
  frames.update({k: np.concatenate(v) for k, v in outs.items()})
  return frames


def _errors(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  if "gt_joints3d" not in labels:
    return None
  pred, gt = labels["joints3d"].astype(np.float64), labels["gt_joints3d"].astype(np.float64)
  aligned = ho3d.procrustes_align_np(pred, gt)
  return {"pa_mpjpe_mm": 1000.0 * np.mean(np.linalg.norm(aligned - gt, axis=-1), axis=-1),
          "mpjpe_mm": 1000.0 * np.mean(np.linalg.norm(pred - gt, axis=-1), axis=-1),
          "joints2d_px": np.mean(np.linalg.norm(labels["joints2d"] - labels["gt_joints2d"], axis=-1), axis=-1)}


def _stats(errors: dict[str, np.ndarray] | None, mask: np.ndarray) -> dict[str, Any]:
  row: dict[str, Any] = {"frames": int(mask.sum())}
  if errors is not None and mask.any():
    row.update({k: float(np.mean(v[mask])) for k, v in errors.items()})
  return row


def make_report(labels: dict[str, np.ndarray], selection: dict[str, Any], settings: dict[str, Any]) -> dict:
  errors = _errors(labels)
  n = len(labels["clip_index"])
  stages = [dict(stage="all frames (TTA ensemble)", **_stats(errors, np.ones(n, bool)))]
  keep = np.ones(n, bool)
  rejected = []
  for name, count in selection["removed"]:
    mask = selection["masks"][name]
    keep = keep & mask
    stages.append(dict(stage=f"after {name}", removed=count, **_stats(errors, keep)))
    rejected.append(dict(filter=name, **_stats(errors, ~mask)))
  return {"settings": settings, "num_frames": n, "num_clips": int(len(np.unique(labels["clip_index"]))),
          "num_kept": int(selection["keep"].sum()), "has_ground_truth": errors is not None,
          "stages": stages, "rejected_by_each_filter": rejected}


def markdown(report: dict[str, Any]) -> str:
  s = report["settings"]
  lines = [f"# Hand pseudo-labels: {s['dataset']} / {s['split']}", "",
           f"Teacher: {s['teacher_workdir']} (step {s['teacher_step']}, CR {s['teacher_cr']!r}). "
           f"TTA: {s['transforms']}. {report['num_frames']} frames of {report['num_clips']} clips; "
           f"**{report['num_kept']} kept** ({100.0 * report['num_kept'] / max(report['num_frames'], 1):.1f}%).",
           ""]
  gt = report["has_ground_truth"]
  cols = ["stage", "removed", "frames"] + (["PA-MPJPE mm", "MPJPE mm", "2D px"] if gt else [])
  lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for row in report["stages"]:
    vals = [row["stage"], str(row.get("removed", "")), str(row["frames"])]
    if gt:
      vals += [f"{row[k]:.1f}" if k in row else "-" for k in ("pa_mpjpe_mm", "mpjpe_mm", "joints2d_px")]
    lines.append("| " + " | ".join(vals) + " |")
  if gt:
    lines += ["", "Frames each filter rejects on its own (errors against the hidden ground truth; a useful "
              "filter rejects frames worse than the average):", "",
              "| filter | rejects | PA-MPJPE mm | MPJPE mm | 2D px |", "|---|---|---|---|---|"]
    for row in report["rejected_by_each_filter"]:
      lines.append(f"| {row['filter']} | {row['frames']} | " + " | ".join(
          f"{row[k]:.1f}" if k in row else "-" for k in ("pa_mpjpe_mm", "mpjpe_mm", "joints2d_px")) + " |")
  else:
    lines += ["", "No ground truth in this dataset: errors are not reported."]
  f = s["filters"]
  lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in f.items()) + "."]
  return "\n".join(lines) + "\n"


def contact_sheet(builder, split: str, labels: dict[str, np.ndarray], selection: dict[str, Any],
                  num: int, scale: int = 2) -> np.ndarray | None:
  """Accepted frames and rejected ones (captioned with the first filter that rejects them)."""
  if num <= 0:
    return None
  keep = selection["keep"]
  first_reject = np.full(len(keep), "", object)
  for name, _ in reversed(selection["removed"]):
    first_reject[~selection["masks"][name]] = name
  half = max(num // 2, 1)
  chosen = list(np.flatnonzero(keep)[:half]) + list(np.flatnonzero(~keep)[:num - half])
  if not chosen:
    return None
  wanted = {}
  for i in chosen:
    wanted.setdefault(int(labels["clip_index"][i]), []).append(i)
  tiles = {}
  ds = pipeline.load_split(builder, split).take(max(wanted) + 1)
  for clip_index, example in enumerate(ds.as_numpy_iterator()):
    for i in wanted.get(clip_index, []):
      img = viz.upscale(np.asarray(example["frames"][int(labels["frame_index"][i])]), scale)
      viz.draw_skeleton(img, viz.upscale_points(labels["joints2d"][i], scale), order="ho3d")
      viz.label(img, "kept" if keep[i] else f"rejected: {first_reject[i]}")
      tiles[i] = img
  return viz.grid([tiles[i] for i in chosen if i in tiles], cols=min(8, len(chosen)))


def _check_settings(out_dir: str, settings: dict[str, Any]) -> None:
  """Chunks of an earlier run are reused only with the same teacher, transforms, data and chunking."""
  path = os.path.join(out_dir, "settings.json")
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed and glob.glob(os.path.join(out_dir, "chunks", "chunk_*.npz")):
      raise jobs.JobInputError(f"{out_dir} holds pseudo-labels made with other settings ({', '.join(changed)} "
                               "changed); use another --workdir or delete it")
  fileio.write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True))


def pseudolabel(config, workdir: str) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  train_job.write_config(config, workdir, keys=())
  out_dir = os.path.join(workdir, OUT_DIR)
  try:
    transforms = tta.parse_transforms(config.tta.transforms)
  except ValueError as e:
    raise jobs.JobInputError(str(e)) from None
  teacher_config, task, variables, step = load_teacher(config.teacher_workdir)
  builder = datasets.get_builder(config.data)
  split = config.data.split
  if split not in builder.info.splits:
    raise pipeline.DataError(f"dataset {builder.info.full_name} has no split {split!r} (config.data.split)")
  num_clips = builder.info.splits[split].num_examples
  if config.max_clips:
    num_clips = min(num_clips, int(config.max_clips))
  chunk = int(config.chunk_clips)
  num_chunks = math.ceil(num_clips / chunk)
  _check_settings(out_dir, {"teacher_workdir": os.path.abspath(config.teacher_workdir), "teacher_step": int(step),
                            "transforms": config.tta.transforms, "data": config.data.to_dict(),
                            "num_clips": int(num_clips), "chunk_clips": int(config.chunk_clips)})
  todo = [i for i in range(num_chunks) if not os.path.exists(_chunk_path(out_dir, i))]
  mesh = pipeline.make_data_mesh(jax.local_devices())
  devices = mesh.devices.size
  batch_size = int(math.ceil(int(config.batch_size) / devices) * devices)
  label_fn = jax.jit(make_label_fn(task, transforms, float(teacher_config.data.hand_box_scale),
                                   float(teacher_config.data.crop_scale)))
  console.say(f"pseudo-labelling {builder.info.full_name}/{split}: {num_clips} clips in {num_chunks} chunks "
              f"({num_chunks - len(todo)} done), {len(transforms)} TTA transforms, teacher "
              f"{config.teacher_workdir} (step {step}), {devices} device(s)")
  meter = console.Progress(num_clips, "pseudo-label", unit="clip", start=(num_chunks - len(todo)) * chunk
                           if todo else num_clips)
  sharding = pipeline.batch_sharding(mesh)
  if todo:
    ds = pipeline.load_split(builder, split).take(num_clips)
    pending: list[tuple[int, dict[str, np.ndarray]]] = []
    for clip_index, example in enumerate(ds.as_numpy_iterator()):
      c = clip_index // chunk
      if c not in todo:
        continue
      pending.append((clip_index, _clip_frames(example)))
      if len(pending) == chunk or clip_index == num_clips - 1:
        labels = _label_chunk(label_fn, variables, pending, batch_size, sharding)
        fileio.save_npz_atomic(_chunk_path(out_dir, c), labels)
        meter.advance(len(pending))
        pending = []
        preemption.check(f"after chunk {c} of {num_chunks} (finished chunks are kept; rerun the same "
                         "command to continue)")
  meter.close()
  paths = sorted(glob.glob(os.path.join(out_dir, "chunks", "chunk_*.npz")))[:num_chunks]
  parts = [fileio.load_npz(p) for p in paths]
  labels = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  selection = filters_lib.select(labels, labels["clip_index"], labels["frame_index"], config.filters)
  masks = {f"mask_{k}": v for k, v in selection["masks"].items()}
  fileio.save_npz_atomic(os.path.join(out_dir, LABELS_FILE), dict(labels, keep=selection["keep"], **masks))
  settings = {"dataset": builder.info.full_name, "split": split, "teacher_workdir": config.teacher_workdir,
              "teacher_step": int(step), "teacher_cr": teacher_config.model.cr,
              "transforms": ",".join(t.name for t in transforms), "filters": config.filters.to_dict()}
  report = make_report(labels, selection, settings)
  md = markdown(report)
  fileio.write_text_atomic(os.path.join(out_dir, "report.md"), md)
  fileio.write_text_atomic(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1))
  sheet = contact_sheet(builder, split, labels, selection, int(config.report.num_figures))
  if sheet is not None:
    viz.write_png(os.path.join(out_dir, "contact_sheet.png"), sheet)
  console.say(md.rstrip())
  console.say(f"wrote {os.path.join(out_dir, LABELS_FILE)}, report.md, report.json and contact_sheet.png in "
              f"{out_dir}")
  logging.info("pseudo-label report: %s", json.dumps(report)[:2000])
  return {"report": report, "labels": labels, "selection": selection}
