"""The shared trainer: one loop for every model in the project.

A model plugs in as a `Task` (init, loss, optional visualisation and pretrained weights); the trainer owns
everything else: the `('data',)` mesh (parameters replicated, batches sharded on the batch axis over every
device of every host), one jitted step with the state donated, the optimiser and per-epoch learning-rate
schedule the config names (AdamW or Adam; reduce-on-plateau with early stopping, or step decay), Orbax
checkpoints with auto-resume (a stop request from SIGTERM or Ctrl-C saves the
current step first: `handobj_jax.preemption`), NaN detection (loss, gradients and the updated state) that
stops with the step number and never checkpoints NaNs, TensorBoard scalars and images, PNG visualisations,
and one progress line with rate and ETA (`handobj_jax.console`). Given the same seed and data the run is
deterministic, also across a kill and resume.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers

from handobj_jax import console
from handobj_jax import errors
from handobj_jax import multihost
from handobj_jax import preemption
from handobj_jax import viz
from handobj_jax.train import checkpoint as ckpt_lib
from handobj_jax.train import schedule as schedule_lib
from handobj_jax.train.state import TrainState, make_optimizer

Batch = dict[str, jax.Array]
MASK_KEY = "_mask"


class Task(Protocol):
  """What a model supplies to the trainer. All functions are pure; `loss_fn` must honour an optional
  boolean `batch['_mask']` [B] (padding examples in evaluation) by excluding them from its mean."""

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    """{'params': ..., 'batch_stats': ...} (batch_stats may be {})."""

  def loss_fn(self, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    """(scalar loss, (scalar metrics, new batch_stats))."""

  def load_pretrained(self, variables: dict[str, Any]) -> dict[str, Any]:
    """Returns variables with any configured pretrained weights merged in (or unchanged)."""

  def visualize(self, variables: dict[str, Any], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named uint8 RGB images [H, W, 3] for summaries."""

  # Optional: `epoch_metrics`, a tuple of validation metric names shown in each epoch's summary line.


class TrainingStopped(errors.RunFailed):
  """A run that cannot continue (NaN loss): the message says where."""


@dataclasses.dataclass
class FitResult:
  step: int
  epoch: int
  val_loss: float | None
  val_metrics: dict[str, float]
  stopped_early: bool
  preempted: bool
  best_step: int | None


def _replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _tree_all_finite(tree: Any) -> jax.Array:
  # One float max |x| per leaf (NaN propagates through max), then one isfinite: XLA:CPU split the former
  # per-leaf all(isfinite(x)) into ~5 small boolean reduce-window kernels per leaf (about 3,000 kernels in
  # the COHESIV step).
  leaves = [jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and jnp.size(x)]
  return jnp.all(jnp.isfinite(jnp.stack(leaves))) if leaves else jnp.asarray(True)


def make_train_step(task: Task, mesh) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  def step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_of(params):
      return task.loss_fn(params, state.batch_stats, batch, rng, True)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, batch_stats=batch_stats)
    # The updated state is checked too: a NaN learning rate (or an optimiser blow-up) gives finite
    # gradients but NaN parameters.
    finite = (jnp.isfinite(loss) & _tree_all_finite(grads) &
              _tree_all_finite((new_state.params, new_state.batch_stats, new_state.opt_state)))
    # A non-finite step leaves the state untouched; the host sees `finite` and stops the run.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": state.learning_rate(), "finite": finite}
    return new_state, metrics

  return jax.jit(step, donate_argnums=0, out_shardings=_replicated(mesh))


def make_eval_step(task: Task, mesh) -> Callable[[TrainState, Batch], dict]:
  def step(state: TrainState, batch: Batch):
    loss, (metrics, _) = task.loss_fn(state.params, state.batch_stats, batch, state.rng, False)
    n = jnp.sum(batch[MASK_KEY].astype(jnp.float32)) if MASK_KEY in batch else jnp.float32(
        jax.tree.leaves(batch)[0].shape[0])
    out = {k: v * n for k, v in {**metrics, "loss": loss}.items()}
    out["_count"] = n
    return out

  return jax.jit(step, out_shardings=_replicated(mesh))


def init_state(task: Task, config, mesh, example_batch: Batch) -> tuple[TrainState, Any]:
  """(a function making the initial state, its abstract shape). Params are created replicated."""
  tx = make_optimizer(config.optim)
  rng = jax.random.PRNGKey(config.seed)

  def create(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = task.init_variables(init_rng, example_batch)
    params = variables["params"]
    return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=state_rng, tx=tx)

  abstract = jax.eval_shape(create, rng)
  replicated = _replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)

  def make() -> TrainState:
    state = jax.jit(create, out_shardings=replicated)(rng)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loaded = task.load_pretrained(variables)
    if loaded is not variables:
      loaded = jax.device_put(loaded, replicated)
      state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                            opt_state=tx.init(loaded["params"]))
    return state

  return make, abstract


def _write_pngs(directory: str, step: int, images: dict[str, np.ndarray]) -> None:
  os.makedirs(directory, exist_ok=True)
  for name, img in images.items():
    viz.write_png(os.path.join(directory, f"{name}_{step:07d}.png"), img)


def evaluate(eval_step, state: TrainState, batches: Iterator[Batch]) -> tuple[dict[str, float], Batch | None]:
  """Example-weighted mean of the eval metrics over `batches`, and the first batch (for images)."""
  sums: dict[str, float] = {}
  first = None
  for batch in batches:
    first = batch if first is None else first
    for k, v in jax.device_get(eval_step(state, batch)).items():
      sums[k] = sums.get(k, 0.0) + float(v)
  count = sums.pop("_count", 0.0)
  if count == 0:
    raise ValueError("evaluation saw no examples: the validation split is empty")
  return {k: v / count for k, v in sums.items()}, first


