"""Tests for the test-time-augmentation ensemble (Semi-Hand-Object Sec. 5.1): the inverse transforms.

A model that is equivariant by construction (it reads three coloured blobs from the crop and builds its
2D joints, root-relative 3D joints, vertices and global rotation from their centroids) must give the same
frame-level prediction through every transform; a left hand (the mirrored frame) must give the mirror image
of the right hand's ensemble, for any model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import rotation
from handobj_jax.models import mano as mano_lib
from handobj_jax.semi import tta

H = W = 96
S = 64
# The equivariant model's fixed coefficients: joint j = c0 + A_j (c1 - c0) + B_j (c2 - c0).
_rng = np.random.default_rng(0)
A = _rng.uniform(-0.5, 1.2, 21).astype(np.float32)
B = _rng.uniform(-0.5, 1.2, 21).astype(np.float32)
A[0] = B[0] = 0.0
VA = _rng.uniform(-0.5, 1.2, 778).astype(np.float32)
VB = _rng.uniform(-0.5, 1.2, 778).astype(np.float32)
ART = _rng.normal(0, 0.3, 45).astype(np.float32)
BETA = _rng.normal(0, 1, 10).astype(np.float32)
# Coordinates of the 2D joint grid (pixels), for centroids.
_YS, _XS = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(S, dtype=np.float32), indexing="ij")

# Centroids of bilinearly resampled Gaussians move by a small fraction of a pixel.
PX_ATOL = 0.02
REL_ATOL = 5e-4      # 3D points (metres, hand ~0.1)
ROT_ATOL = 1e-3      # radians


def _blob_frames(centres, sigma=2.5):
  """[B, H, W, 3] uint8-range float frames with one Gaussian blob per channel at `centres` [B, 3, 2]."""
  ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  img = np.exp(-((xs[None, None] - centres[:, :, 0, None, None]) ** 2 +
                 (ys[None, None] - centres[:, :, 1, None, None]) ** 2) / (2 * sigma ** 2))
  return (255.0 * np.moveaxis(img, 1, -1)).astype(np.float32)


def equivariant_model(crops, hand_box, obj_box):
  del hand_box, obj_box
  w = crops + 0.0
  total = jnp.sum(w, axis=(1, 2))                                          # [N, 3]
  cx = jnp.einsum("nhwc,hw->nc", w, _XS) / total
  cy = jnp.einsum("nhwc,hw->nc", w, _YS) / total
  c = jnp.stack([cx, cy], -1)                                              # [N, 3, 2]
  e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
  j2d = c[:, None, 0] + A[None, :, None] * e1[:, None] + B[None, :, None] * e2[:, None]
  v2d = c[:, None, 0] + VA[None, :, None] * e1[:, None] + VB[None, :, None] * e2[:, None]
  unit = jnp.linalg.norm(e1, axis=-1)[:, None, None]
  to3d = lambda p, n: jnp.concatenate([(p - p[:, :1]) / unit * 0.05, jnp.broadcast_to(
      jnp.linspace(0.0, 0.02, n)[None, :, None], p.shape[:2] + (1,))], -1)
  phi = jnp.arctan2(e1[:, 1], e1[:, 0])
  glob = jnp.stack([jnp.zeros_like(phi), jnp.zeros_like(phi), phi], -1)    # R_z(phi)
  n = crops.shape[0]
  theta = jnp.concatenate([glob, jnp.broadcast_to(ART, (n, 45))], -1)
  return dict(joints2d=j2d, joints3d=to3d(j2d, 21), verts3d=to3d(v2d, 778) - 0.0, theta=theta,
              beta=jnp.broadcast_to(BETA, (n, 10)))


def _inputs():
  centres = np.asarray([[[40, 44], [56, 40], [47, 58]], [[30, 50], [44, 62], [52, 41]]], np.float32)
  frames = _blob_frames(centres)
  hand_box = np.asarray([[30, 30, 62, 66], [22, 34, 58, 70]], np.float32)
  obj_box = np.asarray([[36, 36, 70, 60], [30, 30, 62, 60]], np.float32)
  return frames, hand_box, obj_box


def _run(transforms, frames, hand_box, obj_box, is_left):
  fn = jax.jit(lambda f, h, o, l: tta.tta_predict(equivariant_model, f, h, o, l, transforms, S, 1.5))
  return jax.device_get(fn(frames, hand_box, obj_box, is_left))


def test_parse_transforms():
  ts = tta.parse_transforms(tta.DEFAULT_TRANSFORMS)
  assert len(ts) == 8 and ts[0] == tta.Transform() and ts[5].rotation_deg == 180.0
  assert tta.parse_transforms("r15+s1.1, id")[0] == tta.Transform(1.1, 15.0)
  assert [t.name for t in ts] == ["id", "r15", "r-15", "r30", "r-30", "r180", "s0.85", "s1.15"]
  for bad in ("x2", "s0", "r", "", "s-1"):
    with pytest.raises(ValueError, match="config.tta.transforms"):
      tta.parse_transforms(bad)


def test_an_equivariant_model_predicts_the_same_through_every_transform():
  frames, hand_box, obj_box = _inputs()
  right = np.zeros(2, bool)
  ref = _run((tta.Transform(),), frames, hand_box, obj_box, right)
  # The identity crop's 2D joints are the frame's blob construction (a check of the forward map).
  c = np.asarray([[[40, 44], [56, 40], [47, 58]], [[30, 50], [44, 62], [52, 41]]], np.float32)
  expect = c[:, None, 0] + A[None, :, None] * (c[:, None, 1] - c[:, None, 0]) + B[None, :, None] * (
      c[:, None, 2] - c[:, None, 0])
  np.testing.assert_allclose(ref["joints2d"], expect, atol=PX_ATOL)
  for t in tta.parse_transforms(tta.DEFAULT_TRANSFORMS + ",r77+s1.3"):
    out = _run((t,), frames, hand_box, obj_box, right)
    np.testing.assert_allclose(out["joints2d"], ref["joints2d"], atol=PX_ATOL, err_msg=t.name)
    np.testing.assert_allclose(out["joints3d"], ref["joints3d"], atol=REL_ATOL, err_msg=t.name)
    np.testing.assert_allclose(out["verts3d"], ref["verts3d"], atol=REL_ATOL, err_msg=t.name)
    np.testing.assert_allclose(out["beta"], ref["beta"], atol=1e-6, err_msg=t.name)
    r_out = rotation.axis_angle_to_matrix(out["theta"].reshape(-1, 16, 3))
    r_ref = rotation.axis_angle_to_matrix(ref["theta"].reshape(-1, 16, 3))
    np.testing.assert_allclose(r_out, r_ref, atol=ROT_ATOL, err_msg=t.name)
  ens = _run(tta.parse_transforms(tta.DEFAULT_TRANSFORMS), frames, hand_box, obj_box, right)
  np.testing.assert_allclose(ens["joints2d"], ref["joints2d"], atol=PX_ATOL)
  assert np.all(ens["tta_spread_px"] < PX_ATOL)


def test_a_wrong_inverse_is_detected():
  """The check above has teeth: inverting a 30 degree crop as if it were the identity moves the 3D joints."""
  frames, hand_box, obj_box = _inputs()
  right = jnp.zeros(2, bool)
  t = tta.Transform(1.0, 30.0)
  a = tta.transform_affine(jnp.asarray(hand_box), jnp.asarray(obj_box), right, t, S, 1.5)
  raw = equivariant_model(crop_lib.warp_image(jnp.asarray(frames) / 255.0, a, S), None, None)
  ref = _run((tta.Transform(),), frames, hand_box, obj_box, np.zeros(2, bool))
  good = jax.device_get(tta.invert_outputs(raw, a, right, t))
  wrong = jax.device_get(tta.invert_outputs(raw, a, right, tta.Transform()))
  np.testing.assert_allclose(good["joints3d"], ref["joints3d"], atol=REL_ATOL)
  assert np.max(np.abs(wrong["joints3d"] - ref["joints3d"])) > 0.01


def test_left_hands_give_the_mirror_image_of_the_right_ensemble():
  frames, hand_box, obj_box = _inputs()
  mirrored = frames[:, :, ::-1]
  flip_box = lambda b: np.stack([W - 1 - b[:, 2], b[:, 1], W - 1 - b[:, 0], b[:, 3]], -1)
  transforms = tta.parse_transforms(tta.DEFAULT_TRANSFORMS)        # Symmetric in rotation.
  right = _run(transforms, frames, hand_box, obj_box, np.zeros(2, bool))
  left = _run(transforms, mirrored, flip_box(hand_box), flip_box(obj_box), np.ones(2, bool))
  np.testing.assert_allclose(left["joints2d"][..., 0], W - 1 - right["joints2d"][..., 0], atol=1e-3)
  np.testing.assert_allclose(left["joints2d"][..., 1], right["joints2d"][..., 1], atol=1e-3)
  m = np.asarray([-1.0, 1.0, 1.0], np.float32)
  np.testing.assert_allclose(left["joints3d"], right["joints3d"] * m, atol=1e-5)
  np.testing.assert_allclose(left["verts3d"], right["verts3d"] * m, atol=1e-5)
  np.testing.assert_allclose(rotation.axis_angle_to_matrix(left["theta"].reshape(-1, 16, 3)),
                             rotation.axis_angle_to_matrix(
                                 np.asarray(mano_lib.mirror_pose(right["theta"])).reshape(-1, 16, 3)),
                             atol=1e-4)


def test_mean_axis_angle_is_the_chordal_mean():
  rng = np.random.default_rng(1)
  base = rng.normal(0, 1, (3, 3)).astype(np.float32)
  noise = rng.normal(0, 0.05, (6, 3, 3)).astype(np.float32)
  theta = (base[None] + noise).reshape(6, 1, 9)
  ours = np.asarray(tta.mean_axis_angle(jnp.asarray(theta))).reshape(3, 3)
  from scipy.spatial.transform import Rotation  # pylint: disable=g-import-not-at-top
  for k in range(3):
    ref = Rotation.from_rotvec(theta[:, 0, 3 * k:3 * k + 3].astype(np.float64)).mean()
    np.testing.assert_allclose(Rotation.from_rotvec(ours[k]).as_matrix(), ref.as_matrix(), atol=1e-4)
