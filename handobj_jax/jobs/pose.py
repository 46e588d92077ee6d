r"""Jobs `pose_train` and `pose_eval`: the Semi-Hand-Object pose network (Sec. 4, 6.1-6.5.1).

  python -m handobj_jax.main --config=configs/handobj_pose.py[:variant] --workdir=DIR
  python -m handobj_jax.main --config=configs/handobj_pose.py[:variant] --config.job=pose_eval --workdir=DIR

`pose_train`: builds or opens `config.data` (the synthetic 3D world by default), trains
`tasks.pose_task.HandObjectPoseTask` with the shared trainer (Adam, step decay, checkpoints with auto-resume,
validation losses and errors at every epoch end, Fig. 6 style PNGs in `<workdir>/images`), and writes
`<workdir>/config.json` (checked against the checkpoints first) for the evaluation.

`pose_eval`: restores the best-validation checkpoint (the latest when none is marked best) and runs the test
split without augmentation. Test protocol (the released supervised code's, stated in the report): the hand
box (projected mesh), the object box (projected control points) and the hand's root joint come from the
ground truth. Hands: the predicted root-relative joints and vertices plus the true root, scored with
`evaluation.ho3d.ho3d_hand_report` (Procrustes-aligned, scale-translation aligned and unaligned errors, AUCs,
F@5 / F@15). Objects: votes by the HO-3D rule (`geometry.pnp.select_votes`: up to 10 per control point,
confidence > 0.5), mapped back to full-image pixels, then PnP with the image's intrinsics by both solvers:
OpenCV's solvePnPRansac with EPnP on the host (the protocol's) and the batched device solver
(`geometry.pnp.solve_pnp`); ADD-0.1D and REP-5 per object shape and their mean
(`evaluation.ho3d.object_pose_report`). Writes `<workdir>/pose_eval/report.md`, `report.json`, and PNGs in
`pose_eval/figures/`: Fig. 6 style (predicted mesh and object box drawn on the image) and Fig. 7 style (the
CR module's attention of object query cells over the hand-object intersection box).
`config.eval.compare` ('LABEL=WORKDIR;...') adds rows for other trained workdirs (e.g. the CR ablation of
Table 2), each evaluated with its own config.json on the same test split.

Real data: with hand ground truth the report also lists the official HO-3D evaluation's numbers under their
names, and `scores.txt` holds them in the official layout. On HO-3D's `evaluation` split (given hand box and
root, no hand ground truth unless the released annotations are present) the job writes the CodaLab submission
(`pred.json`, `pred.zip`) and checks it by reading it back (`evaluation.ho3d_submission`). `config.eval.dataset`
evaluates on another dataset (FreiHAND, FPHA: Table 5); frames without an object get no object metrics. Outputs
go to `<workdir>/pose_eval/` for the test split of the training data, else `pose_eval_<dataset>_<split>/`.
Several processes: see `evaluate_workdir`; process 0 writes every file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from handobj_jax import console
from handobj_jax import jobs
from handobj_jax import multihost
from handobj_jax import preemption
from handobj_jax.evaluation import ho3d
from handobj_jax.evaluation import pose_eval
from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import pnp
from handobj_jax.jobs import train as train_job
from handobj_jax.tasks import pose_task
from handobj_jax.train import trainer
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import pose_data

EVAL_DIR = "pose_eval"


def validation_split(config) -> str:
  """The split validated on during training: 'validation', or config.data.validation_split (FPHA has none: the
  published protocols train on its train split and report on test)."""
  return config.data.get("validation_split", "") or "validation"


def _open(config, data=None, splits=None):
  """The builder of `data` (default config.data), checked to have `splits` (default: train, the validation split
  and test); HO-3D and FPHA get the MANO file."""
  if splits is None:
    splits = ("train", validation_split(config), "test")
  builder = datasets.get_builder(data if data is not None else config.data, config.mano.get("model_path") or None)
  for split in splits:
    if split not in builder.info.splits:
      raise pipeline.DataError(f"dataset {builder.info.full_name} has no split {split!r} (it has "
                               f"{sorted(builder.info.splits)})")
  return builder


def eval_data(config):
  """The dataset the eval job reads: config.data, or another one named by config.eval.dataset (a trained model
  evaluated on FPHA or FreiHAND, Table 5), with config.eval.manual_dir / builder_config."""
  s = config.eval
  if not s.get("dataset"):
    return config.data
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.name = s.dataset
    data.manual_dir = s.get("manual_dir", "") or config.data.manual_dir
    data.builder_config = s.get("builder_config", "") or "default"
  return data


def _source(builder, split: str) -> pipeline.DataSource:
  return pipeline.DataSource(builder, split, f"delete {builder.data_dir} and rerun to rebuild it")


def _eval_batches(builder, split: str, batch_size: int, mesh):
  ds = pipeline.load_split(builder, split).map(pose_data.hand_only()).map(
      pose_data.select(pose_data.TRAIN_FIELDS, pose_data.OPTIONAL_FIELDS))
  steps = pipeline.eval_num_batches(builder, split, batch_size)
  return pipeline.global_batches(pipeline.eval_dataset(ds, batch_size=batch_size, num_batches=steps), mesh,
                                 source=_source(builder, split))


def _with_object_weight(weight: float):
  def fn(example):
    return {**example, "object_weight": tf.constant(weight, tf.float32)}
  return fn


def _pseudo_source(config, builder) -> dict[str, Any] | None:
  """The pseudo-labelled examples of `config.semi.pseudo_workdir` (Sec. 5.2), or None without one."""
  semi = config.get("semi")
  if semi is None or not semi.pseudo_workdir:
    return None
  from handobj_jax.jobs import evaluate as cohesiv_eval_job  # pylint: disable=g-import-not-at-top
  from input_pipeline import pseudo_pose  # pylint: disable=g-import-not-at-top
  pseudo_dir = os.path.abspath(os.path.expanduser(semi.pseudo_workdir))
  pseudo_config = cohesiv_eval_job.config_for_workdir(pseudo_dir, None)
  if pseudo_config.get("job") != "pose_pseudolabel":
    raise jobs.JobInputError(f"config.semi.pseudo_workdir={pseudo_dir} holds a {pseudo_config.get('job')!r} "
                             "run; expected a pose_pseudolabel workdir (configs/handobj_pose_semi.py)")
  labels = pseudo_pose.load_labels(pseudo_dir)
  video = datasets.get_builder(pseudo_config.data)
  hw = tuple(video.info.features["frames"].shape[1:3])
  image_hw = tuple(builder.info.features["image"].shape[:2])
  if hw != image_hw:
    raise jobs.JobInputError(f"pseudo-labelled frames of {video.info.full_name} are {hw[0]}x{hw[1]} but "
                             f"{builder.info.full_name}'s images are {image_hw[0]}x{image_hw[1]}; batches need "
                             "one image size")
  try:
    choice = pseudo_pose.choose_frames(labels, pseudo_config.filters, use_spatial=semi.use_spatial,
                                       use_temporal=semi.use_temporal, fraction=float(semi.pseudo_fraction),
                                       seed=config.seed)
  except ValueError as e:
    raise jobs.JobInputError(str(e)) from None
  if not choice["used"]:
    raise jobs.JobInputError(f"{pseudo_dir}: no pseudo-labelled frame passes the filters; nothing to add")
  from input_pipeline import tfds_pseudo_pose  # pylint: disable=g-import-not-at-top
  from handobj_jax.jobs import pose_semi  # pylint: disable=g-import-not-at-top
  pseudo_builder = tfds_pseudo_pose.open_dataset(os.path.join(pseudo_dir, pose_semi.OUT_DIR))
  ds = pseudo_pose.training_examples(pipeline.load_split(pseudo_builder, "train"), choice["indices"],
                                     len(labels["clip_index"]), hw)
  num_labelled = builder.info.splits["train"].num_examples
  ratio = float(semi.pseudo_ratio)
  if ratio < 0:  # The union of the two sets (Sec. 5.2): each example equally likely.
    ratio = choice["used"] / (choice["used"] + num_labelled)
  if not 0.0 < ratio < 1.0:
    raise jobs.JobInputError(f"config.semi.pseudo_ratio={semi.pseudo_ratio}: must lie in (0, 1), or < 0 for "
                             "the union's proportion")
  return dict(choice, dataset=ds, ratio=ratio, source=f"{video.info.full_name}/{pseudo_config.data.split}",
              use_spatial=bool(semi.use_spatial), use_temporal=bool(semi.use_temporal),
              fraction=float(semi.pseudo_fraction))


def train(config, workdir: str) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  train_job.write_config(config, workdir, keys=("model", "mano"))
  builder = _open(config)
  mesh = pipeline.make_data_mesh()
  host_bs = pipeline.host_batch_size(config.batch_size, mesh)
  num_train, steps_per_epoch = train_job.check_training_inputs(config, builder)
  task = pose_task.HandObjectPoseTask(config)

  pseudo = _pseudo_source(config, builder)

  def train_batches(start_step: int):
    global_order = bool(config.data.get("global_order", False)) and pseudo is None
    ds = pipeline.load_split(builder, "train", seed=config.seed, per_host=not global_order)
    if pseudo is None:
      ds = pipeline.train_dataset(ds, batch_size=host_bs, seed=config.seed,
                                  preprocess=pose_data.select(pose_data.TRAIN_FIELDS),
                                  shuffle_buffer=config.data.shuffle_buffer, start_step=start_step,
                                  cache=config.data.cache, global_order=global_order)
    else:
      labelled = ds.map(pose_data.select(pose_data.TRAIN_FIELDS)).map(_with_object_weight(1.0))
      mixed = pipeline.mix_datasets([labelled, pseudo["dataset"]], [1.0 - pseudo["ratio"], pseudo["ratio"]],
                                    seed=config.seed, shuffle_buffer=config.data.shuffle_buffer,
                                    cache=config.data.cache, start=start_step * host_bs)
      ds = pipeline.train_dataset(mixed, batch_size=host_bs, seed=config.seed, cache=False)
    return pipeline.global_batches(ds, mesh, source=_source(builder, "train"))

  def eval_batches():
    return _eval_batches(builder, validation_split(config), host_bs, mesh)

  console.say(f"training the hand-object pose network ({config.model.trunk} FPN, CR {config.model.cr!r}, "
              f"{config.model.image_size}x{config.model.image_size} crops) on {builder.info.full_name}: "
              f"{num_train} train examples, {steps_per_epoch} steps/epoch, global batch {config.batch_size} "
              f"over {mesh.devices.size} device(s)")
  if pseudo is not None:
    console.say(f"  + {pseudo['used']} pseudo-labelled frames of {pseudo['source']} ({pseudo['kept']} kept by the "
                f"filters{'' if pseudo['use_spatial'] else ', spatial filters off'}"
                f"{'' if pseudo['use_temporal'] else ', temporal filters off'}; fraction "
                f"{pseudo['fraction']:g}; {pseudo['left_skipped']} left-hand frames not used), "
                f"{100 * pseudo['ratio']:.0f}% of each batch (to within one example), object loss masked on them "
                "(Eq. 8)")
  result = trainer.fit(task, config, workdir, mesh=mesh, train_batches=train_batches,
                       eval_batches=eval_batches, steps_per_epoch=steps_per_epoch,
                       example_batch=next(eval_batches()))
  if result.preempted:
    raise preemption.StopRequested(preemption.requested() or 15, f"at step {result.step} (checkpoint saved)")
  metrics = dict(result.val_metrics)
  if not metrics:  # No epoch ended: evaluate the last state now.
    state, _ = train_job.restore_state(task, config, workdir, mesh, next(eval_batches()), best=False)
    metrics, _ = trainer.evaluate(trainer.make_eval_step(task, mesh), state, eval_batches())
  shown = ("loss", "joint_err_mm", "pa_joint_err_mm", "ctrl_err_px")
  console.say(f"final validation (step {result.step}, epoch {result.epoch}): " +
              ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics))
  console.say(f"outputs in {workdir}: checkpoints/, tensorboard/, images/, {train_job.CONFIG_FILE}, "
              f"{console.LOG_FILE}; next: --config.job=pose_eval")
  return {"fit": result, "val_metrics": metrics, "steps_per_epoch": steps_per_epoch}


# ---------------------------------------------------------------------------------------------------------
# Evaluation.


def _device_pnp(obj_points, obj_conf, affine, k_img, ctrl_obj, num_votes: int, threshold: float):
  """The device solver on one batch: votes (HO-3D rule) -> full-image pixels -> robust PnP."""
  b, s, _, n, _ = obj_points.shape
  votes, valid = pnp.select_votes(obj_points.reshape(b, s * s, n, 2), obj_conf.reshape(b, s * s, n),
                                  num_votes=num_votes, threshold=threshold)            # [B,N,V,2], [B,N,V]
  votes_img = pnp.crop_to_image(votes.reshape(b, n * num_votes, 2), affine)
  pts3d = jnp.repeat(ctrl_obj, num_votes, axis=1)                                        # [B, N*V, 3]
  result = pnp.solve_pnp(pts3d, votes_img, valid.reshape(b, -1).astype(jnp.float32), k_img)
  return result.rotation, result.translation, result.ok, votes_img.reshape(b, n, num_votes, 2), valid


def _host_eval_batches(builder, split: str, batch_size: int, mesh, total: int):
  """This process's contiguous block of the first `total` examples of `split` (`pipeline.host_block`), padded
  so that every process runs the same number of global batches."""
  block, _, longest = pipeline.host_block(split, total)
  ds = pipeline.load_split(builder, block, per_host=False).map(pose_data.hand_only()).map(
      pose_data.select(pose_data.EVAL_FIELDS, pose_data.OPTIONAL_FIELDS))
  steps = -(-longest // batch_size)
  return pipeline.global_batches(pipeline.eval_dataset(ds, batch_size=batch_size, num_batches=steps), mesh,
                                 source=_source(builder, split))


def evaluate_workdir(config, workdir: str, builder, split: str, settings, num_figures: int = 0,
                     label: str = "") -> dict[str, Any]:
  """Predictions and metrics of one trained workdir on `split` (see the module docstring).

  With several processes each runs its block of the split (`pipeline.host_block`) through the network and
  the device PnP, the per-image results are gathered in split order (`multihost.concat_examples`), and every
  process scores the whole split as a 1-process run would; the figures come from process 0's first images,
  which are the split's first."""
  mesh = pipeline.make_data_mesh()
  task = pose_task.HandObjectPoseTask(config)
  batch_size = int(settings.batch_size)
  host_bs = pipeline.host_batch_size(batch_size, mesh)
  total = builder.info.splits[split].num_examples
  if settings.max_images:
    total = min(total, int(settings.max_images))
  example = next(_host_eval_batches(builder, split, host_bs, mesh, total))
  state, step = train_job.restore_state(task, config, workdir, mesh, example)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # Batch-sharded outputs: each process then reads its own rows (`pipeline.host_local`).
  predict = jax.jit(task.predict, out_shardings=pipeline.batch_sharding(mesh))
  device_pnp = jax.jit(_device_pnp, static_argnums=(5, 6))
  features = builder.info.features
  names = features["obj_type"].names if "obj_type" in features else ("none",)  # Hand-only data: FreiHAND.
  chunks: list[dict[str, np.ndarray]] = []
  figures_in: list[dict[str, np.ndarray]] = []
  meter = console.Progress(total, f"pose eval {label or split}", unit="image")
  for batch in _host_eval_batches(builder, split, host_bs, mesh, total):
    preemption.check(f"while evaluating {split} (nothing written yet)")
    o = pipeline.host_local(predict(variables, batch), mesh)
    b = pipeline.host_local(batch, mesh)
    ctrl_obj = np.einsum("bji,bpj->bpi", b["obj_rot"], b["obj_ctrl3d"] - b["obj_trans"][:, None])
    # The device solver runs on one device: its eigh calls must not run concurrently on several CPU
    # devices (jaxlib 0.10's LAPACK kernels can deadlock; see geometry/small_linalg.py).
    args = jax.device_put((o["obj_points"], o["obj_confidence"], o["affine"], b["K"], ctrl_obj),
                          jax.local_devices()[0])
    rot_d, trans_d, ok_d, votes_img, vote_valid = jax.device_get(
        device_pnp(*args, int(settings.num_votes), float(settings.vote_threshold)))
    keep = np.flatnonzero(np.asarray(b[pipeline.MASK_KEY], bool))
    n = b["K"].shape[0]
    joints2d_img = np.stack([np.asarray(crop_lib.apply_affine(crop_lib.invert_affine(o["affine"][i]),
                                                              o["joints2d_pred"][i])) for i in range(n)])
    # What the scoring needs per image (compact: no images or heatmaps), gathered across processes below.
    rows = {"joints3d": o["joints3d"], "verts3d": o["verts3d"], "gt_joints3d": o["gt_joints3d"],
            "gt_verts3d": o["gt_verts3d"], "joints2d_pred": joints2d_img, "joints2d": b["joints2d"],
            "has_hand": np.asarray(b.get("has_hand_gt", np.ones(n, bool)), bool),
            "has_obj": np.asarray(b.get("has_object_gt", np.ones(n, bool)), bool),
            "index": np.asarray(b["index"], np.int64) if "index" in b else np.full(n, -1, np.int64),
            "ctrl_obj": ctrl_obj, "votes": votes_img, "vote_valid": vote_valid, "rot_d": rot_d,
            "trans_d": trans_d, "ok_d": ok_d, "K": b["K"], "obj_rot": b["obj_rot"], "obj_trans": b["obj_trans"],
            "obj_points3d": b["obj_points3d"],
            "obj_type": np.asarray(b["obj_type"], np.int64) if "obj_type" in b else np.zeros(n, np.int64)}
    chunks.append({k: np.asarray(v)[keep] for k, v in rows.items()})
    for i in keep:
      if console.is_main_process() and len(figures_in) < num_figures:  # Process 0 holds the first images.
        fig = {k: np.asarray(v[i]) for k, v in o.items()}
        fig.update(rot_gt=b["obj_rot"][i], t_gt=b["obj_trans"][i], ctrl_obj=ctrl_obj[i], K_image=b["K"][i],
                   has_object=bool(rows["has_obj"][i]), has_hand=bool(rows["has_hand"][i]))
        figures_in.append(fig)
    meter.advance(len(keep))
  meter.close()
  r = multihost.concat_examples({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})
  if np.all(r["index"] < 0):  # No list index: the split's own order (the submission needs every frame in list order).
    r["index"] = np.arange(len(r["index"]), dtype=np.int64)
  acc: dict[str, list] = {}
  for i in range(len(r["index"])):
    for key, value in (("all_joints", r["joints3d"][i]), ("all_verts", r["verts3d"][i]),
                       ("all_root", r["gt_joints3d"][i][0]), ("all_index", int(r["index"][i]))):
      acc.setdefault(key, []).append(value)
    if r["has_hand"][i]:
      rows = {"pred_joints": r["joints3d"][i], "pred_verts": r["verts3d"][i], "gt_joints": r["gt_joints3d"][i],
              "gt_verts": r["gt_verts3d"][i],
              "j2d_err_px": float(np.mean(np.linalg.norm(r["joints2d_pred"][i] - r["joints2d"][i], axis=-1)))}
      for key, value in rows.items():
        acc.setdefault(key, []).append(value)
    if r["has_obj"][i]:
      rot_cv, trans_cv, ok_cv = pnp.solve_pnp_opencv(r["ctrl_obj"][i], r["votes"][i], r["vote_valid"][i],
                                                     r["K"][i])
      rows = {"rot_gt": r["obj_rot"][i], "t_gt": r["obj_trans"][i], "rot_cv": rot_cv, "t_cv": trans_cv,
              "ok_cv": ok_cv, "rot_dev": r["rot_d"][i], "t_dev": r["trans_d"][i], "ok_dev": r["ok_d"][i],
              "points": r["obj_points3d"][i], "K": r["K"][i], "group": names[int(r["obj_type"][i])],
              "num_votes": int(r["vote_valid"][i].sum())}
      for key, value in rows.items():
        acc.setdefault(key, []).append(value)
      if i < len(figures_in):
        figures_in[i].update(rot_pred=rot_cv, t_pred=trans_cv)
  for fig in figures_in:
    if "rot_pred" not in fig:
      fig.update(rot_pred=np.eye(3), t_pred=np.array([0.0, 0.0, 1.0]))
  if not acc:
    raise jobs.JobInputError(f"split {split!r} of {builder.info.full_name} has no examples")
  stack = {k: (np.stack(v) if k != "group" else v) for k, v in acc.items()}
  hand = objects = None
  if "pred_joints" in stack:
    hand = ho3d.ho3d_hand_report(stack["pred_joints"], stack["pred_verts"], stack["gt_joints"], stack["gt_verts"])
    hand["joints2d_error_px"] = float(np.mean(stack["j2d_err_px"]))
    hand["official"] = ho3d.official_scores(stack["pred_joints"], stack["pred_verts"], stack["gt_joints"],
                                            stack["gt_verts"])
  if "rot_gt" in stack:
    objects = {}
    for solver in ("cv", "dev"):
      objects[solver] = ho3d.object_pose_report(stack["rot_gt"], stack["t_gt"], stack[f"rot_{solver}"],
                                                stack[f"t_{solver}"], list(stack["points"]), stack["K"],
                                                stack["group"])
      objects[solver]["pnp_ok_percent"] = 100.0 * float(np.mean(stack[f"ok_{solver}"]))
  order = np.argsort(stack["all_index"], kind="stable")
  predictions = {"joints": stack["all_joints"][order], "verts": stack["all_verts"][order],
                 "root": stack["all_root"][order], "index": stack["all_index"][order]}
  return {"label": label, "workdir": workdir, "step": int(step), "cr": config.model.cr, "hand": hand,
          "objects": objects, "num_images": int(len(order)),
          "num_hand_gt": int(len(stack.get("pred_joints", ()))), "num_object_gt": int(len(stack.get("group", ()))),
          "mean_votes": float(np.mean(stack["num_votes"])) if "num_votes" in stack else float("nan"),
          "figures": figures_in, "predictions": predictions, "faces": np.asarray(task.mano_model.faces)}


