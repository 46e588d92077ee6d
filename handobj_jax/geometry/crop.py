"""Square crops with scale, rotation and translation: one similarity applied to the image, its 2D labels,
the camera and the 3D labels together (Semi-Hand-Object Sec. 6.1 augmentation; test-time crops too).

Frames and units:
  * Pixels (x, y) = (column, row), pixel centres at integer coordinates (OpenCV's convention).
  * A crop is a 2x3 affine `A` mapping image pixels to crop pixels: p' = A [p, 1]. Here A is always a
    similarity: A = [s R(a) | b], R(a) = [[cos a, -sin a], [sin a, cos a]] (a positive angle turns the image
    content clockwise on screen, since y points down).
  * Camera: OpenCV frame (x right, y down, z forward), intrinsics K [3, 3].
  * An in-plane rotation of the image is a rotation of the camera about its optical axis: with
    R3 = [[R(a), 0], [0, 1]], every camera-frame point X becomes R3 X and the crop's intrinsics are
    K' = [A; 0 0 1] K R3^T = [[s R(a) F R(a)^T, A [cx, cy, 1]], [0, 0, 1]] (F = diag(fx, fy)), so that
    A proj_K(X) = proj_K'(R3 X) exactly. For square pixels (fx = fy) K' is the pinhole matrix with focal
    s fx; otherwise its 2x2 block is F rotated (a general, still exact, projective camera). Object poses
    become (R3 R, R3 t) and the MANO global orientation R3 R_global; root-relative hand joints and vertices
    are rotated by R3 (`rotate_points`).

`crop_affine` builds A from a centre, a side length and an angle: the image square of side `side` centred
on `centre` (rotated by -angle) fills the crop of `out_size` x `out_size`; the centre lands on the crop's
centre ((out_size - 1) / 2). `warp_image` samples the crop bilinearly (zero outside the image), matching
`cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT)`.

All functions are float32, batched over leading dims, jit/vmap-safe; a degenerate side (<= 0 or non-finite)
is replaced by 1 (a finite, flagged-by-the-caller crop, never NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def rotation_2d(angle: Array) -> Array:
  """[...] radians -> [..., 2, 2] rotation matrices R(a) (see module docstring)."""
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def rotation_about_optical_axis(angle: Array) -> Array:
  """[...] radians -> [..., 3, 3] R3: the camera rotation that an image rotation by `angle` amounts to."""
  c, s = jnp.cos(angle), jnp.sin(angle)
  z, o = jnp.zeros_like(c), jnp.ones_like(c)
  return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1), jnp.stack([z, z, o], -1)], -2)


def crop_affine(centre: Array, side: Array, out_size: int, angle: Array | float = 0.0) -> Array:
  """The 2x3 similarity [..., 2, 3] mapping image pixels to an `out_size` crop (see module docstring).

  Args:
    centre: [..., 2] image pixels (x, y) that land on the crop centre.
    side: [...] side length of the cropped square, image pixels.
    out_size: crop side in pixels.
    angle: [...] rotation (radians).
  """
  centre = jnp.asarray(centre, jnp.float32)
  side = jnp.asarray(side, jnp.float32)
  side = jnp.where(jnp.isfinite(side) & (side > 0), side, 1.0)
  angle = jnp.broadcast_to(jnp.asarray(angle, jnp.float32), side.shape)
  scale = float(out_size) / side
  lin = scale[..., None, None] * rotation_2d(angle)                       # [..., 2, 2]
  half = (float(out_size) - 1.0) / 2.0
  offset = half - jnp.einsum("...ij,...j->...i", lin, centre, precision=_HIGHEST)
  return jnp.concatenate([lin, offset[..., None]], -1)


def invert_affine(a: Array) -> Array:
  """Inverse of a 2x3 affine [..., 2, 3] (closed form). A singular (|det| <= 1e-12 of the squared scale of
  its entries) or non-finite map gives the zero map (finite)."""
  a = jnp.asarray(a, jnp.float32)
  finite = jnp.all(jnp.isfinite(a), axis=(-2, -1))
  a = jnp.where(finite[..., None, None], a, 0.0)
  m = a[..., :2, :2]
  det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
  scale = jnp.sum(jnp.abs(m), axis=(-2, -1))
  ok = finite & (jnp.abs(det) > 1e-12 * scale * scale)
  inv_det = jnp.where(ok, 1.0 / jnp.where(ok, det, 1.0), 0.0)
  inv = jnp.stack([jnp.stack([m[..., 1, 1], -m[..., 0, 1]], -1),
                   jnp.stack([-m[..., 1, 0], m[..., 0, 0]], -1)], -2) * inv_det[..., None, None]
  t = -jnp.einsum("...ij,...j->...i", inv, a[..., :, 2], precision=_HIGHEST)
  return jnp.concatenate([inv, t[..., None]], -1)


def apply_affine(a: Array, points: Array) -> Array:
  """p' = A [p, 1]: a [..., 2, 3], points [..., P, 2] -> [..., P, 2]."""
  return (jnp.einsum("...ij,...pj->...pi", a[..., :2, :2], points, precision=_HIGHEST)
          + a[..., None, :, 2])


