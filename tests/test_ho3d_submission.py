"""The HO-3D submission file (round trip, validation) and the official scores on cases with known answers."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from handobj_jax.evaluation import ho3d
from handobj_jax.evaluation import ho3d_submission as sub


def _hands(n=5, seed=0):
  rng = np.random.default_rng(seed)
  joints = rng.normal(0.0, 0.03, (n, 21, 3)) + np.array([0.0, 0.0, 0.5])
  verts = rng.normal(0.0, 0.03, (n, 778, 3)) + np.array([0.0, 0.0, 0.5])
  return joints, verts


# ---------------------------------------------------------------------------------------------------------
# Official scores.


def test_official_scores_names_and_units_on_a_pure_translation():
  gj, gv = _hands()
  shift = np.array([0.01, 0.0, 0.0])  # 1 cm: the unaligned errors are 1 cm, the aligned ones 0.
  s = ho3d.official_scores(gj + shift, gv + shift, gj, gv)
  assert tuple(s) == ho3d.OFFICIAL_SCORE_NAMES
  assert s["xyz_mean3d"] == pytest.approx(1.0, abs=1e-9)
  assert s["mesh_mean3d"] == pytest.approx(1.0, abs=1e-9)
  for k in ("xyz_procrustes_al_mean3d", "xyz_scale_trans_al_mean3d", "mesh_al_mean3d"):
    assert s[k] == pytest.approx(0.0, abs=1e-5)  # cm; the protocol's +1e-8 norms leave ~4e-7.
  # AUC over 0-5 cm of a constant 1 cm error: the PCK is 0 below 1 cm and 1 from there (trapezoid on the grid).
  thr = ho3d.AUC_THRESHOLDS_M
  pck = (0.01 <= thr + 1e-15).astype(float)
  assert s["xyz_auc3d"] == pytest.approx(np.trapezoid(pck, thr) / 0.05, abs=1e-9)
  # Aligned errors are ~1e-9 m, not 0: PCK is 0 at the 0 threshold only, so the AUC misses half a grid step.
  assert s["xyz_procrustes_al_auc3d"] == pytest.approx(1.0 - 0.5 / 99.0, abs=1e-12)
  # F-scores: unaligned at 10 mm distance... a vertex's nearest other vertex may be closer than 10 mm, so only
  # the aligned ones have a closed form here: all vertices coincide -> F = 1 at both thresholds.
  assert s["f_al_score_5"] == pytest.approx(1.0) and s["f_al_score_15"] == pytest.approx(1.0)


def test_unaligned_fscore_known_answers():
  gj, gv = _hands(n=2)
  gv = np.stack([np.arange(778)[:, None] * np.array([0.05, 0.0, 0.0])] * 2)  # Vertices 5 cm apart on a line.
  shifted = gv + np.array([0.0, 0.004, 0.0])                                    # 4 mm off: within 5 mm.
  s = ho3d.official_scores(gj, shifted, gj, gv)
  assert s["f_score_5"] == pytest.approx(1.0) and s["f_score_15"] == pytest.approx(1.0)
  s = ho3d.official_scores(gj, gv + np.array([0.0, 0.008, 0.0]), gj, gv)        # 8 mm off: F@5 0, F@15 1.
  assert s["f_score_5"] == 0.0 and s["f_score_15"] == pytest.approx(1.0)


def test_scale_translation_alignment_divides_then_multiplies_and_keeps_a_zero_length_bone():
  gj, gv = _hands(n=3, seed=1)
  # A prediction twice the size around another wrist: sc-tr alignment recovers it exactly.
  pred = 2.0 * (gj - gj[:, :1]) + np.array([0.1, -0.2, 0.3])
  s = ho3d.official_scores(pred, gv, gj, gv)
  assert s["xyz_scale_trans_al_mean3d"] == pytest.approx(0.0, abs=1e-9)
  # Zero-length predicted bone (joint 0 = joint 4; here every joint at one point p): the official arithmetic
  # skips the division but still multiplies by the true length, so every joint lands on the true wrist. The
  # error is then the mean distance of the true joints from the true wrist.
  p = np.array([0.02, 0.03, 0.6])
  pred = np.broadcast_to(p, gj.shape).copy()
  aligned = ho3d.scale_translation_align_np(pred, gj)
  np.testing.assert_allclose(aligned, np.broadcast_to(gj[:, :1], gj.shape), atol=1e-15)
  want_cm = 100.0 * np.mean(np.mean(np.linalg.norm(gj - gj[:, :1], axis=-1), axis=0))
  s = ho3d.official_scores(pred, gv, gj, gv)
  assert s["xyz_scale_trans_al_mean3d"] == pytest.approx(want_cm, rel=1e-12)
  assert np.isfinite(list(s.values())).all()
  # Only joint 0 == joint 4 (the rest spread): the other joints keep their offsets times the true length.
  pred = gj.copy()
  pred[:, 4] = pred[:, 0]
  bone = np.linalg.norm(gj[:, 4] - gj[:, 0], axis=-1)[:, None, None]
  want = (pred - pred[:, :1]) * bone + gj[:, :1]
  np.testing.assert_allclose(ho3d.scale_translation_align_np(pred, gj), want, atol=1e-15)


def test_all_zero_prediction_matches_the_protocol_reference_shape():
  gj, gv = _hands(n=4, seed=2)
  s = ho3d.official_scores(np.zeros_like(gj), np.zeros_like(gv), gj, gv)
  # Procrustes maps an all-zero prediction onto the true centroid: the error is the mean distance from it.
  want = 100.0 * np.mean(np.mean(np.linalg.norm(gj - gj.mean(1, keepdims=True), axis=-1), axis=0))
  assert s["xyz_procrustes_al_mean3d"] == pytest.approx(want, rel=1e-9)
  text = ho3d.scores_txt(s)
  assert text.splitlines()[0] == f"xyz_mean3d: {s['xyz_mean3d']:f}" and len(text.splitlines()) == 14


# ---------------------------------------------------------------------------------------------------------
# Submission.


def test_submission_round_trip_in_the_official_frame(tmp_path):
  joints, verts = _hands(n=6)
  json_path, zip_path = sub.write_submission(str(tmp_path), joints, verts)
  assert os.path.basename(json_path) == "pred.json"
  with zipfile.ZipFile(zip_path) as z:
    assert z.namelist() == ["pred.json"]
  for path in (json_path, zip_path):
    jg, vg = sub.read_submission(path)
    flip = np.array([1.0, -1.0, -1.0])
    np.testing.assert_allclose(jg, joints * flip, atol=5.1e-8)  # OpenGL: y and z negated; 7 decimals.
    np.testing.assert_allclose(vg, verts * flip, atol=5.1e-8)
    assert np.all(jg[..., 2] < 0)
    summary = sub.check_submission(path, 6, roots_cv=joints[:, 0])
    assert summary["count"] == 6 and summary["root_max_gap_m"] < 1e-7
  with open(json_path) as f:
    data = json.load(f)
  assert len(data) == 2 and len(data[0]) == 6 and np.shape(data[0][0]) == (21, 3) and np.shape(data[1][0]) == (778, 3)


def test_submission_check_catches_count_order_frame_and_shape(tmp_path):
  joints, verts = _hands(n=4)
  path, _ = sub.write_submission(str(tmp_path), joints, verts)
  with pytest.raises(sub.SubmissionError, match="evaluation.txt lists 5 frames"):
    sub.check_submission(path, 5)
  with pytest.raises(sub.SubmissionError, match="entry 1's wrist .* line 2: the entries are not in evaluation.txt"):
    sub.check_submission(path, 4, roots_cv=joints[[0, 2, 1, 3], 0])
  bad = str(tmp_path / "cv_frame.json")
  with open(bad, "w") as f:
    json.dump([joints.tolist(), verts.tolist()], f)  # Not flipped: z > 0.
  with pytest.raises(sub.SubmissionError, match="entry 0 lies behind an OpenGL camera"):
    sub.check_submission(bad, 4)
  data = [(-joints).tolist(), (-verts).tolist()]
  data[1][2] = data[1][2][:700]
  with open(bad, "w") as f:
    json.dump(data, f)
  with pytest.raises(sub.SubmissionError, match="verts_list entry 2 is not 778 x 3"):
    sub.check_submission(bad, 4)
  nan = joints.copy()
  nan[3, 5, 1] = np.nan
  with pytest.raises(sub.SubmissionError, match="prediction 3 holds non-finite"):
    sub.write_submission(str(tmp_path / "x"), nan, verts)
  assert not os.path.exists(tmp_path / "x" / "pred.json")
