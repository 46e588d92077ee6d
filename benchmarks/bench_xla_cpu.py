"""XLA:CPU with and without YNNPACK for dot / convolution fusions (handobj_jax/xla_cpu.py), against PyTorch.

Each column runs in its own subprocess (XLA flags are fixed when JAX creates its CPU backend):
  off    HANDOBJ_JAX_XLA_CPU_YNN=0: plain XLA:CPU
  on     HANDOBJ_JAX_XLA_CPU_YNN=1 (opt-in): --xla_cpu_experimental_ynn_fusion_type=dot
  torch  torch.nn.functional.conv2d, NCHW, eager (needs the reference extra)
Workloads (float32, NHWC for JAX): the 3x3 convolutions of the COHESIV network at 256^2, batch 10. "fwd" is
the output alone, "fwd+bwd" the value and the gradients of sum(y^2) w.r.t. input and kernel; the minimum of
--repeats runs after compilation. Grouped rows use `config.model.grouped_conv='auto'`.
With --step, also the whole COHESIV train step of benchmarks/bench_train_step.py (SE-ResNeXt-50 U-Net,
batch 10, 256^2): seconds per step, JAX off / on and PyTorch.

Usage: python benchmarks/bench_xla_cpu.py [--repeats 3] [--step]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))
from bench_grouped_conv import _best  # pylint: disable=g-import-not-at-top,wrong-import-position

# name: (N, H, Cin, Cout, groups, stride)
CASES = {
    "dense 64->64 at 256^2 (decoder, heads)": (10, 256, 64, 64, 1, 1),
    "dense 256->256 at 32^2": (10, 32, 256, 256, 1, 1),
    "grouped 128, 32 groups, at 64^2 (stage 1)": (10, 64, 128, 128, 32, 1),
    "grouped 512, 32 groups, at 16^2 (stage 3)": (10, 16, 512, 512, 32, 1),
}


def _worker(column: str, repeats: int) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  out = {}
  for name, (n, h, cin, cout, g, s) in CASES.items():
    x = rng.standard_normal((n, h, h, cin)).astype(np.float32)
    k = (rng.standard_normal((3, 3, cin // g, cout)) * 0.1).astype(np.float32)
    if column == "torch":
      import torch  # pylint: disable=import-outside-toplevel
      xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())

      def fwd(xt=xt, kt=kt, g=g, s=s):
        with torch.no_grad():
          torch.nn.functional.conv2d(xt, kt, stride=s, padding=1, groups=g)

      def both(xt=xt, kt=kt, g=g, s=s):
        xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()
        torch.nn.functional.conv2d(xg, kg, stride=s, padding=1, groups=g).pow(2).sum().backward()
    else:
      import handobj_jax  # pylint: disable=import-outside-toplevel,unused-import  # Sets the flags first.
      import jax  # pylint: disable=import-outside-toplevel
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
      from handobj_jax.models import grouped_conv  # pylint: disable=import-outside-toplevel
      conv = lambda x, k, g=g, s=s: grouped_conv.grouped_conv(x, k, (s, s), ((1, 1), (1, 1)), g, "auto")
      f = jax.jit(conv)
      fb = jax.jit(jax.value_and_grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
      xj, kj = jnp.asarray(x), jnp.asarray(k)
      fwd = lambda f=f, xj=xj, kj=kj: f(xj, kj).block_until_ready()
      both = lambda fb=fb, xj=xj, kj=kj: jax.block_until_ready(fb(xj, kj))
    out[name] = (_best(fwd, repeats), _best(both, repeats))
  return out


def _run(column: str, args, script_args) -> dict:
  env = dict(os.environ, HANDOBJ_JAX_XLA_CPU_YNN="0" if column == "off" else "1")
  if column == "off":
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "ynn_fusion" not in f)
  proc = subprocess.run([sys.executable, *script_args], env=env, cwd=_ROOT, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    print(f"[{column}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return {}
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  return json.loads(lines[-1]) if lines else {}


def _step_seconds(column: str, args) -> float | None:
  framework = "torch" if column == "torch" else "jax"
  res = _run(column, args, [os.path.join(_ROOT, "benchmarks", "bench_train_step.py"), "--worker", framework,
                            "--steps", str(args.repeats)])
  return res.get("step_s_median")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--step", action="store_true", help="also time the whole COHESIV train step")
  parser.add_argument("--worker", choices=("off", "on", "torch"), default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    sys.path.insert(0, _ROOT)
    print(json.dumps(_worker(args.worker, args.repeats)))
    return
  columns = ("off", "on", "torch")
  res = {c: _run(c, args, [os.path.abspath(__file__), "--worker", c, "--repeats", str(args.repeats)])
         for c in columns}
  print(f"XLA:CPU without / with YNNPACK dot fusions, and PyTorch: ms (min of {args.repeats}); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  print("| workload | fwd off | fwd on | fwd torch | fwd+bwd off | fwd+bwd on | fwd+bwd torch | on / torch |")
  print("|---|---|---|---|---|---|---|---|")
  cell = lambda c, name, i: f"{1e3 * res[c][name][i]:.0f}" if name in res[c] else "-"
  for name in CASES:
    ratio = (f"{res['on'][name][1] / res['torch'][name][1]:.2f}"
             if name in res["on"] and name in res["torch"] else "-")
    print(f"| {name} | {cell('off', name, 0)} | {cell('on', name, 0)} | {cell('torch', name, 0)} | "
          f"{cell('off', name, 1)} | {cell('on', name, 1)} | {cell('torch', name, 1)} | {ratio} |")
  if args.step:
    steps = {c: _step_seconds(c, args) for c in columns}
    fmt = lambda v: f"{v:.2f}" if v else "-"
    print("\nCOHESIV train step (SE-ResNeXt-50 U-Net, batch 10, 256^2), s per step (median of "
          f"{args.repeats}):")
    print("| JAX off | JAX on | PyTorch | on / PyTorch |")
    print("|---|---|---|---|")
    ratio = f"{steps['on'] / steps['torch']:.2f}" if steps["on"] and steps["torch"] else "-"
    print(f"| {fmt(steps['off'])} | {fmt(steps['on'])} | {fmt(steps['torch'])} | {ratio} |")


if __name__ == "__main__":
  main()
