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
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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
