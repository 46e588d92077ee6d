"""Throughput of the synthetic hand-object world.

Usage:
  python benchmarks/bench_synthetic.py [--clips 20] [--sizes 128,256]

Prints a table with one row per (config, size) and a clips/s column. Each benchmark is a `Row` produced by a
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


BENCHMARKS: list[Callable[[list[int], int], list[Row]]] = [bench_generate_clip]


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
