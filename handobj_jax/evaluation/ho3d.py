"""HO-3D hand and object pose metrics (NumPy float64, host side).

Definitions follow the public HO-3D evaluation protocol (the challenge's
evaluation script) and the released supervised code of Semi-Hand-Object.
This module is the one place they are written down; the JAX twins of the two
alignments, `handobj_jax.geometry.procrustes`, refer here.

Hands. Inputs in metres, OpenGL camera frame; joints [N, 21, 3] in MANO's 16
joints + 5 fingertips order, vertices [N, 778, 3].
  * Procrustes alignment per sample, joints and mesh independently
    (`procrustes_align_np`): centre both sets, divide each by its Frobenius
    norm + 1e-8, R, s = scipy.linalg.orthogonal_procrustes(gt, pred) (R = U V^T
    from the SVD of gt^T pred, s = sum of its singular values; reflections
    are NOT excluded), aligned = (pred @ R^T) * s * (||gt_centred|| + 1e-8)
    + mean(gt). All-zero predictions collapse onto the GT centroid.
  * Scale+translation alignment (`scale_translation_align_np`, joints only),
    in the protocol's order: divide the whole prediction by its own bone
    length s = |pred[4] - pred[0]| (skipped when s = 0), multiply it by the
    ground truth's |gt[4] - gt[0]|, then move the predicted wrist (joint 0)
    onto the true wrist. The effective scale is |gt bone| / s, and |gt bone|
    itself when s = 0 (not 1): always finite for finite input.
  * Mean error: per keypoint averaged over samples, then over keypoints.
  * AUC: PCK (error <= threshold) at linspace(0, 0.05 m, 100), per keypoint
    trapz(pck) / trapz(1), then averaged over keypoints.
  * F-score at 5 mm / 15 mm on Procrustes-aligned vertices (the papers' number)
    and on unaligned ones: d1 = GT -> nearest prediction, d2 = prediction ->
    nearest GT; P = mean(d1 < th), R = mean(d2 < th); F = 2PR / (P + R) (0 if
    P + R = 0); mean over samples.
  `ho3d_hand_report` returns errors in millimetres (keys end in `_mm`);
  `official_scores` the official scores.txt numbers under their names (cm).

Objects. Poses (R [N, 3, 3], t [N, 3]) in the OpenCV camera frame, metres;
model points [P, 3] in the object frame, metres; intrinsics K [3, 3] pixels.
  * ADD = mean_x ||(R_gt x + t_gt) - (R x + t)||; success when
    ADD <= 0.1 * diameter, diameter = diagonal of the model's axis-aligned
    bounding box.
  * REP-5: mean 2D reprojection distance of the model points <= 5 px.
  * Reported per object as % of frames, and the mean over objects.
  * HO-3D ground-truth poses are OpenGL: `opengl_to_opencv_pose` flips the
    y and z rows.
  * Test protocol of the released code: oracle hand/object boxes and GT root
    joint are given at test time; say so wherever results are reported.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from handobj_jax.geometry import camera_frames

# Fingertip vertex ids (thumb, index, middle, ring, little) appended to MANO's
# 16 joints. HO-3D's ground truth uses "ho3d"; the other set is common in
# other MANO code bases but is NOT what HO-3D uses.
FINGERTIP_VERTEX_IDS = {
    "ho3d": (728, 353, 442, 576, 694),
    "alternative": (745, 317, 444, 556, 673),
}

AUC_THRESHOLDS_M = np.linspace(0.0, 0.05, 100)


def mano_joints_with_fingertips(joints16: np.ndarray, verts: np.ndarray,
                                fingertips: str = "ho3d") -> np.ndarray:
  """[..., 16, 3] MANO joints + [..., 778, 3] vertices -> [..., 21, 3]."""
  if fingertips not in FINGERTIP_VERTEX_IDS:
    raise ValueError(f"mano_joints_with_fingertips: fingertips must be one of "
                     f"{sorted(FINGERTIP_VERTEX_IDS)}, got {fingertips!r}")
  joints16 = np.asarray(joints16)
  verts = np.asarray(verts)
  if joints16.shape[-2:] != (16, 3) or verts.shape[-2:] != (778, 3):
    raise ValueError(f"mano_joints_with_fingertips: expected [..., 16, 3] "
                     f"joints and [..., 778, 3] vertices, got {joints16.shape}"
                     f" and {verts.shape}")
  tips = verts[..., list(FINGERTIP_VERTEX_IDS[fingertips]), :]
  return np.concatenate([joints16, tips], axis=-2)


def _check_pair(name: str, pred: np.ndarray, gt: np.ndarray,
                k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  if pred.shape != gt.shape or pred.ndim < 2 or pred.shape[-1] != 3:
    raise ValueError(f"{name}: prediction and ground truth must both be "
                     f"[..., K, 3]; got {pred.shape} and {gt.shape}")
  if k is not None and pred.shape[-2] != k:
    raise ValueError(f"{name}: expected K={k} points, got {pred.shape}")
  if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
    raise ValueError(f"{name}: non-finite coordinates in the input")
  return pred, gt


def procrustes_align_np(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Float64 Procrustes alignment, [..., K, 3] -> [..., K, 3] (see module).

  For host-side evaluation; `handobj_jax.geometry.procrustes.procrustes_align`
  is the float32 JAX twin for on-device validation metrics.
  """
  pred, gt = _check_pair("procrustes_align_np", pred, gt)
  mu_p = pred.mean(-2, keepdims=True)
  mu_g = gt.mean(-2, keepdims=True)
  p0, g0 = pred - mu_p, gt - mu_g
  n_p = np.linalg.norm(p0, axis=(-2, -1))[..., None, None] + 1e-8
  n_g = np.linalg.norm(g0, axis=(-2, -1))[..., None, None] + 1e-8
  p, g = p0 / n_p, g0 / n_g
  u, sv, vt = np.linalg.svd(np.swapaxes(g, -1, -2) @ p)
  r = u @ vt
  s = sv.sum(-1)[..., None, None]
  return (p @ np.swapaxes(r, -1, -2)) * s * n_g + mu_g


