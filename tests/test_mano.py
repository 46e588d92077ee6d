"""Tests for handobj_jax.models.mano: synthetic model, forward pass, loaders.

References: an independent float64 NumPy LBS written here, and (marked
`reference`) the smplx package's MANO layer on the same model arrays.
"""
import collections
import functools
import io
import os
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.models import mano
from reference_helpers import import_smplx
from reference_helpers import import_torch

TOL_M = 1e-5  # metres
SIDES = ("right", "left")


@pytest.fixture(scope="module", params=SIDES)
def model(request):
  return mano.synthetic_mano_model(request.param)


def _np_forward(model, pose, betas, trans, flat_hand_mean):
  """Float64 NumPy MANO (single example) used as the independent reference."""
  pose = np.asarray(pose, np.float64).copy()
  if not flat_hand_mean:
    pose[3:] += model.hands_mean
  v_shaped = model.v_template + np.einsum(
      "vck,k->vc", model.shapedirs[..., :len(betas)], betas)
  j_rest = model.J_regressor.astype(np.float64) @ v_shaped
  rots = Rotation.from_rotvec(pose.reshape(16, 3)).as_matrix()
  feat = (rots[1:] - np.eye(3)).reshape(-1)
  v_posed = v_shaped + model.posedirs.astype(np.float64) @ feat
  world = [None] * 16
  for j in range(16):
    local = np.eye(4)
    local[:3, :3] = rots[j]
    p = model.parents[j]
    local[:3, 3] = j_rest[j] - (j_rest[p] if p >= 0 else 0)
    world[j] = local if p < 0 else world[p] @ local
  world = np.stack(world)
  joints = world[:, :3, 3]
  skin = world.copy()
  skin[:, :3, 3] -= np.einsum("jik,jk->ji", world[:, :3, :3], j_rest)
  blended = np.einsum("vj,jab->vab", model.weights, skin)
  verts = np.einsum("vab,vb->va", blended[:, :3, :3], v_posed) + blended[:, :3, 3]
  verts = verts + trans
  joints = np.concatenate([joints + trans, verts[list(mano.HO3D_TIP_IDS)]])
  return verts, joints


def _random_inputs(seed, batch, pose_scale=0.5):
  rng = np.random.default_rng(seed)
  pose = rng.normal(0.0, pose_scale, size=(batch, 48)).astype(np.float32)
  betas = rng.normal(0.0, 1.0, size=(batch, 10)).astype(np.float32)
  trans = rng.normal(0.0, 0.1, size=(batch, 3)).astype(np.float32)
  return pose, betas, trans


# ---------------------------------------------------------------------------
# Synthetic model sanity.
# ---------------------------------------------------------------------------


def test_synthetic_shapes_and_dtypes(model):
  expected = {
      "v_template": (778, 3), "shapedirs": (778, 3, 10),
      "posedirs": (778, 3, 135), "J_regressor": (16, 778),
      "weights": (778, 16), "faces": (1538, 3), "parents": (16,),
      "hands_components": (45, 45), "hands_mean": (45,)}
  for name, shape in expected.items():
    arr = getattr(model, name)
    assert isinstance(arr, np.ndarray), name
    assert arr.shape == shape, name
    want = np.int32 if name in ("faces", "parents") else np.float32
    assert arr.dtype == want, name
  np.testing.assert_array_equal(model.parents, mano.MANO_PARENTS)
  assert model.faces.min() >= 0 and model.faces.max() < 778


def test_synthetic_is_deterministic():
  a = mano.synthetic_mano_model("right")
  mano._synthetic_right.cache_clear()
  b = mano.synthetic_mano_model("right")
  for name in mano.ManoModel._fields[:-1]:
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)


