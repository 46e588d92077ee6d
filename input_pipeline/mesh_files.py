"""Minimal mesh-file readers for dataset object models (no third-party mesh library).

`read_ply_vertices(path)` returns the x, y, z properties of a PLY file's `vertex` element as a float64
[V, 3] array, in the file's own units and frame (FPHA's object models: metres, object frame). Formats:
`ascii`, `binary_little_endian` and `binary_big_endian`, any scalar property types, other properties of the
vertex element (normals, colours, ...) and other elements (faces, edges, with list properties) are read past
and ignored. Problems are a `MeshFileError` (a ValueError) whose one-line message names the file.

`model_point_subset(verts, num)` picks a fixed number of an object model's points (its extreme points first, so
the subset's bounding box, control points and diameter are the model's).
"""
from __future__ import annotations

import os

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


class MeshFileError(ValueError):
  """An unreadable mesh file; the message names it."""


def _header(path: str, data: bytes) -> tuple[str, list[dict], int]:
  """(format, elements [{name, count, props: [(name, type) or (name, (count_type, item_type))]}], body start)."""
  end = data.find(b"end_header")
  if not data.startswith(b"ply") or end < 0:
    raise MeshFileError(f"{path}: not a PLY file (no 'ply' magic / 'end_header')")
  body = data.find(b"\n", end) + 1
  if body == 0:
    body = len(data)
  fmt, elements = None, []
  for lineno, raw in enumerate(data[:end].decode("ascii", "replace").splitlines()[1:], start=2):
    words = raw.split()
    if not words or words[0] in ("comment", "obj_info"):
      continue
    try:
      if words[0] == "format":
        fmt = words[1]
        if fmt not in _FORMATS:
          raise MeshFileError(f"{path}: unsupported PLY format {fmt!r} (header line {lineno})")
      elif words[0] == "element":
        elements.append({"name": words[1], "count": int(words[2]), "props": []})
      elif words[0] == "property":
        if not elements:
          raise MeshFileError(f"{path}: header line {lineno}: property before any element")
        if words[1] == "list":
          elements[-1]["props"].append((words[4], (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
        else:
          elements[-1]["props"].append((words[2], _PLY_TYPES[words[1]]))
      else:
        raise MeshFileError(f"{path}: header line {lineno}: unknown keyword {words[0]!r}")
    except (IndexError, KeyError, ValueError) as e:
      if isinstance(e, MeshFileError):
        raise
      raise MeshFileError(f"{path}: malformed PLY header line {lineno}: {raw.strip()!r}") from None
  if fmt is None:
    raise MeshFileError(f"{path}: PLY header has no 'format' line")
  return fmt, elements, body


def _check_vertex_element(path: str, element: dict) -> None:
  names = [n for n, _ in element["props"]]
  missing = [c for c in "xyz" if c not in names]
  if missing:
    raise MeshFileError(f"{path}: the vertex element has no {'/'.join(missing)} property (has {names})")
  if any(not isinstance(t, str) for n, t in element["props"] if n in "xyz"):
    raise MeshFileError(f"{path}: vertex x/y/z are list properties")


def _ascii_vertices(path: str, elements: list[dict], text: str) -> np.ndarray:
  lines = [ln for ln in text.splitlines() if ln.strip()]
  row = 0
  for element in elements:
    if element["name"] != "vertex":
      row += element["count"]  # One line per element row in ASCII PLY.
      continue
    _check_vertex_element(path, element)
    names = [n for n, _ in element["props"]]
    if any(not isinstance(t, str) for _, t in element["props"]):
      raise MeshFileError(f"{path}: list properties in the vertex element are not supported")
    cols = [names.index(c) for c in "xyz"]
    rows = lines[row:row + element["count"]]
    if len(rows) < element["count"]:
      raise MeshFileError(f"{path}: {element['count']} vertices declared, {len(rows)} vertex lines found")
    out = np.empty((element["count"], 3), np.float64)
    for i, line in enumerate(rows):
      words = line.split()
      try:
        out[i] = [float(words[c]) for c in cols]
      except (IndexError, ValueError):
        raise MeshFileError(f"{path}: malformed vertex {i}: {line.strip()[:80]!r}") from None
    return out
  raise MeshFileError(f"{path}: no 'vertex' element")


def _binary_vertices(path: str, elements: list[dict], data: memoryview, order: str) -> np.ndarray:
  offset = 0
  for element in elements:
    scalar = all(isinstance(t, str) for _, t in element["props"])
    if element["name"] == "vertex":
      _check_vertex_element(path, element)
      if not scalar:
        raise MeshFileError(f"{path}: list properties in the vertex element are not supported")
      dtype = np.dtype([(n, order + t) for n, t in element["props"]])
      need = dtype.itemsize * element["count"]
      if offset + need > len(data):
        raise MeshFileError(f"{path}: truncated ({element['count']} vertices declared, file too short)")
      rows = np.frombuffer(data, dtype, count=element["count"], offset=offset)
      return np.stack([rows[c].astype(np.float64) for c in "xyz"], axis=-1)
    if scalar:  # Fixed-size rows: skip them at once.
      offset += np.dtype([(n, order + t) for n, t in element["props"]]).itemsize * element["count"]
      continue
    for _ in range(element["count"]):  # Rows with lists: walk them.
      for _, t in element["props"]:
        if isinstance(t, str):
          offset += np.dtype(t).itemsize
        else:
          count_type, item_type = (np.dtype(order + x) for x in t)
          if offset + count_type.itemsize > len(data):
            raise MeshFileError(f"{path}: truncated in element {element['name']!r}")
          n = int(np.frombuffer(data, count_type, count=1, offset=offset)[0])
          offset += count_type.itemsize + n * item_type.itemsize
  raise MeshFileError(f"{path}: no 'vertex' element")


def read_ply_vertices(path: str) -> np.ndarray:
  """The vertex x, y, z of a PLY file as [V, 3] float64 (module docstring)."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise MeshFileError(f"{path}: cannot read ({e.strerror or e})") from None
  fmt, elements, body = _header(path, data)
  if _FORMATS[fmt] is None:
    return _ascii_vertices(path, elements, data[body:].decode("ascii", "replace"))
  return _binary_vertices(path, elements, memoryview(data)[body:], _FORMATS[fmt])


def write_ply(path: str, verts: np.ndarray, faces: np.ndarray | None = None, binary: bool = False) -> None:
  """Writes vertices (float32 x y z) and optional triangles (uchar count, int indices) as a PLY file."""
  verts = np.asarray(verts, np.float32).reshape(-1, 3)
  faces = np.zeros((0, 3), np.int32) if faces is None else np.asarray(faces, np.int32).reshape(-1, 3)
  header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(verts)}",
            "property float x", "property float y", "property float z", f"element face {len(faces)}",
            "property list uchar int vertex_indices", "end_header"]
  with open(path, "wb") as f:
    f.write(("\n".join(header) + "\n").encode("ascii"))
    if binary:
      f.write(verts.astype("<f4").tobytes())
      row = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
      rows = np.zeros(len(faces), row)
      rows["n"], rows["i"] = 3, faces
      f.write(rows.tobytes())
    else:
      f.write("".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in verts.tolist()).encode("ascii"))
      f.write("".join(f"3 {a} {b} {c}\n" for a, b, c in faces.tolist()).encode("ascii"))


def model_point_subset(verts: np.ndarray, num: int) -> np.ndarray:
  """[num, 3] deterministic subset of the model vertices [V, 3]: the (up to 6) vertices with the smallest /
  largest x, y, z, then those at indices floor(i V / m), i < m = num - #extremes (evenly spaced; repeated
  when V < m)."""
  extremes = list(dict.fromkeys(int(i) for i in np.concatenate([verts.argmin(0), verts.argmax(0)])))[:num]
  m = num - len(extremes)
  rest = (np.arange(m, dtype=np.int64) * len(verts)) // max(m, 1)
  return verts[np.concatenate([np.asarray(extremes, np.int64), rest])]
