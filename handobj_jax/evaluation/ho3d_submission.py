"""The HO-3D challenge submission: `pred.json` and the `pred.zip` to upload (CodaLab, v2 or v3).

Layout (the official evaluation reads exactly this): `pred.json` is a JSON list `[xyz_list, verts_list]`, with
one entry per line of the download's evaluation.txt, in that order: a 21 x 3 list of joints (MANO's 16 joints,
then the fingertips at HO-3D's vertices 728, 353, 442, 576, 694: the project's joint order) and a 778 x 3 list of
MANO vertices, in metres, in the OpenGL camera frame (a hand in front of the camera has z < 0). `pred.zip` holds
pred.json at its root. Coordinates are written with 7 decimals (0.1 micrometre, far below every threshold of
the metrics).

`check_submission` reads a written file back (json or zip) and validates it: two lists of the expected count,
every entry 21 x 3 / 778 x 3 and finite, the joints in front of an OpenGL camera (the official tool's own check),
and the frame order: the test protocol places each predicted hand at the given root joint, so entry i's wrist
must sit on the root joint of evaluation.txt's line i (when those roots are given).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np

from handobj_jax import errors
from handobj_jax import fileio
from handobj_jax.geometry import camera_frames

JSON_NAME = "pred.json"
ZIP_NAME = "pred.zip"


class SubmissionError(errors.InputError):
  """A submission file that the official evaluation would reject or misread; the message names the entry."""


def _rows(a: np.ndarray) -> str:
  return "[" + ",".join("[" + ",".join(f"{v:.7f}" for v in p) + "]" for p in a) + "]"


def write_submission(out_dir: str, joints_cv: np.ndarray, verts_cv: np.ndarray) -> tuple[str, str]:
  """Writes `pred.json` and `pred.zip` (atomically) from OpenCV-frame predictions in evaluation.txt order.

  Args:
    out_dir: output folder.
    joints_cv: [N, 21, 3] metres, the project's (= HO-3D's) joint order.
    verts_cv: [N, 778, 3] metres.

  Returns:
    (json path, zip path).
  """
  joints = np.asarray(joints_cv, np.float64)
  verts = np.asarray(verts_cv, np.float64)
  if joints.ndim != 3 or joints.shape[1:] != (21, 3) or verts.shape != (joints.shape[0], 778, 3):
    raise SubmissionError(f"predictions must be [N, 21, 3] joints and [N, 778, 3] vertices, got {joints.shape} and "
                          f"{verts.shape}")
  if not (np.all(np.isfinite(joints)) and np.all(np.isfinite(verts))):
    bad = int(np.flatnonzero(~(np.isfinite(joints).all((1, 2)) & np.isfinite(verts).all((1, 2))))[0])
    raise SubmissionError(f"prediction {bad} holds non-finite coordinates; nothing written")
  joints_gl, verts_gl = camera_frames.flip_points(joints), camera_frames.flip_points(verts)
  text = ("[[" + ",".join(_rows(j) for j in joints_gl) + "],[" + ",".join(_rows(v) for v in verts_gl) + "]]")
  json_path = fileio.write_text_atomic(os.path.join(out_dir, JSON_NAME), text)
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr(JSON_NAME, text)
  zip_path = fileio.write_bytes_atomic(os.path.join(out_dir, ZIP_NAME), buf.getvalue())
  return json_path, zip_path


def read_submission(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(joints [N, 21, 3], vertices [N, 778, 3]) in the file's OpenGL frame, from pred.json or pred.zip."""
  try:
    if path.endswith(".zip"):
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if names != [JSON_NAME]:
          raise SubmissionError(f"{path}: the zip must hold only {JSON_NAME} at its root, holds {names}")
        data = json.loads(z.read(JSON_NAME))
    else:
      with open(path) as f:
        data = json.load(f)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise SubmissionError(f"{path}: not a readable submission ({type(e).__name__}: {e})") from None
  if not isinstance(data, list) or len(data) != 2:
    raise SubmissionError(f"{path}: expected a JSON list [xyz_list, verts_list]")
  out = []
  for name, entries, k in (("xyz_list", data[0], 21), ("verts_list", data[1], 778)):
    try:
      arr = np.asarray(entries, np.float64)
    except (TypeError, ValueError):
      arr = None
    if arr is None or arr.ndim != 3 or arr.shape[1:] != (k, 3):
      bad = next((i for i, e in enumerate(entries) if np.shape(e) != (k, 3)), None)
      raise SubmissionError(f"{path}: {name} entry {bad} is not {k} x 3 (shape {np.shape(entries[bad])})"
                            if bad is not None else f"{path}: {name} is not a list of {k} x 3 lists")
    out.append(arr)
  return out[0], out[1]


def check_submission(path: str, expected_count: int, roots_cv: np.ndarray | None = None,
                     root_atol: float = 1e-5) -> dict[str, Any]:
  """Validates a written submission (module docstring); returns a summary, raises SubmissionError on a problem.

  Args:
    path: pred.json or pred.zip.
    expected_count: lines of evaluation.txt.
    roots_cv: optional [N, 3] given root joints (OpenCV frame) in evaluation.txt order.
    root_atol: metres.
  """
  joints, verts = read_submission(path)
  if joints.shape[0] != expected_count or verts.shape[0] != expected_count:
    raise SubmissionError(f"{path}: {joints.shape[0]} joint and {verts.shape[0]} vertex entries, evaluation.txt "
                          f"lists {expected_count} frames")
  finite = np.isfinite(joints).all((1, 2)) & np.isfinite(verts).all((1, 2))
  if not finite.all():
    raise SubmissionError(f"{path}: entry {int(np.flatnonzero(~finite)[0])} holds non-finite coordinates")
  in_front = ~(np.all(joints[..., 2] > 0, axis=1) | np.all(verts[..., 2] > 0, axis=1))
  if not in_front.all():
    raise SubmissionError(f"{path}: entry {int(np.flatnonzero(~in_front)[0])} lies behind an OpenGL camera (all "
                          "z > 0): the predictions are not in the OpenGL frame")
  summary = {"path": path, "count": int(joints.shape[0]), "root_max_gap_m": None}
  if roots_cv is not None:
    roots_gl = camera_frames.flip_points(np.asarray(roots_cv, np.float64))
    gap = np.linalg.norm(joints[:, 0] - roots_gl, axis=-1)
    if gap.max() > root_atol:
      i = int(np.argmax(gap > root_atol))
      raise SubmissionError(f"{path}: entry {i}'s wrist is {1000 * gap[i]:.2f} mm from the root joint of "
                            f"evaluation.txt's line {i + 1}: the entries are not in evaluation.txt order")
    summary["root_max_gap_m"] = float(gap.max())
  return summary
