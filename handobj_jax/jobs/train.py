"""Job `train`: train COHESIV on pseudo-labelled frames, then save the statistics inference needs.

  python -m handobj_jax.main --config=configs/cohesiv.py[:variant] --workdir=DIR

Steps:
  1. Data: `jobs.pseudolabel.ensure_pseudolabelled(config, data_dir)` builds (first use, resumable) or opens
     the pseudo-labelled examples of `config.data` (see notes: one example = one middle frame).
  2. tf.data: training = the train split, cached, shuffled with `config.seed`, the configured train
     preprocessing (decode; flips happen in the step), batched per host, made global and sharded on the batch
     axis over every device (`config.batch_size` must divide the device count's multiple); validation = one
     padded pass (`_mask`). One epoch = floor(train examples / batch size) steps.
  3. `trainer.fit` (AdamW, halve the lr after `lr_patience` epochs without a validation improvement, stop
     after `stop_patience`, checkpoints with auto-resume).
  4. Prints the final validation losses and writes `<workdir>/inference_stats.npz` (+ `.json`): the mean
     person / object / background embeddings Z over the pseudo-label pixels of training images (paper
     Sec. 3.2 "Inference": "average 500 embeddings ... wherever our pseudo-labels are 'object'"), computed
     with the best-validation checkpoint (the latest when no epoch finished). Images are read in split
     order, unflipped, until each of person and object has >= `config.inference_stats.min_pixels` pixels
     and at least `config.inference_stats.min_images` images were seen.

npz keys: person_embedding, object_embedding, background_embedding [F] float32 (raw means, not normalised;
inference uses cosine similarity), pixel_counts [3] int64 (person, object, background), num_images,
checkpoint_step, embed_dim (int64 scalars).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from handobj_jax import console
from handobj_jax import fileio
from handobj_jax import jobs
from handobj_jax import preemption
from handobj_jax.tasks import cohesiv_task
from handobj_jax.train import checkpoint as ckpt_lib
from handobj_jax.train import trainer
from input_pipeline import pipeline

# Features the task reads; everything else in an example (flow, ground truth, ids) is dropped before
# caching and batching.
TRAIN_FIELDS = ("image", "responsibility", "query_point", "query_valid", "hand_box", "person_mask",
                "object_mask", "background_mask")
STATS_FILE = "inference_stats.npz"
STATS_ORDER = ("person", "object", "background")

# config.data.name of the real video datasets -> what the user must provide.
REAL_DATASETS = {
    "epic_kitchens": "EPIC-KITCHENS (videos + action segments)",
    "doh100": "100 Days of Hands ('make drinks' / 'make food' videos)",
    "ho3d": "HO-3D (v2/v3 sequences)",
}


CONFIG_FILE = "config.json"


def run(config, workdir: str) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  return train_and_evaluate(config, workdir, open_pseudolabelled(config))


def _has_checkpoints(workdir: str) -> bool:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))


def write_config(config, workdir: str, keys: tuple[str, ...] = ("model",)) -> str:
  """Writes `<workdir>/config.json` (eval and predict rebuild the network from it), after checking that a
  workdir which already holds checkpoints was trained with the same `keys` blocks: a different model config
  is refused before anything is overwritten."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if os.path.isfile(path) and _has_checkpoints(workdir):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise jobs.JobInputError(f"{path} is unreadable ({e}) but {workdir}/checkpoints exists: restore the "
                               "file or use another --workdir") from None
    for key in keys:
      if old.get(key) != new.get(key):
        diff = _first_difference(old.get(key), new.get(key), key)
        raise jobs.JobInputError(f"{workdir} holds checkpoints of a different config ({diff}); use another "
                                 "--workdir, or the config it was trained with")
  if jax.process_index() == 0:
    fileio.write_text_atomic(path, config.to_json_best_effort(indent=2))
  return path


def _first_difference(old: Any, new: Any, prefix: str) -> str:
  if isinstance(old, dict) and isinstance(new, dict):
    for k in sorted(set(old) | set(new)):
      if old.get(k) != new.get(k):
        return _first_difference(old.get(k), new.get(k), f"{prefix}.{k}")
  return f"config.{prefix}: {old!r} there, {new!r} now"


