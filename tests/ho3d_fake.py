"""A tiny fake HO-3D download in the published layout (see input_pipeline/tfds_ho3d.py), for tests.

The ground truth is made in the OpenCV camera frame with the licence-free synthetic MANO model (written to a
.pkl in the official key layout, so the builder reads it as a user's model file) and converted to the files'
OpenGL conventions here, independently of `handobj_jax.geometry.camera_frames`: rotations by matrix products
and MANO's translation by matching the mesh's centroid. The returned truth (OpenCV) is what the builder must
give back; `joints2d` is projected here from the OpenCV joints, before any conversion.
"""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from handobj_jax.models import mano as mano_lib

FLIP = np.diag([1.0, -1.0, -1.0])
K = np.array([[615.0, 0.0, 320.5], [0.0, 612.0, 238.0], [0.0, 0.0, 1.0]])
OBJECTS = ("006_mustard_bottle", "010_potted_meat_can")
TIPS = (728, 353, 442, 576, 694)


def write_mano(path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(mano_lib.to_official_dict(mano_lib.synthetic_mano_model("right")), f, protocol=2)
  return path


def _project(points: np.ndarray) -> np.ndarray:
  uvw = points @ K.T
  return uvw[:, :2] / uvw[:, 2:]


def _image(rng: np.random.Generator) -> np.ndarray:
  """A smooth 480x640 RGB image (JPEG-friendly)."""
  yy, xx = np.mgrid[0:480, 0:640].astype(np.float64)
  a = rng.uniform(0.2, 1.0, 3)
  img = 127 + 100 * np.sin(xx[..., None] / (40 + 30 * a) + yy[..., None] / (55 + 20 * a) + 6 * a)
  return np.clip(img, 0, 255).astype(np.uint8)


def _model_points(rng: np.random.Generator, dims) -> np.ndarray:
  return rng.uniform(-0.5, 0.5, (300, 3)) * np.asarray(dims)


def _mano_forward(model, pose, betas, trans):
  v, j = mano_lib.mano_forward(model, pose, betas, trans, tip_ids=TIPS, flat_hand_mean=True)
  return np.asarray(v, np.float64), np.asarray(j, np.float64)


def _frame(rng: np.random.Generator, model, models: dict[str, np.ndarray], obj: str) -> dict:
  """One frame's ground truth (OpenCV) and its meta-file fields (OpenGL)."""
  pose = np.zeros(48)
  pose[:3] = Rotation.from_euler("xyz", rng.uniform(-0.6, 0.6, 3)).as_rotvec()
  pose[3:] = rng.normal(0.0, 0.15, 45)
  betas = rng.normal(0.0, 0.5, 10)
  v0, j0 = _mano_forward(model, pose, betas, np.zeros(3))
  trans = np.array([0.0, 0.0, 0.55]) + rng.uniform(-0.05, 0.05, 3) - j0[0]
  verts, joints = v0 + trans, j0 + trans
  rot_o = Rotation.from_euler("xyz", rng.uniform(-np.pi, np.pi, 3)).as_matrix()
  t_o = joints[0] + np.array([0.03, 0.02, 0.05])
  # OpenGL meta fields: the global rotation's matrix flipped; the translation that puts the flipped mesh where
  # it belongs (MANO adds it last, so it is the difference of centroids).
  pose_gl = pose.copy()
  pose_gl[:3] = Rotation.from_matrix(FLIP @ Rotation.from_rotvec(pose[:3]).as_matrix()).as_rotvec()
  v_gl0, _ = _mano_forward(model, pose_gl, betas, np.zeros(3))
  trans_gl = (verts @ FLIP).mean(0) - v_gl0.mean(0)
  meta = {"handPose": pose_gl.astype(np.float32), "handBeta": betas.astype(np.float32),
          "handTrans": trans_gl.astype(np.float32), "handJoints3D": (joints @ FLIP).astype(np.float32),
          "objName": obj, "objRot": Rotation.from_matrix(FLIP @ rot_o).as_rotvec().reshape(3, 1).astype(np.float32),
          "objTrans": (FLIP @ t_o).astype(np.float32), "camMat": K.astype(np.float32),
          "objCorners3DRest": np.zeros((8, 3), np.float32), "objLabel": 1}
  pts = models[obj]
  return {"meta": meta, "joints3d": joints, "verts3d": verts, "joints2d": _project(joints), "mano_pose": pose,
          "mano_betas": betas, "obj_rot": rot_o, "obj_trans": t_o, "obj_name": obj,
          "model_points": pts, "obj_points2d": _project(pts @ rot_o.T + t_o)}


def write_tree(root: str, version: str = "v3", train_sequences=("AB1", "CD2", "EF3", "GH4"), frames: int = 3,
               eval_sequences=("ZZ9", "YY8"), eval_frames: int = 2, with_eval_gt: bool = False, seed: int = 0) -> dict:
  """Writes the fake download under `root`; returns {'train': {key: truth}, 'evaluation': [...], 'models': ...}."""
  rng = np.random.default_rng(seed)
  model = mano_lib.synthetic_mano_model("right")
  ext = ".jpg" if version == "v3" else ".png"
  models = {name: _model_points(rng, dims) for name, dims in zip(OBJECTS, ((0.06, 0.18, 0.05), (0.10, 0.08, 0.06)))}
  for name, pts in models.items():
    os.makedirs(os.path.join(root, "models", name), exist_ok=True)
    np.savetxt(os.path.join(root, "models", name, "points.xyz"), pts, fmt="%.7f")
  truth: dict = {"train": {}, "evaluation": [], "models": models}
  lines = []
  for si, seq in enumerate(train_sequences):
    for f in range(frames):
      frame = f"{f:04d}"
      ex = _frame(rng, model, models, OBJECTS[si % 2])
      _write(root, "train", seq, frame, ex["meta"], _image(rng), ext)
      ex["image_path"] = os.path.join(root, "train", seq, "rgb", frame + ext)
      truth["train"][f"{seq}/{frame}"] = ex
      lines.append(f"{seq}/{frame}")
  with open(os.path.join(root, "train.txt"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  lines, xyz, verts = [], [], []
  for seq in eval_sequences:
    for f in range(eval_frames):
      frame = f"{f:04d}"
      ex = _frame(rng, model, models, OBJECTS[f % 2])
      box = np.concatenate([_project(ex["verts3d"]).min(0), _project(ex["verts3d"]).max(0)])
      meta = {"handBoundingBox": box.astype(np.float32), "handJoints3D": ex["meta"]["handJoints3D"][0],
              "objName": ex["meta"]["objName"], "objRot": ex["meta"]["objRot"], "objTrans": ex["meta"]["objTrans"],
              "camMat": K.astype(np.float32), "objCorners3D": np.zeros((8, 3), np.float32)}
      _write(root, "evaluation", seq, frame, meta, _image(rng), ext)
      ex["hand_box"] = box
      truth["evaluation"].append(ex)
      lines.append(f"{seq}/{frame}")
      xyz.append((ex["joints3d"] @ FLIP).tolist())
      verts.append((ex["verts3d"] @ FLIP).tolist())
  # evaluation.txt lists the frames in an order different from a sorted scan, as the official file may.
  with open(os.path.join(root, "evaluation.txt"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  if with_eval_gt:
    for name, data in (("xyz", xyz), ("verts", verts)):
      with open(os.path.join(root, f"evaluation_{name}.json"), "w") as fh:
        json.dump(data, fh)
  return truth


def _write(root, split, seq, frame, meta, image, ext):
  for sub in ("rgb", "meta"):
    os.makedirs(os.path.join(root, split, seq, sub), exist_ok=True)
  cv2.imwrite(os.path.join(root, split, seq, "rgb", frame + ext), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  with open(os.path.join(root, split, seq, "meta", frame + ".pkl"), "wb") as fh:
    pickle.dump(meta, fh, protocol=2)
