"""Test-time augmentation for hand pseudo-labels (Semi-Hand-Object Sec. 5.1: "8 different augmentations of
each instance", averaged).

A transform is a crop of the frame around its given boxes (the square of `pose_task.prepare`) changed by a
zoom and an in-plane rotation, written as a token list, e.g. the default
  "id,r15,r-15,r30,r-30,r180,s0.85,s1.15"
  id      the evaluation crop;
  r<deg>  rotated by <deg> degrees (the image content turns clockwise on screen for a positive angle, as in
          `geometry.crop`);
  s<f>    zoomed in by the factor <f> (the cropped square's side divided by <f>);
  tokens joined by '+' combine, e.g. "r15+s1.1".
These are the training augmentations of Sec. 6.1 (scale, rotation), so the network has seen each of them.

Left hands: the network is a right-hand model (MANO right, as HO-3D). A frame marked left is mirrored
(x -> crop_size - 1 - x) after the crop, so the network sees a right hand, and every output is mirrored back:
3D points x -> -x, MANO axis-angles (a, b, c) -> (a, -b, -c) (`mano.mirror_pose`: the pose of the left
MANO hand whose mesh is the mirror image). So left-hand labels are in the left MANO model's convention.

Inverse of each transform, applied to the network's outputs before averaging:
  2D joints   crop pixels -> frame pixels through the inverse crop affine (flip included);
  3D joints and vertices (root-relative, the crop camera's frame): X = R3^T M X', R3 the camera roll of the
              rotation (`crop.rotation_about_optical_axis`), M = diag(-1, 1, 1) for a left hand (else I);
  theta       global rotation R = R3^T (M R' M) (mirrored back first), articulation mirrored back for
              left hands (rotation-invariant otherwise);
  beta        unchanged.
Averages: 2D and 3D points and beta are arithmetic means; rotations (the global one and each of the 15
articulated joints) are the orthogonal polar factor of the mean rotation matrix (the chordal L2 mean,
`small_linalg.polar_factor`), converted back to axis-angle.

The network's boxes in a transformed crop are the tight boxes of the given boxes' four corners mapped into
the crop (a rotated box is looser than the training crops' tight boxes; the RoI-normalised outputs are
mapped back through the same box, so this costs accuracy, not correctness).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import rotation
from handobj_jax.geometry import small_linalg
from handobj_jax.models import mano as mano_lib

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_TRANSFORMS = "id,r15,r-15,r30,r-30,r180,s0.85,s1.15"
OUTPUT_KEYS = ("joints2d", "joints3d", "verts3d", "theta", "beta")


@dataclasses.dataclass(frozen=True)
class Transform:
  scale: float = 1.0
  rotation_deg: float = 0.0

  @property
  def name(self) -> str:
    parts = ([f"r{self.rotation_deg:g}"] if self.rotation_deg else []) + (
        [f"s{self.scale:g}"] if self.scale != 1.0 else [])
    return "+".join(parts) or "id"


def parse_transforms(spec: str) -> tuple[Transform, ...]:
  """'id,r15,s1.1,r15+s0.9' -> Transforms; a bad token is a ValueError naming it."""
  out = []
  for item in [t.strip() for t in spec.split(",") if t.strip()]:
    scale, rot = 1.0, 0.0
    for tok in item.split("+"):
      try:
        if tok == "id":
          continue
        if tok[0] == "r":
          rot += float(tok[1:])
          continue
        if tok[0] == "s":
          scale *= float(tok[1:])
          if not scale > 0 or not math.isfinite(scale):
            raise ValueError
          continue
        raise ValueError
      except (ValueError, IndexError):
        raise ValueError(f"config.tta.transforms: bad token {tok!r} in {spec!r} (expected id, r<degrees>, "
                         f"s<zoom factor > 0>, joined by '+' within a transform and ',' between them)") from None
    out.append(Transform(scale, rot))
  if not out:
    raise ValueError(f"config.tta.transforms={spec!r} holds no transform")
  return tuple(out)


def transform_affine(hand_box: Array, obj_box: Array, is_left: Array, t: Transform, image_size: int,
                     crop_scale: float) -> Array:
  """The crop affine [B, 2, 3] of transform `t`: the evaluation crop, zoomed, rotated, mirrored if left."""
  centre, side = crop_lib.union_square(hand_box, obj_box, crop_scale)
  angle = jnp.full(side.shape, math.radians(t.rotation_deg), jnp.float32)
  a = crop_lib.crop_affine(centre, side / t.scale, image_size, angle)
  flip = jnp.asarray([[-1.0, 0.0, image_size - 1.0], [0.0, 1.0, 0.0]], jnp.float32)
  flipped = jnp.einsum("ij,bjk->bik", flip[:, :2], a, precision=_HIGHEST) + jnp.pad(
      flip[:, 2:], ((0, 0), (2, 0)))[None]
  return jnp.where(is_left[:, None, None], flipped, a)


def _box_in_crop(affine: Array, box: Array) -> Array:
  corners = jnp.stack([box[:, [0, 1]], box[:, [2, 1]], box[:, [0, 3]], box[:, [2, 3]]], axis=1)
  return crop_lib.boxes_of(crop_lib.apply_affine(affine, corners))


def _mirror_points(x: Array, is_left: Array) -> Array:
  return jnp.where(is_left[:, None, None], x * jnp.asarray([-1.0, 1.0, 1.0], x.dtype), x)


def invert_outputs(out: dict[str, Array], affine: Array, is_left: Array, t: Transform) -> dict[str, Array]:
  """One transform's network outputs (crop frame) -> the frame's (module docstring)."""
  b = affine.shape[0]
  r3 = crop_lib.rotation_about_optical_axis(jnp.full((b,), math.radians(t.rotation_deg), jnp.float32))
  r3t = jnp.swapaxes(r3, -1, -2)
  joints2d = crop_lib.apply_affine(crop_lib.invert_affine(affine), out["joints2d"])
  joints3d = crop_lib.rotate_points(r3t, _mirror_points(out["joints3d"], is_left))
  verts3d = crop_lib.rotate_points(r3t, _mirror_points(out["verts3d"], is_left))
  theta = jnp.where(is_left[:, None], mano_lib.mirror_pose(out["theta"]), out["theta"])
  glob = jnp.einsum("bij,bjk->bik", r3t, rotation.axis_angle_to_matrix(theta[:, :3]), precision=_HIGHEST)
  theta = jnp.concatenate([rotation.matrix_to_axis_angle(glob), theta[:, 3:]], axis=1)
  return dict(joints2d=joints2d, joints3d=joints3d, verts3d=verts3d, theta=theta, beta=out["beta"])


def mean_axis_angle(theta: Array) -> Array:
  """Chordal mean over axis 0 of axis-angle poses [T, B, 3k] -> [B, 3k] (per 3-vector)."""
  t, b, n = theta.shape
  mats = rotation.axis_angle_to_matrix(theta.reshape(t, b, n // 3, 3))
  mean, _ = small_linalg.polar_factor(jnp.mean(mats, axis=0))  # A mean with det <= 0 (no consensus) -> I.
  return rotation.matrix_to_axis_angle(mean).reshape(b, n)


def ensemble(per_transform: list[dict[str, Array]]) -> dict[str, Array]:
  """Averages the inverted outputs of every transform (module docstring)."""
  stack = {k: jnp.stack([p[k] for p in per_transform]) for k in OUTPUT_KEYS}
  out = {k: jnp.mean(stack[k], axis=0) for k in ("joints2d", "joints3d", "verts3d", "beta")}
  out["theta"] = mean_axis_angle(stack["theta"])
  # Spread of the 2D joints over the transforms (pixels, RMS over joints): a by-product confidence.
  dev = stack["joints2d"] - out["joints2d"][None]
  out["tta_spread_px"] = jnp.sqrt(jnp.mean(jnp.sum(dev * dev, axis=-1), axis=(0, 2)))
  return out


ModelFn = Callable[[Array, Array, Array], dict[str, Array]]


def tta_predict(model_fn: ModelFn, images: Array, hand_box: Array, obj_box: Array, is_left: Array,
                transforms: tuple[Transform, ...], image_size: int, crop_scale: float) -> dict[str, Array]:
  """The TTA ensemble of `model_fn` over `transforms` for a batch of frames.

  Args:
    model_fn: (crops [N, S, S, 3] in [0, 1], hand_box, obj_box [N, 4] crop pixels) -> dict(joints2d
      [N, 21, 2] crop pixels, joints3d [N, 21, 3], verts3d [N, 778, 3] root-relative in the crop camera
      frame, theta [N, 48], beta [N, 10]). Called once on all transforms stacked (N = len(transforms) B).
    images: [B, H, W, 3] uint8 or float in [0, 255].
    hand_box, obj_box: [B, 4] given boxes, frame pixels.
    is_left: [B] bool.
    transforms, image_size, crop_scale: the transforms and the crop of `pose_task.prepare`.

  Returns:
    dict(joints2d [B, 21, 2] frame pixels, joints3d, verts3d, theta, beta, tta_spread_px [B]).
  """
  hand_box = jnp.asarray(hand_box, jnp.float32)
  obj_box = jnp.asarray(obj_box, jnp.float32)
  is_left = jnp.asarray(is_left, bool)
  frames = jnp.asarray(images, jnp.float32) / 255.0
  affines = [transform_affine(hand_box, obj_box, is_left, t, image_size, crop_scale) for t in transforms]
  a = jnp.concatenate(affines)                                                 # [T B, 2, 3]
  reps = len(transforms)
  crops = crop_lib.warp_image(jnp.concatenate([frames] * reps), a, image_size)
  out = model_fn(crops, _box_in_crop(a, jnp.concatenate([hand_box] * reps)),
                 _box_in_crop(a, jnp.concatenate([obj_box] * reps)))
  b = hand_box.shape[0]
  per = []
  for i, t in enumerate(transforms):
    sl = {k: out[k][i * b:(i + 1) * b] for k in OUTPUT_KEYS}
    per.append(invert_outputs(sl, affines[i], is_left, t))
  return ensemble(per)
