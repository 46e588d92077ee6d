"""What resuming a run costs in the input pipeline: time to the first batch after a restart at step s.

Usage:
  python benchmarks/bench_resume.py [--examples 200] [--batch 8] [--steps 0,100,1000,10000]

The split is `--examples` synthetic 64 x 64 x 3 images (decoded from PNG bytes in the pipeline, as real
examples are). For each resume step it times building the pipeline and reading its first batch two ways, in
the same run: the epoch-indexed stream of `pipeline.train_dataset` (epoch e shuffled with a seed from (seed, e);
skips fewer than one epoch) and the earlier replay (one reshuffling shuffle + repeat, then `skip(step)`), which
decodes every earlier batch. It also checks that both first batches are full and that the epoch stream's batch
at step s equals the one an uninterrupted run reads at s. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position


def split(n: int) -> tf.data.Dataset:
  rng = np.random.default_rng(0)
  pngs = [tf.io.encode_png(rng.integers(0, 255, (64, 64, 3), np.uint8)).numpy() for _ in range(n)]
  ds = tf.data.Dataset.from_tensor_slices({"png": pngs, "index": np.arange(n)})
  return ds.map(lambda ex: {"image": tf.io.decode_png(ex["png"]), "index": ex["index"]})


def replay(ds: tf.data.Dataset, batch: int, start_step: int) -> tf.data.Dataset:
  """The earlier resume: replay the reshuffled stream and skip `start_step` batches."""
  ds = ds.shuffle(1024, seed=0, reshuffle_each_iteration=True).repeat().batch(batch, drop_remainder=True)
  return ds.skip(start_step)


def first_batch(make) -> tuple[float, dict]:
  t0 = time.perf_counter()
  batch = next(iter(make()))
  return time.perf_counter() - t0, batch


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=200)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", default="0,100,1000,10000")
  args = parser.parse_args()
  steps = [int(s) for s in args.steps.split(",")]
  ds = split(args.examples)
  print(f"resume cost: split of {args.examples} PNG-decoded 64x64 images, batch {args.batch} "
        f"({args.examples // args.batch} steps per epoch)")
  print(f"| resume step | epochs replayed | epoch stream (s) | replay with skip (s) | replay / stream |")
  print("|---|---|---|---|---|")
  for step in steps:
    t_new, b_new = first_batch(lambda s=step: pipeline.train_dataset(ds, batch_size=args.batch, seed=0,
                                                                     start_step=s, cache=False))
    t_old, b_old = first_batch(lambda s=step: replay(ds, args.batch, s))
    assert b_new["image"].shape[0] == b_old["image"].shape[0] == args.batch
    if step <= 1000:  # The stream at step s is the uninterrupted stream's batch s.
      it = iter(pipeline.train_dataset(ds, batch_size=args.batch, seed=0, cache=False))
      for _ in range(step):
        next(it)
      np.testing.assert_array_equal(next(it)["index"], b_new["index"])
    print(f"| {step} | {step * args.batch / args.examples:.1f} | {t_new:.3f} | {t_old:.3f} | "
          f"{t_old / t_new:.1f}x |")


if __name__ == "__main__":
  main()
