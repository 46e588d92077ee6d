"""The `freihand` builder on a tiny fake FreiHAND evaluation tree in the published layout, written by the test.

Ground truth: synthetic-MANO hands in FreiHAND's conventions (pose relative to MANO's mean hand, i.e.
flat_hand_mean=False; fingertips at vertices 745, 317, 444, 556, 673), in the OpenCV camera frame about 0.6 m
away, with per-image intrinsics; joints are written in FreiHAND's ("simple") order.
"""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.evaluation import ho3d
from handobj_jax.models import mano as mano_lib
from input_pipeline import pipeline
from input_pipeline import tfds_freihand as fh

N = 5
PIX_TOL = 1e-3


def _image(i):
  yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
  return np.stack([xx + 5 * i, yy + 7 * i, np.full_like(xx, 30.0 + 20 * i)], -1).clip(0, 255).astype(np.uint8)


def _write_tree(root):
  rng = np.random.default_rng(0)
  model = mano_lib.synthetic_mano_model("right")
  truth = []
  ks, manos, xyzs, vertss = [], [], [], []
  (root / "evaluation" / "rgb").mkdir(parents=True)
  for i in range(N):
    pose = np.zeros(48)
    pose[:3] = Rotation.random(random_state=i).as_rotvec()
    pose[3:] = rng.normal(0.0, 0.2, 45)
    betas = rng.normal(0.0, 0.5, 10)
    trans = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.55, 0.65)])
    verts, joints = mano_lib.mano_forward(model, pose, betas, trans, tip_ids=fh.FREIHAND_TIP_IDS,
                                          flat_hand_mean=False)
    verts, joints = np.asarray(verts, np.float64), np.asarray(joints, np.float64)
    f = rng.uniform(450, 650)
    k = np.array([[f, 0.0, 112 + rng.uniform(-3, 3)], [0.0, f * 1.001, 112 + rng.uniform(-3, 3)], [0, 0, 1]])
    uv_root = (joints[0] @ k.T)[:2] / joints[0, 2]
    ks.append(k.tolist())
    manos.append([list(pose) + list(betas) + list(uv_root) + [1.0]])
    xyzs.append(joints[list(fh.HO3D_TO_SIMPLE)].tolist())                 # simple = ho3d[HO3D_TO_SIMPLE]
    vertss.append(verts.tolist())
    assert cv2.imwrite(str(root / "evaluation" / "rgb" / f"{i:08d}.jpg"), cv2.cvtColor(_image(i), cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, 95])
    truth.append(dict(k=k, pose=pose, betas=betas, trans=trans, verts=verts, joints=joints))
  for name, value in (("K", ks), ("mano", manos), ("xyz", xyzs), ("verts", vertss), ("scale", [0.1] * N)):
    (root / f"evaluation_{name}.json").write_text(json.dumps(value))
  return truth


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("freihand") / "manual"
  return root, _write_tree(root)


def _project(points, k):
  uvw = points @ np.asarray(k, np.float64).T
  return uvw[:, :2] / uvw[:, 2:]


