"""Peak memory (RSS) of the `pseudolabel` job at 100 and 1000 clips: it must not grow with the clip count.

Each row runs the real job (`python -m handobj_jax.main --config=configs/pseudolabel.py:tiny`) in a fresh
subprocess on clips generated on the fly (`config.pseudo.source=generator`, the synthetic world at 64x64,
no source dataset on disk), all in the train split, into a fresh data dir; the peak RSS is the child's
ru_maxrss (resource.getrusage(RUSAGE_CHILDREN), read after each child ends, so each row runs in a
separate Python process that starts only that child). Also printed: wall time, clips/s and the number of
examples written.

Usage: python benchmarks/bench_pseudolabel.py [--clips 100 1000] [--shard-clips 16] [--batch-clips 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(clips: int, shard_clips: int, batch_clips: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    data, work = os.path.join(tmp, "data"), os.path.join(tmp, "work")
    os.makedirs(data)
    cmd = [sys.executable, "-m", "handobj_jax.main", "--config=configs/pseudolabel.py:tiny",
           f"--workdir={work}", f"--config.data.data_dir={data}", "--config.pseudo.source=generator",
           f"--config.pseudo.num_clips.train={clips}", "--config.pseudo.num_clips.validation=0",
           "--config.pseudo.num_clips.test=0", f"--config.pseudo.shard_clips={shard_clips}",
           f"--config.pseudo.batch_clips={batch_clips}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.path.join(work, "pseudolabel_report.json")) as f:
      report = json.load(f)
  return {"clips": clips, "peak_rss_mib": peak_kib / 1024.0, "wall_s": wall,
          "examples": report["splits"]["train"]["examples"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, nargs="+", default=[100, 1000])
  parser.add_argument("--shard-clips", type=int, default=16)
  parser.add_argument("--batch-clips", type=int, default=8)
  parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # Internal: one row, as JSON.
  args = parser.parse_args()
  if args.one:
    print(json.dumps(run_once(args.one, args.shard_clips, args.batch_clips)))
    return
  rows = []
  for clips in args.clips:  # One process per row: ru_maxrss of children is a running maximum.
    out = subprocess.run([sys.executable, __file__, f"--one={clips}", f"--shard-clips={args.shard_clips}",
                          f"--batch-clips={args.batch_clips}"], check=True, capture_output=True, text=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(f"pseudolabel job, synthetic world 64x64 generated on the fly, shard_clips={args.shard_clips}, "
        f"batch_clips={args.batch_clips}, JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '(default)')}")
  print("| clips | examples | peak RSS (MiB) | wall (s) | clips/s (incl. start-up) |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['clips']} | {r['examples']} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} | "
          f"{r['clips'] / r['wall_s']:.1f} |")


if __name__ == "__main__":
  main()
