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
from handobj_jax import multihost
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
  """Accepted frames and rejected ones (captioned with the first filter that rejects them), one per clip."""
  if num <= 0:
    return None
  keep = selection["keep"]
  first_reject = np.full(len(keep), "", object)
  for name, _ in reversed(selection["removed"]):
    first_reject[~selection["masks"][name]] = name
  half = max(num // 2, 1)

  def spread(candidates: np.ndarray, count: int) -> list[int]:
    """The first frames of `candidates`, at most one per clip."""
    picked, clips = [], set()
    for i in candidates:
      if int(labels["clip_index"][i]) not in clips:
        picked.append(int(i))
        clips.add(int(labels["clip_index"][i]))
      if len(picked) == count:
        break
    return picked

  chosen = spread(np.flatnonzero(keep), half) + spread(np.flatnonzero(~keep), num - half)
  if not chosen:
    return None
  wanted = {}
  for i in chosen:
    wanted.setdefault(int(labels["clip_index"][i]), []).append(i)
  tiles = {}
  ds = pipeline.load_split(builder, split, per_host=False).take(max(wanted) + 1)
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
  # Several processes: process p labels the chunks c with c % P == p (each on its own devices, with a host
  # copy of the teacher), all wait for every chunk, and process 0 writes the labels, dataset and report.
  hosts, host = jax.process_count(), jax.process_index()
  mine = [i for i in range(num_chunks) if i % hosts == host]
  todo = [i for i in mine if not os.path.exists(_chunk_path(out_dir, i))]
  mesh = pipeline.make_data_mesh(jax.local_devices())
  variables = jax.device_put(multihost.host_copy(variables), pipeline.replicated_sharding(mesh))
  devices = mesh.devices.size
  batch_size = int(math.ceil(int(config.batch_size) / devices) * devices)
  label_fn = jax.jit(make_label_fn(task, transforms, float(teacher_config.data.hand_box_scale),
                                   float(teacher_config.data.crop_scale)))
  console.say(f"pseudo-labelling {builder.info.full_name}/{split}: {num_clips} clips in {num_chunks} chunks "
              f"({num_chunks - len(todo)} done), {len(transforms)} TTA transforms, teacher "
              f"{config.teacher_workdir} (step {step}), {devices} device(s)")
  my_clips = sum(min(chunk, num_clips - i * chunk) for i in mine)
  meter = console.Progress(my_clips, "pseudo-label", unit="clip",
                           start=my_clips - sum(min(chunk, num_clips - i * chunk) for i in todo))
  sharding = pipeline.batch_sharding(mesh)
  if todo:
    ds = pipeline.load_split(builder, split, per_host=False).take(num_clips)
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
        preemption.check(f"after chunk {c} of {num_chunks} (finished chunks are kept)")
  meter.close()
  multihost.sync("pose_pseudolabel_chunks_done")
  paths = sorted(glob.glob(os.path.join(out_dir, "chunks", "chunk_*.npz")))[:num_chunks]
  parts = [fileio.load_npz(p) for p in paths]
  labels = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  selection = filters_lib.select(labels, labels["clip_index"], labels["frame_index"], config.filters)
  masks = {f"mask_{k}": v for k, v in selection["masks"].items()}
  labels = dict(labels, keep=selection["keep"], **masks)
  settings = {"dataset": builder.info.full_name, "split": split, "teacher_workdir": config.teacher_workdir,
              "teacher_step": int(step), "teacher_cr": teacher_config.model.cr,
              "transforms": ",".join(t.name for t in transforms), "filters": config.filters.to_dict()}
  report = make_report(labels, selection, settings)
  md = markdown(report)
  if console.is_main_process():
    fileio.save_npz_atomic(os.path.join(out_dir, LABELS_FILE), labels)
    from input_pipeline import tfds_pseudo_pose  # pylint: disable=g-import-not-at-top
    frames_hw = tuple(builder.info.features["frames"].shape[1:3])
    tfds_pseudo_pose.build(out_dir, pipeline.load_split(builder, split, per_host=False).take(num_clips), labels,
                           frames_hw, selection["removed"])
    fileio.write_text_atomic(os.path.join(out_dir, "report.md"), md)
    fileio.write_text_atomic(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1))
    sheet = contact_sheet(builder, split, labels, selection, int(config.report.num_figures))
    if sheet is not None:
      viz.write_png(os.path.join(out_dir, "contact_sheet.png"), sheet)
  multihost.sync("pose_pseudolabel_written")
  console.say(md.rstrip())
  console.say(f"wrote {os.path.join(out_dir, LABELS_FILE)}, the TFDS dataset tfds/, report.md, report.json and "
              f"contact_sheet.png in {out_dir}")
  logging.info("pseudo-label report: %s", json.dumps(report)[:2000])
  return {"report": report, "labels": labels, "selection": selection}


# ---------------------------------------------------------------------------------------------------------
# The ablation runner (Tables 3-4, Fig. 9).

ABLATION_DIR = "semi_ablation"


