r"""Command-line entry point.

  python -m handobj_jax.main --config=configs/cohesiv.py[:variant] --workdir=DIR \
      [--config.key=value ...]

The config's `job` field names what runs (see `handobj_jax.jobs.JOBS`). This module only parses flags,
initialises multi-host JAX when asked to, logs the devices and dispatches. Bad command lines (unknown
job, unknown config key, missing config file, unwritable workdir) end with a one-line message and exit
status 2, not a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

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
    _fail(str(e).splitlines()[0] if str(e) else repr(e))
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
  jax.distributed.initialize()


def _check_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UsageError("--workdir is required")
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
    job_fn = jobs.get_job(job_name)
    workdir = _check_workdir(_WORKDIR.value)
  except (UsageError, jobs.UnknownJobError) as e:
    _fail(str(e))

  _maybe_initialize_distributed(_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top

  logging.info("process %d / %d; local devices: %s; global device count: %d",
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  logging.info("job %r, workdir %s", config.job, workdir)
  logging.info("config:\n%s", config)
  try:
    job_fn(config, workdir)
  except jobs.JobInputError as e:
    _fail(str(e))


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
