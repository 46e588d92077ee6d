"""What a user's terminal shows, and where everything else goes: the one home for console output.

The terminal (process 0 of a multi-host run only) shows what is being built, one progress line per long
loop (count, rate, ETA), epoch summaries, final metrics and where the outputs are: `say`, `warn` and
`Progress`. Everything else (INFO logs of absl, JAX, TensorFlow, TFDS, Orbax; Python warnings; TF's C++
logs below ERROR) goes to `<workdir>/log.txt` (`setup_logging`); `--verbosity=0` (or higher) on the command
line echoes those logs to stderr as well. Every line `say`, `warn` and `Progress` print is also logged, so
`log.txt` alone tells the whole story of a run.

Progress lines: on a terminal the line is rewritten in place (at most a few times a second) and ends with a
newline when the loop ends or when something else is printed; when stdout is not a terminal (CI, a
scheduler's log file) a full line is printed every `every` updates or `interval` seconds, whichever comes
first, and at the end. Rates are measured from the first update on (so a first step that compiles does
not distort them) and ETA = remaining / rate.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging as py_logging
import math
import os
import sys
import time
from typing import Any, Iterator, TextIO

from absl import logging

LOG_FILE = "log.txt"
_TERMINAL_REFRESH_S = 0.25

_active: "Progress | None" = None   # The progress line currently drawn in place on the terminal.
_early_buffer: io.StringIO | None = None
_log_stream: TextIO | None = None


def is_main_process() -> bool:
  """True on process 0 (and before JAX is imported: nothing is distributed yet)."""
  jax = sys.modules.get("jax")
  if jax is None:
    return True
  try:
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except  (backend not initialisable: a single process)
    return True


def _stdout_is_terminal() -> bool:
  try:
    return sys.stdout.isatty()
  except (AttributeError, ValueError):
    return False


def fmt_duration(seconds: float) -> str:
  """'1h02m03s', '2m03s', '3s'; '?' for unknown (inf/NaN/negative)."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _end_active_line() -> None:
  global _active
  if _active is not None and _active._drawn:  # pylint: disable=protected-access
    sys.stdout.write("\n")
    sys.stdout.flush()
    _active._drawn = False  # pylint: disable=protected-access
  _active = None


def say(message: str) -> None:
  """Prints one line for the user (process 0) and logs it."""
  logging.info("%s", message)
  if is_main_process():
    _end_active_line()
    print(message, flush=True)


def warn(message: str) -> None:
  """Prints 'warning: ...' to stderr (process 0) and logs it as a warning."""
  logging.warning("%s", message)
  if is_main_process():
    _end_active_line()
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


class Progress:
  """One progress line for a loop of `total` units (None: unknown total).

    progress = Progress(512, "train", unit="step", per_unit=10, unit_name="ex")
    for step in ...:
      progress.update(step, loss=f"{loss:.4f}")      # absolute count
    progress.close()

  `per_unit` > 0 also shows the rate of a second unit (e.g. examples per step). `update(done, **info)` sets
  the count (absolute, so a resumed loop starts where it is); `advance(n, **info)` adds to it. `info` values
  are shown after the rate, in order. `reset_rate()` restarts the rate measurement (e.g. after an
  evaluation pause).
  """

  def __init__(self, total: int | None, desc: str, *, unit: str = "step", start: int = 0,
               per_unit: float = 0.0, unit_name: str = "ex", every: int = 0, interval: float = 30.0,
               enabled: bool | None = None):
    self.total = None if total is None else int(total)
    self.desc, self.unit = desc, unit
    self.per_unit, self.unit_name = float(per_unit), unit_name
    self.every, self.interval = int(every), float(interval)
    self.done = int(start)
    self.info: dict[str, Any] = {}
    self._enabled = is_main_process() if enabled is None else enabled
    self._terminal = _stdout_is_terminal()
    self._t0: float | None = None      # Time and count of the first update: the rate's origin.
    self._s0 = self.done
    self._last_draw = 0.0
    self._last_line_time = time.time()
    self._last_line_count = self.done
    self._drawn = False
    self._closed = False

  # ---- counting ---------------------------------------------------------------------------------------

  def update(self, done: int, **info: Any) -> None:
    now = time.time()
    if self._t0 is None:
      self._t0, self._s0 = now, int(done)
    self.done = int(done)
    self.info.update(info)
    self._maybe_print(now)

  def advance(self, n: int = 1, **info: Any) -> None:
    self.update(self.done + n, **info)

  def reset_rate(self) -> None:
    self._t0 = None

  # ---- reporting --------------------------------------------------------------------------------------

  def rate(self) -> float:
    """Units per second since the first update (0 when unknown)."""
    if self._t0 is None:
      return 0.0
    elapsed = time.time() - self._t0
    return (self.done - self._s0) / elapsed if elapsed > 0 and self.done > self._s0 else 0.0

  def eta(self) -> float:
    rate = self.rate()
    if self.total is None or rate <= 0:
      return math.inf
    return max(self.total - self.done, 0) / rate

  def line(self) -> str:
    parts = [self.desc]
    if self.total:
      parts[0] += f" {self.done}/{self.total} {self.unit}s ({100.0 * self.done / self.total:.0f}%)"
    else:
      parts[0] += f" {self.done} {self.unit}s"
    rate = self.rate()
    if rate > 0:
      rate_text = f"{rate:.2f} {self.unit}s/s" if rate < 100 else f"{rate:.0f} {self.unit}s/s"
      if self.per_unit:
        rate_text += f", {rate * self.per_unit:.1f} {self.unit_name}/s"
      parts.append(rate_text)
    if self.total is not None:
      parts.append(f"ETA {fmt_duration(self.eta())}")
    parts += [f"{k} {v}" for k, v in self.info.items()]
    return " | ".join(parts)

  def _maybe_print(self, now: float) -> None:
    finished = self.total is not None and self.done >= self.total
    due = finished or self._due(now)
    if self._terminal:
      if finished or now - self._last_draw >= _TERMINAL_REFRESH_S:
        self._draw_in_place(now)
      if due:  # The log file gets full lines at the non-terminal cadence.
        self._mark_line(now)
        logging.info("%s", self.line())
    elif due:
      self._print_line(now)

  def _due(self, now: float) -> bool:
    if self.done <= self._last_line_count:
      return False
    if self.every and self.done % self.every == 0:
      return True
    return now - self._last_line_time >= self.interval

  def _mark_line(self, now: float) -> None:
    self._last_line_time, self._last_line_count = now, self.done

  def _draw_in_place(self, now: float) -> None:
    global _active
    self._last_draw = now
    if not self._enabled:
      return
    if _active is not self:
      _end_active_line()
      _active = self
    sys.stdout.write("\r\033[K" + self.line())
    sys.stdout.flush()
    self._drawn = True

  def _print_line(self, now: float) -> None:
    self._mark_line(now)
    text = self.line()
    logging.info("%s", text)
    if self._enabled:
      _end_active_line()
      print(text, flush=True)

  def close(self, summary: str | None = None) -> None:
    """Ends the line (showing the final count once if it was not shown yet), then says `summary`."""
    if self._closed:
      return
    self._closed = True
    now = time.time()
    if self._terminal:
      if self._drawn or self.done != self._last_line_count:
        self._draw_in_place(now)
      if self.done != self._last_line_count:
        self._mark_line(now)
        logging.info("%s", self.line())
      if _active is self:
        _end_active_line()
    elif self.done != self._last_line_count:
      self._print_line(now)
    if summary:
      say(summary)


