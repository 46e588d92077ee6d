"""Kill-and-restart tests: start a child, wait until it reaches a known point, SIGKILL it."""
import pathlib
import signal
import subprocess
import time
from typing import Callable, Sequence


def kill_when(cmd: Sequence[str], cwd: str, log: pathlib.Path, ready: Callable[[], object], what: str,
              timeout: float = 240.0, poll: float = 0.1) -> None:
  """Runs `cmd` (stderr to `log`) until `ready()` is true, then SIGKILLs it; the child is killed on a failed
  wait too. Fails when the child ends first or `what` is not reached within `timeout` seconds."""
  with open(log, "wb") as stderr:
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
      deadline = time.time() + timeout
      while not ready():
        assert proc.poll() is None, f"the child ended before {what}: {log.read_text()[-2000:]}"
        assert time.time() < deadline, f"not {what} after {timeout:.0f} s: {log.read_text()[-2000:]}"
        time.sleep(poll)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
