"""Files: atomic writes, and pickles from users read with a restricted unpickler.

Atomic writes: a file is written under a temporary name in its directory and renamed over the target, so a
reader (or a restarted job) sees the old file or the whole new one, never a partial write.

Pickles (dataset annotations such as HO-3D's meta/*.pkl, the MANO model) come from users' downloads: they are
read by `RestrictedUnpickler`, which builds only numpy arrays, numpy scalars and plain Python containers and
refuses every other global (e.g. `os.system`), so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
from typing import Any, Mapping

import numpy as np


def _tmp_name(path: str) -> str:
  return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


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


_SAFE_BUILTINS = frozenset({
    "set", "frozenset", "object", "slice", "complex", "bytearray", "dict", "list", "tuple", "int", "float", "bool",
    "str", "bytes"})
_NUMPY_GLOBALS = frozenset({
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"), ("", "ndarray"),
    ("", "dtype")})


class RestrictedUnpickler(pickle.Unpickler):
  """Builds numpy arrays / scalars / dtypes and plain containers only; any other global raises
  `pickle.UnpicklingError`. Subclasses widen it with `extra_class` (e.g. the MANO loader's chumpy stand-ins)."""

  refused_message = "only numpy arrays and plain Python values are allowed in this file"

  def extra_class(self, module: str, name: str) -> Any:  # pylint: disable=unused-argument
    """A class or function to allow beyond the base set, or None."""
    return None

  def find_class(self, module: str, name: str) -> Any:
    extra = self.extra_class(module, name)
    if extra is not None:
      return extra
    if module in ("copy_reg", "copyreg") and name in ("_reconstructor", "__newobj__"):
      return super().find_class(module, name)
    if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
      return super().find_class(module, name)
    if module == "_codecs" and name == "encode":
      # Python-3 protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
      return super().find_class(module, name)
    if module == "numpy" or module.startswith("numpy."):
      sub = module.split(".")[-1] if module != "numpy" else ""
      if (sub, name) in _NUMPY_GLOBALS:
        if module.startswith("numpy.core") and hasattr(np, "_core"):
          module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: {self.refused_message}")


def load_pickle(path: str) -> Any:
  """Reads a (Python 2 or 3) pickle with `RestrictedUnpickler` (latin-1 for Python 2 strings)."""
  with open(path, "rb") as f:
    data = f.read()
  return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def check_local_path(path: str, what: str) -> None:
  """Raises ValueError for a URL (gs://, s3://, ...): the project writes workdirs and reads data dirs with local
  file I/O, so a URL would silently become a relative local path (./gs:/bucket/...)."""
  scheme, sep, _ = str(path).partition("://")
  if sep and scheme and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
    raise ValueError(f"{what} {path!r} is a URL: cloud storage paths are not supported yet (workdirs and data "
                     "dirs are read and written with local file I/O); mount the bucket (e.g. gcsfuse) and pass "
                     "the mounted path")
