"""MANO hand model (Romero et al. 2017) in JAX, a licence-free synthetic model and loaders.

Semi-Hand-Object (Sec. 4.2) regresses MANO pose ``theta`` in R^48 (3 global
rotation + 15 x 3 articulated axis-angles, radians) and shape ``beta`` in
R^10; MANO maps them to 778 vertices and 21 joints.

Frames and units:
  * Everything is in metres, in MANO's model frame (the frame of
    ``v_template``); ``trans`` is added last, so outputs are
    ``R_global * (shaped, posed hand about the wrist joint) + trans``, exactly as
    the smplx package does it (the global rotation pivots about the *rest
    wrist joint*, not the origin).
  * 16 MANO joints in MANO order: 0 wrist, 1-3 index, 4-6 middle, 7-9 little,
    10-12 ring, 13-15 thumb (proximal to distal). ``mano_forward`` returns 21
    joints: these 16 followed by 5 fingertip vertices in the order thumb,
    index, middle, ring, little (``tip_ids``; HO-3D's ids by default).
  * Pose blend shapes use the features ``R_j - I`` (j = 1..15), flattened
    row-major into 135 values, matching ``posedirs[..., 9 * (j - 1) + 3 * r + c]``.
  * ``flat_hand_mean=False`` (the default, as in smplx) adds ``hands_mean`` to
    the 45 articulated values, so a zero pose is MANO's relaxed mean hand;
    ``flat_hand_mean=True`` makes zero pose the flat template hand.

The official MANO files are licence-gated (https://mano.is.tue.mpg.de). Without
them, ``load_mano(None)`` returns ``synthetic_mano_model()``: a deterministic,
procedurally built hand with the same array names, shapes and semantics (778
vertices, 1538 faces with one 16-edge wrist opening, MANO joint order, tip
vertex ids at the fingertips), so every pipeline runs end to end. Numbers
obtained with the synthetic model are not comparable to published MANO results.

Usage under ``jax.jit``: the model carries a Python string (``side``) and the
kinematic tree must be concrete, so close over the model instead of passing it
as a traced argument, e.g. ``jax.jit(functools.partial(mano_forward, model))``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax import errors
from handobj_jax import fileio
from handobj_jax.geometry import rotation

NUM_VERTS = 778
NUM_FACES = 1538
NUM_JOINTS = 16
NUM_BETAS = 10
NUM_POSE = 48

# Fingertip vertex ids in the order thumb, index, middle, ring, little.
HO3D_TIP_IDS = (728, 353, 442, 576, 694)
ALT_TIP_IDS = (745, 317, 444, 556, 673)

MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
JOINT_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "little1", "little2", "little3", "ring1", "ring2", "ring3", "thumb1",
    "thumb2", "thumb3")
JOINT21_NAMES = JOINT_NAMES + (
    "thumb_tip", "index_tip", "middle_tip", "ring_tip", "little_tip")

# Where the official files are expected and which config key points to them.
DEFAULT_MANO_DIR = os.path.join("data", "mano")
MANO_CONFIG_KEY = "config.mano.model_path"

_HIGHEST = jax.lax.Precision.HIGHEST


class ManoModel(NamedTuple):
  """MANO arrays (numpy float32 unless noted) plus metadata.

  Attributes:
    v_template: [778, 3] rest (flat hand) vertices, metres.
    shapedirs: [778, 3, 10] shape blend shapes.
    posedirs: [778, 3, 135] pose blend shapes over ``R_j - I`` features.
    J_regressor: [16, 778] dense joint regressor (rows sum to 1).
    weights: [778, 16] linear-blend-skinning weights (rows sum to 1).
    faces: [1538, 3] int32 triangle vertex ids, outward (counter-clockwise).
    parents: [16] int32 kinematic tree, ``parents[0] = -1``.
    hands_components: [45, 45] pose PCA basis, rows are components.
    hands_mean: [45] mean articulated pose (axis-angle).
    side: 'right' or 'left'.
  """
  v_template: np.ndarray
  shapedirs: np.ndarray
  posedirs: np.ndarray
  J_regressor: np.ndarray
  weights: np.ndarray
  faces: np.ndarray
  parents: np.ndarray
  hands_components: np.ndarray
  hands_mean: np.ndarray
  side: str


_EXPECTED_SHAPES = {
    "v_template": (NUM_VERTS, 3),
    "shapedirs": (NUM_VERTS, 3, None),
    "posedirs": (NUM_VERTS, 3, 9 * (NUM_JOINTS - 1)),
    "J_regressor": (NUM_JOINTS, NUM_VERTS),
    "weights": (NUM_VERTS, NUM_JOINTS),
    "faces": (None, 3),
    "parents": (NUM_JOINTS,),
    "hands_components": (45, 45),
    "hands_mean": (45,),
}


def validate_model(model: ManoModel, source: str = "model") -> ManoModel:
  """Checks array shapes/values; raises ValueError naming the bad field."""
  if model.side not in ("right", "left"):
    raise ValueError(f"{source}: side must be 'right' or 'left', got {model.side!r}")
  for name, shape in _EXPECTED_SHAPES.items():
    arr = np.asarray(getattr(model, name))
    if arr.ndim != len(shape) or any(
        s is not None and a != s for a, s in zip(arr.shape, shape)):
      raise ValueError(
          f"{source}: field {name!r} has shape {arr.shape}, expected {shape} "
          "(None = any size)")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{source}: field {name!r} contains non-finite values")
  if model.parents[0] != -1 or np.any(
      model.parents[1:] >= np.arange(1, NUM_JOINTS)) or np.any(
          model.parents[1:] < 0):
    raise ValueError(
        f"{source}: parents must have parents[0] = -1 and parents[j] < j, got "
        f"{model.parents.tolist()}")
  if model.faces.min() < 0 or model.faces.max() >= NUM_VERTS:
    raise ValueError(f"{source}: faces index outside [0, {NUM_VERTS})")
  return model


def _as_model(side: str, **arrays: Any) -> ManoModel:
  cast = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()
          if k not in ("faces", "parents")}
  return ManoModel(
      faces=np.ascontiguousarray(arrays["faces"], np.int32),
      parents=np.ascontiguousarray(arrays["parents"], np.int32),
      side=side, **cast)


# ----------------------------------------------------------------------------
# Forward pass.
# ----------------------------------------------------------------------------


def _lbs(model: ManoModel, full_pose: jax.Array, betas: jax.Array):
  """Linear blend skinning for flat batches: pose [B, 48], betas [B, K]."""
  parents = np.asarray(model.parents)
  num_betas = betas.shape[-1]
  if num_betas > model.shapedirs.shape[-1]:
    raise ValueError(
        f"betas has {num_betas} coefficients but the model only "
        f"{model.shapedirs.shape[-1]} shape directions")
  v_template = jnp.asarray(model.v_template, jnp.float32)
  shapedirs = jnp.asarray(model.shapedirs, jnp.float32)[..., :num_betas]
  posedirs = jnp.asarray(model.posedirs, jnp.float32)
  j_regressor = jnp.asarray(model.J_regressor, jnp.float32)
  weights = jnp.asarray(model.weights, jnp.float32)
  batch = full_pose.shape[0]

  v_shaped = v_template + jnp.einsum(
      "vck,bk->bvc", shapedirs, betas, precision=_HIGHEST)
  joints = jnp.einsum("jv,bvc->bjc", j_regressor, v_shaped, precision=_HIGHEST)

  rot = rotation.axis_angle_to_matrix(full_pose.reshape(batch, NUM_JOINTS, 3))
  feat = (rot[:, 1:] - jnp.eye(3, dtype=jnp.float32)).reshape(batch, -1)
  v_posed = v_shaped + jnp.einsum(
      "vcp,bp->bvc", posedirs, feat, precision=_HIGHEST)

  # Forward kinematics along the (static) tree.
  world_r = [rot[:, 0]]
  world_t = [joints[:, 0]]
  for j in range(1, NUM_JOINTS):
    p = int(parents[j])
    rel = joints[:, j] - joints[:, p]
    world_r.append(jnp.matmul(world_r[p], rot[:, j], precision=_HIGHEST))
    world_t.append(world_t[p] + jnp.einsum(
        "bij,bj->bi", world_r[p], rel, precision=_HIGHEST))
  world_r = jnp.stack(world_r, axis=1)  # [B, 16, 3, 3]
  posed_joints = jnp.stack(world_t, axis=1)  # [B, 16, 3]
  # Skinning transforms map rest-pose points: x -> R x + (t - R j_rest).
  skin_t = posed_joints - jnp.einsum(
      "bjik,bjk->bji", world_r, joints, precision=_HIGHEST)
  blend_r = jnp.einsum("vj,bjik->bvik", weights, world_r, precision=_HIGHEST)
  blend_t = jnp.einsum("vj,bji->bvi", weights, skin_t, precision=_HIGHEST)
  verts = jnp.einsum(
      "bvik,bvk->bvi", blend_r, v_posed, precision=_HIGHEST) + blend_t
  return verts, posed_joints


def mano_forward(
    model: ManoModel,
    pose: jax.Array,
    betas: jax.Array,
    trans: jax.Array | None = None,
    *,
    tip_ids: Sequence[int] = HO3D_TIP_IDS,
    flat_hand_mean: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """MANO vertices and 21 joints from axis-angle pose and shape.

  Args:
    model: a ManoModel (closed over, not traced).
    pose: [..., 48] axis-angle: 3 global rotation + 15 x 3 articulated
      (MANO joint order), radians.
    betas: [..., K] shape coefficients, K <= 10.
    trans: optional [..., 3] translation in metres, added last.
    tip_ids: 5 fingertip vertex ids (thumb, index, middle, ring, little).
    flat_hand_mean: if False, ``hands_mean`` is added to the articulated pose.

  Returns:
    verts [..., 778, 3] and joints [..., 21, 3], float32, metres; leading dims
    are the broadcast of the inputs' leading dims.
  """
  pose = jnp.asarray(pose, jnp.float32)
  betas = jnp.asarray(betas, jnp.float32)
  if pose.shape[-1:] != (NUM_POSE,):
    raise ValueError(f"pose must have last dim {NUM_POSE}, got {pose.shape}")
  if betas.ndim == 0:
    raise ValueError("betas must have a last (coefficient) dim")
  if len(tip_ids) != 5:
    raise ValueError(f"tip_ids must hold 5 vertex ids, got {tip_ids}")
  lead = [pose.shape[:-1], betas.shape[:-1]]
  if trans is not None:
    trans = jnp.asarray(trans, jnp.float32)
    if trans.shape[-1:] != (3,):
      raise ValueError(f"trans must have last dim 3, got {trans.shape}")
    lead.append(trans.shape[:-1])
  lead = jnp.broadcast_shapes(*lead)
  flat_pose = jnp.broadcast_to(pose, lead + (NUM_POSE,)).reshape(-1, NUM_POSE)
  flat_betas = jnp.broadcast_to(
      betas, lead + betas.shape[-1:]).reshape(-1, betas.shape[-1])
  if not flat_hand_mean:
    mean = jnp.concatenate([
        jnp.zeros(3, jnp.float32), jnp.asarray(model.hands_mean, jnp.float32)])
    flat_pose = flat_pose + mean
  verts, joints = _lbs(model, flat_pose, flat_betas)
  tips = verts[:, np.asarray(tip_ids, np.int32)]
  joints = jnp.concatenate([joints, tips], axis=1)
  verts = verts.reshape(lead + (NUM_VERTS, 3))
  joints = joints.reshape(lead + (NUM_JOINTS + 5, 3))
  if trans is not None:
    verts = verts + trans[..., None, :]
    joints = joints + trans[..., None, :]
  return verts, joints


def pca_to_pose(model: ManoModel, pca_coeffs: jax.Array) -> jax.Array:
  """[..., n] PCA coefficients -> [..., 45] articulated axis-angle (no mean)."""
  pca_coeffs = jnp.asarray(pca_coeffs, jnp.float32)
  n = pca_coeffs.shape[-1]
  if not 1 <= n <= 45:
    raise ValueError(f"pca_coeffs must have 1..45 coefficients, got {n}")
  comps = jnp.asarray(model.hands_components[:n], jnp.float32)
  return jnp.einsum("...i,ij->...j", pca_coeffs, comps, precision=_HIGHEST)


def mano_forward_pca(
    model: ManoModel,
    global_orient: jax.Array,
    pca_coeffs: jax.Array,
    betas: jax.Array,
    trans: jax.Array | None = None,
    *,
    flat_hand_mean: bool = False,
    tip_ids: Sequence[int] = HO3D_TIP_IDS,
) -> tuple[jax.Array, jax.Array]:
  """Like ``mano_forward`` with the articulation given by the first n PCA comps.

  Args:
    global_orient: [..., 3] axis-angle of the root.
    pca_coeffs: [..., n] coefficients on ``hands_components[:n]``.
  """
  global_orient = jnp.asarray(global_orient, jnp.float32)
  hand = pca_to_pose(model, pca_coeffs)
  lead = jnp.broadcast_shapes(global_orient.shape[:-1], hand.shape[:-1])
  pose = jnp.concatenate([
      jnp.broadcast_to(global_orient, lead + (3,)),
      jnp.broadcast_to(hand, lead + (45,))], axis=-1)
  return mano_forward(model, pose, betas, trans, tip_ids=tip_ids,
                      flat_hand_mean=flat_hand_mean)


def mirror_pose(pose: jax.Array) -> jax.Array:
  """Axis-angle pose [..., 3k] under the reflection x -> -x: (a, b, c) -> (a, -b, -c).

  ``left = mirror(right)``: ``mano_forward(left_model, mirror_pose(p))``
  equals the right hand's output with x negated.
  """
  pose = jnp.asarray(pose)
  sign = jnp.tile(jnp.array([1.0, -1.0, -1.0], pose.dtype), pose.shape[-1] // 3)
  return pose * sign


# ----------------------------------------------------------------------------
# Loading and saving.
# ----------------------------------------------------------------------------


class _ChumpyStandIn:
  """Receives the pickled state of a chumpy object without importing chumpy.

  chumpy's ``Ch.__getstate__`` returns a copy of the instance ``__dict__``
  (minus weak-reference caches). For a leaf ``Ch`` the value lives under
  ``'x'``; reordering nodes keep their input under ``'a'``.
  """
  chumpy_name = "chumpy.?"

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(
          f"unexpected pickled state {type(state).__name__} for {self.chumpy_name}")
    self.__dict__["_state"] = state


@functools.lru_cache(maxsize=None)
def _chumpy_class(module: str, name: str) -> type:
  return type(f"ChumpyStandIn_{name}", (_ChumpyStandIn,),
              {"chumpy_name": f"{module}.{name}"})


def _resolve_chumpy(obj: Any) -> Any:
  """Evaluates stand-ins (leaf Ch, Reshape, transpose, Select) to numpy arrays."""
  if not isinstance(obj, _ChumpyStandIn):
    return obj
  state = obj.__dict__.get("_state", {})
  name = obj.chumpy_name.rsplit(".", 1)[-1]
  if "x" in state and name in ("Ch", "ChLambda"):
    return np.asarray(_resolve_chumpy(state["x"]))
  if name == "Reshape" and "a" in state:
    return np.reshape(_resolve_chumpy(state["a"]), state["newshape"])
  if name == "transpose" and "a" in state:
    return np.transpose(_resolve_chumpy(state["a"]), state.get("axes"))
  if name == "Select" and "a" in state:
    out = np.ravel(_resolve_chumpy(state["a"]))[np.asarray(state["idxs"])]
    shape = state.get("preferred_shape")
    return out.reshape(shape) if shape is not None else out
  if "x" in state:
    return np.asarray(_resolve_chumpy(state["x"]))
  raise ValueError(
      f"cannot evaluate pickled chumpy object {obj.chumpy_name} (state keys "
      f"{sorted(state)}); convert the file with chumpy installed")


_SPARSE_CLASSES = frozenset({
    "csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array",
    "coo_array"})


class RestrictedMANOUnpickler(fileio.RestrictedUnpickler):
  """Unpickler that only builds numpy/scipy.sparse objects and chumpy stand-ins.

  Anything else (e.g. ``os.system``) raises ``pickle.UnpicklingError``.
  """

  refused_message = ("MANO files may only contain numpy arrays, scipy.sparse matrices and chumpy "
                     "arrays")

  def extra_class(self, module: str, name: str) -> Any:
    if module == "chumpy" or module.startswith("chumpy."):
      return _chumpy_class(module, name)
    if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
      import scipy.sparse  # pylint: disable=g-import-not-at-top
      return getattr(scipy.sparse, name)
    return None


class ManoFileError(errors.InputError):
  """A MANO file that cannot be used (unreadable, truncated, wrong layout, refused content); names the file."""


class ManoFileNotFound(ManoFileError, FileNotFoundError):
  """The MANO file does not exist (the message says how to get it)."""


def _missing_file_error(path: str) -> ManoFileNotFound:
  return ManoFileNotFound(
      f"MANO model file not found: {path!r}. MANO is licence-gated and cannot "
      "be downloaded automatically: register at https://mano.is.tue.mpg.de, "
      "download 'Models & Code', and put MANO_RIGHT.pkl / MANO_LEFT.pkl in "
      f"{DEFAULT_MANO_DIR}/ (or anywhere, and set {MANO_CONFIG_KEY} to that "
      "file or folder). Leave the key empty (None) to use the licence-free "
      "synthetic model.")


def read_official_pkl(path: str) -> dict[str, Any]:
  """Reads a (Python-2, chumpy) MANO pickle into a dict of numpy/scipy objects."""
  with open(path, "rb") as f:
    data = f.read()
  raw = RestrictedMANOUnpickler(io.BytesIO(data), encoding="latin1").load()
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
  return {str(k): _resolve_chumpy(v) for k, v in raw.items()}


def _dense(x: Any) -> np.ndarray:
  if hasattr(x, "toarray"):
    return np.asarray(x.toarray())
  return np.asarray(x)


def model_from_official_dict(data: dict[str, Any], side: str,
                             source: str = "MANO dict") -> ManoModel:
  """Builds a ManoModel from the official key layout (f, kintree_table, ...)."""
  required = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
              "f", "kintree_table", "hands_components", "hands_mean")
  missing = [k for k in required if k not in data]
  if missing:
    raise ValueError(f"{source}: missing keys {missing} (has {sorted(data)})")
  parents = np.asarray(data["kintree_table"])[0].astype(np.int64)
  parents[0] = -1
  model = _as_model(
      side,
      v_template=_dense(data["v_template"]),
      shapedirs=_dense(data["shapedirs"]),
      posedirs=_dense(data["posedirs"]),
      J_regressor=_dense(data["J_regressor"]),
      weights=_dense(data["weights"]),
      faces=_dense(data["f"]).astype(np.int64),
      parents=parents,
      hands_components=_dense(data["hands_components"]),
      hands_mean=_dense(data["hands_mean"]))
  return validate_model(model, source)


def save_npz(model: ManoModel, path: str) -> None:
  """Writes the model as an .npz with the ManoModel field names."""
  validate_model(model)
  arrays = {k: np.asarray(v) for k, v in model._asdict().items() if k != "side"}
  np.savez(path, side=np.asarray(model.side), **arrays)


def load_mano(path: str | None, side: str = "right") -> ManoModel:
  """Loads MANO from an official .pkl, a ``save_npz`` .npz, or a folder.

  Args:
    path: None for the synthetic model; a folder holding MANO_RIGHT.pkl /
      MANO_LEFT.pkl (chosen by ``side``); or a .pkl / .npz file.
    side: 'right' or 'left'. For .pkl files whose name says LEFT/RIGHT, the
      name must agree.

  Returns:
    A validated ManoModel.
  """
  if side not in ("right", "left"):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  if path is None:
    return synthetic_mano_model(side)
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, f"MANO_{side.upper()}.pkl")
  if not os.path.exists(path):
    raise _missing_file_error(path)
  try:
    return _load_file(path, side)
  except ManoFileError:
    raise
  except (Exception, RecursionError) as e:  # pylint: disable=broad-except  (pickle/zip/numpy/IndexError...)
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    first = first.replace(f"{path}: ", "")
    raise ManoFileError(f"{path}: not a usable MANO model file ({type(e).__name__}: {first}); download it "
                        "again from the MANO website, or convert it with scripts/convert_mano.py") from e


def model_identity(path: str | None, side: str = "right") -> str:
  """'synthetic', or '<file name> sha1:<16 hex digits>' of a MANO file (builds record it: meshes depend on it)."""
  if not path:
    return "synthetic"
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, f"MANO_{side.upper()}.pkl")
  try:
    with open(path, "rb") as f:
      digest = hashlib.sha1(f.read()).hexdigest()[:16]
  except OSError:
    return os.path.basename(path)  # load_mano reports the missing file.
  return f"{os.path.basename(path)} sha1:{digest}"


def _load_file(path: str, side: str) -> ManoModel:
  base = os.path.basename(path).upper()
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      file_side = str(z["side"])
      if file_side != side:
        raise ValueError(f"{path}: holds a {file_side} hand, asked for {side}")
      arrays = {k: z[k] for k in ManoModel._fields if k != "side"}
    return validate_model(_as_model(side, **arrays), path)
  if path.endswith(".pkl"):
    other = "LEFT" if side == "right" else "RIGHT"
    if other in base:
      raise ValueError(f"{path}: file name says {other} but side={side!r}")
    return model_from_official_dict(read_official_pkl(path), side, path)
  raise ValueError(f"{path}: unknown MANO file type (expected .pkl or .npz)")


# ----------------------------------------------------------------------------
# Synthetic model.
# ----------------------------------------------------------------------------

# Right hand, flat template: fingers point to -x, back of the hand is +y (palm
# faces -y), the thumb is on the +z side; the wrist joint sits near x = 0.1 m.
# Spatial finger order (index, middle, ring, little) -> MANO joint ids.
_FINGER_JOINTS = ((1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9))
_THUMB_JOINTS = (13, 14, 15)
# Per finger: knuckle x, knuckle z, base half-width, tip half-width, length,
# spread (z component of the axis direction).
_FINGERS = (
    (0.004, 0.0285, 0.0100, 0.0078, 0.082, 0.07),
    (0.000, 0.0080, 0.0105, 0.0080, 0.090, 0.0),
    (0.004, -0.0125, 0.0098, 0.0076, 0.084, -0.06),
    (0.014, -0.0315, 0.0086, 0.0068, 0.068, -0.13),
)
_PIP_FRAC, _DIP_FRAC = 0.45, 0.73
_RING = 10  # vertices per finger ring
_FINGER_RINGS = 9  # rings per finger beyond the knuckle ring
_THUMB_RINGS = 10
_PALM_X = (0.090, 0.075, 0.060, 0.045, 0.030, 0.015, 0.0)
_WRIST_RINGS = ((0.128, 16, 0.029, 0.015), (0.108, 17, 0.032, 0.016))
_THUMB_DIR = np.array([-1.0, -0.5, 0.85])
_THUMB_LEN = (0.046, 0.078, 0.104)  # CMC->MCP, CMC->IP, CMC->tip (m)
_BLEND = 0.008  # half-width of the skinning blend around each joint (m)


def _normalize(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _ring_angles(n):
  return 2.0 * np.pi * (np.arange(n) + 0.5) / n


def _smoothstep(t):
  t = np.clip(0.5 * (t + 1.0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _stitch(a_ids, b_ids, a_par, b_par):
  """Triangulates the band between two closed rings (len(a)+len(b) faces).

  Both rings are ordered by their cyclic parameter in [0, 1) (same sense).
  """
  a_ids, b_ids = list(a_ids), list(b_ids)
  a_par, b_par = np.asarray(a_par), np.asarray(b_par)
  na, nb = len(a_ids), len(b_ids)
  j0 = int(np.argmin(np.abs(((b_par - a_par[0] + 0.5) % 1.0) - 0.5)))
  ua = np.concatenate([a_par - a_par[0], [1.0]]) % 1.0
  ua[-1] = 1.0
  ub = np.array([(b_par[(j0 + k) % nb] - a_par[0]) % 1.0 for k in range(nb)]
                + [0.0])
  ub[-1] = ub[0] + 1.0
  faces = []
  i = j = 0
  while i < na or j < nb:
    ai, ai1 = a_ids[i % na], a_ids[(i + 1) % na]
    bj, bj1 = b_ids[(j0 + j) % nb], b_ids[(j0 + j + 1) % nb]
    if j >= nb or (i < na and ua[i + 1] <= ub[j + 1]):
      faces.append((ai, ai1, bj))
      i += 1
    else:
      faces.append((ai, bj1, bj))
      j += 1
  return faces


def _orient_faces(faces, verts):
  """Makes winding consistent (BFS over edges), then outward (positive volume)."""
  faces = [list(f) for f in faces]
  edge_faces = {}
  for fi, f in enumerate(faces):
    for k in range(3):
      e = tuple(sorted((f[k], f[(k + 1) % 3])))
      edge_faces.setdefault(e, []).append(fi)
  bad = [e for e, fs in edge_faces.items() if len(fs) > 2]
  if bad:
    raise AssertionError(f"non-manifold edges in synthetic mesh: {bad[:5]}")
  seen = np.zeros(len(faces), bool)
  seen[0] = True
  queue = [0]
  while queue:
    fi = queue.pop()
    f = faces[fi]
    for k in range(3):
      a, b = f[k], f[(k + 1) % 3]
      for fj in edge_faces[tuple(sorted((a, b)))]:
        if fj == fi or seen[fj]:
          continue
        g = faces[fj]
        # Consistent neighbours traverse the shared edge in opposite order.
        same = any(g[m] == a and g[(m + 1) % 3] == b for m in range(3))
        if same:
          g.reverse()
        seen[fj] = True
        queue.append(fj)
  if not seen.all():
    raise AssertionError("synthetic mesh is not connected")
  f = np.asarray(faces)
  v = verts[f]
  vol = np.sum(np.einsum("fi,fi->f", v[:, 0], np.cross(v[:, 1], v[:, 2])))
  return f[:, ::-1] if vol < 0 else f


def _vertex_normals(verts, faces):
  n = np.zeros_like(verts)
  fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                verts[faces[:, 2]] - verts[faces[:, 0]])
  for k in range(3):
    np.add.at(n, faces[:, k], fn)
  return _normalize(n + 1e-12)


class _Builder:
  """Accumulates vertices with per-vertex skinning metadata."""

  def __init__(self):
    self.verts = []
    self.faces = []

  def add(self, pts):
    start = len(self.verts)
    self.verts.extend(np.asarray(pts, np.float64))
    return list(range(start, len(self.verts)))


def _finger_frame(knuckle_x, knuckle_z, spread):
  base = np.array([knuckle_x, 0.0, knuckle_z])
  axis = _normalize([-1.0, 0.0, spread])
  lateral = _normalize(np.cross([0.0, 1.0, 0.0], axis))  # toward the thumb
  dorsal = np.cross(axis, lateral)
  return base, axis, lateral, dorsal


def _finger_profile(s, length, r_base, r_tip):
  """Half-width and half-height of the finger cross-section at arc length s."""
  r = r_base + (r_tip - r_base) * np.clip(s / length, 0.0, 1.0)
  fat = np.exp(-(s / 0.012) ** 2)  # knuckle ring merges into the palm
  rz = r
  ry = 0.82 * r + fat * (0.0125 - 0.82 * r)
  return rz, ry


def _finger_stations(length, r_tip):
  """Arc lengths of the 9 finger rings (+ radius scale for the cap rings)."""
  cap_start = length - r_tip
  body = np.linspace(0.09 * length, cap_start, 7)
  cap = cap_start + r_tip * np.sin(np.radians([35.0, 65.0]))
  scale = np.concatenate([np.ones(7), np.cos(np.radians([35.0, 65.0]))])
  return np.concatenate([body, cap]), scale


@functools.lru_cache(maxsize=2)
def _synthetic_right() -> dict[str, np.ndarray]:
  b = _Builder()
  ang10 = _ring_angles(_RING)
  # part[v]: -1 wrist/palm, 0..3 fingers (spatial), 4 thumb; s[v]: arc length.
  meta_part, meta_s = [], []

  def record(ids, part, s):
    meta_part.extend([part] * len(ids))
    meta_s.extend(np.broadcast_to(s, (len(ids),)).tolist())

  # Wrist rings (open at the first one).
  wrist_rings = []
  for x, n, a, h in _WRIST_RINGS:
    t = _ring_angles(n)
    pts = np.stack([np.full(n, x), h * np.sin(t), a * np.cos(t)], -1)
    ids = b.add(pts)
    record(ids, -1, 0.0)
    wrist_rings.append((ids, t / (2 * np.pi)))

  # Knuckle ring: the 4 finger base cross-sections, split dorsal/palmar so the
  # palm ring order is d0..d19 (+z to -z on the back), then p19..p0.
  frames = [_finger_frame(kx, kz, sp) for kx, kz, _, _, _, sp in _FINGERS]
  knuckle_pts = np.zeros((40, 3))
  for f, (base, axis, lat, dor) in enumerate(frames):
    rz, ry = _finger_profile(0.0, _FINGERS[f][4], _FINGERS[f][2], _FINGERS[f][3])
    for k in range(5):
      for slot, alpha in ((5 * f + k, ang10[k]), (39 - 5 * f - k, -ang10[k])):
        knuckle_pts[slot] = base + rz * np.cos(alpha) * lat + ry * np.sin(alpha) * dor
  zmax = np.abs(knuckle_pts[:, 2]).max() * 1.08
  palm_rings = []
  for r, x in enumerate(_PALM_X):
    half_w = 0.034 + 0.008 * (1 - x / _PALM_X[0])
    half_h = 0.0135 + 0.0025 * np.sin(np.pi * (1 - x / _PALM_X[0]))
    tz = knuckle_pts[:, 2] / zmax
    side = np.where(np.arange(40) < 20, 1.0, -1.0)
    yy = side * half_h * (1 - np.abs(tz) ** 4) ** 0.25
    flat = np.stack([np.full(40, x), yy, half_w * tz / np.abs(tz).max()], -1)
    w = {len(_PALM_X) - 1: 1.0, len(_PALM_X) - 2: 0.3}.get(r, 0.0)
    pts = (1 - w) * flat + w * knuckle_pts
    ids = b.add(pts)
    record(ids, -1, 0.0)
    palm_rings.append(ids)

  def ring_param(ids, center, e1, e2):
    d = np.asarray([b.verts[i] for i in ids]) - center
    return (np.arctan2(d @ e2, d @ e1) / (2 * np.pi)) % 1.0

  def sorted_ring(ids, center, e1, e2):
    par = ring_param(ids, center, e1, e2)
    order = np.argsort(par)
    return [ids[o] for o in order], par[order]

  pc = np.array([0.1, 0.0, 0.0])
  ez, ey = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
  # Bands: wrist0-wrist1, wrist1-palm0.
  ra = sorted_ring(wrist_rings[0][0], pc, ez, ey)
  rb = sorted_ring(wrist_rings[1][0], pc, ez, ey)
  rc = sorted_ring(palm_rings[0], pc, ez, ey)
  b.faces += _stitch(*ra[:1], *rb[:1], ra[1], rb[1])
  b.faces += _stitch(*rb[:1], *rc[:1], rb[1], rc[1])
  # Palm bands; the +z side column (slot 39 -> 0) of bands 0..3 is the thumb hole.
  for r in range(len(_PALM_X) - 1):
    lo, hi = palm_rings[r], palm_rings[r + 1]
    for k in range(40):
      k1 = (k + 1) % 40
      if k == 39 and r < 4:
        continue
      b.faces += [(lo[k], lo[k1], hi[k1]), (lo[k], hi[k1], hi[k])]
  top = palm_rings[-1]
  # Web quads between neighbouring fingers.
  for f in range(3):
    d_a, d_b = top[5 * f + 4], top[5 * f + 5]
    p_a, p_b = top[39 - 5 * f - 4], top[39 - 5 * f - 5]
    b.faces += [(d_a, d_b, p_b), (d_a, p_b, p_a)]

  finger_tips, finger_alt = [], []
  finger_joint_rings = []  # (joint id, [(ids, weight), ...])
  for f, (base, axis, lat, dor) in enumerate(frames):
    _, _, r0, r1, length, _ = _FINGERS[f]
    prev = [top[5 * f + k] for k in range(5)] + [
        top[39 - 5 * f - k] for k in range(4, -1, -1)]
    ring_ids = [(0.0, prev)]
    stations, scale = _finger_stations(length, r1)
    for s, sc in zip(stations, scale):
      rz, ry = _finger_profile(s, length, r0, r1)
      pts = (base + s * axis + sc * rz * np.cos(ang10)[:, None] * lat
             + sc * ry * np.sin(ang10)[:, None] * dor)
      ids = b.add(pts)
      record(ids, f, s)
      par = ang10 / (2 * np.pi)
      b.faces += _stitch(prev, ids, par, par)
      prev = ids
      ring_ids.append((s, ids))
    tip = b.add([base + length * axis])[0]
    record([tip], f, length)
    b.faces += [(prev[k], prev[(k + 1) % _RING], tip) for k in range(_RING)]
    finger_tips.append(tip)
    finger_alt.append(prev[7])  # palmar-side vertex of the last cap ring
    for jid, sj in zip(_FINGER_JOINTS[f], (0.0, _PIP_FRAC * length,
                                           _DIP_FRAC * length)):
      finger_joint_rings.append((jid, _bracket(ring_ids, sj)))

  # Thumb: grows out of the hole on the +z side of palm rings 0..4.
  hole = [palm_rings[r][0] for r in range(5)] + [
      palm_rings[r][39] for r in range(4, -1, -1)]
  hole_pts = np.asarray([b.verts[i] for i in hole])
  t_base = hole_pts.mean(0)
  t_axis = _normalize(_THUMB_DIR)
  e1 = _normalize(np.array([1.0, 0.0, 0.0]) - t_axis[0] * t_axis)
  e2 = np.cross(t_axis, e1)
  hole_sorted = sorted_ring(hole, t_base, e1, e2)
  t_len = _THUMB_LEN[2]
  t_stations_body = np.linspace(0.010, t_len - 0.0085, _THUMB_RINGS - 2)
  t_stations = np.concatenate([t_stations_body, t_len - 0.0085 + 0.0085 * np.sin(
      np.radians([35.0, 65.0]))])
  t_scale = np.concatenate([np.ones(_THUMB_RINGS - 2),
                            np.cos(np.radians([35.0, 65.0]))])
  prev, prev_par = hole_sorted
  thumb_ring_ids = [(0.0, hole)]
  for s, sc in zip(t_stations, t_scale):
    u = s / t_len
    r_a = (0.0175 * np.exp(-(s / 0.03) ** 2) + 0.0105 - 0.002 * u) * sc
    r_b = (0.0095 - 0.0015 * u) * sc
    pts = (t_base + s * t_axis + r_a * np.cos(ang10)[:, None] * e1
           + r_b * np.sin(ang10)[:, None] * e2)
    ids = b.add(pts)
    record(ids, 4, s)
    par = ang10 / (2 * np.pi)
    b.faces += _stitch(prev, ids, prev_par, par)
    prev, prev_par = ids, par
    thumb_ring_ids.append((s, ids))
  thumb_tip = b.add([t_base + t_len * t_axis])[0]
  record([thumb_tip], 4, t_len)
  b.faces += [(prev[k], prev[(k + 1) % _RING], thumb_tip) for k in range(_RING)]
  thumb_alt = prev[7]

  verts = np.asarray(b.verts)
  if len(verts) != NUM_VERTS:
    raise AssertionError(f"synthetic MANO has {len(verts)} vertices")
  faces = _orient_faces(b.faces, verts)
  if len(faces) != NUM_FACES:
    raise AssertionError(f"synthetic MANO has {len(faces)} faces")
  part = np.asarray(meta_part)
  s_arc = np.asarray(meta_s)

  # --- Joint regressor: each joint is a blend of ring centroids. ---
  jreg = np.zeros((NUM_JOINTS, NUM_VERTS))

  def put(jid, groups):
    for ids, w in groups:
      jreg[jid, ids] += w / len(ids)

  put(0, [(wrist_rings[1][0], 0.5), (palm_rings[0], 0.5)])
  for jid, groups in finger_joint_rings:
    put(jid, groups)
  put(13, [(hole, 0.7), (palm_rings[1], 0.3)])
  put(14, _bracket(thumb_ring_ids, _THUMB_LEN[0]))
  put(15, _bracket(thumb_ring_ids, _THUMB_LEN[1]))
  joints = jreg @ verts

  # --- Skinning weights along each chain, smooth across joints. ---
  weights = np.zeros((NUM_VERTS, NUM_JOINTS))
  thumb_axis_s = (verts - joints[13]) @ t_axis
  thumb_dist = np.linalg.norm(verts - joints[13], axis=-1)
  for v in range(NUM_VERTS):
    if part[v] == -1:
      # Palm: wrist, blended into the nearest finger's MCP near the knuckles
      # and into the thumb CMC around the thenar region.
      z = verts[v, 2]
      f = int(np.argmin([abs(z - fr[1]) for fr in _FINGERS]))
      base, axis = frames[f][0], frames[f][1]
      c0 = _smoothstep((verts[v] - base) @ axis / _BLEND)
      t = 0.5 * _smoothstep(thumb_axis_s[v] / 0.012) * np.exp(
          -(thumb_dist[v] / 0.03) ** 2)
      weights[v, 0] += (1 - c0) * (1 - t)
      weights[v, _FINGER_JOINTS[f][0]] += c0 * (1 - t)
      weights[v, 13] += t
    else:
      if part[v] == 4:
        chain, bounds = _THUMB_JOINTS, (0.0, _THUMB_LEN[0], _THUMB_LEN[1])
      else:
        length = _FINGERS[part[v]][4]
        chain = _FINGER_JOINTS[part[v]]
        bounds = (0.0, _PIP_FRAC * length, _DIP_FRAC * length)
      c = [_smoothstep((s_arc[v] - bd) / _BLEND) for bd in bounds]
      weights[v, 0] += 1 - c[0]
      weights[v, chain[0]] += c[0] - c[1]
      weights[v, chain[1]] += c[1] - c[2]
      weights[v, chain[2]] += c[2]
  weights /= weights.sum(-1, keepdims=True)

  # --- Shape blend shapes: interpretable global deformations. ---
  wrist = joints[0]
  shapedirs = np.zeros((NUM_VERTS, 3, NUM_BETAS))
  shapedirs[:, :, 0] = 0.04 * (verts - wrist)  # overall size
  finger_w = 1.0 - weights[:, 0]
  shapedirs[:, 0, 1] = -0.012 * finger_w * np.clip(
      (wrist[0] - verts[:, 0]) / 0.2, 0, None) * 5  # finger length
  shapedirs[:, 2, 2] = 0.06 * (verts[:, 2] - wrist[2])  # palm width
  shapedirs[:, 1, 3] = 0.08 * verts[:, 1]  # thickness
  rest_normals = _vertex_normals(verts, faces)
  shapedirs[:, :, 4] = 0.0015 * finger_w[:, None] * rest_normals  # finger girth
  rng = np.random.default_rng(1234)
  for k in range(5, NUM_BETAS):
    freq = rng.normal(size=(3, 3)) * 25.0
    phase = rng.uniform(0, 2 * np.pi, size=3)
    field = np.sin(verts @ freq.T + phase)  # smooth low-frequency field
    shapedirs[:, :, k] = 0.0012 * field

  # --- Pose blend shapes: joint bulges (and a small smooth mixing term). ---
  posedirs = np.zeros((NUM_VERTS, 3, 9 * (NUM_JOINTS - 1)))
  parents = np.asarray(MANO_PARENTS)
  for j in range(1, NUM_JOINTS):
    g = 4.0 * weights[:, j] * weights[:, parents[j]]
    cols = slice(9 * (j - 1), 9 * j)
    mix = rng.normal(size=(3, 9)) * 4e-4
    posedirs[:, :, cols] = g[:, None, None] * mix[None]
    for diag in (0, 4, 8):
      posedirs[:, :, 9 * (j - 1) + diag] -= 0.0025 * g[:, None] * rest_normals

  # --- Pose PCA: flexion/spread synergies first, orthonormalised. ---
  flex_axes = np.zeros((NUM_JOINTS, 3))
  spread_axes = np.zeros((NUM_JOINTS, 3))
  for f, (_, _, lat, dor) in enumerate(frames):
    for jid in _FINGER_JOINTS[f]:
      flex_axes[jid] = lat
      spread_axes[jid] = dor
  thumb_flex = _normalize(np.cross(t_axis, _normalize([0.0, -1.0, -0.6])))
  for jid in _THUMB_JOINTS:
    flex_axes[jid] = thumb_flex
    spread_axes[jid] = np.cross(t_axis, thumb_flex)
  syn = []
  curl = flex_axes[1:].copy()
  syn.append(curl.ravel())
  mcp_vs_distal = flex_axes[1:] * np.array(
      [1.0 if (j - 1) % 3 == 0 else -0.7 for j in range(1, NUM_JOINTS)])[:, None]
  syn.append(mcp_vs_distal.ravel())
  spread = np.zeros((NUM_JOINTS, 3))
  for f, sgn in zip(range(4), (1.0, 0.2, -0.6, -1.0)):
    spread[_FINGER_JOINTS[f][0]] = sgn * spread_axes[_FINGER_JOINTS[f][0]]
  syn.append(spread[1:].ravel())
  opp = np.zeros((NUM_JOINTS, 3))
  for jid in _THUMB_JOINTS:
    opp[jid] = flex_axes[jid] + 0.5 * spread_axes[jid]
  syn.append(opp[1:].ravel())
  basis = np.concatenate([np.asarray(syn).T, rng.normal(size=(45, 41))], axis=1)
  q, r = np.linalg.qr(basis)
  q = q * np.sign(np.diag(r))[None]
  hands_components = q.T

  mean = np.zeros((NUM_JOINTS, 3))
  for f in range(4):
    for jid, amount in zip(_FINGER_JOINTS[f], (0.18, 0.28, 0.12)):
      mean[jid] = amount * flex_axes[jid]
  for jid, amount in zip(_THUMB_JOINTS, (0.1, 0.15, 0.1)):
    mean[jid] = amount * flex_axes[jid]
  hands_mean = mean[1:].ravel()

  # --- Vertex numbering: put tip vertices at the HO-3D / alternative ids. ---
  order = np.arange(NUM_VERTS)
  pos = np.arange(NUM_VERTS)
  tips = [thumb_tip] + finger_tips  # thumb, index, middle, ring, little
  alts = [thumb_alt] + finger_alt
  for target, old in list(zip(HO3D_TIP_IDS, tips)) + list(zip(ALT_TIP_IDS, alts)):
    p = pos[old]
    displaced = order[target]
    order[target], order[p] = old, displaced
    pos[old], pos[displaced] = target, p
  inv = np.argsort(order)
  return dict(
      v_template=verts[order],
      shapedirs=shapedirs[order],
      posedirs=posedirs[order],
      J_regressor=jreg[:, order],
      weights=weights[order],
      faces=inv[faces],
      parents=parents,
      hands_components=hands_components,
      hands_mean=hands_mean)


def _bracket(ring_ids, s):
  """Interpolation weights over the two rings whose arc lengths bracket s."""
  stations = np.asarray([rs for rs, _ in ring_ids])
  k = int(np.clip(np.searchsorted(stations, s) - 1, 0, len(stations) - 2))
  t = float(np.clip((s - stations[k]) / (stations[k + 1] - stations[k]), 0, 1))
  return [(ring_ids[k][1], 1.0 - t), (ring_ids[k + 1][1], t)]


def synthetic_mano_model(side: str = "right") -> ManoModel:
  """Deterministic, licence-free MANO-compatible hand (see module docstring).

  The left hand is the right hand mirrored by x -> -x (faces flipped, shape
  and pose bases and the pose PCA mirrored accordingly), so that
  ``mano_forward(left, mirror_pose(p), b)`` is the mirror of the right hand.
  """
  if side not in ("right", "left"):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  d = _synthetic_right()
  if side == "left":
    m = np.array([-1.0, 1.0, 1.0])
    sign = np.tile(np.array([1.0, -1.0, -1.0]), 15)
    feat_sign = np.tile((m[:, None] * m[None, :]).ravel(), 15)  # (R-I)->M(R-I)M
    d = dict(
        d,
        v_template=d["v_template"] * m,
        shapedirs=d["shapedirs"] * m[None, :, None],
        posedirs=d["posedirs"] * m[None, :, None] * feat_sign[None, None, :],
        faces=d["faces"][:, ::-1],
        hands_components=d["hands_components"] * sign[None, :],
        hands_mean=d["hands_mean"] * sign)
  return validate_model(_as_model(side, **d), f"synthetic {side} MANO")


def to_official_dict(model: ManoModel) -> dict[str, Any]:
  """The model in the official pickle's key layout (numpy/scipy objects)."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  kintree = np.stack([np.asarray(model.parents, np.int64),
                      np.arange(NUM_JOINTS)]).astype(np.uint32)
  return {
      "v_template": np.asarray(model.v_template, np.float64),
      "shapedirs": np.asarray(model.shapedirs, np.float64),
      "posedirs": np.asarray(model.posedirs, np.float64),
      "J_regressor": scipy.sparse.csc_matrix(
          np.asarray(model.J_regressor, np.float64)),
      "weights": np.asarray(model.weights, np.float64),
      "f": np.asarray(model.faces, np.uint32),
      "kintree_table": kintree,
      "hands_components": np.asarray(model.hands_components, np.float64),
      "hands_mean": np.asarray(model.hands_mean, np.float64),
      "hands_coeffs": np.zeros((1, 45)),
      "J": np.asarray(model.J_regressor, np.float64) @ np.asarray(
          model.v_template, np.float64),
      "bs_style": "lbs",
      "bs_type": "lrotmin",
  }
