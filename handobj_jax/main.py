r"""Command-line entry point.

  python -m handobj_jax.main --config=configs/cohesiv.py[:variant] --workdir=DIR \
      [--config.key=value ...]

The config's `job` field names what runs (see `handobj_jax.jobs.JOBS`). This module only parses flags,
validates the config (`config_lib.validate`, before any work), initialises multi-host JAX when asked to,
routes library logs to `<workdir>/log.txt` (`--verbosity=0` echoes them to stderr too) and dispatches.

Exit status: 0 done; 2 a bad command line, config value or input (one `error: ...` line, no traceback,
nothing already written is lost); 1 a run that cannot continue (e.g. a NaN loss; one line); 143 / 130 when
SIGTERM / Ctrl-C stopped the job at a safe point (rerun the same command to resume).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


_TERMINAL_FD = 2  # Replaced by a copy of the terminal's stderr at start: fd 2 later goes to log.txt.


def _early_interrupt(signum, frame):  # pylint: disable=unused-argument
  # Ctrl-C while the libraries load: nothing has been written yet; leave quietly.
  os.write(_TERMINAL_FD, b"\ninterrupted\n")
  os._exit(128 + signum)  # pylint: disable=protected-access


if __name__ == "__main__":
  _TERMINAL_FD = os.dup(2)
  signal.signal(signal.SIGINT, _early_interrupt)
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF/XLA C++ logs below ERROR stay off the terminal.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from handobj_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from handobj_jax import console  # pylint: disable=g-import-not-at-top,wrong-import-position
from handobj_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from handobj_jax import preemption  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and outputs.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' calls it when a cluster environment is detected "
    "(SLURM, TPU pod, or JAX_COORDINATOR_ADDRESS set), 'on' always, 'off' never.")


class UsageError(Exception):
  """A bad command line: printed as one line, exit status 2."""


def _fail(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    first = str(e).splitlines()[0] if str(e) else repr(e)
    if first.rstrip().endswith("Error whilst parsing config file:"):
      first = first.rstrip() + " " + _exception_line(e)  # The config file's own message, not a cut one.
    _fail(first)
  except AttributeError as e:
    # ml_collections raises AttributeError('key') for an override of a key the config lacks.
    key = str(e).strip("'\"")
    _fail(f"unknown config key {key!r} in a --config.{key}=... override")
  except Exception as e:  # config files are Python: a broken one may raise anything.
    _fail(f"bad config or flag: {type(e).__name__}: {e}")
  raise AssertionError("unreachable")


def _config_load_message(text: str) -> str:
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  reason = next((l for l in reversed(lines) if l.startswith("[Errno")), lines[-1] if lines else text)
  return f"cannot load config file {flags.FLAGS['config'].config_filename!r}: {reason}"


def _exception_line(e: BaseException) -> str:
  """The innermost message of an exception chain (ml_collections wraps a config file's own error)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _cluster_detected() -> bool:
  env = os.environ
  return any(k in env for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                                "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE"))


def _maybe_initialize_distributed(mode: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  if mode == "off" or (mode == "auto" and not _cluster_detected()):
    return
  if os.environ.get("SLURM_NTASKS") == "1" and mode == "auto":
    return
  # A plain launch (e.g. several processes on one machine, see launch/): JAX reads the coordinator from
  # $JAX_COORDINATOR_ADDRESS; the process count and id come from these two (JAX has no variables for them).
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES") and os.environ.get("JAX_PROCESS_ID"):
    kwargs = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]), "process_id": int(os.environ["JAX_PROCESS_ID"])}
  jax.distributed.initialize(**kwargs)


def _check_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UsageError("--workdir is required")
  from handobj_jax import fileio  # pylint: disable=g-import-not-at-top
  try:
    fileio.check_local_path(workdir, "--workdir")
  except ValueError as e:
    raise UsageError(str(e)) from None
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None
  return workdir


def _check_devices(config) -> None:
  """Batch sizes that cannot be split over the devices are config errors too (checked before any work)."""
  import jax  # pylint: disable=g-import-not-at-top

  if "batch_size" in config and config.batch_size % jax.device_count():
    raise config_lib.ConfigError(f"config.batch_size={config.batch_size}: expected a multiple of the "
                                 f"{jax.device_count()} devices of this run")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  from handobj_jax import jobs  # pylint: disable=g-import-not-at-top

  try:
    config = _CONFIG.value
    job_name = config.job if config is not None else None
  except OSError as e:
    _fail(_config_load_message(str(e)))
  except AttributeError:
    _fail(f"config {flags.FLAGS['config'].config_filename!r} has no 'job' field")
  except Exception as e:  # the config file itself raised.
    _fail(f"config file {flags.FLAGS['config'].config_filename!r} failed: {type(e).__name__}: {e}")
  if config is None:
    _fail("--config is required, e.g. --config=configs/cohesiv.py")
  try:
    config_lib.validate(config)
    jobs.check_name(job_name)
    workdir = _check_workdir(_WORKDIR.value)
  except (UsageError, jobs.UnknownJobError, config_lib.ConfigError) as e:
    _fail(str(e))

  _maybe_initialize_distributed(_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top

  try:
    _check_devices(config)
  except config_lib.ConfigError as e:
    _fail(str(e))
  verbosity = flags.FLAGS["verbosity"]
  log_path = console.setup_logging(workdir, echo=verbosity.present, verbosity=verbosity.value)
  # Native libraries' own stderr lines (at import and later) go to log.txt for the whole job.
  with contextlib.nullcontext() if verbosity.present else console.native_stderr_to_log():
    job_fn = jobs.get_job(job_name)  # Imports TensorFlow and the job's libraries.
    logging.info("process %d / %d; local devices: %s; global device count: %d",
                 jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
    logging.info("job %r, workdir %s", config.job, workdir)
    logging.info("config:\n%s", config)
    console.say(f"{config.job}: workdir {workdir} (library logs: {log_path})")
    with preemption.stop_on_signals():
      try:
        job_fn(config, workdir)
      except errors.InputError as e:
        logging.exception("bad input")
        _fail(str(e))
      except errors.RunFailed as e:
        logging.exception("job failed")
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
      except preemption.StopRequested as e:
        logging.warning("%s", e)
        sys.stderr.write(f"{e}\n")
        sys.exit(e.exit_code)
      except KeyboardInterrupt:
        logging.warning("aborted by a second Ctrl-C")
        sys.stderr.write("\naborted (Ctrl-C twice); checkpoints and finished shards already written are "
                         "intact: rerun the same command to resume\n")
        sys.exit(130)


def run() -> None:
  console.buffer_early_logs()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
