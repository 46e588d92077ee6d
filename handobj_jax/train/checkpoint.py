"""Checkpoints: one Orbax `CheckpointManager` per workdir, always resumed from, verified on restore.

Layout: `<workdir>/checkpoints/<step>/{state, meta}`; `state` is the TrainState pytree, `meta` JSON (epoch,
plateau schedule, validation loss, anything the trainer needs to continue exactly, and `digest`: a SHA-256
of every array of the state). Orbax writes to a temporary directory and renames it, so a kill during a save
leaves the previous checkpoints intact. Kept: the latest `keep` checkpoints plus the one with the lowest
validation loss.

Restoring verifies what it read: Orbax must succeed, every float must be finite and the digest must match
(flipped bytes that still decode are caught here). A damaged checkpoint is moved aside to
`<workdir>/checkpoints_damaged/<step>` (never deleted) with a warning, and the next one in order is tried;
when none is intact the error names the directory and what to do. Checkpoints written before digests existed
are verified for finiteness only.

Initialisation order for a run (see `Checkpointer.restore_or`): the workdir's own newest intact checkpoint,
then pretrained weights (the task's job), then scratch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from handobj_jax import console
from handobj_jax import errors

VAL_LOSS = "val_loss"
DIGEST = "digest"
DAMAGED_DIR = "checkpoints_damaged"


class NonFiniteCheckpointError(FloatingPointError):
  pass


class NoIntactCheckpoint(errors.InputError):
  """Every checkpoint of a workdir failed verification."""


class CheckpointMismatch(errors.InputError):
  """A checkpoint written by a different model (config): not damage, so it is left where it is."""


def _key_name(entry: Any) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _model_arrays(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype)} of the params and batch_stats leaves of a state(-like) tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in flat:
    names = tuple(_key_name(p) for p in path)
    if names and names[0] in ("params", "batch_stats") and hasattr(leaf, "shape"):
      out[names] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _host_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = []
  for path, leaf in flat:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      out.append((jax.tree_util.keystr(path), np.asarray(jax.device_get(leaf))))
  return out


def state_digest(tree: Any) -> str:
  """SHA-256 over every array leaf (path, dtype, shape, bytes) of a pytree."""
  h = hashlib.sha256()
  for name, arr in _host_leaves(tree):
    h.update(name.encode())
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def _all_finite(tree: Any) -> bool:
  return all(bool(np.isfinite(arr).all()) for _, arr in _host_leaves(tree)
             if np.issubdtype(arr.dtype, np.floating))


class Checkpointer:
  """Saves/restores (state, meta) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._keep = keep
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=self._keep),
        policies.BestN(get_metric_fn=lambda m: m[VAL_LOSS], reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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
    meta = {**meta, DIGEST: state_digest(state)}
    metrics = {VAL_LOSS: float(val_loss)} if val_loss is not None else None
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)),
                       metrics=metrics, force=True)
    self._manager.wait_until_finished()

  def _check_structure(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointMismatch if the stored model arrays differ from `abstract_state`'s; ValueError if
    the checkpoint's metadata cannot be read (damage)."""
    try:
      stored_meta = self._manager.item_metadata(step)["state"]
      stored = _model_arrays(getattr(stored_meta, "tree", stored_meta))
    except Exception as e:  # pylint: disable=broad-except
      text = str(e).strip().splitlines()
      raise ValueError(f"unreadable metadata: {type(e).__name__}: {text[0] if text else ''}") from None
    if not stored:
      raise ValueError("unreadable metadata: no model arrays listed")
    wanted = _model_arrays(abstract_state)
    if stored != wanted:
      only_there = sorted(set(stored) - set(wanted))
      only_here = sorted(set(wanted) - set(stored))
      shape = sorted(k for k in set(stored) & set(wanted) if stored[k] != wanted[k])
      if shape:
        k = shape[0]
        (s_shape, s_dtype), (w_shape, w_dtype) = stored[k], wanted[k]
        detail = (f"{'/'.join(k)} is {s_shape} {s_dtype} there and {w_shape} {w_dtype} in this config's "
                  "model")
      elif only_there:
        detail = f"{'/'.join(only_there[0])} exists there but not in this config's model"
      else:
        detail = f"{'/'.join(only_here[0])} is missing there"
      raise CheckpointMismatch(f"{os.path.join(self.directory, str(step))} was written by a different model "
                               f"({detail}); use the config it was trained with, or another --workdir")

  def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores one step and verifies it; raises ValueError (with the reason) if it is damaged."""
    self._check_structure(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
      text = str(e).strip().splitlines()
      raise ValueError(f"{type(e).__name__}: {text[0] if text else ''}") from None
    meta = dict(restored.meta) if restored.meta is not None else {}
    if not _all_finite(restored.state):
      raise ValueError("it holds NaN/inf values")
    if DIGEST in meta and meta[DIGEST] != state_digest(restored.state):
      raise ValueError("its contents do not match the digest written with it (damaged bytes)")
    return restored.state, meta

  def _set_aside(self, step: int, reason: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.workdir, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(src) and jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
      console.warn(f"checkpoint {src} is damaged ({reason}); moved to {dst}")
    else:
      console.warn(f"checkpoint {src} is damaged ({reason})")
    self._manager.close()
    self._manager = self._make_manager()

  def restore_intact(self, abstract_state: Any, order: Sequence[int] | None = None,
                     set_aside: bool = True) -> tuple[Any, dict, int] | None:
    """The first intact checkpoint among `order` (default: newest first), then the others newest first.

    Damaged ones are moved aside (`set_aside`, what training does: it will write those steps again) or
    skipped with a warning (evaluation and prediction leave the workdir as it is). Returns (state, meta,
    step), or None when the workdir has no checkpoint at all. Raises `NoIntactCheckpoint` when checkpoints
    exist but none is intact, and `CheckpointMismatch` (nothing moved) when they belong to another model.
    """
    candidates = list(order) if order is not None else sorted(self.all_steps(), reverse=True)
    candidates += [s for s in sorted(self.all_steps(), reverse=True) if s not in candidates]
    if not candidates:
      return None
    tried = []
    for step in candidates:
      if step not in self.all_steps():
        continue
      try:
        state, meta = self._restore_verified(step, abstract_state)
      except CheckpointMismatch:
        raise
      except ValueError as e:
        logging.exception("checkpoint %d failed verification", step)
        tried.append(step)
        if set_aside:
          self._set_aside(step, str(e))
        else:
          console.warn(f"checkpoint {os.path.join(self.directory, str(step))} is damaged ({e}); skipped")
        continue
      if tried:
        console.warn(f"using checkpoint step {step} instead")
      return state, meta, step
    where = (f"moved to {os.path.join(self.workdir, DAMAGED_DIR)}; rerun to start from scratch in this "
             "workdir, or use another --workdir") if set_aside else "retrain, or point at another workdir"
    raise NoIntactCheckpoint(f"no intact checkpoint in {self.directory} (damaged: steps {tried}; {where})")

  def restore(self, step: int, abstract_state: Any, set_aside: bool = False) -> tuple[Any, dict, int]:
    """Restores `step`, falling back to the newest intact checkpoint if it is damaged: (state, meta, step)."""
    found = self.restore_intact(abstract_state, order=[step], set_aside=set_aside)
    if found is None:
      raise NoIntactCheckpoint(f"no checkpoint in {self.directory}")
    return found

  def restore_meta(self, step: int) -> dict:
    return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore_or(self, abstract_state: Any, init_fn: Callable[[], Any]) -> tuple[Any, dict | None]:
    """The newest intact checkpoint if there is one, else `init_fn()` (pretrained or scratch), meta None."""
    found = self.restore_intact(abstract_state)
    if found is None:
      return init_fn(), None
    state, meta, _ = found
    return state, meta

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                      if hasattr(x, "shape") else x, tree)