def open_pseudolabelled(config):
  """The pseudo-labelled TFDS builder for `config.data` (built on first use); bad input -> an InputError."""
  name = config.data.name
  if name in REAL_DATASETS and not config.data.manual_dir:
    raise jobs.JobInputError(
        f"config.data.name={name!r}: the builder for {REAL_DATASETS[name]} reads the user's downloaded "
        "copy from config.data.manual_dir, which is empty; download the dataset and pass "
        "--config.data.manual_dir=DIR (note: the real-video builders are future work; the synthetic "
        "world, config.data.name='synthetic_handobj', works out of the box)")
  try:
    from handobj_jax.jobs import pseudolabel  # pylint: disable=g-import-not-at-top
    return pseudolabel.ensure_pseudolabelled(config, pipeline.resolve_data_dir(config.data.data_dir))
  except pipeline.DataError as e:
    extra = (f" (the {REAL_DATASETS[name]} builder reading config.data.manual_dir is future work)"
             if name in REAL_DATASETS else "")
    raise jobs.JobInputError(f"{e}{extra}") from None


def data_source(builder, split: str) -> pipeline.DataSource:
  """Names the damaged file (and how to rebuild it) if reading `split` of the pseudo-labels fails."""
  from input_pipeline import cohesiv_examples  # pylint: disable=g-import-not-at-top
  return pipeline.DataSource(builder, split, cohesiv_examples.rebuild_hint(os.fspath(builder.data_dir)))


def select_fields(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  missing = [k for k in TRAIN_FIELDS if k not in example]
  if missing:
    raise pipeline.DataError(f"pseudo-labelled examples lack the field(s) {missing}; they have "
                             f"{sorted(example)}")
  return {k: example[k] for k in TRAIN_FIELDS}


def train_preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Decode (float32 image and responsibility in [0, 1]) and keep the task's fields. The flip
  augmentation is done in the jitted step (see `tasks.cohesiv_task`), where it replays on resume."""
  from input_pipeline import cohesiv_examples  # pylint: disable=g-import-not-at-top
  return select_fields(cohesiv_examples.train_preprocess(example, flip_prob=0.0))


def check_training_inputs(config, builder) -> tuple[int, int]:
  """(train examples, steps per epoch); fails in one line on a split smaller than a batch or a missing
  pretrained-weights file, before anything is compiled."""
  num_train = builder.info.splits["train"].num_examples
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise jobs.JobInputError(f"the train split has {num_train} examples, fewer than one batch "
                             f"(config.batch_size={config.batch_size})")
  if config.model.pretrained and not os.path.exists(config.model.pretrained):
    raise jobs.JobInputError(f"config.model.pretrained={config.model.pretrained!r} does not exist")
  return num_train, steps_per_epoch


def train_and_evaluate(config, workdir: str, builder) -> dict[str, Any]:
  """Trains on `builder`'s train split, validates on 'validation', writes the inference statistics."""
  mesh = pipeline.make_data_mesh()
  try:
    host_bs = pipeline.host_batch_size(config.batch_size, mesh)
    for split in ("train", "validation"):
      pipeline.load_split(builder, split)  # Fails early, naming the split, if one is missing.
  except pipeline.DataError as e:
    raise jobs.JobInputError(str(e)) from None
  num_train, steps_per_epoch = check_training_inputs(config, builder)

  def train_batches(start_step: int):
    global_order = bool(config.data.get("global_order", False))
    ds = pipeline.load_split(builder, "train", seed=config.seed, per_host=not global_order)
    ds = pipeline.train_dataset(ds, batch_size=host_bs, seed=config.seed, preprocess=train_preprocess,
                                shuffle_buffer=config.data.shuffle_buffer, start_step=start_step,
                                cache=config.data.cache, global_order=global_order)
    return pipeline.global_batches(ds, mesh, source=data_source(builder, "train"))

  def eval_batches(split: str = "validation"):
    global_order = bool(config.data.get("global_order", False))
    ds = pipeline.load_split(builder, split, per_host=not global_order).map(select_fields)
    steps = pipeline.eval_num_batches(builder, split, host_bs, global_order)
    return pipeline.global_batches(pipeline.eval_dataset(ds, batch_size=host_bs, num_batches=steps,
                                                         global_order=global_order), mesh,
                                   source=data_source(builder, split))

  example_batch = next(eval_batches())
  task = cohesiv_task.CohesivTask(config)
  console.say(f"training {config.model.encoder} COHESIV on {builder.info.full_name}: {num_train} train "
              f"examples, {steps_per_epoch} steps/epoch, global batch {config.batch_size} over "
              f"{mesh.devices.size} device(s)")
  result = trainer.fit(task, config, workdir, mesh=mesh, train_batches=train_batches,
                       eval_batches=eval_batches, steps_per_epoch=steps_per_epoch,
                       example_batch=example_batch)
  if result.preempted:
    raise preemption.StopRequested(preemption.requested() or 15, f"at step {result.step} (checkpoint saved)")

  state, ckpt_step = restore_state(task, config, workdir, mesh, example_batch)
  val_metrics = dict(result.val_metrics)
  if not val_metrics:  # No epoch ended (e.g. a few-step smoke run): evaluate the last state now.
    last, _ = restore_state(task, config, workdir, mesh, example_batch, best=False)
    val_metrics, _ = trainer.evaluate(trainer.make_eval_step(task, mesh), last, eval_batches())
  console.say(f"final validation losses (step {result.step}, epoch {result.epoch}): " +
              ", ".join(f"{k} {v:.4f}" for k, v in sorted(val_metrics.items())))

  stats = inference_stats(task, state, mesh, eval_batches("train"), config.inference_stats.min_pixels,
                          config.inference_stats.min_images)
  stats["checkpoint_step"] = np.int64(ckpt_step)
  path = save_inference_stats(workdir, stats)
  console.say(f"inference statistics (checkpoint step {ckpt_step}, {int(stats['num_images'])} images, "
              f"pixels person/object/background {stats['pixel_counts'].tolist()}): {path}")
  console.say(f"outputs in {workdir}: checkpoints/, tensorboard/, images/, {CONFIG_FILE}, {STATS_FILE}, "
              f"{console.LOG_FILE}")
  return {"fit": result, "val_metrics": val_metrics, "stats": stats, "stats_path": path,
          "steps_per_epoch": steps_per_epoch}


def restore_state(task, config, workdir: str, mesh, example_batch, best: bool = True):
  """(TrainState, step) of the best-validation checkpoint (or the latest with best=False / none best)."""
  _, abstract = trainer.init_state(task, config, mesh, example_batch)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep)
  try:
    step = (checkpointer.best_step() if best else None) or checkpointer.latest_step()
    if step is None:
      raise jobs.JobInputError(f"no checkpoint in {checkpointer.directory}")
    state, _, step = checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
  return state, step