def test_weights_regressor_and_components(model):
  np.testing.assert_allclose(model.weights.sum(-1), 1.0, atol=1e-6)
  assert model.weights.min() >= 0.0
  np.testing.assert_allclose(model.J_regressor.sum(-1), 1.0, atol=1e-6)
  assert model.J_regressor.min() >= 0.0
  comps = model.hands_components.astype(np.float64)
  np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-5)
  # Each joint is regressed from nearby vertices only (sparse-ish rows).
  joints = model.J_regressor @ model.v_template
  for j in range(16):
    support = np.nonzero(model.J_regressor[j])[0]
    assert 0 < len(support) <= 60, j
    dist = np.linalg.norm(model.v_template[support] - joints[j], axis=-1)
    assert dist.max() < 0.07, (j, dist.max())  # palm-wide rings: < 7 cm


def test_mesh_is_closed_oriented_with_one_wrist_opening(model):
  faces = model.faces
  directed = collections.Counter()
  undirected = collections.Counter()
  for f in faces:
    assert len(set(f)) == 3
    for k in range(3):
      a, b = int(f[k]), int(f[(k + 1) % 3])
      directed[(a, b)] += 1
      undirected[tuple(sorted((a, b)))] += 1
  assert max(directed.values()) == 1  # consistent winding
  boundary = [e for e, c in undirected.items() if c == 1]
  assert set(undirected.values()) <= {1, 2}
  assert len(boundary) == 16
  # The boundary is one loop (each boundary vertex has degree 2).
  deg = collections.Counter(v for e in boundary for v in e)
  assert len(deg) == 16 and set(deg.values()) == {2}
  # Euler characteristic of a disc: V - E + F = 1.
  assert 778 - len(undirected) + len(faces) == 1
  # Outward: closing the opening with a fan gives a positive volume.
  v = model.v_template.astype(np.float64)
  centre = v[list(deg)].mean(0)
  tri = v[faces]
  vol = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
  for a, b in boundary:
    # Fan triangles follow the boundary opposite to the mesh's directed edge.
    if (a, b) in directed:
      a, b = b, a
    vol += np.dot(v[a], np.cross(v[b], centre))
  assert vol / 6.0 > 1e-4  # m^3: a hand is a few hundred cm^3


def test_tip_ids_are_at_fingertips(model):
  v = model.v_template
  joints = model.J_regressor @ v
  # thumb, index, middle, ring, little: distal joint and its parent.
  distal = (15, 3, 6, 12, 9)
  for tip, alt, j in zip(mano.HO3D_TIP_IDS, mano.ALT_TIP_IDS, distal):
    direction = joints[j] - joints[model.parents[j]]
    direction /= np.linalg.norm(direction)
    members = np.nonzero(model.weights[:, j] > 0.5)[0]
    assert tip in members
    proj = (v[members] - joints[j]) @ direction
    assert v[tip] @ direction >= (v[members] @ direction).max() - 1e-7
    assert proj.max() > 0.01
    assert np.linalg.norm(v[alt] - v[tip]) < 0.012


@pytest.mark.parametrize("flat", [True, False])
def test_zero_pose_joint_layout_is_hand_like(model, flat):
  _, j = mano.mano_forward(model, jnp.zeros(48), jnp.zeros(10),
                           flat_hand_mean=flat)
  j = np.asarray(j)
  wrist = j[0]
  chains = {  # MCP, PIP, DIP, tip
      "thumb": (13, 14, 15, 16), "index": (1, 2, 3, 17),
      "middle": (4, 5, 6, 18), "ring": (10, 11, 12, 19),
      "little": (7, 8, 9, 20)}
  for name, chain in chains.items():
    d = [np.linalg.norm(j[c] - wrist) for c in chain]
    assert all(a < b for a, b in zip(d, d[1:])), (name, d)
    assert d[-1] > 0.1, (name, d)
  # Order across the hand: thumb MCP - index - middle - ring - little MCP.
  lateral = j[1] - j[7]
  order = [j[k] @ lateral for k in (14, 1, 4, 10, 7)]
  assert all(a > b for a, b in zip(order, order[1:]))
  # The right hand is right-handed (and the left is its mirror image):
  # (middle MCP - wrist) x (index MCP - little MCP) points to the back (+y)
  # for the right hand and to the palm for the left hand in the flat pose.
  if flat:
    n = np.cross(j[4] - wrist, j[1] - j[7])
    sign = 1.0 if model.side == "right" else -1.0
    assert sign * n[1] > 0


