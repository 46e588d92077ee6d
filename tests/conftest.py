"""Test session setup.

Two simulated CPU devices so that data-parallel code (meshes, sharded batches)
is exercised on a machine without accelerators. This must happen before jax
is imported anywhere, hence at conftest import time.
"""
import os

_flag = "--xla_force_host_platform_device_count=2"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Note for tests that loop over jitted steps containing collectives (psum over the 2 simulated
# devices): block on each step's result. Queuing several such programs lets both CPU worker threads
# wait in different programs' rendezvous, and XLA aborts the process after 40 s (seen with jax 0.10.2;
# `jax_cpu_enable_async_dispatch=False` does not prevent it). The trainer fetches every step's metrics,
# so it never queues more than one step.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep tf.data off any accelerator and quiet.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import fcntl  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_CACHE_KEY = pytest.StashKey[str]()


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, shared by the xdist workers and by the
  subprocesses that tests start (they inherit the environment). Many tests train, resume or evaluate the
  same small models: each first compile is paid once per run instead of once per test (most of the suite's
  time on a 2-core CPU is XLA:CPU compiling). Set by the controller before the workers start, removed when
  the run ends; a cache dir the user already set is used as it is and left alone."""
  if hasattr(config, "workerinput") or os.environ.get(_CACHE_ENV):
    return
  path = tempfile.mkdtemp(prefix="handobj_jax_test_jit_cache_")
  config.stash[_CACHE_KEY] = path
  os.environ[_CACHE_ENV] = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")


def pytest_unconfigure(config):
  path = config.stash.get(_CACHE_KEY, None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(_CACHE_ENV, None)


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
  """A data dir holding the tiny synthetic clips and their COHESIV pseudo-labels (the `:smoke` configs'
  data), built once per test run and shared by the xdist workers (a file lock serialises the build).
  Tests must not modify it: copy it first."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  data = root / "smoke_data"
  with open(root / "smoke_data.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (data / "DONE").exists():
      from configs import cohesiv as cohesiv_configs  # pylint: disable=g-import-not-at-top
      from handobj_jax.jobs import pseudolabel  # pylint: disable=g-import-not-at-top
      data.mkdir(exist_ok=True)
      config = cohesiv_configs.get_config("smoke")
      config.data.data_dir = str(data)
      pseudolabel.ensure_pseudolabelled(config, str(data))
      (data / "DONE").write_text("ok")
  return str(data)
