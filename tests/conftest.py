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
