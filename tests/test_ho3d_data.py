"""The `ho3d` TFDS builder on fake HO-3D downloads written by tests/ho3d_fake.py (the published layout).

Checked field by field against the truth the test wrote (made in the OpenCV frame, converted to the files'
OpenGL conventions independently of the builder): joints and vertices to float32 precision, the 2D joints
(projected from the OpenCV joints before any conversion) within 1e-3 px of the builder's projections with K,
object poses and control points, split membership, subsampling, the evaluation order, and images.
"""

from __future__ import annotations

import os
import pickle

import ml_collections
import numpy as np
import pytest

from handobj_jax.models import mano as mano_lib
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import synthetic_3d
from input_pipeline import tfds_ho3d
from tests import ho3d_fake


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ho3d_download"))
  truth = ho3d_fake.write_tree(root, "v3", with_eval_gt=True)
  mano_path = ho3d_fake.write_mano(os.path.join(root, "mano", "MANO_RIGHT.pkl"))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = tfds_ho3d.build(data_dir, root, "v3", validation_sequences=("CD2",), test_sequences=("EF3",),
                            mano_path=mano_path)
  return {"root": root, "truth": truth, "mano": mano_path, "data_dir": data_dir, "builder": builder}


def _examples(builder, split):
  return list(builder.as_dataset(split=split).as_numpy_iterator())


def test_train_splits_equal_the_written_truth(fake):
  builder, truth = fake["builder"], fake["truth"]["train"]
  seqs = {"train": {"AB1", "GH4"}, "validation": {"CD2"}, "test": {"EF3"}}
  names = builder.info.features["obj_type"].names
  for split, want in seqs.items():
    exs = _examples(builder, split)
    assert {e["sequence"].decode() for e in exs} == want
    assert len(exs) == 3 * len(want)
    for e in exs:
      t = truth[f"{e['sequence'].decode()}/{e['frame'].decode()}"]
      np.testing.assert_allclose(e["joints3d"], t["joints3d"], atol=2e-6)
      np.testing.assert_allclose(e["verts3d"], t["verts3d"], atol=2e-5)
      # The OpenGL -> OpenCV conversion: the builder's joints projected with K land on the 2D points the test
      # computed from its own OpenCV joints.
      uvw = e["joints3d"].astype(np.float64) @ e["K"].astype(np.float64).T
      np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], t["joints2d"], atol=1e-3)
      np.testing.assert_allclose(e["joints2d"], t["joints2d"], atol=1e-3)
      assert e["mano_joint_gap_mm"] < 0.05
      # MANO parameters in the OpenCV frame reproduce the mesh.
      v, _ = mano_lib.mano_forward(mano_lib.synthetic_mano_model(), e["mano_pose"], e["mano_betas"],
                                   e["mano_trans"], tip_ids=ho3d_fake.TIPS, flat_hand_mean=True)
      np.testing.assert_allclose(np.asarray(v), t["verts3d"], atol=3e-5)
      np.testing.assert_allclose(e["mano_pose"][3:], t["mano_pose"][3:], atol=1e-6)
      np.testing.assert_allclose(e["obj_rot"], t["obj_rot"], atol=1e-6)
      np.testing.assert_allclose(e["obj_trans"], t["obj_trans"], atol=1e-6)
      ctrl3d = synthetic_3d.control_points(t["model_points"]) @ t["obj_rot"].T + t["obj_trans"]
      np.testing.assert_allclose(e["obj_ctrl3d"], ctrl3d, atol=1e-6)
      cuvw = ctrl3d @ ho3d_fake.K.T
      np.testing.assert_allclose(e["obj_ctrl2d"], cuvw[:, :2] / cuvw[:, 2:], atol=1e-3)
      np.testing.assert_allclose(e["obj_box"][:2], (cuvw[:, :2] / cuvw[:, 2:]).min(0), atol=1e-3)
      np.testing.assert_allclose(e["obj_diameter"], np.linalg.norm(np.ptp(t["model_points"], axis=0)), rtol=1e-6)
      assert names[e["obj_type"]] == t["obj_name"]
      assert e["obj_points3d"].shape == (1000, 3)
      gaps = np.linalg.norm(e["obj_points3d"][:, None].astype(np.float64) - t["model_points"][None], axis=-1)
      assert gaps.min(1).max() < 1e-6  # Each kept point is a model point.
      # The object mask covers the projected model points.
      px = np.round(t["obj_points2d"]).astype(int)
      assert e["obj_mask"][px[:, 1], px[:, 0]].mean() > 0.95
      assert e["has_hand_gt"] and e["has_object_gt"]
      import cv2  # pylint: disable=g-import-not-at-top
      written = cv2.cvtColor(cv2.imread(t["image_path"]), cv2.COLOR_BGR2RGB)
      assert np.abs(e["image"].astype(int) - written.astype(int)).mean() < 2.0