def _pose_config(spec: str, **overrides):
  from handobj_jax.jobs import evaluate as cohesiv_eval_job  # pylint: disable=g-import-not-at-top
  config = cohesiv_eval_job.load_config_file(spec)
  config.update_from_flattened_dict(overrides)
  return config


def _parse_pairs(spec: str, what: str) -> dict[str, str]:
  out = {}
  for item in filter(None, (p.strip() for p in spec.split(";"))):
    key, eq, value = item.partition("=")
    if not eq or not key.strip() or not value.strip():
      raise jobs.JobInputError(f"{what} entry {item!r}: expected NAME=VALUE")
    out[key.strip()] = value.strip()
  return out


def _train_run(pose_config, run_dir: str) -> str:
  """Trains (or resumes, or finds finished) one pose_train run."""
  from handobj_jax.jobs import pose as pose_job  # pylint: disable=g-import-not-at-top
  pose_job.train(pose_config, run_dir)
  return run_dir


def ablation(config, workdir: str) -> dict[str, Any]:
  """Job `pose_semi_ablation`: supervised teachers with and without CR, their pseudo-labels of the unlabelled
  clips, retraining on labelled + pseudo-labelled data, the filter ablations and the pseudo-label fractions;
  every model evaluated on each `config.ablation.eval_data` test set; `report.md` / `report.json` shaped like
  Tables 3-4 and `fig9_fraction.png`. Every step resumes: finished runs are found, not redone."""
  from handobj_jax.jobs import pose as pose_job  # pylint: disable=g-import-not-at-top
  a = config.ablation
  os.makedirs(workdir, exist_ok=True)
  train_job.write_config(config, workdir, keys=())
  teachers = _parse_pairs(a.teachers, "config.ablation.teachers")
  fractions = [float(f) for f in str(a.fractions).split(",") if f.strip()]
  runs: dict[str, dict[str, Any]] = {}
  for name, cr in (("w/ CR", "o+"), ("w/o CR", "none")):
    key = "cr" if cr != "none" else "no_cr"
    sup_dir = teachers.get(name) or _train_run(_pose_config(a.pose_config, **{"model.cr": cr}),
                                                os.path.join(workdir, f"sup_{key}"))
    runs[f"sup-{name}"] = {"dir": os.path.abspath(sup_dir), "pseudo": 0}
    pseudo_dir = os.path.join(workdir, f"pseudo_{key}")
    pl_config = config.copy_and_resolve_references()
    pl_config.job = "pose_pseudolabel"
    pl_config.teacher_workdir = os.path.abspath(sup_dir)
    console.say(f"== pseudo-labels by the supervised model {name}")
    pseudolabel(pl_config, pseudo_dir)
    variants = [(f"semi-{name}", {})]
    if cr != "none":
      if a.filter_ablations:
        variants += [("w/o spatial", {"semi.use_spatial": False}), ("w/o temporal", {"semi.use_temporal": False})]
      variants += [(f"{int(round(100 * f))}%", {"semi.pseudo_fraction": f}) for f in fractions]
    for label, extra in variants:
      tag = label.replace("/", "").replace(" ", "_").replace("%", "pct").replace("-", "_")
      run_dir = os.path.join(workdir, f"semi_{key}_{tag}" if not label.startswith("semi-") else f"semi_{key}")
      console.say(f"== retraining: {label}")
      run_config = _pose_config(a.pose_config, **{"model.cr": cr, "semi.pseudo_workdir": pseudo_dir, **extra})
      _train_run(run_config, run_dir)
      choice = pose_job._pseudo_source(run_config, pose_job._open(run_config))  # pylint: disable=protected-access
      runs[label] = {"dir": run_dir, "pseudo": int(choice["used"])}
  # Evaluation of every run on every test set.
  from handobj_jax.jobs import evaluate as cohesiv_eval_job  # pylint: disable=g-import-not-at-top
  eval_sets = _parse_pairs(a.eval_data, "config.ablation.eval_data")
  results: dict[str, dict[str, Any]] = {}
  for set_name, builder_config in eval_sets.items():
    for label, run in runs.items():
      run_config = cohesiv_eval_job.config_for_workdir(run["dir"], None)
      run_config.data.builder_config = builder_config
      builder = pose_job._open(run_config)  # pylint: disable=protected-access
      row = pose_job.evaluate_workdir(run_config, run["dir"], builder, "test", run_config.eval, 0,
                                      label=f"{label} on {set_name}")
      results.setdefault(label, {})[set_name] = {k: v for k, v in row.items() if k not in ("figures", "faces")}
  report = {"runs": {k: dict(v, results=results.get(k, {})) for k, v in runs.items()},
            "eval_sets": eval_sets, "fractions": fractions}
  out_dir = os.path.join(workdir, ABLATION_DIR)
  from handobj_jax.evaluation import pose_eval  # pylint: disable=g-import-not-at-top
  md = ablation_markdown(report)
  fileio.write_text_atomic(os.path.join(out_dir, "report.md"), md)
  fileio.write_text_atomic(os.path.join(out_dir, "report.json"), json.dumps(pose_eval._jsonable(report), indent=1))  # pylint: disable=protected-access
  chart = fraction_chart(report)
  if chart is not None:
    viz.write_png(os.path.join(out_dir, "fig9_fraction.png"), chart)
  console.say(md.rstrip())
  console.say(f"wrote report.md, report.json and fig9_fraction.png in {out_dir}")
  return report