def _parse_compare(spec: str) -> list[tuple[str, str]]:
  rows = []
  for item in filter(None, (p.strip() for p in spec.split(";"))):
    label, eq, path = item.partition("=")
    if not eq or not label.strip() or not path.strip():
      raise jobs.JobInputError(f"config.eval.compare entry {item!r}: expected LABEL=WORKDIR")
    rows.append((label.strip(), os.path.abspath(os.path.expanduser(path.strip()))))
  return rows


def write_submission_files(out_dir: str, row: dict[str, Any], builder, split: str, settings) -> dict[str, Any]:
  """HO-3D's pred.json / pred.zip from an evaluated row of the official evaluation split, checked by reading it
  back (count = the split's frames = evaluation.txt's lines, shapes, OpenGL frame, order by the given roots)."""
  from handobj_jax.evaluation import ho3d_submission  # pylint: disable=g-import-not-at-top
  expected = builder.info.splits[split].num_examples
  p = row["predictions"]
  if settings.max_images or len(p["index"]) != expected or not np.array_equal(p["index"], np.arange(expected)):
    raise jobs.JobInputError(f"a submission needs every frame of {builder.info.full_name}/{split} ({expected}); "
                             f"this evaluation has {len(p['index'])} (config.eval.max_images="
                             f"{settings.max_images}): rerun with config.eval.max_images=0")
  json_path, zip_path = ho3d_submission.write_submission(out_dir, p["joints"], p["verts"])
  summary = ho3d_submission.check_submission(zip_path, expected, roots_cv=p["root"])
  return {"json": json_path, "zip": zip_path, **summary}