def fit(task: Task, config, workdir: str, *, mesh, train_batches: Callable[[int], Iterator[Batch]],
        eval_batches: Callable[[], Iterator[Batch]], steps_per_epoch: int,
        example_batch: Batch) -> FitResult:
  """Trains `task` until `config.num_epochs` epochs (or `config.num_steps`), early stopping, or a stop request.

  train_batches(start_step) yields global training batches starting at that step (deterministic replay);
  eval_batches() yields one pass over validation. Evaluation, the learning-rate schedule and a checkpoint with
  the validation loss happen at each epoch end; plain checkpoints every `config.checkpoint.every_steps`.
  A stop request (SIGTERM, Ctrl-C; see `handobj_jax.preemption`) saves the current step and returns with
  `preempted=True`.
  """
  with preemption.stop_on_signals():
    return _fit(task, config, workdir, mesh=mesh, train_batches=train_batches, eval_batches=eval_batches,
                steps_per_epoch=steps_per_epoch, example_batch=example_batch)


def _fit(task: Task, config, workdir: str, *, mesh, train_batches, eval_batches, steps_per_epoch: int,
         example_batch: Batch) -> FitResult:
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  num_epochs = -(-total_steps // steps_per_epoch)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep)
  make_state, abstract = init_state(task, config, mesh, example_batch)
  state, meta = checkpointer.restore_or(abstract, make_state)
  saved = (meta.get("schedule") or meta.get("plateau")) if meta else None  # 'plateau': older checkpoints
  schedule = schedule_lib.from_dict(saved) if saved else schedule_lib.from_config(config.optim)
  state = state.with_learning_rate(schedule.learning_rate)
  start_step = int(jax.device_get(state.step))
  if meta:
    console.say(f"resumed from {checkpointer.directory} at step {start_step} (epoch {meta['epoch']})")

  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
  train_step = make_train_step(task, mesh)
  eval_step = make_eval_step(task, mesh)

  def meta_dict(step: int, val_loss: float | None) -> dict:
    return {"step": step, "epoch": step // steps_per_epoch, "schedule": schedule.to_dict(),
            "val_loss": val_loss, "task": type(task).__name__}

  progress = console.Progress(total_steps, "train", unit="step", start=start_step,
                              per_unit=config.batch_size, every=config.log_every_steps,
                              interval=float("inf"))
  val_metrics: dict[str, float] = {}
  val_loss = meta["val_loss"] if meta else None
  preempted = False
  step = start_step
  batches = train_batches(start_step)
  try:
    while step < total_steps and not schedule.stopped:
      batch = next(batches)
      state, metrics = train_step(state, batch)
      step += 1
      metrics = jax.device_get(metrics)
      if not bool(metrics["finite"]):
        raise TrainingStopped(
            f"non-finite loss ({float(metrics['loss'])}), gradient or updated state at step {step}; the "
            f"state was not updated and no checkpoint was written for it; last checkpoint: step "
            f"{checkpointer.latest_step()}. Lower config.optim.learning_rate or check the data.")
      progress.update(step, loss=f"{float(metrics['loss']):.4f}")
      if step % config.log_every_steps == 0 or step == total_steps:
        writer.write_scalars(step, {f"train/{k}": float(v) for k, v in metrics.items() if k != "finite"})

      epoch_end = step % steps_per_epoch == 0
      if epoch_end:
        val_metrics, first_batch = evaluate(eval_step, state, eval_batches())
        val_loss = val_metrics["loss"]
        action = schedule.update(val_loss)
        if action == "lr_cut":
          state = state.with_learning_rate(schedule.learning_rate)
        writer.write_scalars(step, {f"val/{k}": v for k, v in val_metrics.items()})
        extra = "".join(f", {k} {val_metrics[k]:.4g}" for k in getattr(task, "epoch_metrics", ())
                        if k in val_metrics)
        console.say(f"epoch {step // steps_per_epoch}/{num_epochs}: val loss {val_loss:.4f}{extra} ({action}; "
                    f"lr {schedule.learning_rate:.3g}; best {schedule.best:.4f})")
        if jax.process_index() == 0:
          # Host copies only (this host's shard of the batch, one replica of the state), so that
          # visualisation never launches a multi-host computation from a single process.
          first = multihost.host_copy(first_batch)  # Reused: no second pass over the validation pipeline.
          images = task.visualize(multihost.host_copy({"params": state.params, "batch_stats": state.batch_stats}),
                                  first)
          if images:
            writer.write_images(step, {f"val/{k}": v[None] for k, v in images.items()})
            _write_pngs(os.path.join(workdir, "images"), step, images)
        checkpointer.save(step, state, meta_dict(step, val_loss), val_loss=val_loss)
        progress.reset_rate()
      elif step % config.checkpoint.every_steps == 0:
        checkpointer.save(step, state, meta_dict(step, None))
      # A stop request that reached any process stops them all after this step (each saves the same step:
      # Orbax's save is collective, so a process that went on alone would wait forever).
      if multihost.any_process(preemption.requested() is not None):
        if checkpointer.latest_step() != step:
          checkpointer.save(step, state, meta_dict(step, None))
        progress.close()
        console.say(f"stop requested: saved step {step} to {checkpointer.directory}")
        preempted = True
        break
    if not preempted and checkpointer.latest_step() != step:
      checkpointer.save(step, state, meta_dict(step, val_loss))
  finally:
    progress.close()
    writer.flush()
    best = checkpointer.best_step()
    checkpointer.close()
  return FitResult(step=step, epoch=step // steps_per_epoch, val_loss=val_loss, val_metrics=val_metrics,
                   stopped_early=schedule.stopped, preempted=preempted, best_step=best)
