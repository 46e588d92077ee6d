"""Throughput of the synthetic hand-object world.

Usage:
  python benchmarks/bench_synthetic.py [--clips 20] [--sizes 128,256]

Prints a table with one row per (config, size) and a clips/s column: clip generation, the TFDS build,
examples/s through the tf.data training pipeline into global `jax.Array`s, and frames/s of the NumPy
rasteriser on a hand-sized scene (that row counts frames, not clips). Each benchmark is a `Row` produced by a
function registered in `BENCHMARKS`; add another (e.g. a tf.data pipeline) by appending a function that
returns rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import synthetic_world as sw  # pylint: disable=g-import-not-at-top


@dataclasses.dataclass
class Row:
  config: str
  size: int
  clips_per_s: float
  ms_per_clip: float
  note: str = ""


# Named world configurations to benchmark.
WORLD_CONFIGS = {
    "default": {},
    "noisy+camera": dict(p_camera_motion=1.0, flow_noise_sigma=0.5, flow_outlier_frac=0.02,
                         vertex_noise_sigma=1.0, lighting_change=0.2),
}


def bench_generate_clip(sizes: list[int], num_clips: int) -> list[Row]:
  """Single-process `generate_clip` throughput (seeds 0..num_clips-1 after one warm-up clip)."""
  rows = []
  for name, overrides in WORLD_CONFIGS.items():
    for size in sizes:
      config = sw.WorldConfig(height=size, width=size, **overrides)
      sw.generate_clip(config, 10**6)  # Warm-up (imports, OpenCV thread pool).
      start = time.perf_counter()
      for seed in range(num_clips):
        sw.generate_clip(config, seed)
      elapsed = time.perf_counter() - start
      rows.append(Row(f"generate_clip/{name}", size, num_clips / elapsed, 1e3 * elapsed / num_clips,
                      f"{num_clips} clips, 1 process"))
  return rows


def bench_tfdata(sizes: list[int], num_clips: int) -> list[Row]:
  """Examples/s read back through the training tf.data pipeline (decode, shuffle, batch 2) into global
  `jax.Array`s, from a `synthetic_handobj` build of `num_clips` clips made in a temporary directory."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import tfds_synthetic  # pylint: disable=g-import-not-at-top

  rows = []
  mesh = pipeline.make_data_mesh()
  for size in sizes:
    with tempfile.TemporaryDirectory() as data_dir:
      config = tfds_synthetic.SyntheticHandObjConfig(
          name=f"bench{size}", height=size, width=size, num_train=num_clips, num_validation=1, num_test=1)
      builder = tfds_synthetic.SyntheticHandobj(data_dir=data_dir, config=config)
      start = time.perf_counter()
      builder.download_and_prepare()
      build_s = time.perf_counter() - start
      rows.append(Row("tfds build (generate+write)", size, (num_clips + 2) / build_s,
                      1e3 * build_s / (num_clips + 2), f"{num_clips + 2} clips"))
      ds = pipeline.train_dataset(pipeline.load_split(builder, "train"), batch_size=2, seed=0, cache=False)
      batches = pipeline.global_batches(ds, mesh)
      next(batches)  # Warm-up: opens files, starts the prefetch threads.
      n_batches = max(num_clips // 2, 4)
      start = time.perf_counter()
      for _ in range(n_batches):
        batch = next(batches)
      batch["frames"].block_until_ready()
      elapsed = time.perf_counter() - start
      rows.append(Row("tf.data -> global jax.Array", size, 2 * n_batches / elapsed,
                      1e3 * elapsed / (2 * n_batches), f"{n_batches} batches of 2, all fields decoded"))
  return rows


def bench_rasterizer(sizes: list[int], num_clips: int) -> list[Row]:
  """Frames/s of `rasterizer.render_meshes` on a hand-sized scene: a 0.1 m "hand" ellipsoid and a nearer
  0.08 m object (482 vertices / 960 faces each; MANO has 778 / 1538) each covering about 5% of the image,
  smooth Lambert shading; `num_clips` timed renders after one warm-up."""
  from input_pipeline import rasterizer  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_3d  # pylint: disable=g-import-not-at-top

  hand_v, hand_f = synthetic_3d.object_mesh("ellipsoid", [0.1, 0.1, 0.1])
  obj_v, obj_f = synthetic_3d.object_mesh("ellipsoid", [0.08, 0.08, 0.08])
  meshes = [(hand_v + [0.0, 0.0, 0.5], hand_f), (obj_v + [0.03, 0.02, 0.45], obj_f)]
  rows = []
  for size in sizes:
    k = np.array([[1.2 * size, 0, (size - 1) / 2], [0, 1.2 * size, (size - 1) / 2], [0, 0, 1]])
    rasterizer.render_meshes(meshes, k, size, size, albedo=np.ones((2, 3)))  # Warm-up.
    start = time.perf_counter()
    for _ in range(num_clips):
      rasterizer.render_meshes(meshes, k, size, size, albedo=np.ones((2, 3)))
    elapsed = time.perf_counter() - start
    rows.append(Row("render_meshes hand+object", size, num_clips / elapsed, 1e3 * elapsed / num_clips,
                    f"{num_clips} frames (not clips), 964 V / 1920 F"))
  return rows


BENCHMARKS: list[Callable[[list[int], int], list[Row]]] = [bench_generate_clip, bench_tfdata,
                                                           bench_rasterizer]


def format_table(rows: list[Row]) -> str:
  header = f"{'config':<32} {'size':>5} {'clips/s':>9} {'ms/clip':>9}  note"
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.config:<32} {r.size:>5} {r.clips_per_s:>9.2f} {r.ms_per_clip:>9.1f}  {r.note}")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=20, help="clips per row")
  parser.add_argument("--sizes", default="128,256", help="comma-separated square image sizes")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  rows = []
  for bench in BENCHMARKS:
    rows.extend(bench(sizes, args.clips))
  print(format_table(rows))


if __name__ == "__main__":
  main()