def scale_translation_align_np(pred: np.ndarray, gt: np.ndarray,
                               root: int = 0,
                               scale_ref: int = 4) -> np.ndarray:
  """Float64 scale + translation alignment in the protocol's order (module).

  Divides pred by |pred[scale_ref] - pred[root]| (not when it is 0),
  multiplies by |gt[scale_ref] - gt[root]|, then moves pred[root] onto
  gt[root]. `handobj_jax.geometry.procrustes.scale_translation_align` is the
  float32 JAX twin.
  """
  pred, gt = _check_pair("scale_translation_align_np", pred, gt)
  k = pred.shape[-2]
  if not (0 <= root < k and 0 <= scale_ref < k):
    raise ValueError(f"scale_translation_align_np: root={root} / scale_ref="
                     f"{scale_ref} out of range for K={k}")
  len_p = np.linalg.norm(pred[..., scale_ref, :] - pred[..., root, :],
                         axis=-1)[..., None, None]
  len_g = np.linalg.norm(gt[..., scale_ref, :] - gt[..., root, :],
                         axis=-1)[..., None, None]
  pred = np.where(len_p > 0, pred / np.where(len_p > 0, len_p, 1.0), pred)
  pred = pred * len_g
  return pred - pred[..., root:root + 1, :] + gt[..., root:root + 1, :]


def keypoint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """[N, K, 3] x2 -> [N, K] Euclidean distances."""
  pred, gt = _check_pair("keypoint_errors", pred, gt)
  return np.linalg.norm(pred - gt, axis=-1)


def mean_keypoint_error(errors: np.ndarray) -> float:
  """[N, K] -> mean over samples per keypoint, then over keypoints."""
  errors = np.asarray(errors, np.float64)
  return float(np.mean(np.mean(errors, axis=0)))