def test_forward_matches_numpy_reference(model):
  pose, betas, trans = _random_inputs(0, 3)
  for flat in (False, True):
    verts, joints = mano.mano_forward(model, pose, betas, trans,
                                      flat_hand_mean=flat)
    assert verts.shape == (3, 778, 3) and joints.shape == (3, 21, 3)
    assert verts.dtype == jnp.float32
    for b in range(3):
      rv, rj = _np_forward(model, pose[b], betas[b], trans[b], flat)
      np.testing.assert_allclose(verts[b], rv, atol=TOL_M)
      np.testing.assert_allclose(joints[b], rj, atol=TOL_M)


def test_jit_eager_vmap_and_leading_shapes():
  model = mano.synthetic_mano_model("right")
  pose, betas, trans = _random_inputs(1, 6)
  fn = functools.partial(mano.mano_forward, model)
  eager = fn(pose, betas, trans)
  jitted = jax.jit(fn)(pose, betas, trans)
  vmapped = jax.vmap(fn)(pose, betas, trans)
  for out in (jitted, vmapped):
    for a, b in zip(out, eager):
      np.testing.assert_allclose(a, b, atol=2e-6)
  # Arbitrary leading dims and broadcasting of betas/trans.
  v2, j2 = fn(pose.reshape(2, 3, 48), betas[0], trans[:3])
  assert v2.shape == (2, 3, 778, 3) and j2.shape == (2, 3, 21, 3)
  v_ref, _ = fn(pose[4], betas[0], trans[1])
  np.testing.assert_allclose(v2[1, 1], v_ref, atol=2e-6)
  # Fewer betas = zero padding; custom tip ids select those vertices.
  v5, _ = fn(pose[0], betas[0, :5])
  v10, _ = fn(pose[0], jnp.concatenate([betas[0, :5], jnp.zeros(5)]))
  np.testing.assert_allclose(v5, v10, atol=1e-7)
  v_alt, j_alt = fn(pose[0], betas[0], tip_ids=mano.ALT_TIP_IDS)
  np.testing.assert_array_equal(j_alt[16:], v_alt[np.array(mano.ALT_TIP_IDS)])


def test_bad_inputs_raise_clear_errors():
  model = mano.synthetic_mano_model("right")
  with pytest.raises(ValueError, match="pose"):
    mano.mano_forward(model, jnp.zeros(45), jnp.zeros(10))
  with pytest.raises(ValueError, match="betas"):
    mano.mano_forward(model, jnp.zeros(48), jnp.zeros(11))
  with pytest.raises(ValueError, match="side"):
    mano.synthetic_mano_model("middle")
  broken = model._replace(weights=model.weights[:, :15])
  with pytest.raises(ValueError, match="weights"):
    mano.validate_model(broken)


def test_pca_forward_equals_full_pose(model):
  rng = np.random.default_rng(2)
  go = rng.normal(0, 0.5, size=(4, 3)).astype(np.float32)
  coeffs = rng.normal(0, 1.0, size=(4, 12)).astype(np.float32)
  betas = rng.normal(size=(4, 10)).astype(np.float32)
  hand = coeffs.astype(np.float64) @ model.hands_components[:12]
  full = np.concatenate([go, hand], -1)
  for flat in (False, True):
    v_pca, j_pca = mano.mano_forward_pca(model, go, coeffs, betas,
                                         flat_hand_mean=flat)
    v_full, j_full = mano.mano_forward(model, full, betas, flat_hand_mean=flat)
    np.testing.assert_allclose(v_pca, v_full, atol=2e-6)
    np.testing.assert_allclose(j_pca, j_full, atol=2e-6)