# ---------------------------------------------------------------------------------------------------------
# Logging routing.


def buffer_early_logs() -> None:
  """Until `setup_logging` knows the workdir, library logs are held in memory (not shown)."""
  global _early_buffer
  _early_buffer = io.StringIO()
  logging.get_absl_handler().python_handler.stream = _early_buffer
  py_logging.captureWarnings(True)


def log_path(workdir: str) -> str:
  """`<workdir>/log.txt` on process 0; `log.process<k>.txt` on process k > 0 (one writer per file when several
  processes share a workdir)."""
  jax = sys.modules.get("jax")
  index = jax.process_index() if jax is not None else 0
  return os.path.join(workdir, LOG_FILE if index == 0 else f"log.process{index}.txt")


def setup_logging(workdir: str, echo: bool = False, verbosity: int = 0) -> str:
  """Routes every library log to `<workdir>/log.txt` (appending), and also to stderr when `echo`.

  Returns the log file's path. Safe to call again (e.g. per job in tests): the stream is replaced.
  """
  global _early_buffer, _log_stream
  path = log_path(workdir)
  stream = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
  stream.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
  if _early_buffer is not None:
    stream.write(_early_buffer.getvalue())
    _early_buffer = None
  stream.flush()
  handler = logging.get_absl_handler().python_handler
  old = _log_stream
  handler.stream = _TeeStream(stream, sys.stderr) if echo else stream
  _log_stream = stream
  if old is not None and old is not stream:
    old.close()
  logging.set_verbosity(max(verbosity, 0) if echo else logging.INFO)
  py_logging.captureWarnings(True)
  return path


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
  """Within the block, the process's stderr (file descriptor 2) goes to the log file.

  Native libraries write to file descriptor 2 directly, at import and later: TensorFlow's absl C++ INFO
  lines when it loads (which TF_CPP_MIN_LOG_LEVEL does not silence), and ERROR-level notices that depend on
  the CPU (e.g. oneDNN's "supports DT_HALF only on platforms with AVX-512" the first time a float16 tensor
  is read on an AVX-512 CPU without FP16). Inside this block those go to `log.txt`, while Python's
  `sys.stderr` (warnings, errors, the stop line) is re-pointed to the terminal, and `faulthandler` reports
  a native crash there too. Without a log file (tests, library use) it does nothing.
  """
  if _log_stream is None:
    yield
    return
  sys.stderr.flush()
  _log_stream.flush()
  saved = os.dup(2)
  old_stderr = sys.stderr
  terminal = open(saved, "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                  errors="backslashreplace", closefd=False)
  sys.stderr = terminal
  faulthandler_was_on = faulthandler.is_enabled()
  faulthandler.enable(file=terminal)
  try:
    os.dup2(_log_stream.fileno(), 2)
    yield
  finally:
    terminal.flush()
    os.dup2(saved, 2)
    sys.stderr = old_stderr
    if faulthandler_was_on:
      faulthandler.enable(file=old_stderr)
    else:
      faulthandler.disable()
    terminal.close()
    os.close(saved)


class _TeeStream:
  """Writes to a file and to the terminal (used with --verbosity)."""

  def __init__(self, *streams: TextIO):
    self._streams = streams

  def write(self, text: str) -> int:
    for s in self._streams:
      s.write(text)
    return len(text)

  def flush(self) -> None:
    for s in self._streams:
      s.flush()