def pck_auc(errors: np.ndarray,
            thresholds: np.ndarray = AUC_THRESHOLDS_M) -> tuple[float,
                                                                np.ndarray]:
  """Area under the PCK curve.

  Args:
    errors: [N, K] distances (same unit as thresholds).
    thresholds: [T] increasing thresholds.

  Returns:
    (auc in [0, 1] averaged over keypoints, mean PCK curve [T]).
  """
  errors = np.asarray(errors, np.float64)
  thr = np.asarray(thresholds, np.float64)
  pck = np.mean(errors[:, :, None] <= thr[None, None, :], axis=0)  # [K, T]
  norm = np.trapezoid(np.ones_like(thr), thr)
  auc_k = np.trapezoid(pck, thr, axis=-1) / norm
  return float(np.mean(auc_k)), pck.mean(0)


def f_score(pred_verts: np.ndarray, gt_verts: np.ndarray,
            threshold: float) -> tuple[float, np.ndarray]:
  """F-score between vertex sets at `threshold` (metres), mean over samples.

  Args:
    pred_verts, gt_verts: [N, V, 3].
    threshold: distance threshold.

  Returns:
    (mean F, per-sample F [N]).
  """
  pred, gt = _check_pair("f_score", pred_verts, gt_verts)
  pred = pred.reshape((-1,) + pred.shape[-2:])
  gt = gt.reshape((-1,) + gt.shape[-2:])
  out = np.zeros(pred.shape[0])
  for i in range(pred.shape[0]):
    d1, _ = cKDTree(pred[i]).query(gt[i], k=1)  # GT -> nearest prediction
    d2, _ = cKDTree(gt[i]).query(pred[i], k=1)  # prediction -> nearest GT
    p = np.mean(d1 < threshold)
    r = np.mean(d2 < threshold)
    out[i] = 2 * p * r / (p + r) if p + r > 0 else 0.0
  return float(out.mean()), out


def ho3d_hand_report(pred_joints: np.ndarray, pred_verts: np.ndarray,
                     gt_joints: np.ndarray, gt_verts: np.ndarray,
                     sc_tr_root: int = 0,
                     sc_tr_scale_ref: int = 4) -> dict[str, float]:
  """HO-3D hand metrics. Inputs in metres; errors returned in millimetres.

  Args:
    pred_joints, gt_joints: [N, 21, 3].
    pred_verts, gt_verts: [N, 778, 3].
    sc_tr_root, sc_tr_scale_ref: joints used by scale+translation alignment.

  Returns:
    {'joint_error_unaligned_mm', 'joint_error_sc_tr_mm',
     'joint_error_procrustes_mm', 'joint_auc_unaligned', 'joint_auc_sc_tr',
     'joint_auc_procrustes', 'mesh_error_unaligned_mm',
     'mesh_error_procrustes_mm', 'mesh_auc_unaligned', 'mesh_auc_procrustes',
     'fscore_5mm', 'fscore_15mm' (Procrustes-aligned vertices), 'fscore_unaligned_5mm',
     'fscore_unaligned_15mm', 'num_samples'}.
  """
  pj, gj = _check_pair("ho3d_hand_report (joints)", pred_joints, gt_joints,
                       k=21)
  pv, gv = _check_pair("ho3d_hand_report (vertices)", pred_verts, gt_verts,
                       k=778)
  if pj.ndim != 3 or pj.shape[0] != pv.shape[0]:
    raise ValueError(f"ho3d_hand_report: joints {pj.shape} and vertices "
                     f"{pv.shape} must be [N, 21, 3] and [N, 778, 3] with "
                     f"the same N")
  report = {"num_samples": float(pj.shape[0])}
  j_variants = {
      "unaligned": pj,
      "sc_tr": scale_translation_align_np(pj, gj, sc_tr_root,
                                          sc_tr_scale_ref),
      "procrustes": procrustes_align_np(pj, gj),
  }
  for name, aligned in j_variants.items():
    err = keypoint_errors(aligned, gj)
    report[f"joint_error_{name}_mm"] = 1000.0 * mean_keypoint_error(err)
    report[f"joint_auc_{name}"] = pck_auc(err)[0]
  pv_al = procrustes_align_np(pv, gv)
  for name, aligned in (("unaligned", pv), ("procrustes", pv_al)):
    err = keypoint_errors(aligned, gv)
    report[f"mesh_error_{name}_mm"] = 1000.0 * mean_keypoint_error(err)
    report[f"mesh_auc_{name}"] = pck_auc(err)[0]
  report["fscore_5mm"] = f_score(pv_al, gv, 0.005)[0]
  report["fscore_15mm"] = f_score(pv_al, gv, 0.015)[0]
  report["fscore_unaligned_5mm"] = f_score(pv, gv, 0.005)[0]
  report["fscore_unaligned_15mm"] = f_score(pv, gv, 0.015)[0]
  return report


