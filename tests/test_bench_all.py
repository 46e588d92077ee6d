"""benchmarks/bench_all.py end to end at its smoke preset: every table is printed, each comparison has a
numeric ratio, and every step's achieved GFLOP/s is a plausible fraction of the measured peaks.

Numbers are not checked against targets: the smoke sizes are tiny and the machine may be busy. Needs the
`reference` extra (PyTorch, timm). XLA compiles ResNet-50's train step and forward and the pose network's
step: too long for the default suite, hence `slow`.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table title prefix -> the column holding its ratio (None: no ratio column).
TABLES = {
    "Machine peaks": None,
    "Responsibility frames/s": "JAX / NumPy",
    "COHESIV train step examples/s": "JAX / PyTorch",
    "COHESIV inference examples/s": "JAX / PyTorch",
    "COHESIV inference latency": "JAX / PyTorch (= PyTorch ms / JAX ms)",
    "Pose network train step": "/ conv peak",
    "tf.data input examples/s": "tf.data / step",
    "Achieved GFLOP/s": "/ matmul peak",
    "Compile time": "JAX peak RSS",
}


def _tables(text: str) -> dict[str, tuple[str, list[dict[str, str]]]]:
  """'### title' -> (the load-average line, rows as {column: cell}) of each markdown table."""
  tables, lines = {}, text.splitlines()
  for i, line in enumerate(lines):
    if not line.startswith("### "):
      continue
    header = [c.strip() for c in lines[i + 3].strip("|").split("|")]
    rows = []
    for row in lines[i + 5:]:
      if not row.startswith("|"):
        break
      rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
    tables[line[4:]] = (lines[i + 1], rows)
  return tables


@pytest.mark.slow
def test_smoke_preset_prints_every_table():
  proc = subprocess.run([sys.executable, os.path.join("benchmarks", "bench_all.py"), "--preset", "smoke"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  tables = _tables(proc.stdout)
  for prefix, ratio_column in TABLES.items():
    titles = [t for t in tables if t.startswith(prefix)]
    assert len(titles) == 1, f"no table {prefix!r} in:\n{proc.stdout}"
    load, rows = tables[titles[0]]
    assert load.startswith("load average "), load
    assert rows, f"table {titles[0]!r} is empty"
    if ratio_column:
      for row in rows:
        assert float(row[ratio_column]) > 0, (titles[0], row)

  _, gflops = tables[next(t for t in tables if t.startswith("Achieved GFLOP/s"))]
  assert any(r["step"].startswith("train ") for r in gflops) and any(r["step"].startswith("pose ")
                                                                      for r in gflops)
  for row in gflops:
    for column in ("/ matmul peak", "/ conv peak"):
      assert 0 < float(row[column]) <= 1.5, (column, row)
