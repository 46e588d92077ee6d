"""Atomic file writes: a file is written under a temporary name in its directory and renamed over the
target, so a reader (or a restarted job) sees the old file or the whole new one, never a partial write."""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np


def _tmp_name(path: str) -> str:
  return f"{path}.tmp-{os.getpid()}"


def write_bytes_atomic(path: str, data: bytes) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_name(path)
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_text_atomic(path: str, text: str) -> str:
  return write_bytes_atomic(path, text.encode("utf-8"))


def save_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> str:
  """np.savez_compressed of `arrays` to `path` (which should end in .npz), atomically."""
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  return write_bytes_atomic(path, buf.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
  """All arrays of an .npz written by `save_npz_atomic` (no pickled objects allowed)."""
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}