# The numbers the official HO-3D evaluation writes to scores.txt, under its names, in its order: joint errors
# (cm) and AUCs unaligned, Procrustes-aligned and scale-translation aligned; mesh errors and AUCs unaligned and
# Procrustes-aligned (the official script aligns the mesh by Procrustes only); F-scores at 5 and 15 mm on
# unaligned (f_score_*) and Procrustes-aligned (f_al_score_*) vertices. Errors are in centimetres there.
OFFICIAL_SCORE_NAMES = (
    "xyz_mean3d", "xyz_auc3d", "xyz_procrustes_al_mean3d", "xyz_procrustes_al_auc3d",
    "xyz_scale_trans_al_mean3d", "xyz_scale_trans_al_auc3d", "mesh_mean3d", "mesh_auc3d", "mesh_al_mean3d",
    "mesh_al_auc3d", "f_score_5", "f_al_score_5", "f_score_15", "f_al_score_15")


def official_scores(pred_joints: np.ndarray, pred_verts: np.ndarray, gt_joints: np.ndarray,
                    gt_verts: np.ndarray) -> dict[str, float]:
  """Every number of the official HO-3D scores.txt (`OFFICIAL_SCORE_NAMES`; errors in cm, AUCs and F in [0, 1]).

  Inputs as `ho3d_hand_report` (metres, one frame for all four; the scores do not depend on which frame as long
  as it is the same). The F-scores are computed both on the raw and on the Procrustes-aligned vertices.
  """
  r = ho3d_hand_report(pred_joints, pred_verts, gt_joints, gt_verts)
  out = {
      "xyz_mean3d": r["joint_error_unaligned_mm"] / 10.0, "xyz_auc3d": r["joint_auc_unaligned"],
      "xyz_procrustes_al_mean3d": r["joint_error_procrustes_mm"] / 10.0,
      "xyz_procrustes_al_auc3d": r["joint_auc_procrustes"],
      "xyz_scale_trans_al_mean3d": r["joint_error_sc_tr_mm"] / 10.0,
      "xyz_scale_trans_al_auc3d": r["joint_auc_sc_tr"],
      "mesh_mean3d": r["mesh_error_unaligned_mm"] / 10.0, "mesh_auc3d": r["mesh_auc_unaligned"],
      "mesh_al_mean3d": r["mesh_error_procrustes_mm"] / 10.0, "mesh_al_auc3d": r["mesh_auc_procrustes"],
      "f_score_5": r["fscore_unaligned_5mm"], "f_al_score_5": r["fscore_5mm"],
      "f_score_15": r["fscore_unaligned_15mm"], "f_al_score_15": r["fscore_15mm"],
  }
  return {k: float(out[k]) for k in OFFICIAL_SCORE_NAMES}