def test_left_hand_is_mirror_of_right():
  right = mano.synthetic_mano_model("right")
  left = mano.synthetic_mano_model("left")
  pose, betas, trans = _random_inputs(3, 4)
  m = np.array([-1.0, 1.0, 1.0], np.float32)
  for flat in (False, True):
    vr, jr = mano.mano_forward(right, pose, betas, trans, flat_hand_mean=flat)
    vl, jl = mano.mano_forward(left, mano.mirror_pose(pose), betas, trans * m,
                               flat_hand_mean=flat)
    np.testing.assert_allclose(vl, np.asarray(vr) * m, atol=2e-6)
    np.testing.assert_allclose(jl, np.asarray(jr) * m, atol=2e-6)


def test_posing_changes_vertices_smoothly():
  model = mano.synthetic_mano_model("right")
  fn = lambda p: mano.mano_forward(model, p, jnp.zeros(10))[0]
  rng = np.random.default_rng(4)
  pose = rng.normal(0, 0.3, size=48).astype(np.float32)
  delta = rng.normal(size=48).astype(np.float32)
  delta *= 1e-2 / np.linalg.norm(delta)
  v0, vp, vm = fn(pose), fn(pose + delta), fn(pose - delta)
  step = np.linalg.norm(np.asarray(vp - v0), axis=-1)
  # Lever arms are < 0.25 m, so a 0.01 rad change moves vertices < 2.5 mm.
  assert step.max() < 0.25 * 1e-2
  # Second differences are much smaller than first differences (smooth map).
  curv = np.linalg.norm(np.asarray(vp + vm - 2 * v0), axis=-1)
  assert curv.max() < 0.1 * step.max()
  # Neighbouring vertices move together: edge lengths change by < 1 mm.
  e = model.faces[:, [0, 1]]
  len0 = np.linalg.norm(np.asarray(v0[e[:, 0]] - v0[e[:, 1]]), axis=-1)
  len1 = np.linalg.norm(np.asarray(vp[e[:, 0]] - vp[e[:, 1]]), axis=-1)
  assert np.abs(len1 - len0).max() < 1e-3


def test_gradients_finite_at_zero_pose():
  model = mano.synthetic_mano_model("right")
  def loss(pose, betas):
    v, j = mano.mano_forward(model, pose, betas, flat_hand_mean=True)
    return jnp.sum(v ** 2) + jnp.sum(j ** 2)
  g_pose, g_betas = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      jnp.zeros(48), jnp.zeros(10))
  assert np.all(np.isfinite(np.asarray(g_pose)))
  assert np.all(np.isfinite(np.asarray(g_betas)))
  assert np.abs(np.asarray(g_pose)).max() > 0


# ---------------------------------------------------------------------------
# Loaders.
# ---------------------------------------------------------------------------


def _fake_chumpy_modules():
  """Minimal fake chumpy whose objects pickle like chumpy's Ch / Reshape."""
  ch_mod = types.ModuleType("chumpy.ch")
  re_mod = types.ModuleType("chumpy.reordering")

  class Ch:  # pickled state mimics chumpy.Ch.__getstate__ (the __dict__)
    def __init__(self, x):
      self.x = x
      self._dirty_vars = set()
      self._itr = None
      self._depends_on_deps = {}
      self._make_dense = False
      self._make_sparse = False

  class Reshape(Ch):
    def __init__(self, a, newshape):
      super().__init__(None)
      del self.x
      self.a = a
      self.newshape = newshape

  for cls, mod in ((Ch, ch_mod), (Reshape, re_mod)):
    cls.__module__ = mod.__name__
    cls.__qualname__ = cls.__name__
    setattr(mod, cls.__name__, cls)
  root = types.ModuleType("chumpy")
  root.ch, root.reordering = ch_mod, re_mod
  return {"chumpy": root, "chumpy.ch": ch_mod, "chumpy.reordering": re_mod}


