"""Checkpoints: one Orbax `CheckpointManager` per workdir, always resumed from.

Layout: `<workdir>/checkpoints/<step>/{state, meta}`; `state` is the TrainState pytree, `meta` JSON (epoch,
plateau schedule, validation loss, anything the trainer needs to continue exactly). Orbax writes to a
temporary directory and renames it, so a kill during a save leaves the previous checkpoints intact. Kept:
the latest `keep` checkpoints plus the one with the lowest validation loss.

Initialisation order for a run (see `Checkpointer.restore_or`): the workdir's own latest checkpoint, then
pretrained weights (the task's job), then scratch.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

VAL_LOSS = "val_loss"


class NonFiniteCheckpointError(FloatingPointError):
  pass


def _all_finite(tree: Any) -> bool:
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return all(bool(np.isfinite(np.asarray(jax.device_get(x))).all()) for x in leaves)


class Checkpointer:
  """Saves/restores (state, meta) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: m[VAL_LOSS], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, val_loss: float | None = None) -> None:
    """Writes a checkpoint; refuses (raises) if any float in `state` is NaN/inf."""
    if not _all_finite(state):
      raise NonFiniteCheckpointError(f"refusing to write checkpoint at step {step}: the state holds "
                                     "NaN/inf values")
    metrics = {VAL_LOSS: float(val_loss)} if val_loss is not None else None
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)),
                       metrics=metrics, force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_meta(self, step: int) -> dict:
    return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore_or(self, abstract_state: Any, init_fn: Callable[[], Any]) -> tuple[Any, dict | None]:
    """The latest checkpoint if there is one, else `init_fn()` (pretrained or scratch) with meta None."""
    step = self.latest_step()
    if step is None:
      return init_fn(), None
    return self.restore(step, abstract_state)

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                      if hasattr(x, "shape") else x, tree)