def scores_txt(scores: Mapping[str, float]) -> str:
  """The official scores.txt layout: one 'name: value' line per score, in the official order."""
  return "".join(f"{k}: {float(scores[k]):f}\n" for k in OFFICIAL_SCORE_NAMES)


# ----------------------------------------------------------------------------
# Objects.


def opengl_to_opencv_pose(rot: np.ndarray,
                          trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Flips the y and z rows: [..., 3, 3], [..., 3] OpenGL -> OpenCV camera (`geometry.camera_frames`)."""
  return (camera_frames.flip_rotations(np.asarray(rot, np.float64)),
          camera_frames.flip_points(np.asarray(trans, np.float64)))


def model_diameter(points: np.ndarray) -> float:
  """Diagonal of the axis-aligned bounding box of [P, 3] model points."""
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
    raise ValueError(f"model_diameter: points must be [P>0, 3], got "
                     f"{points.shape}")
  return float(np.linalg.norm(points.max(0) - points.min(0)))


def _transform(rot, trans, points):
  return np.einsum("...ij,pj->...pi", rot, points) + trans[..., None, :]


def add_error(rot_gt: np.ndarray, t_gt: np.ndarray, rot_pred: np.ndarray,
              t_pred: np.ndarray, points: np.ndarray) -> np.ndarray:
  """ADD per frame: [..., 3, 3], [..., 3] (x2), [P, 3] -> [...] (metres)."""
  points = np.asarray(points, np.float64)
  a = _transform(np.asarray(rot_gt, np.float64), np.asarray(t_gt, np.float64),
                 points)
  b = _transform(np.asarray(rot_pred, np.float64),
                 np.asarray(t_pred, np.float64), points)
  return np.linalg.norm(a - b, axis=-1).mean(-1)


def project(points_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
  """Pinhole projection of [..., P, 3] camera points (z > 0) -> [..., P, 2].

  Points with |z| < 1e-9 are projected with z clamped to 1e-9 (finite).
  """
  k = np.asarray(intrinsics, np.float64)
  uvw = np.einsum("...ij,...pj->...pi", k, points_cam)
  z = uvw[..., 2:3]
  z = np.where(np.abs(z) < 1e-9, np.where(z < 0, -1e-9, 1e-9), z)
  return uvw[..., :2] / z


def reprojection_error(rot_gt: np.ndarray, t_gt: np.ndarray,
                       rot_pred: np.ndarray, t_pred: np.ndarray,
                       points: np.ndarray,
                       intrinsics: np.ndarray) -> np.ndarray:
  """Mean 2D distance (pixels) between model points projected by both poses.

  intrinsics: [3, 3] or [..., 3, 3] matching the pose batch.
  """
  points = np.asarray(points, np.float64)
  k = np.asarray(intrinsics, np.float64)
  if k.ndim == 2:
    k = np.broadcast_to(k, np.shape(t_gt)[:-1] + (3, 3))
  a = project(_transform(np.asarray(rot_gt, np.float64),
                         np.asarray(t_gt, np.float64), points), k)
  b = project(_transform(np.asarray(rot_pred, np.float64),
                         np.asarray(t_pred, np.float64), points), k)
  return np.linalg.norm(a - b, axis=-1).mean(-1)


def object_pose_report(rot_gt: np.ndarray, t_gt: np.ndarray, rot_pred: np.ndarray, t_pred: np.ndarray,
                       points: Sequence[np.ndarray], intrinsics: np.ndarray, groups: Sequence[str],
                       add_fraction: float = 0.1, rep_px: float = 5.0) -> dict[str, object]:
  """ADD-0.1D and REP-5 success rates (%) per group and their mean over groups, with a model per FRAME.

  Args:
    rot_gt, rot_pred: [N, 3, 3] OpenCV-frame rotations; t_gt, t_pred: [N, 3] metres.
    points: N arrays [P_i, 3], each frame's model points (object frame, metres; P_i may differ, e.g. a
      [N, P, 3] array or a list); the ADD threshold is
      `add_fraction` x the diagonal of that frame's model-point box (`model_diameter`).
    intrinsics: [3, 3] or [N, 3, 3].
    groups: [N] the group of each frame (HO-3D: the object's name; the synthetic world: its shape).

  Returns:
    {'add_success': {group: %}, 'add_success_mean': %, 'rep5': {group: %}, 'rep5_mean': %,
     'add_mean_m': {group: mean ADD in metres}, 'num_frames': {group: n}} (means over groups).
  """
  rot_gt = np.asarray(rot_gt, np.float64)
  n = rot_gt.shape[0]
  groups = [str(g) for g in groups]
  points = [np.asarray(p, np.float64) for p in points]
  if len(groups) != n or len(points) != n:
    raise ValueError(f"object_pose_report: {len(groups)} groups and {len(points)} point sets for {n} "
                     "frames")
  k = np.asarray(intrinsics, np.float64)
  if k.ndim == 2:
    k = np.broadcast_to(k, (n, 3, 3))
  t_gt, rot_pred, t_pred = (np.asarray(x, np.float64) for x in (t_gt, rot_pred, t_pred))
  add = np.array([add_error(rot_gt[i], t_gt[i], rot_pred[i], t_pred[i], points[i]) for i in range(n)])
  rep = np.array([reprojection_error(rot_gt[i], t_gt[i], rot_pred[i], t_pred[i], points[i], k[i])
                  for i in range(n)])
  diam = np.array([model_diameter(points[i]) for i in range(n)])
  add_s, rep_s, add_m, counts = {}, {}, {}, {}
  for g in sorted(set(groups)):
    idx = np.array([i for i, o in enumerate(groups) if o == g])
    add_s[g] = 100.0 * float(np.mean(add[idx] <= add_fraction * diam[idx]))
    rep_s[g] = 100.0 * float(np.mean(rep[idx] <= rep_px))
    add_m[g] = float(add[idx].mean())
    counts[g] = int(idx.size)
  return {
      "add_success": add_s,
      "add_success_mean": float(np.mean(list(add_s.values()))) if add_s else float("nan"),
      "rep5": rep_s,
      "rep5_mean": float(np.mean(list(rep_s.values()))) if rep_s else float("nan"),
      "add_mean_m": add_m,
      "num_frames": counts,
  }


def ho3d_object_report(rot_gt: np.ndarray, t_gt: np.ndarray,
                       rot_pred: np.ndarray, t_pred: np.ndarray,
                       object_ids: Sequence[str],
                       models: Mapping[str, np.ndarray],
                       intrinsics: np.ndarray,
                       add_fraction: float = 0.1,
                       rep_px: float = 5.0) -> dict[str, object]:
  """Per-object ADD-0.1D and REP-5 success rates (%) and their object means (one model per object name).

  Args:
    rot_gt, rot_pred: [N, 3, 3] OpenCV-frame rotations.
    t_gt, t_pred: [N, 3] translations (metres).
    object_ids: [N] object name per frame.
    models: {object name: [P, 3] model points (metres)}.
    intrinsics: [3, 3] or [N, 3, 3].
    add_fraction: ADD success threshold as a fraction of the diameter.
    rep_px: REP success threshold in pixels.

  Returns:
    As `object_pose_report`, grouped by object name.
  """
  object_ids = [str(o) for o in object_ids]
  n = np.asarray(rot_gt).shape[0]
  if len(object_ids) != n:
    raise ValueError(f"ho3d_object_report: {len(object_ids)} object_ids for "
                     f"{n} frames")
  missing = sorted(set(object_ids) - set(models))
  if missing:
    raise ValueError(f"ho3d_object_report: no model points for object "
                     f"{missing[0]!r}")
  points = [models[o] for o in object_ids]
  return object_pose_report(rot_gt, t_gt, rot_pred, t_pred, points, intrinsics, object_ids, add_fraction,
                            rep_px)