def _write_chumpy_pkl(model, path, py2_names=True):
  """Writes `model` in the official layout with chumpy-wrapped arrays.

  The fake chumpy modules exist only while pickling; afterwards loading must
  go through the restricted unpickler's stand-ins.
  """
  mods = _fake_chumpy_modules()
  sys.modules.update(mods)
  try:
    data = mano.to_official_dict(model)
    Ch = mods["chumpy.ch"].Ch
    data["shapedirs"] = Ch(data["shapedirs"])
    data["posedirs"] = mods["chumpy.reordering"].Reshape(
        Ch(data["posedirs"].reshape(-1)), (778, 3, 135))
    raw = pickle.dumps(data, protocol=2)
  finally:
    for name in mods:
      sys.modules.pop(name, None)
  if py2_names:
    # Protocol-2 GLOBAL opcodes are text: rename to the Python-2 era modules
    # that the official files reference.
    for new, old in ((b"numpy._core.multiarray", b"numpy.core.multiarray"),
                     (b"scipy.sparse._csc", b"scipy.sparse.csc"),
                     (b"\nbuiltins\n", b"\n__builtin__\n"),
                     (b"copyreg\n", b"copy_reg\n")):
      raw = raw.replace(new, old)
  with open(path, "wb") as f:
    f.write(raw)


def _assert_models_equal(a, b, atol=0.0):
  assert a.side == b.side
  for name in mano.ManoModel._fields[:-1]:
    np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol,
                               err_msg=name)


@pytest.mark.parametrize("py2_names", [True, False])
def test_load_chumpy_layout_pkl_without_chumpy(tmp_path, monkeypatch,
                                               py2_names):
  for side in SIDES:
    model = mano.synthetic_mano_model(side)
    path = tmp_path / f"MANO_{side.upper()}.pkl"
    _write_chumpy_pkl(model, path, py2_names)
    raw = path.read_bytes()
    assert b"chumpy.ch" in raw and b"Reshape" in raw
    if py2_names:
      assert b"numpy.core.multiarray" in raw and b"scipy.sparse.csc\n" in raw
    # Block any import of chumpy while loading.
    monkeypatch.setitem(sys.modules, "chumpy", None)
    with pytest.raises(ImportError):
      import chumpy  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    loaded = mano.load_mano(str(path), side=side)
    _assert_models_equal(loaded, model)
    loaded_dir = mano.load_mano(str(tmp_path), side=side)
    _assert_models_equal(loaded_dir, model)
    monkeypatch.delitem(sys.modules, "chumpy")