def evaluate(config, workdir: str) -> dict[str, Any]:
  from handobj_jax.jobs import evaluate as cohesiv_eval_job  # pylint: disable=g-import-not-at-top
  from handobj_jax.evaluation import pose_figures  # pylint: disable=g-import-not-at-top

  s = config.eval
  data = eval_data(config)
  builder = _open(config, data, splits=(s.split,))
  rows = [evaluate_workdir(config, workdir, builder, s.split, s, int(s.num_figures),
                           label=s.label or f"this run (CR {config.model.cr})")]
  for label, other in _parse_compare(s.compare):
    other_config = cohesiv_eval_job.config_for_workdir(other, None)
    if other_config.data.to_dict() != config.data.to_dict():
      raise jobs.JobInputError(f"config.eval.compare row {label!r}: {other}'s config.data differs from this "
                               "run's; rows must be evaluated on the same split")
    rows.append(evaluate_workdir(other_config, other, builder, s.split, s, 0, label=label))
  # pose_eval/ for the test split of the training data; other datasets and splits get their own folder.
  suffix = [x for x in (s.get("dataset", ""), "" if s.split == "test" else s.split) if x]
  out_dir = os.path.join(workdir, "_".join([EVAL_DIR] + suffix))
  submission = None
  if data.name == "ho3d" and s.split == "evaluation" and jax.process_index() == 0:
    submission = write_submission_files(out_dir, rows[0], builder, s.split, s)
  report = pose_eval.make_report(rows, dataset=builder.info.full_name, split=s.split, settings=s)
  if submission is not None:
    report["submission"] = {k: v for k, v in submission.items() if k != "path"}
  md_path, json_path = pose_eval.write_report(out_dir, report)
  written = [md_path, json_path]
  if rows[0]["hand"] is not None and jax.process_index() == 0:  # The official evaluation's own file.
    from handobj_jax import fileio  # pylint: disable=g-import-not-at-top
    written.append(fileio.write_text_atomic(os.path.join(out_dir, "scores.txt"),
                                            ho3d.scores_txt(rows[0]["hand"]["official"])))
  fig_paths = []
  if jax.process_index() == 0:
    fig_paths = pose_figures.write_eval_figures(os.path.join(out_dir, "figures"), rows[0]["figures"],
                                                rows[0]["faces"])
  multihost.sync("pose_eval_written")  # Nothing reads the files before process 0 has written them.
  console.say(pose_eval.markdown(report).rstrip())
  if submission is not None:
    console.say(f"wrote the HO-3D submission {submission['zip']} ({submission['count']} frames, checked: shapes, "
                "OpenGL frame, evaluation.txt order); upload it to the HO-3D CodaLab challenge of your version")
  console.say(f"wrote {', '.join(written)} and {len(fig_paths)} figures in {os.path.join(out_dir, 'figures')}")
  logging.info("pose eval report: %s", json.dumps(report)[:2000])
  return {"report": report, "report_md": md_path, "report_json": json_path, "figures": fig_paths,
          "submission": submission, "out_dir": out_dir}