def test_evaluation_split_keeps_the_official_order_and_the_oracle_inputs(fake):
  exs = sorted(_examples(fake["builder"], "evaluation"), key=lambda e: e["index"])
  truth = fake["truth"]["evaluation"]
  with open(os.path.join(fake["root"], "evaluation.txt")) as f:
    lines = [line.strip() for line in f if line.strip()]
  assert [f"{e['sequence'].decode()}/{e['frame'].decode()}" for e in exs] == lines
  assert lines != sorted(lines)  # The list's order, not a sorted scan.
  for e, t in zip(exs, truth):
    np.testing.assert_allclose(e["root3d"], t["joints3d"][0], atol=2e-6)
    np.testing.assert_allclose(e["hand_box"], t["hand_box"], atol=1e-3)
    assert e["has_hand_gt"]  # evaluation_xyz.json / evaluation_verts.json were written.
    np.testing.assert_allclose(e["joints3d"], t["joints3d"], atol=2e-6)
    np.testing.assert_allclose(e["verts3d"], t["verts3d"], atol=2e-6)
    np.testing.assert_allclose(e["obj_rot"], t["obj_rot"], atol=1e-6)


def test_v2_layout_subsampling_and_no_evaluation_ground_truth(tmp_path):
  root = str(tmp_path / "ho3d_v2")
  truth = ho3d_fake.write_tree(root, "v2", train_sequences=("AA1", "BB2", "CC3"), frames=4, eval_frames=1)
  mano_path = ho3d_fake.write_mano(str(tmp_path / "MANO_RIGHT.pkl"))
  builder = tfds_ho3d.build(str(tmp_path / "tfds"), root, "v2", every=2, validation_sequences=("BB2",),
                            test_sequences=("CC3",), mano_path=mano_path, num_model_points=64)
  train = _examples(builder, "train")
  assert sorted(e["frame"].decode() for e in train) == ["0000", "0002"]
  ev = sorted(_examples(builder, "evaluation"), key=lambda e: e["index"])
  assert len(ev) == 2 and not any(e["has_hand_gt"] for e in ev)
  for e, t in zip(ev, truth["evaluation"]):
    np.testing.assert_allclose(e["joints3d"], np.broadcast_to(t["joints3d"][0], (21, 3)), atol=2e-6)
  assert builder.info.features["obj_points3d"].shape == (64, 3)


def test_default_sequence_rule_is_disjoint_and_covers_train():
  seqs = [f"S{i:02d}" for i in range(23)]
  parts = tfds_ho3d.split_sequences(seqs, tfds_ho3d.make_config("v3"))
  assert parts["validation"] == ["S01", "S11", "S21"] and parts["test"] == ["S06", "S16"]
  assert sorted(sum(parts.values(), [])) == seqs
  with pytest.raises(pipeline.DataError, match="not train sequences"):
    tfds_ho3d.split_sequences(seqs, tfds_ho3d.make_config("v3", validation_sequences=("NOPE",)))


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file.


def test_missing_meta_file_is_named(tmp_path):
  root = str(tmp_path / "dl")
  ho3d_fake.write_tree(root, "v3", train_sequences=("AB1", "CD2"), frames=2)
  path = os.path.join(root, "train", "CD2", "meta", "0001.pkl")
  os.remove(path)
  with pytest.raises(pipeline.DataError, match=f"{path}: meta file missing"):
    tfds_ho3d.build(str(tmp_path / "tfds"), root, "v3", validation_sequences=("AB1",),
                    mano_path=ho3d_fake.write_mano(str(tmp_path / "MANO_RIGHT.pkl")))


def _write_pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def test_wrong_layout_and_unsafe_pickles_are_named(tmp_path):
  path = str(tmp_path / "0000.pkl")
  _write_pickle(path, [1, 2, 3])
  with pytest.raises(pipeline.DataError, match=f"{path}: expected a pickled dict"):
    tfds_ho3d.read_meta(path, "train")
  _write_pickle(path, {"handPose": np.zeros(48), "objName": "025_mug"})
  with pytest.raises(pipeline.DataError, match=f"{path}: not an HO-3D train meta file: no field"):
    tfds_ho3d.read_meta(path, "train")
  meta = {"handPose": np.zeros(45), "handBeta": np.zeros(10), "handTrans": np.zeros(3),
          "handJoints3D": np.zeros((21, 3)), "objName": "025_mug", "objRot": np.zeros(3), "objTrans": np.zeros(3),
          "camMat": np.eye(3)}
  _write_pickle(path, meta)
  with pytest.raises(pipeline.DataError, match=f"{path}: field 'handPose' has shape"):
    tfds_ho3d.read_meta(path, "train")

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  _write_pickle(path, {"handPose": Evil()})
  with pytest.raises(pipeline.DataError, match=f"{path}: not a readable HO-3D meta pickle.*refusing"):
    tfds_ho3d.read_meta(path, "train")


def test_missing_object_model_and_wrong_image_size_are_named(tmp_path):
  with pytest.raises(pipeline.DataError, match=r"025_mug/points.xyz: object model missing"):
    tfds_ho3d.load_object_models(str(tmp_path), ["025_mug"])
  import cv2  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "0000.png")
  cv2.imwrite(path, np.zeros((240, 320, 3), np.uint8))
  with pytest.raises(pipeline.DataError, match=f"{path}: image is 320x240, HO-3D images are 640x480"):
    tfds_ho3d.read_image(path)
  with pytest.raises(pipeline.DataError, match="image missing or unreadable"):
    tfds_ho3d.read_image(str(tmp_path / "nope.jpg"))


def test_synthetic_mano_is_refused_for_real_pose_data(tmp_path):
  data = ml_collections.ConfigDict({"name": "ho3d", "data_dir": str(tmp_path), "manual_dir": str(tmp_path),
                                    "builder_config": "v3"})
  with pytest.raises(pipeline.DataError, match="config.mano.model_path is empty.*synthetic MANO model"):
    datasets.get_builder(data, mano_path="")
