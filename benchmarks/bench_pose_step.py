"""Train-step throughput of the Semi-Hand-Object pose network (configs/handobj_pose.py) on this machine.

  python benchmarks/bench_pose_step.py [--variants cpu,default] [--steps 5] [--default-batch 2]
                                      [--grouped-conv auto] (e.g. xla,matmul: one row each, same run)

For each config variant: the jitted train step of the shared trainer (`trainer.make_train_step`, state
donated, in-step crop + augmentation included) on a fixed batch of synthetic 3D examples at that variant's
image size, on every local device of the default backend. Prints a table: parameters, image and crop size,
batch, compile time (compilation and the first step), median and best step time over the timed steps, examples/s, and the peak
RSS of this process. `default` is the paper-sized model (ResNet-50 FPN, 512x512 crops): on a CPU it is run at
a small batch (`--default-batch`) to give a step time, not to train.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train_step import compile_with_flops  # pylint: disable=g-import-not-at-top,wrong-import-position


def _batch(n: int, size: int):
  from input_pipeline import pose_data  # pylint: disable=import-outside-toplevel
  from input_pipeline import synthetic_3d  # pylint: disable=import-outside-toplevel
  world = synthetic_3d.World3DConfig(height=size, width=size)
  exs = [synthetic_3d.generate_example(world, i) for i in range(n)]
  out = {k: np.stack([e[k] for e in exs]) for k in pose_data.TRAIN_FIELDS}
  out["obj_type"] = out["obj_type"].astype(np.int32)
  return out


def run_variant(variant: str, steps: int, batch_size: int | None, grouped_conv: str = "auto") -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from configs import handobj_pose  # pylint: disable=import-outside-toplevel
  from handobj_jax.tasks import pose_task  # pylint: disable=import-outside-toplevel
  from handobj_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from input_pipeline import pipeline  # pylint: disable=import-outside-toplevel

  config = handobj_pose.get_config(variant)
  if batch_size:
    config.batch_size = batch_size
  config.model.grouped_conv = grouped_conv
  mesh = pipeline.make_data_mesh()
  source_size = 256 if config.model.image_size > 128 else 128
  batch = next(pipeline.global_batches([_batch(config.batch_size, source_size)], mesh))
  task = pose_task.HandObjectPoseTask(config)
  make, _ = trainer.init_state(task, config, mesh, batch)
  state = make()
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  step = trainer.make_train_step(task, mesh)
  t0 = time.perf_counter()
  step, aot_s, flops = compile_with_flops(step, state, batch)  # Ahead of time: XLA's flop count of the step.
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  return {"variant": variant, "grouped_conv": grouped_conv, "params": params, "image": config.model.image_size, "batch": config.batch_size,
          "compile_s": compile_s, "lower_compile_s": aot_s, "flops": flops, "step_s": med, "best_s": float(np.min(times)),
          "examples_per_s": config.batch_size / med, "devices": str(jax.devices()[0].platform) + f" x{jax.device_count()}",
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="cpu,default")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--grouped-conv", default="auto",
                      help="comma list of config.model.grouped_conv values (auto, xla, matmul)")
  parser.add_argument("--default-batch", type=int, default=2, help="batch of the paper-sized model on CPU")
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  rows = []
  for variant in args.variants.split(","):
    batch = args.default_batch if (variant in ("default", "no_cr", "h", "ho") and
                                   jax.devices()[0].platform == "cpu") else None
    for impl in args.grouped_conv.split(","):
      rows.append(run_variant(variant, args.steps, batch, impl))
  print(f"\nload average: {os.getloadavg()[0]:.2f}; jax {jax.__version__}")
  print("| variant | grouped conv | devices | params | crop | batch | compile s | step s (median) | step s (best) | "
        "examples/s | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['grouped_conv']} | {r['devices']} | {r['params']:,} | {r['image']}^2 | {r['batch']} | "
          f"{r['compile_s']:.1f} | {r['step_s']:.3f} | {r['best_s']:.3f} | {r['examples_per_s']:.2f} | "
          f"{r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
  main()
