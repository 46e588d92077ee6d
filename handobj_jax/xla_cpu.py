"""An opt-in XLA:CPU setting that makes this project's convolutions faster: YNNPACK for dot / conv fusions.

What it sets: `--xla_cpu_experimental_ynn_fusion_type=dot` in `XLA_FLAGS`, when `handobj_jax` is imported with
`HANDOBJ_JAX_XLA_CPU_YNN=1` in the environment. XLA:CPU then hands dot and convolution fusions to YNNPACK.
Measured on a 2-core CPU (benchmarks/bench_xla_cpu.py prints the table): forward + backward of a 3x3
convolution 10x256x256x64 -> 64 (the COHESIV decoder's and heads' full-resolution convs) takes 0.64 s with it
against 1.4 s without (PyTorch: 0.99 s), and the paper-sized COHESIV train step 14.6 s against 18.6 s.

Why it is off by default: with it, the semi-supervised pose ablation at smoke size
(tests/test_pose_semi_job.py::test_ablation_runner_tables_and_resume) stops at a NaN loss in its second
retraining step, deterministically, and passes without it. The cause is not found yet; a flag XLA calls
experimental stays opt-in until it is.

The flag is added only when `XLA_FLAGS` does not already name it and the installed jaxlib is one in which it
was measured (0.10.x; other versions may not know the flag, and XLA aborts on an unknown one). It takes effect
only if JAX has not yet created its CPU backend: import `handobj_jax` before running any JAX computation
(every entry point of the project does). It changes summation orders, so values move at float32 rounding;
tests/test_xla_cpu.py checks a conv -> BatchNorm -> ReLU block against float64 and the COHESIV network's loss
and gradients with and without it.
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
  if environ.get(SWITCH, "0").strip().lower() not in ("1", "true", "yes", "on"):
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
