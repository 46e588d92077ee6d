"""The `pose_pseudolabel` job (Semi-Hand-Object Sec. 5.1): TTA pseudo-labels of unlabelled clips from a trained
teacher, filters, report; a stop after the first chunk, or a SIGKILL in the second, and a restart give exactly the
uninterrupted result."""
import glob
import json
import os
import sys

import ml_collections
import numpy as np
import pytest

import child_process
from configs import handobj_pose
from configs import handobj_pose_semi
from handobj_jax import jobs
from handobj_jax import preemption
from handobj_jax.jobs import pose_semi
from handobj_jax.semi import filters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that runs the pseudo-label job and hangs in its second chunk (after the first is on disk), so the
# test can SIGKILL it at a known point.
_STALLING_JOB = """
import sys, time
from configs import handobj_pose_semi
from handobj_jax.jobs import pose_semi
real, calls = pose_semi._label_chunk, []
def stalling(*args, **kwargs):
  if calls:
    while True:
      time.sleep(1)
  calls.append(1)
  return real(*args, **kwargs)
pose_semi._label_chunk = stalling
config = handobj_pose_semi.get_config("smoke")
config.data.data_dir, config.teacher_workdir = sys.argv[1], sys.argv[2]
pose_semi.pseudolabel(config, sys.argv[3])
"""


def _semi(data_dir, teacher, **overrides) -> ml_collections.ConfigDict:
  config = handobj_pose_semi.get_config("smoke")
  config.data.data_dir = str(data_dir)
  config.teacher_workdir = str(teacher)
  config.update_from_flattened_dict(overrides)
  return config


def _smoke_teacher(tmp_path):
  """(data dir, workdir) of a `pose_train` run of configs/handobj_pose.py:smoke (2 steps)."""
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  teacher = str(tmp_path / "teacher")
  config = handobj_pose.get_config("smoke")
  config.data.data_dir = str(data_dir)
  jobs.get_job("pose_train")(config, teacher)
  return data_dir, teacher


def test_bad_settings_are_one_clear_error(tmp_path):
  with pytest.raises(jobs.JobInputError, match="config.teacher_workdir is empty"):
    pose_semi.pseudolabel(_semi(tmp_path, ""), str(tmp_path / "w"))
  with pytest.raises(jobs.JobInputError, match="no such directory"):
    pose_semi.pseudolabel(_semi(tmp_path, tmp_path / "missing"), str(tmp_path / "w"))
  with pytest.raises(jobs.JobInputError, match="bad token 'q7'"):
    pose_semi.pseudolabel(_semi(tmp_path, tmp_path, **{"tta.transforms": "id,q7"}), str(tmp_path / "w"))
  (tmp_path / "cohesiv").mkdir()
  (tmp_path / "cohesiv" / "config.json").write_text(json.dumps({"job": "train"}))
  with pytest.raises(jobs.JobInputError, match="must be a pose_train workdir"):
    pose_semi.pseudolabel(_semi(tmp_path, tmp_path / "cohesiv"), str(tmp_path / "w"))