def test_builder_fields_and_conventions(tree, tmp_path):
  root, truth = tree
  model = mano_lib.synthetic_mano_model("right")
  for config, size in (("default", 224), ("tiny", 112)):
    builder = fh.build(str(tmp_path / "data"), str(root), config)
    assert list(builder.info.splits) == ["evaluation"]
    examples = list(pipeline.load_split(builder, "evaluation").as_numpy_iterator())
    assert sorted(int(e["index"]) for e in examples) == list(range(N))
    s = size / 224
    for e in examples:
      i = int(e["index"])
      gt = truth[i]
      assert e["image"].shape == (size, size, 3)
      k = gt["k"].copy()
      k[:2] *= s
      k[:2, 2] += 0.5 * s - 0.5
      np.testing.assert_allclose(e["K"], k, rtol=1e-6)
      # Joints back in HO-3D order; fingertips are the 'alternative' MANO vertices.
      np.testing.assert_allclose(e["joints3d"], gt["joints"], atol=1e-6)
      np.testing.assert_allclose(e["joints3d"][16:], gt["verts"][list(ho3d.FINGERTIP_VERTEX_IDS["alternative"])],
                                 atol=1e-6)
      np.testing.assert_allclose(e["joints3d"][list(fh.HO3D_TO_SIMPLE)],
                                 json.loads((root / "evaluation_xyz.json").read_text())[i], atol=1e-6)
      np.testing.assert_allclose(e["verts3d"], gt["verts"], atol=1e-6)
      # 2D: the stored K, and the test's own projection at 224 px mapped to the stored size.
      np.testing.assert_allclose(e["joints2d"], _project(e["joints3d"].astype(np.float64), e["K"]), atol=PIX_TOL)
      np.testing.assert_allclose(e["joints2d"], (_project(gt["joints"], gt["k"]) + 0.5) * s - 0.5, atol=PIX_TOL)
      both = (_project(np.concatenate([gt["joints"], gt["verts"]]), gt["k"]) + 0.5) * s - 0.5
      np.testing.assert_allclose(e["hand_box"], np.concatenate([both.min(0), both.max(0)]), atol=PIX_TOL)
      # MANO passed through; with flat_hand_mean=False it gives the released mesh up to a translation.
      np.testing.assert_allclose(e["mano_pose"], gt["pose"], atol=1e-6)
      np.testing.assert_allclose(e["mano_betas"], gt["betas"], atol=1e-6)
      verts, _ = mano_lib.mano_forward(model, e["mano_pose"], e["mano_betas"], flat_hand_mean=False)
      offset = e["verts3d"] - np.asarray(verts)
      np.testing.assert_allclose(offset, np.broadcast_to(gt["trans"], offset.shape), atol=2e-5)
      # Images: the written JPEG, decoded (and resized for `tiny`).
      decoded = cv2.cvtColor(cv2.imread(fh.image_path(str(root), i)), cv2.COLOR_BGR2RGB)
      if size != 224:
        decoded = cv2.resize(decoded, (size, size), interpolation=cv2.INTER_AREA)
      np.testing.assert_array_equal(e["image"], decoded)
      assert np.abs(e["image"].astype(int) - cv2.resize(_image(i), (size, size),
                                                         interpolation=cv2.INTER_AREA)).mean() < 3.0


def test_permutations_are_inverse():
  simple = np.arange(21)[list(fh.HO3D_TO_SIMPLE)]
  assert simple[list(fh.SIMPLE_TO_HO3D)].tolist() == list(range(21))
  names = mano_lib.JOINT21_NAMES
  assert [names[i] for i in fh.HO3D_TO_SIMPLE] == [
      "wrist", "thumb1", "thumb2", "thumb3", "thumb_tip", "index1", "index2", "index3", "index_tip", "middle1",
      "middle2", "middle3", "middle_tip", "ring1", "ring2", "ring3", "ring_tip", "little1", "little2", "little3",
      "little_tip"]


def _rewrite(root, name, fn):
  path = root / f"evaluation_{name}.json"
  path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _set(items, i, value):
  items[i] = value
  return items


@pytest.mark.parametrize("edit, message", [
    (lambda r: _rewrite(r, "verts", lambda v: v[:-1]), r"evaluation_verts.json: 4 entries, expected 5"),
    (lambda r: _rewrite(r, "mano", lambda v: v + v[:1]), r"evaluation_mano.json: 6 entries, expected 5"),
    (lambda r: _rewrite(r, "xyz", lambda v: _set(v, 2, v[2][:20])),
     r"evaluation_xyz.json: entry 2 has shape \[20, 3\], expected \[21, 3\]"),
    (lambda r: _rewrite(r, "K", lambda v: _set(v, 3, [[1, 0], [0, 1]])),
     r"evaluation_K.json: entry 3 has shape \[2, 2\], expected \[3, 3\]"),
    (lambda r: (r / "evaluation_verts.json").unlink(), r"evaluation_verts.json is missing"),
    (lambda r: (r / "evaluation_mano.json").write_text("[[1, 2"), r"evaluation_mano.json: not a readable JSON"),
    (lambda r: (r / "evaluation" / "rgb" / "00000004.jpg").unlink(), r"evaluation/rgb/00000004.jpg is missing"),
    (lambda r: (r / "evaluation" / "rgb" / "00000001.jpg").write_bytes(b"junk"),
     r"evaluation/rgb/00000001.jpg: missing or not a readable image"),
])
def test_bad_inputs_are_one_clear_error(tree, tmp_path, edit, message):
  root = tmp_path / "manual"
  shutil.copytree(tree[0], root)
  edit(root)
  with pytest.raises(pipeline.DataError, match=message) as info:
    fh.build(str(tmp_path / "data"), str(root), "default")
  assert "\n" not in str(info.value)


def test_bad_arguments(tmp_path):
  with pytest.raises(pipeline.DataError, match="manual_dir"):
    fh.build(str(tmp_path / "data"), str(tmp_path / "nowhere"))
  with pytest.raises(pipeline.DataError, match="unknown config.data.builder_config"):
    fh.build(str(tmp_path / "data"), str(tmp_path), "huge")
