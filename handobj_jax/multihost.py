"""Several processes (hosts) of one run: barriers and work done once.

JAX's distributed runtime is the engine (`jax.distributed.initialize`, called by `handobj_jax.main`); these
helpers are the project's one place for the patterns every job needs on N processes. With one process each is a
no-op, so single-machine runs pay nothing.

* `sync(tag)`: every process waits until all have reached the same tag (a collective over all devices, so it
  also orders device work).
* `main_process_first(tag)`: process 0 runs the block (e.g. builds a dataset into a shared data dir), the others
  wait and then run it too (and find the work done). Every process must enter it, in the same order.
* `any_process(flag)`: True on every process when any process's flag is True (e.g. a stop request that reached
  one host: all hosts then save the same step and stop together).
* `concat_examples(tree)`: per-process results with a leading example axis (each host's shard of a split, of
  any length) -> their concatenation in process order, on every process, bit for bit (any dtype). The eval
  jobs use it so that process 0 scores the whole split exactly as a 1-process run would.
* `host_copy(tree)`: this process's first addressable shard of every array, as NumPy (one replica of
  replicated parameters; the first local device's rows of a batch-sharded array), for host-local work that must never
  launch a multi-process computation from one process.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax
import numpy as np


def sync(tag: str) -> None:
  """A barrier across every process of the run (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(tag)


@contextlib.contextmanager
def main_process_first(tag: str) -> Iterator[None]:
  """Runs the block on process 0 first, then on the others (module docstring)."""
  if jax.process_count() == 1:
    yield
    return
  if jax.process_index() != 0:
    sync(tag)
  try:
    yield
  finally:
    if jax.process_index() == 0:
      sync(tag)


def any_process(flag: bool) -> bool:
  """Whether `flag` is True on any process (the same answer on every process; no-op with one process)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32))))


def host_copy(tree: Any) -> Any:
  """This process's first addressable shard of every `jax.Array` in `tree`, as NumPy (module docstring)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def concat_examples(tree: Any) -> Any:
  """Concatenates every process's arrays along axis 0, in process order (module docstring).

  `tree` is a pytree of NumPy arrays sharing their leading (example) axis, whose length may differ between
  processes; every process must call this with the same tree structure, dtypes and trailing shapes. The
  arrays travel as raw bytes (padded to the longest host's length), so float64, int64 and bool come back
  unchanged. No-op with one process.
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(tree)
  leaves = [np.ascontiguousarray(np.asarray(x)) for x in leaves]
  n = leaves[0].shape[0] if leaves else 0
  if any(x.ndim == 0 or x.shape[0] != n for x in leaves):
    raise ValueError(f"concat_examples: every leaf needs the same leading length, got "
                     f"{[x.shape for x in leaves]}")
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([n], np.int32))).reshape(-1)
  longest = int(counts.max())
  if longest == 0:
    return tree
  packed = []
  for x in leaves:
    row = int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize
    raw = np.frombuffer(x.tobytes(), np.uint8).reshape(n, row)
    packed.append(np.pad(raw, ((0, longest - n), (0, 0))))
  gathered = multihost_utils.process_allgather(packed, tiled=False)  # [P, longest, bytes] each.
  out = []
  for x, g in zip(leaves, gathered):
    g = np.asarray(g)
    raw = np.concatenate([g[p, :int(c)] for p, c in enumerate(counts)], axis=0)
    out.append(np.frombuffer(raw.tobytes(), x.dtype).reshape((raw.shape[0],) + x.shape[1:]).copy())
  return jax.tree.unflatten(treedef, out)