@pytest.mark.slow
def test_pseudolabel_job_stop_and_resume_loses_and_duplicates_nothing(tmp_path):
  data_dir, teacher = _smoke_teacher(tmp_path)

  # Uninterrupted reference run.
  ref = pose_semi.pseudolabel(_semi(data_dir, teacher), str(tmp_path / "ref"))
  n = len(ref["labels"]["clip_index"])
  assert n == 2 * 8                                   # The tiny video build: 2 train clips x 8 frames.
  pairs = set(zip(ref["labels"]["clip_index"].tolist(), ref["labels"]["frame_index"].tolist()))
  assert pairs == {(c, t) for c in range(2) for t in range(8)}
  for k in ("joints2d", "joints3d", "verts3d", "theta", "beta"):
    assert np.all(np.isfinite(ref["labels"][k])), k

  # A stop request: the job ends after chunk 0 of 2 (one clip per chunk), chunk 0 on disk.
  work = tmp_path / "stopped"
  preemption.request()
  try:
    with pytest.raises(preemption.StopRequested, match="after chunk 0 of 2"):
      pose_semi.pseudolabel(_semi(data_dir, teacher), str(work))
  finally:
    preemption.clear()
  chunks = sorted(os.path.basename(p) for p in glob.glob(str(work / "pseudo_labels" / "chunks" / "*")))
  assert chunks == ["chunk_00000.npz"]
  first = os.stat(work / "pseudo_labels" / "chunks" / "chunk_00000.npz")
  # A partial write of chunk 1 from a killed process is ignored (atomic renames: only whole files count).
  (work / "pseudo_labels" / "chunks" / "chunk_00001.npz.tmp-999").write_bytes(b"partial")
  resumed = pose_semi.pseudolabel(_semi(data_dir, teacher), str(work))
  assert os.stat(work / "pseudo_labels" / "chunks" / "chunk_00000.npz").st_mtime_ns == first.st_mtime_ns
  for k, v in ref["labels"].items():
    np.testing.assert_array_equal(resumed["labels"][k], v, err_msg=k)

  # SIGKILL while chunk 1 is being labelled (chunk 0 written), then a restart: the same labels again.
  killed = tmp_path / "killed"
  log = tmp_path / "killed.log"
  chunk0 = killed / "pseudo_labels" / "chunks" / "chunk_00000.npz"
  child_process.kill_when([sys.executable, "-c", _STALLING_JOB, str(data_dir), teacher, str(killed)], REPO, log,
                          chunk0.exists, "at chunk 0")
  assert sorted(os.listdir(killed / "pseudo_labels" / "chunks")) == ["chunk_00000.npz"]
  assert not (killed / "pseudo_labels" / pose_semi.LABELS_FILE).exists()
  restarted = pose_semi.pseudolabel(_semi(data_dir, teacher), str(killed))
  for k, v in ref["labels"].items():
    np.testing.assert_array_equal(restarted["labels"][k], v, err_msg=k)

  # Outputs: labels with masks, report, contact sheet; counts add up.
  saved = np.load(work / "pseudo_labels" / pose_semi.LABELS_FILE)
  assert saved["keep"].shape == (n,) and {f"mask_{k}" for k in filters.FILTER_NAMES} <= set(saved.files)
  report = json.loads((work / "pseudo_labels" / "report.json").read_text())
  removed = sum(s.get("removed", 0) for s in report["stages"])
  assert report["num_frames"] == n and report["num_kept"] == n - removed == int(saved["keep"].sum())
  assert report["has_ground_truth"] and np.isfinite(report["stages"][0]["pa_mpjpe_mm"])
  assert "| after iou |" in (work / "pseudo_labels" / "report.md").read_text()
  assert os.path.getsize(work / "pseudo_labels" / "contact_sheet.png") > 1000
  from input_pipeline import tfds_pseudo_pose  # pylint: disable=g-import-not-at-top
  assert tfds_pseudo_pose.open_dataset(str(work / "pseudo_labels")).info.splits["train"].num_examples == n


# Thresholds that keep every frame of a barely trained teacher (the runner's plumbing is under test here, not
# the filters).
_KEEP_ALL = {"filters.require_camera": False, "filters.min_iou": 0.0, "filters.max_reproj": 3.0,
             "filters.min_bone": 0.0, "filters.angle_max_deg": 400.0, "filters.angle_tol_deg": 400.0,
             "filters.max_j2d": 100.0, "filters.max_theta": 100.0, "filters.shape_sigmas": 100.0}


@pytest.mark.slow
def test_ablation_runner_tables_and_resume(tmp_path):
  """`pose_semi_ablation` at smoke size: Tables 3-4 and Fig. 9 shaped outputs from real runs; a second call
  finds every run finished and retrains nothing."""
  data_dir, teacher = _smoke_teacher(tmp_path)
  semi = handobj_pose_semi.get_config("smoke_ablation")
  semi.data.data_dir = str(data_dir)
  semi.ablation.teachers = f"w/ CR={teacher}"
  semi.update_from_flattened_dict(_KEEP_ALL)
  work = tmp_path / "ablation"
  report = jobs.get_job("pose_semi_ablation")(semi, str(work))
  runs = report["runs"]
  assert set(runs) == {"sup-w/ CR", "semi-w/ CR", "w/o spatial", "w/o temporal", "50%", "sup-w/o CR",
                       "semi-w/o CR"}
  assert runs["sup-w/ CR"]["pseudo"] == 0 and runs["semi-w/ CR"]["pseudo"] == 16
  assert runs["50%"]["pseudo"] == 8
  for label, run in runs.items():
    assert set(run["results"]) == {"source", "shifted"}, label
    for res in run["results"].values():
      assert np.isfinite(res["hand"]["joint_error_procrustes_mm"]), label
  text = (work / "semi_ablation" / "report.md").read_text()
  for heading in ("Table 3 shape, test set shifted", "Table 4 shape, test set source",
                  "Fig. 9 shape, test set shifted"):
    assert heading in text
  assert "| semi-w/o CR |" in text and "| proposed | 16 |" in text
  assert os.path.getsize(work / "semi_ablation" / "fig9_fraction.png") > 1000
  steps = sorted(os.listdir(work / "semi_cr" / "checkpoints"))
  again = jobs.get_job("pose_semi_ablation")(semi, str(work))
  assert sorted(os.listdir(work / "semi_cr" / "checkpoints")) == steps
  assert again["runs"]["semi-w/ CR"]["results"]["shifted"]["hand"] == runs["semi-w/ CR"]["results"]["shifted"]["hand"]
