"""Stop requests for a whole job: SIGTERM from a scheduler, Ctrl-C from a user.

Inside `stop_on_signals()` a SIGTERM or a first SIGINT does not kill the process: it records a stop request,
and the job stops at its next safe point (the trainer after the current step, once that step is
checkpointed; the pseudo-labelling job after the current shard; data builds and evaluation after the
current item) by raising `StopRequested` (or, in the trainer, returning a preempted result that the job
turns into `StopRequested`). `main` reports it in one line and exits with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT), never 0, so a scheduler does not read a preempted run as finished. Rerunning the
same command resumes. A second Ctrl-C aborts at once (KeyboardInterrupt): what was already written stays
valid because checkpoints, dataset shards and reports are written to temporary names and renamed.

Handlers are installed only from the main thread; nested `stop_on_signals()` blocks share the outer
one's state.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_state = {"signum": None, "depth": 0}
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class StopRequested(Exception):
  """Raised at a safe point after a stop request; `exit_code` is 128 + the signal number."""

  def __init__(self, signum: int, where: str):
    self.signum = int(signum)
    self.exit_code = 128 + self.signum
    super().__init__(f"{_NAMES.get(signum, f'signal {signum}')} received: stopped {where}; rerun the same "
                     "command to resume")


def requested() -> int | None:
  """The signal number of a pending stop request, or None."""
  return _state["signum"]


def request(signum: int = signal.SIGTERM) -> None:
  """Records a stop request (what the handlers do; tests call it directly)."""
  _state["signum"] = int(signum)


def clear() -> None:
  _state["signum"] = None


def check(where: str) -> None:
  """Raises `StopRequested` if a stop was requested. `where` completes 'stopped ...' in the message."""
  if _state["signum"] is not None:
    raise StopRequested(_state["signum"], where)


def _handler(signum, frame):  # pylint: disable=unused-argument
  if signum == signal.SIGINT and _state["signum"] == signal.SIGINT:
    raise KeyboardInterrupt  # Second Ctrl-C: abort now.
  first = _state["signum"] is None
  _state["signum"] = signum
  if first:
    extra = " (press Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
    sys.stderr.write(f"\n{_NAMES.get(signum, signum)} received: stopping at the next safe point{extra}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
  """Within the block, SIGTERM / SIGINT request a stop instead of killing the process (see module doc)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  outer = _state["depth"] == 0
  previous = {}
  if outer:
    clear()
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, _handler)
  _state["depth"] += 1
  try:
    yield
  finally:
    _state["depth"] -= 1
    if outer:
      for sig, old in previous.items():
        signal.signal(sig, old)