def test_restricted_unpickler_refuses_other_globals(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo should-not-run",))
  for payload in (Evil(), {"v_template": Evil()}):
    raw = pickle.dumps(payload, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing.*system"):
      mano.RestrictedMANOUnpickler(io.BytesIO(raw), encoding="latin1").load()
  path = tmp_path / "MANO_RIGHT.pkl"
  path.write_bytes(pickle.dumps({"f": eval}, protocol=2))  # builtins.eval
  with pytest.raises(mano.ManoFileError, match="MANO_RIGHT.pkl.*refusing.*eval"):
    mano.load_mano(str(path))


def _chumpy_self_reference() -> bytes:
  """A pickle of a chumpy `Reshape` node whose input is itself (hand-assembled protocol-2 opcodes)."""
  return (b"\x80\x02cchumpy.reshape\nReshape\nq\x00)\x81q\x01}q\x02(X\x01\x00\x00\x00aq\x03h\x01"
          b"X\x08\x00\x00\x00newshapeq\x04K\x03\x85q\x05ub}q\x06X\n\x00\x00\x00v_templateq\x07h\x01s.")


@pytest.mark.parametrize("case", ["empty", "truncated_pkl", "self_reference", "empty_kintree",
                                  "truncated_npz", "not_a_dict"])
def test_damaged_files_are_named(tmp_path, case):
  """Every unusable MANO file gives a ManoFileError naming the file (never a bare library exception)."""
  model = mano.synthetic_mano_model("right")
  path = tmp_path / "MANO_RIGHT.pkl"
  if case == "empty":
    path.write_bytes(b"")
  elif case == "truncated_pkl":
    _write_chumpy_pkl(model, path)
    path.write_bytes(path.read_bytes()[:1000])
  elif case == "self_reference":
    path.write_bytes(_chumpy_self_reference())
  elif case == "empty_kintree":
    data = mano.to_official_dict(model)
    data["kintree_table"] = np.zeros((2, 0), np.int64)
    path.write_bytes(pickle.dumps(data, protocol=2))
  elif case == "truncated_npz":
    path = tmp_path / "right.npz"
    mano.save_npz(model, str(path))
    path.write_bytes(path.read_bytes()[:3000])
  elif case == "not_a_dict":
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
  with pytest.raises(mano.ManoFileError) as info:
    mano.load_mano(str(path), "right")
  message = str(info.value)
  assert str(path) in message and "\n" not in message


def test_missing_file_message(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    mano.load_mano(str(tmp_path / "nope" / "MANO_RIGHT.pkl"))
  msg = str(info.value)
  for needle in ("licence", "mano.is.tue.mpg.de", mano.MANO_CONFIG_KEY,
                 mano.DEFAULT_MANO_DIR, "MANO_RIGHT.pkl"):
    assert needle in msg
  with pytest.raises(FileNotFoundError, match="MANO_LEFT.pkl"):
    mano.load_mano(str(tmp_path), side="left")


def test_none_path_gives_synthetic_and_npz_round_trip(tmp_path):
  for side in SIDES:
    model = mano.load_mano(None, side)
    _assert_models_equal(model, mano.synthetic_mano_model(side))
    path = str(tmp_path / f"{side}.npz")
    mano.save_npz(model, path)
    _assert_models_equal(mano.load_mano(path, side), model)
    other = "left" if side == "right" else "right"
    with pytest.raises(ValueError, match="hand"):
      mano.load_mano(path, other)


def test_convert_script(tmp_path):
  model = mano.synthetic_mano_model("left")
  src = tmp_path / "MANO_LEFT.pkl"
  dst = tmp_path / "left.npz"
  _write_chumpy_pkl(model, src)
  script = os.path.join(os.path.dirname(__file__), "..", "scripts",
                        "convert_mano.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, script, str(src), str(dst)],
                       capture_output=True, text=True, env=env, timeout=120,
                       cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert res.returncode == 0, res.stderr
  _assert_models_equal(mano.load_mano(str(dst), "left"), model)


# ---------------------------------------------------------------------------
# Parity with smplx.
# ---------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("side", SIDES)
def test_parity_with_smplx(tmp_path, side):
  smplx, torch = import_smplx(), import_torch()
  model = mano.synthetic_mano_model(side)
  folder = tmp_path / "mano"
  folder.mkdir()
  with open(folder / f"MANO_{side.upper()}.pkl", "wb") as f:
    pickle.dump(mano.to_official_dict(model), f, protocol=2)
  batch = 4
  rng = np.random.default_rng(5)
  pose, betas, trans = _random_inputs(6, batch)
  tips = np.array(mano.HO3D_TIP_IDS)
  for use_pca, flat in ((False, False), (False, True), (True, False),
                        (True, True)):
    n_pca = 12
    layer = smplx.create(str(tmp_path), model_type="mano",
                         is_rhand=(side == "right"), use_pca=use_pca,
                         num_pca_comps=n_pca, flat_hand_mean=flat,
                         batch_size=batch)
    if use_pca:
      coeffs = rng.normal(0, 1.0, size=(batch, n_pca)).astype(np.float32)
      hand = torch.tensor(coeffs)
      verts, joints = mano.mano_forward_pca(model, pose[:, :3], coeffs, betas,
                                            trans, flat_hand_mean=flat)
    else:
      hand = torch.tensor(pose[:, 3:])
      verts, joints = mano.mano_forward(model, pose, betas, trans,
                                        flat_hand_mean=flat)
    with torch.no_grad():
      out = layer(betas=torch.tensor(betas),
                  global_orient=torch.tensor(pose[:, :3]), hand_pose=hand,
                  transl=torch.tensor(trans))
    ref_v = out.vertices.numpy()
    ref_j = out.joints.numpy()
    assert ref_j.shape[1] == 16  # smplx's MANO does not append tips itself
    np.testing.assert_allclose(verts, ref_v, atol=TOL_M)
    np.testing.assert_allclose(joints[:, :16], ref_j, atol=TOL_M)
    np.testing.assert_allclose(joints[:, 16:], ref_v[:, tips], atol=TOL_M)