def _hand_cells(res: dict[str, Any]) -> list[str]:
  h = res["hand"]
  return [f"{h['joint_error_procrustes_mm']:.1f}", f"{h['mesh_error_procrustes_mm']:.1f}",
          f"{100 * h['fscore_5mm']:.1f}", f"{100 * h['fscore_15mm']:.1f}"]


def ablation_markdown(report: dict[str, Any]) -> str:
  runs, sets = report["runs"], list(report["eval_sets"])
  groups = sorted({g for r in runs.values() for s in r["results"].values()
                   for g in s["objects"]["cv"]["add_success"]})
  lines = ["# Semi-supervised learning on the synthetic domain shift (Tables 3-4, Fig. 9 shape)", "",
           "Hands: errors after Procrustes alignment (mm), F-scores (%); objects: ADD-0.1D (%) by OpenCV "
           "solvePnPRansac + EPnP. Test protocol of the pose evaluation (oracle boxes and root). Test sets: " +
           ", ".join(f"{k} = {v}" for k, v in report["eval_sets"].items()) + "."]
  for s in sets:
    lines += ["", f"## Table 3 shape, test set {s}", "",
              "| model | Joint | Mesh | F@5 | F@15 | " + " | ".join(groups) + " | ave |",
              "|---|---|---|---|---|" + "---|" * (len(groups) + 1)]
    for label in ("sup-w/o CR", "semi-w/o CR", "sup-w/ CR", "semi-w/ CR"):
      if label in runs and s in runs[label]["results"]:
        res = runs[label]["results"][s]
        o = res["objects"]["cv"]
        lines.append(f"| {label} | " + " | ".join(_hand_cells(res)) + " | " +
                     " | ".join(f"{o['add_success'][g]:.1f}" if g in o["add_success"] else "-" for g in groups) +
                     f" | {o['add_success_mean']:.1f} |")
    lines += ["", f"## Table 4 shape, test set {s}", "", "| model | pseudo-labels | Joint | Mesh | F@5 | F@15 |",
              "|---|---|---|---|---|---|"]
    for label, shown in (("sup-w/ CR", "sup"), ("w/o spatial", "w/o spatial"), ("w/o temporal", "w/o temporal"),
                         ("semi-w/ CR", "proposed")):
      if label in runs and s in runs[label]["results"]:
        lines.append(f"| {shown} | {runs[label]['pseudo']} | " + " | ".join(_hand_cells(runs[label]["results"][s]))
                     + " |")
    rows = _fraction_rows(report, s)
    if len(rows) > 2:
      lines += ["", f"## Fig. 9 shape, test set {s}: fraction of the pseudo-labels", "",
                "| fraction | pseudo-labels | Joint | Mesh | ADD-0.1D ave |", "|---|---|---|---|---|"]
      for frac, label in rows:
        res = runs[label]["results"][s]
        lines.append(f"| {100 * frac:.0f}% | {runs[label]['pseudo']} | {res['hand']['joint_error_procrustes_mm']:.1f} "
                     f"| {res['hand']['mesh_error_procrustes_mm']:.1f} | {res['objects']['cv']['add_success_mean']:.1f} |")
  lines += ["", "Runs: " + "; ".join(f"{k}: {v['dir']}" for k, v in runs.items()) + "."]
  return "\n".join(lines) + "\n"


def _fraction_rows(report: dict[str, Any], s: str) -> list[tuple[float, str]]:
  runs = report["runs"]
  rows = [(0.0, "sup-w/ CR")] + [(f, f"{int(round(100 * f))}%") for f in report["fractions"]] + [(1.0, "semi-w/ CR")]
  return [(f, label) for f, label in rows if label in runs and s in runs[label]["results"]]


def fraction_chart(report: dict[str, Any]) -> np.ndarray | None:
  """Fig. 9: Procrustes joint error and ADD-0.1D against the fraction of pseudo-labels, one panel per test set."""
  panels = []
  for s in report["eval_sets"]:
    rows = _fraction_rows(report, s)
    if len(rows) < 2:
      continue
    xs = [100 * f for f, _ in rows]
    res = [report["runs"][label]["results"][s] for _, label in rows]
    panels.append(viz.line_chart(xs, {"joint error (mm, PA)": [r["hand"]["joint_error_procrustes_mm"] for r in res]},
                                 title=f"hand, {s}", xlabel="% of pseudo-labels"))
    panels.append(viz.line_chart(xs, {"ADD-0.1D (%)": [r["objects"]["cv"]["add_success_mean"] for r in res]},
                                 title=f"object, {s}", xlabel="% of pseudo-labels"))
  return viz.grid(panels, cols=2) if panels else None
