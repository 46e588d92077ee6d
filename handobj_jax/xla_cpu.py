"""XLA:CPU settings that make this project's convolutions fast, applied when `handobj_jax` is imported.

What it sets: `--xla_cpu_experimental_ynn_fusion_type=dot` in `XLA_FLAGS`. With it, XLA:CPU hands dot and
convolution fusions to YNNPACK. Measured on a 2-core CPU (benchmarks/bench_xla_cpu.py prints the table):
forward + backward of a 3x3 convolution 10x256x256x64 -> 64 (the COHESIV decoder's and heads' full-resolution
convs) takes 0.65 s with it against 1.9 s without (PyTorch: 0.97 s), and the paper-sized COHESIV train step
about 20% less time.

Switch: `HANDOBJ_JAX_XLA_CPU_YNN=0` in the environment leaves `XLA_FLAGS` alone. The flag is added only when
`XLA_FLAGS` does not already name it and the installed jaxlib is one in which it was measured (0.10.x; other
versions may not know the flag, and XLA aborts on an unknown one). It takes effect only if JAX has not yet
created its CPU backend: import `handobj_jax` before running any JAX computation (every entry point of the
project does). It changes summation orders, so values move at float32 rounding;
tests/test_xla_cpu.py checks the COHESIV network's loss and gradients with and without it.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import MutableMapping

FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
SWITCH = "HANDOBJ_JAX_XLA_CPU_YNN"
MEASURED_JAXLIB = ("0.10.",)


def enabled(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Whether `FLAG` is in `environ`'s XLA_FLAGS."""
  return "--xla_cpu_experimental_ynn_fusion_type" in environ.get("XLA_FLAGS", "")


def apply(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Adds `FLAG` to environ['XLA_FLAGS'] (see the module docstring); returns whether the flag is now set."""
  if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
    return enabled(environ)
  if enabled(environ):
    return True
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return False
  if not version.startswith(MEASURED_JAXLIB):
    return False
  environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
  return True
