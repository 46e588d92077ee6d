"""Grouped 3x3 convolution on CPU: the formulations of handobj_jax.models.grouped_conv against PyTorch.

Workload (SE-ResNeXt-50's conv2 in stage 1 at a 256 x 256 input, batch 10): NHWC 10 x 64 x 64 x 256,
256 -> 256 channels, 32 groups of 8, stride 1, padding 1, float32. "fwd" is the output alone; "fwd+bwd" is
the value and the gradients of sum(y^2) w.r.t. the input and the kernel. Times are the minimum over repeats
after compilation, all measured in this one run; the last column is each row's fwd+bwd time over PyTorch's.

Rows:
  xla           lax.conv_general_dilated(..., feature_group_count=32) (flax.linen.Conv's path)
  block_diag    a dense conv on the block-diagonal 256 x 256 kernel (same values; 32x the FLOPs;
                CPU 'auto' for <= 4 groups)
  matmul        im2col + one batched matmul over the groups (CPU 'auto' for > 4 groups)
  torch         torch.nn.functional.conv2d(groups=32), NCHW, eager (needs the reference extra)

Usage: python benchmarks/bench_grouped_conv.py [--batch 10] [--size 64] [--channels 256] [--groups 32]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax.models import grouped_conv as gc

PAD = ((1, 1), (1, 1))


def _best(fn, repeats):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def _jax_rows(x, k, groups, repeats):
  convs = {impl: (lambda x, k, impl=impl: gc.grouped_conv(x, k, (1, 1), PAD, groups, impl))
           for impl in ("xla", "block_diag", "matmul")}
  rows = {}
  for name, conv in convs.items():
    fwd = jax.jit(conv)
    both = jax.jit(jax.value_and_grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
    rows[name] = (_best(lambda: fwd(x, k).block_until_ready(), repeats),
                  _best(lambda: jax.block_until_ready(both(x, k)), repeats))
  return rows


def _torch_row(x, k, groups, repeats):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  kt = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy())

  def fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(xt, kt, padding=1, groups=groups)

  def both():
    xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()
    torch.nn.functional.conv2d(xg, kg, padding=1, groups=groups).pow(2).sum().backward()

  return _best(fwd, repeats), _best(both, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=10)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--groups", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  c, g = args.channels, args.groups
  x = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, c)).astype(np.float32))
  k = jnp.asarray(rng.normal(size=(3, 3, c // g, c)).astype(np.float32) / np.sqrt(9 * c / g))
  rows = _jax_rows(x, k, g, args.repeats)
  torch_row = _torch_row(x, k, g, args.repeats)
  if torch_row is not None:
    rows["torch"] = torch_row
  print(f"grouped 3x3 conv, NHWC {args.batch}x{args.size}x{args.size}x{c} -> {c}, {g} groups, float32, "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()})")
  print(f"{'formulation':<12} {'fwd ms':>10} {'fwd+bwd ms':>12} {'fwd+bwd / torch':>16}")
  for name, (fwd, both) in rows.items():
    ratio = f"{both / torch_row[1]:.1f}x" if torch_row else "n/a"
    print(f"{name:<12} {fwd * 1e3:>10.1f} {both * 1e3:>12.1f} {ratio:>16}")


if __name__ == "__main__":
  main()
