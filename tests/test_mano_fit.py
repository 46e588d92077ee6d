"""handobj_jax.models.mano_fit: MANO fitted to 3D joints (synthetic MANO model).

Ground truth: plausible hands made by the test (finger curls along the synthetic model's flexion synergy plus
small noise, a uniformly random global rotation, betas ~ N(0, 0.5), the wrist about 0.5 m in front of the
camera) -> joints by `mano_forward` -> fit. Joints are what the fit sees, so they must be recovered closely;
vertices are constrained only through the joints (e.g. a finger's twist about its own axis is invisible), so
their tolerance is looser.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.models import mano as mano_lib
from handobj_jax.models import mano_fit

JOINT_TOL_MEAN_M = 1e-3   # Mean over the batch of the per-example mean joint error.
JOINT_TOL_MAX_M = 2e-3    # Every example's mean joint error.
VERT_TOL_MEAN_M = 4e-3    # Mean over the batch of the per-example mean vertex error.
VERT_TOL_MAX_M = 8e-3     # Every example's mean vertex error.
BATCH = 8


@pytest.fixture(scope="module")
def model():
  return mano_lib.synthetic_mano_model("right")


def _hands(model, batch, seed, flat_hand_mean=True, tip_ids=mano_lib.HO3D_TIP_IDS):
  rng = np.random.default_rng(seed)
  comps = np.asarray(model.hands_components, np.float64)
  curl = rng.uniform(0.0, 4.0, batch)[:, None] * comps[0]           # Up to ~1 rad per finger joint.
  mcp = rng.uniform(-1.0, 1.0, batch)[:, None] * comps[1]           # MCP vs distal flexion.
  spread = rng.uniform(-1.0, 1.0, batch)[:, None] * comps[2]        # Finger spread.
  pose = np.zeros((batch, 48))
  pose[:, :3] = Rotation.random(batch, random_state=seed).as_rotvec()
  pose[:, 3:] = curl + mcp + spread + rng.normal(0.0, 0.05, (batch, 45))
  betas = rng.normal(0.0, 0.5, (batch, 10))
  trans = np.stack([rng.uniform(-0.1, 0.1, batch), rng.uniform(-0.1, 0.1, batch),
                    rng.uniform(0.45, 0.55, batch)], -1)
  verts, joints = mano_lib.mano_forward(model, pose, betas, trans, tip_ids=tip_ids, flat_hand_mean=flat_hand_mean)
  return np.asarray(verts), np.asarray(joints)


def _errors(out, verts, joints):
  je = np.linalg.norm(out["joints"] - joints, axis=-1).mean(-1)
  ve = np.linalg.norm(out["verts"] - verts, axis=-1).mean(-1)
  return je, ve


def test_fit_recovers_joints_and_mesh(model):
  verts, joints = _hands(model, BATCH, seed=0)
  out = mano_fit.fit_mano_to_joints(model, joints)
  assert {k: v.shape for k, v in out.items()} == {
      "pose": (BATCH, 48), "betas": (BATCH, 10), "trans": (BATCH, 3), "verts": (BATCH, 778, 3),
      "joints": (BATCH, 21, 3), "joint_error_m": (BATCH,)}
  assert all(v.dtype == np.float32 for v in out.values())
  je, ve = _errors(out, verts, joints)
  np.testing.assert_allclose(out["joint_error_m"], je, atol=1e-6)
  assert je.mean() < JOINT_TOL_MEAN_M and je.max() < JOINT_TOL_MAX_M, je
  assert ve.mean() < VERT_TOL_MEAN_M and ve.max() < VERT_TOL_MAX_M, ve
  # The returned mesh is mano_forward of the returned parameters (the documented convention).
  v2, j2 = mano_lib.mano_forward(model, out["pose"], out["betas"], out["trans"], flat_hand_mean=True)
  np.testing.assert_allclose(np.asarray(v2), out["verts"], atol=2e-5)
  np.testing.assert_allclose(np.asarray(j2), out["joints"], atol=2e-5)
  # Examples are independent: fitting in chunks of 3 (padded last chunk) gives the same result.
  chunked = mano_fit.fit_mano_to_joints(model, joints, chunk_size=3)
  np.testing.assert_allclose(chunked["joints"], out["joints"], atol=2e-4)


def test_fit_mean_hand_convention_and_alternative_tips(model):
  tips = mano_lib.ALT_TIP_IDS
  verts, joints = _hands(model, 4, seed=1, flat_hand_mean=False, tip_ids=tips)
  out = mano_fit.fit_mano_to_joints(model, joints, tip_ids=tips, flat_hand_mean=False)
  je, ve = _errors(out, verts, joints)
  assert je.max() < JOINT_TOL_MAX_M and ve.max() < VERT_TOL_MAX_M, (je, ve)
  _, j2 = mano_lib.mano_forward(model, out["pose"], out["betas"], out["trans"], tip_ids=tips,
                                flat_hand_mean=False)
  np.testing.assert_allclose(np.asarray(j2), out["joints"], atol=2e-5)


def test_degenerate_targets_give_finite_results(model):
  same = np.full((1, 21, 3), 0.4, np.float32)                        # All joints at one point.
  line = np.zeros((1, 21, 3), np.float32)
  line[0, :, 2] = np.linspace(0.3, 0.5, 21)                           # Collinear joints.
  zero = np.zeros((1, 21, 3), np.float32)
  out = mano_fit.fit_mano_to_joints(model, np.concatenate([same, line, zero] * 3)[:BATCH])
  for name, value in out.items():
    assert np.all(np.isfinite(value)), name
  with pytest.raises(ValueError, match="example 1"):
    bad = np.zeros((2, 21, 3), np.float32)
    bad[1, 3, 0] = np.nan
    mano_fit.fit_mano_to_joints(model, bad)
  with pytest.raises(ValueError, match=r"\[B, 21, 3\]"):
    mano_fit.fit_mano_to_joints(model, np.zeros((2, 16, 3)))


def test_rigid_align_is_a_proper_rotation():
  rng = np.random.default_rng(3)
  src = rng.normal(size=(6, 6, 3))
  rot = Rotation.random(6, random_state=4).as_matrix()
  dst = np.einsum("bij,bkj->bki", rot, src) + rng.normal(size=(6, 1, 3))
  r, t = mano_fit.rigid_align(src, dst)
  np.testing.assert_allclose(np.asarray(r), rot, atol=1e-5)
  np.testing.assert_allclose(np.einsum("bij,bkj->bki", np.asarray(r), src) + np.asarray(t)[:, None], dst,
                             atol=1e-4)
  # A mirrored target is best fitted by a reflection; the result must still be a rotation (det +1), and the
  # rotation that minimises the error (compared with scipy's, which solves the same proper problem).
  mirrored = dst * np.array([-1.0, 1.0, 1.0])
  r, _ = mano_fit.rigid_align(src, mirrored)
  np.testing.assert_allclose(np.linalg.det(np.asarray(r)), 1.0, atol=1e-5)
  for b in range(6):
    centred_src = src[b] - src[b].mean(0)
    centred_dst = mirrored[b] - mirrored[b].mean(0)
    ref, _ = Rotation.align_vectors(centred_dst, centred_src)
    np.testing.assert_allclose(np.asarray(r)[b], ref.as_matrix(), atol=1e-4)
  # Degenerate: coincident points -> identity; collinear -> some rotation mapping the line onto the line.
  r, t = mano_fit.rigid_align(np.zeros((4, 3)), np.ones((4, 3)))
  np.testing.assert_allclose(np.asarray(r), np.eye(3), atol=1e-6)
  np.testing.assert_allclose(np.asarray(t), np.ones(3), atol=1e-6)
  line = np.outer(np.linspace(-1, 1, 5), [1.0, 0.0, 0.0])
  r, t = mano_fit.rigid_align(line, line @ Rotation.from_rotvec([0, 0, 0.7]).as_matrix().T)
  assert np.all(np.isfinite(np.asarray(r))) and abs(np.linalg.det(np.asarray(r)) - 1) < 1e-5
  np.testing.assert_allclose(line @ np.asarray(r).T + np.asarray(t),
                             line @ Rotation.from_rotvec([0, 0, 0.7]).as_matrix().T, atol=1e-5)
