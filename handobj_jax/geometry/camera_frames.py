"""OpenGL <-> OpenCV camera frames: the one place the project converts between them (NumPy, host side).

The project works in the OpenCV camera frame (x right, y down, z forward: a visible point has z > 0). HO-3D's
annotations and its submission file use the OpenGL camera frame (x right, y up, z backwards: a visible point
has z < 0). The two differ by F = diag(1, -1, -1), which is its own inverse, so every function here converts
in both directions.

* Points [..., 3]: p' = F p.
* Rotations [..., 3, 3] and poses [..., 3, 4] / [..., 4, 4] whose rows are camera axes: R' = F R, t' = F t.
* MANO parameters (`mano_params`): MANO rotates the hand about its rest wrist joint J0 (which depends on the
  shape betas) and then adds the translation, v = R_g (v_rest - J0) + J0 + t. Flipping the frame gives
  F v = (F R_g) (v_rest - J0) + J0 + [F (J0 + t) - J0], so the global rotation becomes F R_g and the translation
  F (J0 + t) - J0; the 45 articulated pose values are in the hand's own frame and do not change.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

FLIP = np.array([1.0, -1.0, -1.0])


def opengl_to_opencv(x: np.ndarray) -> np.ndarray:
  """Flips the y and z axes (either direction).

  Args:
    x: [..., 3] points, or [..., 3, 3] rotations / [..., 3, 4] or [..., 4, 4] poses whose rows are camera-frame
      axes (their y and z rows are negated).

  Returns:
    An array of the same shape (float; float32 input stays float32).
  """
  x = np.asarray(x)
  flip = FLIP.astype(x.dtype if x.dtype.kind == "f" else np.float64)
  if x.shape[-1] == 3 and (x.ndim == 1 or x.shape[-2:] != (3, 3)):
    return x * flip
  if x.shape[-2:] in ((3, 3), (3, 4)):
    return x * flip[:, None]
  if x.shape[-2:] == (4, 4):
    out = np.array(x, dtype=flip.dtype, copy=True)
    out[..., :3, :] *= flip[:, None]
    return out
  raise ValueError(f"opengl_to_opencv expects [..., 3] points or [..., 3, 3], [..., 3, 4], [..., 4, 4] poses, got "
                   f"shape {x.shape}")


opencv_to_opengl = opengl_to_opencv


def flip_points(points: np.ndarray) -> np.ndarray:
  """[..., 3] points, either direction (unambiguous for any leading shape, unlike `opengl_to_opencv`, which
  reads a [3, 3] array as a rotation)."""
  points = np.asarray(points)
  if points.shape[-1:] != (3,):
    raise ValueError(f"flip_points expects [..., 3] points, got shape {points.shape}")
  return points * FLIP.astype(points.dtype if points.dtype.kind == "f" else np.float64)


def flip_rotations(rot: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotations whose rows are camera axes, either direction: F R."""
  rot = np.asarray(rot)
  if rot.shape[-2:] != (3, 3):
    raise ValueError(f"flip_rotations expects [..., 3, 3] rotations, got shape {rot.shape}")
  return rot * FLIP.astype(rot.dtype if rot.dtype.kind == "f" else np.float64)[:, None]


def rotvec_pose(rotvec: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(axis-angle [..., 3] or [..., 3, 1], translation [..., 3]) in OpenGL -> (R [..., 3, 3], t [..., 3]) in OpenCV."""
  rotvec = np.asarray(rotvec, np.float64)
  rotvec = rotvec.reshape(rotvec.shape[:-2] + (3,)) if rotvec.shape[-2:] == (3, 1) else rotvec
  rot = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(rotvec.shape[:-1] + (3, 3))
  return flip_rotations(rot), flip_points(np.asarray(trans, np.float64))


def mano_params(pose: np.ndarray, trans: np.ndarray, rest_root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """MANO (pose [..., 48], translation [..., 3]) in one frame -> the other (module docstring).

  Args:
    pose: axis-angle, 3 global + 45 articulated.
    trans: the translation MANO adds last, metres.
    rest_root: [..., 3] the rest-pose wrist joint J0 of the hand's shape (the MANO joint regressor applied to the
      shaped template; no pose, no translation).

  Returns:
    (pose, trans) in the other frame, float64.
  """
  pose = np.array(pose, np.float64, copy=True)
  trans = np.asarray(trans, np.float64)
  j0 = np.asarray(rest_root, np.float64)
  lead = pose.shape[:-1]
  rot = Rotation.from_rotvec(pose[..., :3].reshape(-1, 3)).as_matrix()
  rot = FLIP[None, :, None] * rot
  pose[..., :3] = Rotation.from_matrix(rot).as_rotvec().reshape(lead + (3,))
  return pose, flip_points(j0 + trans) - j0
