"""Several real processes (`jax.distributed` on localhost, 2 CPU devices each), not simulated devices.

Defects this caught, each failing before its fix: both processes built the dataset into the shared data dir at
once (TFDS 'Destination ... already exists'); the train job's inference statistics fetched a global batch field
(`Fetching value for jax.Array that spans non-addressable devices`); evaluation on uneven host shards ran
different step counts (see tests/test_data_pipeline.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args: list[str], workdir: str, num: int = 2, timeout: float = 900.0) -> list[tuple[int, str]]:
  """Runs `python -m handobj_jax.main ARGS` as `num` processes of one run; returns (exit code, output) each."""
  port = _free_port()
  procs = []
  for i in range(num):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num),
               JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    log = open(os.path.join(os.path.dirname(workdir), f"process{i}.out"), "w+")
    procs.append((subprocess.Popen([sys.executable, "-m", "handobj_jax.main", *args, f"--workdir={workdir}"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
  deadline = time.time() + timeout
  try:
    for p, _ in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out = []
  for p, log in procs:
    log.seek(0)
    out.append((p.returncode, log.read()))
    log.close()
  return out


@pytest.mark.slow
def test_two_processes_train_cohesiv_smoke_to_the_end(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  workdir = str(tmp_path / "work")
  results = _launch(["--config=configs/cohesiv.py:smoke", f"--config.data.data_dir={data}",
                     "--config.batch_size=4"], workdir)
  for i, (code, text) in enumerate(results):
    assert code == 0, f"process {i} exited {code}:\n{text[-3000:]}"
  # One terminal speaks: process 0 prints the results, process 1 does not.
  assert "final validation losses" in results[0][1] and "final validation losses" not in results[1][1]
  assert "inference statistics" in results[0][1]
  stats = np.load(os.path.join(workdir, "inference_stats.npz"))
  assert int(stats["num_images"]) >= 1 and np.all(np.isfinite(stats["person_embedding"]))
  # The data were built once into the shared dir (no half-built or duplicate directories left).
  leftovers = [p for p in data.rglob("incomplete*")]
  assert not leftovers, leftovers
