"""Tests for handobj_jax/xla_cpu.py: when the YNNPACK flag is added, and that the COHESIV network computes the same
loss and gradients with it as without it.

The flag is process-wide and fixed when JAX creates its CPU backend, so each setting runs in its own
subprocess. Reference: the same program with HANDOBJ_JAX_XLA_CPU_YNN=0 (plain XLA:CPU). Tolerance: float32
rounding: a conv -> BatchNorm -> ReLU block's gradients against float64 within 1e-5 either way; through the
whole network, loss to 1e-5 relative, gradient leaves to 1e-2 of their largest element and a median under 1e-3
(the tests' docstrings give the measured values).
"""
import os
import subprocess
import sys

import numpy as np

from handobj_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAM = r"""
import os, sys
import numpy as np
sys.path.insert(0, os.path.join(sys.argv[2], "benchmarks"))
import handobj_jax
from handobj_jax import xla_cpu
import jax
from configs import cohesiv as cohesiv_configs
from handobj_jax.tasks import cohesiv_task
import bench_train_step

config = cohesiv_configs.get_config("smoke")
task = cohesiv_task.CohesivTask(config)
batch = {k: jax.numpy.asarray(v) for k, v in bench_train_step._inputs(2, 64).items()}
variables = task.init_variables(jax.random.PRNGKey(0), batch)

def loss(params):
  return task.loss_fn(params, variables["batch_stats"], batch, jax.random.PRNGKey(1), True)[0]

value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
np.savez(sys.argv[1], loss=np.asarray(value), enabled=np.asarray(xla_cpu.enabled()), **flat)
"""


def _run(tmp_path, setting: str, program: str = _PROGRAM) -> dict:
  out = tmp_path / f"{setting}-{abs(hash(program))}.npz"
  env = dict(os.environ, HANDOBJ_JAX_XLA_CPU_YNN=setting, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "ynn_fusion" not in f)
  proc = subprocess.run([sys.executable, "-c", program, str(out), ROOT], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as data:
    return {k: data[k] for k in data.files}


_BLOCK = r"""
import sys
import numpy as np
import handobj_jax
from handobj_jax import xla_cpu
import jax
import jax.numpy as jnp
jax.config.update("jax_enable_x64", True)

def block(k, scale, bias, x, t):  # conv 3x3 -> BatchNorm (batch statistics) -> ReLU, a weighted sum.
  y = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  m = y.mean((0, 1, 2))
  y = (y - m) / jnp.sqrt(((y - m) ** 2).mean((0, 1, 2)) + 1e-5) * scale + bias
  return jnp.sum(jax.nn.relu(y) * t)

rng = np.random.default_rng(0)
args = (rng.normal(size=(3, 3, 48, 32)) * 0.1, np.ones(32), np.full(32, 0.1), rng.normal(size=(2, 32, 32, 48)),
        rng.normal(size=(2, 32, 32, 32)))
ref = jax.grad(block, argnums=(0, 1, 2))(*args)
ours = jax.jit(jax.grad(block, argnums=(0, 1, 2)))(*(jnp.asarray(a, jnp.float32) for a in args))
err = [np.max(np.abs(np.asarray(o, np.float64) - r)) / np.max(np.abs(r)) for o, r in zip(ours, ref)]
np.savez(sys.argv[1], err=np.asarray(err), enabled=np.asarray(xla_cpu.enabled()))
"""


def test_a_conv_bn_relu_block_is_as_accurate_with_the_flag_as_without(tmp_path):
  """Against float64: the gradients w.r.t. the conv kernel and BN's scale and bias (measured relative errors:
  without the flag 1e-6, 3e-7, 9e-8; with it 4e-7, 5e-7, 6e-7)."""
  off, on = _run(tmp_path, "0", _BLOCK), _run(tmp_path, "1", _BLOCK)
  assert not off["enabled"] and on["enabled"]
  assert np.all(off["err"] < 1e-5) and np.all(on["err"] < 1e-5), (off["err"], on["err"])


def test_cohesiv_loss_and_gradients_are_the_same_with_and_without_the_flag(tmp_path):
  """The smoke network (tiny encoder, U-Net decoder, heads; BatchNorm on batch 2): float32 rounding that differs
  at each of ~20 layers, and ReLUs whose inputs sit near zero, move the decoder's BatchNorm gradients most
  (measured: loss 4e-7 relative; gradient leaves median 8e-5, largest 2.5e-3 of their largest element)."""
  off, on = _run(tmp_path, "0"), _run(tmp_path, "1")
  assert not off.pop("enabled") and on.pop("enabled")  # Both settings really ran.
  np.testing.assert_allclose(on.pop("loss"), off.pop("loss"), rtol=1e-5)
  assert sorted(on) == sorted(off) and len(on) > 20
  errors = {}
  for name, ref in off.items():
    errors[name] = float(np.max(np.abs(on[name] - ref))) / max(float(np.max(np.abs(ref))), 1e-12)
  assert max(errors.values()) < 1e-2, max(errors.items(), key=lambda kv: kv[1])
  assert float(np.median(list(errors.values()))) < 1e-3


def test_apply_adds_the_flag_once_when_switched_on(monkeypatch):
  monkeypatch.setattr(xla_cpu.metadata, "version", lambda name: "0.10.2")
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert not xla_cpu.apply(env) and env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"  # Opt-in.
  env[xla_cpu.SWITCH] = "1"
  assert xla_cpu.apply(env) and xla_cpu.apply(env)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + xla_cpu.FLAG
  env = {xla_cpu.SWITCH: "0"}
  assert not xla_cpu.apply(env) and "XLA_FLAGS" not in env
  env = {xla_cpu.SWITCH: "1", "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"}  # Kept as is.
  assert xla_cpu.apply(env) and env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
  monkeypatch.setattr(xla_cpu.metadata, "version", lambda name: "0.11.0")  # Not measured: left alone.
  env = {xla_cpu.SWITCH: "1"}
  assert not xla_cpu.apply(env) and "XLA_FLAGS" not in env
