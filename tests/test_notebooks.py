"""The Colab notebooks in notebooks/: stored valid and without outputs, and executed end to end at smoke
size in a Jupyter kernel running this interpreter.

The quick start trains `configs/cohesiv.py:smoke` and evaluates it through the command line, then
`segment_your_video` runs the predict API with that workdir on a synthetic frame and a generated video (one
test, about 1.5 minutes on 2 cores).
Parameters are injected as papermill does: a cell tagged `injected-parameters` right after the cell tagged
`parameters`.
"""

import ast
import json
import os
import shutil
import sys
import time

import cv2
import nbformat
import numpy as np
import pytest
from jupyter_client import kernelspec
from jupyter_client import manager
from nbclient import NotebookClient

from input_pipeline import synthetic_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart.ipynb", "segment_your_video.ipynb")
KERNEL = "handobj_jax_test"
CELL_TIMEOUT_S = 600


def _read(name: str) -> nbformat.NotebookNode:
  with open(os.path.join(NOTEBOOK_DIR, name)) as f:
    return nbformat.read(f, as_version=4)


def inject_parameters(nb: nbformat.NotebookNode, params: dict) -> nbformat.NotebookNode:
  """Inserts `NAME = repr(value)` lines after the one cell tagged `parameters`; every name must be one that
  cell assigns (a typo would otherwise run the notebook with its defaults)."""
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  i = tagged[0]
  assigned = {t.id for node in ast.parse(nb.cells[i].source).body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
  unknown = sorted(set(params) - assigned)
  assert not unknown, f"not parameters of this notebook: {unknown} (it has {sorted(assigned)})"
  cell = nbformat.v4.new_code_cell("# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(i + 1, cell)
  return nb


def execute(name: str, params: dict, tmp) -> nbformat.NotebookNode:
  """Runs notebook `name` with `params` in a kernel of this interpreter (its own kernelspec in `tmp`, so a
  `python3` kernel installed elsewhere is never picked), from notebooks/ as Jupyter would; the executed
  copy is saved next to the kernelspec for inspection."""
  spec_dir = tmp / "kernels" / KERNEL
  spec_dir.mkdir(parents=True, exist_ok=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "handobj_jax tests", "language": "python"}))
  km = manager.KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernelspec.KernelSpecManager(
      kernel_dirs=[str(tmp / "kernels")]), connection_file=str(tmp / f"connection_{name}.json"))
  nb = inject_parameters(_read(name), params)
  client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": NOTEBOOK_DIR}})
  start = time.time()
  try:
    client.execute()
  finally:
    with open(tmp / f"executed_{name}", "w") as f:
      nbformat.write(nb, f)
  print(f"{name}: {time.time() - start:.1f} s")
  return nb


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _text(nb) -> str:
  return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")


def _no_errors(nb):
  errors = [o for o in _outputs(nb) if o.output_type == "error"]
  assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]


# ---- Stored notebooks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_and_valid(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
  assert nb.metadata.kernelspec.name == "python3"
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and tagged[0].cell_type == "code"
  assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_inject_parameters_places_the_cell_and_refuses_unknown_names():
  nb = inject_parameters(_read("quickstart.ipynb"), {"VARIANT": "smoke"})
  i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  assert nb.cells[i + 1].metadata.tags == ["injected-parameters"]
  assert "VARIANT = 'smoke'" in nb.cells[i + 1].source
  with pytest.raises(AssertionError, match="VARIANTS"):
    inject_parameters(_read("quickstart.ipynb"), {"VARIANTS": "smoke"})


# ---- Executed at smoke size -------------------------------------------------------------------------


def _write_video(path: str, height: int, width: int) -> str:
  """A synthetic clip (10 frames) as MP4, or MJPG AVI when this OpenCV has no MP4 encoder."""
  clip = synthetic_world.generate_clip(synthetic_world.WorldConfig(height=height, width=width), 7)
  writer = cv2.VideoWriter(path + ".mp4", cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
  if not writer.isOpened():
    path += ".avi"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
  else:
    path += ".mp4"
  for frame in clip["frames"]:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def test_quickstart_then_segment_your_video(smoke_data_dir, tmp_path):
  """Both notebooks in one test, so that xdist never runs the quick start twice or idles a worker waiting for
  it: the quick start trains and evaluates at smoke size, then `segment_your_video` uses that workdir. The
  data dir is a copy of the shared smoke data (the notebook would build the same data itself;
  test_cohesiv_train covers that build)."""
  data_dir = tmp_path / "data"
  shutil.copytree(smoke_data_dir, data_dir)
  workdir = tmp_path / "work"
  nb = execute("quickstart.ipynb", {"VARIANT": "smoke", "WORKDIR": str(workdir), "DATA_DIR": str(data_dir),
                                    "NUM_FIGURES": 2}, tmp_path)
  _check_quickstart(workdir, nb)
  _check_segment_your_video(workdir, tmp_path)


def _check_quickstart(workdir, nb):
  _no_errors(nb)
  assert [s for s in os.listdir(workdir / "checkpoints") if s.isdigit()], "no checkpoint"
  for name in ("config.json", "inference_stats.npz", "thresholds.json", "eval/report.md", "eval/report.json"):
    assert (workdir / name).is_file(), name
  figures = sorted((workdir / "eval" / "figures").glob("*.png"))
  assert figures
  assert _images(nb) == min(2, len(figures))  # NUM_FIGURES = 2; the smoke run draws no training panel.
  report = (workdir / "eval" / "report.md").read_text()
  shown = [o.data["text/markdown"] for o in _outputs(nb) if "text/markdown" in o.get("data", {})]
  assert shown == [report] and "| COHESIV |" in report
  assert "configs/cohesiv.py:smoke" in _text(nb) and "--config.job=eval" in _text(nb)


def _check_segment_your_video(workdir, tmp_path):
  video = _write_video(str(tmp_path / "clip"), 96, 128)
  out = tmp_path / "out"
  unused = tmp_path / "smoke_unused"
  nb = execute("segment_your_video.ipynb", {"CHECKPOINT": str(workdir), "VIDEO": video, "OUT": str(out),
                                            "EVERY": 3, "MAX_FRAMES": 0, "SMOKE_WORKDIR": str(unused)},
               tmp_path)
  _no_errors(nb)
  assert not unused.exists(), "trained a smoke model although CHECKPOINT holds one"
  assert f"thresholds: {workdir / 'thresholds.json'}" in _text(nb)  # the eval job's, not the defaults
  # The image step: a synthetic frame queried at its hands' query points.
  meta = json.load(open(out / "synthetic_frame_queries.json"))
  assert meta["source"] == "user" and meta["image_size_hw"] == [128, 128] and meta["queries_xy"]
  for i in range(len(meta["queries_xy"])):
    for kind in ("hand", "object"):
      mask = cv2.imread(str(out / f"synthetic_frame_{kind}_{i}.png"), cv2.IMREAD_UNCHANGED)
      assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
  for name in ("all", "annotated", "figure"):
    assert (out / f"synthetic_frame_{name}.png").is_file(), name
  # The video step: frames 0, 3, 6, 9 of 10, and the annotated video.
  assert sorted(os.listdir(out / "frames")) == [f"clip_{t:06d}.png" for t in (0, 3, 6, 9)]
  assert [f for f in os.listdir(out) if f.startswith("clip_annotated.")]
  assert _images(nb) == 3  # annotated image, its figure panel, the strip of video frames