def inference_stats(task: cohesiv_task.CohesivTask, state, mesh, batches, min_pixels: int,
                    min_images: int) -> dict[str, np.ndarray]:
  """Mean person / object / background embeddings over pseudo-label pixels (see the module docstring)."""
  replicated = pipeline.replicated_sharding(mesh)
  sums_fn = jax.jit(task.class_embedding_sums, out_shardings=replicated)
  # The batch spans every process's devices: its real-image count is reduced on device and replicated, so
  # every process reads the same number and stops after the same batch.
  count_fn = jax.jit(lambda mask: jnp.sum(mask.astype(jnp.int32)), out_shardings=replicated)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  sums = counts = None
  images = 0
  for batch in batches:
    preemption.check("while computing the inference statistics (training is finished and checkpointed)")
    out = jax.device_get(sums_fn(variables, batch))  # Blocks each step (see tests/conftest.py).
    sums = out["sums"].astype(np.float64) + (0 if sums is None else sums)
    counts = out["counts"].astype(np.float64) + (0 if counts is None else counts)
    images += int(jax.device_get(count_fn(batch["_mask"])))
    if images >= min_images and counts[0] >= min_pixels and counts[1] >= min_pixels:
      break
  if counts is None:
    raise jobs.JobInputError("the train split is empty: no inference statistics")
  for k, name in enumerate(STATS_ORDER[:2]):
    if counts[k] < min_pixels:
      console.warn(f"only {int(counts[k])} '{name}' pseudo-label pixels in the whole train split "
                   f"(wanted >= {min_pixels}); its mean embedding is noisy")
  means = sums / np.maximum(counts, 1.0)[:, None]
  out = {f"{name}_embedding": means[k].astype(np.float32) for k, name in enumerate(STATS_ORDER)}
  out.update(pixel_counts=counts.astype(np.int64), num_images=np.int64(images),
             embed_dim=np.int64(means.shape[1]))
  return out


def save_inference_stats(workdir: str, stats: dict[str, np.ndarray]) -> str:
  path = os.path.join(workdir, STATS_FILE)
  if jax.process_index() == 0:
    fileio.save_npz_atomic(path, stats)
    fileio.write_text_atomic(os.path.splitext(path)[0] + ".json",
                             json.dumps({k: np.asarray(v).tolist() for k, v in stats.items()}, indent=1))
  return path


def load_inference_stats(workdir: str) -> dict[str, np.ndarray]:
  """Reads `<workdir>/inference_stats.npz` (for evaluation / prediction jobs)."""
  path = os.path.join(workdir, STATS_FILE)
  if not os.path.exists(path):
    raise jobs.JobInputError(f"{path} not found: run the train job for this workdir first")
  return fileio.load_npz(path)
