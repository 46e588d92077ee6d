"""The HO-3D data path end to end on a fake download: check_data, pose_train, pose_eval on the held-out test
sequences (official scores, scores.txt) and on the evaluation split (the submission file, read back)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from configs import handobj_pose
from handobj_jax import jobs
from handobj_jax.evaluation import ho3d
from handobj_jax.evaluation import ho3d_submission
from tests import ho3d_fake


@pytest.fixture(scope="module")
def download(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ho3d"))
  truth = ho3d_fake.write_tree(root, "v3", train_sequences=("AB1", "CD2", "EF3"), frames=4)
  mano = ho3d_fake.write_mano(os.path.join(root, "mano", "MANO_RIGHT.pkl"))
  return {"root": root, "truth": truth, "mano": mano}


def _config(download, tmp_path, **overrides):
  config = handobj_pose.get_config("ho3d_smoke")
  config.data.manual_dir = download["root"]
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.validation_sequences = "CD2"
  config.data.test_sequences = "EF3"
  config.mano.model_path = download["mano"]
  for k, v in overrides.items():
    node, key = config, k.split(".")
    for part in key[:-1]:
      node = node[part]
    node[key[-1]] = v
  os.makedirs(config.data.data_dir, exist_ok=True)
  return config


def test_check_data_passes_on_a_good_download_and_names_a_broken_file(download, tmp_path):
  config = _config(download, tmp_path, job="check_data")
  out = jobs.get_job("check_data")(config, str(tmp_path / "ok"))
  assert all(ok for _, _, ok in out["rows"])
  text = open(out["path"]).read()
  assert "MANO model" in text and "annotated joints reproduced" in text
  # Break a copy: one meta file truncated, one object model missing.
  import shutil  # pylint: disable=g-import-not-at-top
  broken = str(tmp_path / "broken")
  shutil.copytree(download["root"], broken)
  bad_meta = os.path.join(broken, "train", "CD2", "meta", "0002.pkl")
  with open(bad_meta, "r+b") as f:
    f.truncate(40)
  os.remove(os.path.join(broken, "models", "010_potted_meat_can", "points.xyz"))
  config = _config(download, tmp_path, job="check_data", **{"data.manual_dir": broken, "data.check_sample": 100})
  with pytest.raises(jobs.JobInputError, match="check.s. failed .*train sample.*object models"):
    jobs.get_job("check_data")(config, str(tmp_path / "bad"))
  text = open(os.path.join(tmp_path / "bad", "check_data.md")).read()
  assert f"{bad_meta}: not a readable HO-3D meta pickle" in text
  assert "010_potted_meat_can/points.xyz: object model missing" in text


@pytest.mark.slow
def test_train_eval_and_submission_on_a_fake_download(download, tmp_path):
  config = _config(download, tmp_path)
  workdir = str(tmp_path / "work")
  out = jobs.get_job("pose_train")(config, workdir)
  assert out["fit"].step == 2 and np.isfinite(out["val_metrics"]["joint_err_mm"])

  # Local scores on the held-out test sequence: every official number, and scores.txt in the official layout.
  config.job = "pose_eval"
  result = jobs.get_job("pose_eval")(config, workdir)
  row = result["report"]["rows"][0]
  assert row["num_images"] == 4 and row["num_hand_gt"] == 4
  assert tuple(row["hand"]["official"]) == ho3d.OFFICIAL_SCORE_NAMES
  lines = open(os.path.join(result["out_dir"], "scores.txt")).read().splitlines()
  assert [line.split(":")[0] for line in lines] == list(ho3d.OFFICIAL_SCORE_NAMES)
  assert float(lines[2].split(": ")[1]) == pytest.approx(row["hand"]["official"]["xyz_procrustes_al_mean3d"],
                                                         abs=1e-6)
  assert set(result["report"]["object_groups"]) <= set(ho3d_fake.OBJECTS)
  assert result["submission"] is None

  # The official evaluation split: no hand ground truth here, so the hand goes to the server as pred.zip.
  config.eval.split = "evaluation"
  result = jobs.get_job("pose_eval")(config, workdir)
  sub = result["submission"]
  assert os.path.basename(result["out_dir"]) == "pose_eval_evaluation"
  with open(os.path.join(download["root"], "evaluation.txt")) as f:
    count = len([line for line in f if line.strip()])
  assert sub["count"] == count == 4 and sub["root_max_gap_m"] < 1e-6
  joints_gl, verts_gl = ho3d_submission.read_submission(sub["zip"])
  roots_gl = np.stack([t["joints3d"][0] for t in download["truth"]["evaluation"]]) * np.array([1.0, -1.0, -1.0])
  np.testing.assert_allclose(joints_gl[:, 0], roots_gl, atol=1e-6)  # In evaluation.txt order, OpenGL frame.
  assert np.all(verts_gl[..., 2] < 0)
  row = result["report"]["rows"][0]
  assert row["hand"] is None and row["num_object_gt"] == 4
  text = open(result["report_md"]).read()
  assert "No hand ground truth in this split" in text and "HO-3D submission" in text

  # The same model on other datasets (Table 5 shape): FreiHAND (hands only) and the FPHA hand-object subset.
  import pathlib  # pylint: disable=g-import-not-at-top
  from tests import test_fpha, test_freihand  # pylint: disable=g-import-not-at-top
  fh_root = pathlib.Path(tmp_path) / "freihand"
  test_freihand._write_tree(fh_root)  # pylint: disable=protected-access
  fp_root = pathlib.Path(tmp_path) / "fpha"
  test_fpha._write_tree(fp_root, np.random.default_rng(1))  # pylint: disable=protected-access
  for name, root, split, expect_objects in (("freihand", fh_root, "evaluation", False),
                                            ("fpha", fp_root, "test", True)):
    config.eval.dataset, config.eval.manual_dir, config.eval.split = name, str(root), split
    config.eval.builder_config = "tiny"
    config.mano.fingertips = "alternative"  # Both datasets' fingertips are MANO vertices 745, 317, 444, 556, 673.
    result = jobs.get_job("pose_eval")(config, workdir)
    row = result["report"]["rows"][0]
    assert os.path.basename(result["out_dir"]) == ("pose_eval_freihand_evaluation" if name == "freihand" else
                                                   "pose_eval_fpha") and result["submission"] is None
    assert row["num_hand_gt"] == row["num_images"] > 0
    assert 0.0 <= row["hand"]["joint_auc_procrustes"] <= 1.0 and np.isfinite(row["hand"]["fscore_15mm"])
    assert (row["objects"] is not None) == expect_objects
    text = open(result["report_md"]).read()
    assert ("No object ground truth" in text) != expect_objects
  # FPHA's test split: Subject_2/put_salt/1 (3 frames with an object pose); the other test sequence has no video.
  assert row["num_images"] == 3 and row["objects"]["cv"]["num_frames"] == {"salt": 3}


def test_synthetic_mano_is_refused_by_the_train_job(download, tmp_path):
  config = _config(download, tmp_path, **{"mano.model_path": ""})
  with pytest.raises(Exception, match="config.mano.model_path is empty"):
    jobs.get_job("pose_train")(config, str(tmp_path / "work"))


@pytest.mark.slow
def test_fpha_supervised_training_and_table7_report(download, tmp_path):
  """`:fpha` (Appendix B): train on FPHA's train split, validate and evaluate on its test split."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from tests import test_fpha  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(tmp_path) / "fpha"
  test_fpha._write_tree(root, np.random.default_rng(2))  # pylint: disable=protected-access
  config = handobj_pose.get_config("fpha_smoke")
  config.data.manual_dir = str(root)
  config.data.data_dir = str(tmp_path / "tfds")
  os.makedirs(config.data.data_dir)
  config.mano.model_path = download["mano"]
  workdir = str(tmp_path / "work")
  out = jobs.get_job("pose_train")(config, workdir)
  assert out["fit"].step == 2 and np.isfinite(out["val_metrics"]["joint_err_mm"])
  config.job = "pose_eval"
  result = jobs.get_job("pose_eval")(config, workdir)
  row = result["report"]["rows"][0]
  assert row["num_images"] == 3 and row["objects"]["cv"]["num_frames"] == {"salt": 3}
  assert np.isfinite(row["hand"]["joint_error_unaligned_mm"])
  assert np.isfinite(row["objects"]["cv"]["add_mean_m"]["salt"])
  assert "ADD mean mm" in open(result["report_md"]).read()