def crop_intrinsics(k: Array, a: Array) -> Array:
  """K' = [A; 0 0 1] K R3^T [..., 3, 3], the crop camera of the module docstring (R3 from A's angle)."""
  k = jnp.asarray(k, jnp.float32)
  a3 = jnp.concatenate([a, jnp.broadcast_to(jnp.asarray([[0.0, 0.0, 1.0]], a.dtype), a.shape[:-2] + (1, 3))],
                       -2)
  r3 = rotation_about_optical_axis(crop_angle(a))
  return jnp.einsum("...ij,...jk,...lk->...il", a3, k, r3, precision=_HIGHEST)


def crop_angle(a: Array) -> Array:
  """The rotation angle of a similarity A = [s R(a) | b]."""
  return jnp.arctan2(a[..., 1, 0], a[..., 0, 0])


def rotate_points(r3: Array, points: Array) -> Array:
  """[..., 3, 3] x [..., P, 3] -> R3 X for every point."""
  return jnp.einsum("...ij,...pj->...pi", r3, points, precision=_HIGHEST)


def warp_image(image: Array, a: Array, out_size: int) -> Array:
  """The crop of `image` [..., H, W, C] under the affine `a` [..., 2, 3]: [..., out, out, C] float32.

  Bilinear, pixel centres at integers; a crop pixel whose source lies outside the image reads 0 from the
  missing neighbours (as cv2.warpAffine with BORDER_CONSTANT 0). Differentiable in the image.
  """
  image = jnp.asarray(image, jnp.float32)
  h, w = image.shape[-3], image.shape[-2]
  inv = invert_affine(jnp.asarray(a, jnp.float32))
  ys, xs = jnp.meshgrid(jnp.arange(out_size, dtype=jnp.float32), jnp.arange(out_size, dtype=jnp.float32),
                        indexing="ij")
  grid = jnp.stack([xs, ys], -1).reshape(-1, 2)                            # [out*out, 2]
  src = apply_affine(inv, jnp.broadcast_to(grid, inv.shape[:-2] + grid.shape))
  sx, sy = src[..., 0], src[..., 1]
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  fx, fy = sx - x0, sy - y0
  flat = image.reshape(image.shape[:-3] + (h * w, image.shape[-1]))

  def tap(xi, yi, weight):
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
    vals = jnp.take_along_axis(flat, idx[..., None], axis=-2)
    return vals * jnp.where(inside, weight, 0.0)[..., None]

  out = (tap(x0, y0, (1 - fx) * (1 - fy)) + tap(x0 + 1, y0, fx * (1 - fy)) +
         tap(x0, y0 + 1, (1 - fx) * fy) + tap(x0 + 1, y0 + 1, fx * fy))
  return out.reshape(out.shape[:-2] + (out_size, out_size, image.shape[-1]))


def boxes_of(points: Array, valid: Array | None = None) -> Array:
  """Tight boxes [..., 4] = [x0, y0, x1, y1] of points [..., P, 2] (the valid ones; none -> zeros)."""
  if valid is None:
    valid = jnp.ones(points.shape[:-1], bool)
  valid = valid & jnp.all(jnp.isfinite(points), -1)
  big = jnp.float32(3e38)
  lo = jnp.min(jnp.where(valid[..., None], points, big), -2)
  hi = jnp.max(jnp.where(valid[..., None], points, -big), -2)
  box = jnp.concatenate([lo, hi], -1)
  return jnp.where(jnp.any(valid, -1)[..., None], box, 0.0)


def scale_boxes(boxes: Array, factor: float) -> Array:
  """Boxes scaled about their centres by `factor`."""
  c = 0.5 * (boxes[..., :2] + boxes[..., 2:])
  half = 0.5 * (boxes[..., 2:] - boxes[..., :2]) * factor
  return jnp.concatenate([c - half, c + half], -1)


def union_square(box_a: Array, box_b: Array, factor: float = 1.0) -> tuple[Array, Array]:
  """(centre [..., 2], side [...]) of the square around the union of two boxes, side scaled by `factor`."""
  lo = jnp.minimum(box_a[..., :2], box_b[..., :2])
  hi = jnp.maximum(box_a[..., 2:], box_b[..., 2:])
  return 0.5 * (lo + hi), jnp.max(hi - lo, -1) * factor
