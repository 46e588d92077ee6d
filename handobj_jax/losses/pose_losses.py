"""Semi-Hand-Object training losses (Sec. 4.2 Eq. 5, Sec. 4.3 Eq. 6), pure JAX functions.

Shape vocabulary: B batch, S RoI size (32), J hand joints (21), N object
control points (21), V MANO vertices (778). 2D coordinates are RoI-normalised
(u, v): the RoI box is the unit square, cell (row, col) has its centre at
((col + 0.5) / S, (row + 0.5) / S) (see `models.hand_decoder`). 3D is in
metres.

Every loss takes a per-example weight / mask `weight` [B] (bool or float >= 0):
per-example losses l_b are combined as sum_b w_b l_b / sum_b w_b, so a masked
example (w_b = 0) changes nothing -- its values never reach the result, even
if they are NaN -- and an all-masked batch gives exactly 0 with zero, finite
gradients. All functions compute in float32 and are jit/vmap-safe.

* `heatmap_targets`: normalised Gaussian heatmaps (sum 1 per valid joint).
* `heatmap_loss`: L_H = sum_j ||H_j - H^_j||_2^2 (Sec. 4.2). With heatmaps
  that sum to 1 over S*S = 1024 cells the values are small (a Gaussian of
  sigma = 1 cell peaks at ~0.16, sigma = 2 at ~0.04), so L_H is O(1e-2) at
  initialisation and much smaller near convergence; weight it accordingly
  (the paper's lambda_H = 0.1 was set for its own heatmap scale).
* `joints2d_loss`: mean squared error of the RoI-normalised 2D joints, what
  the released supervised code actually supervises (weight 1e2 there).
* `mano_loss`: mean squared errors on the pose, shape, 3D joints and vertices
  (Eq. 5's L_M), released default weights 1e4 / 1e4 / 10 / 0.1.
* `object_loss`: L_object = lambda_p L_p2d + lambda_c L_conf (Eq. 6).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from handobj_jax.geometry import rotation

Array = jax.Array

# Released supervised code defaults (metres for the 3D terms).
MANO_LOSS_WEIGHTS = dict(joints=1e4, verts=1e4, pose=10.0, shape=0.1)


def weighted_mean(per_example: Array, weight: Array) -> Array:
  """sum_b w_b l_b / sum_b w_b for l [B], w [B]; 0 when all weights are 0.

  Masked entries are replaced by 0 before the product, so a NaN / inf loss of a
  masked example does not leak into the value.
  """
  per_example = jnp.asarray(per_example, jnp.float32)
  w = jnp.asarray(weight, jnp.float32).reshape(per_example.shape)
  active = w > 0
  total = jnp.sum(jnp.where(active, w * jnp.where(active, per_example, 0.0), 0.0))
  denom = jnp.sum(jnp.where(active, w, 0.0))
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def _masked_mean_over(values: Array, mask: Array, axes) -> Array:
  """Mean of `values` over `axes` restricted to mask > 0; 0 if the mask is empty."""
  mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), values.shape)
  num = jnp.sum(jnp.where(mask > 0, values * mask, 0.0), axis=axes)
  den = jnp.sum(mask, axis=axes)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def heatmap_targets(joints_uv: Array, valid: Array | None, size: int,
                    sigma: float) -> Array:
  """Gaussian heatmaps at RoI-normalised joint positions, normalised per joint.

  H_j(g) = exp(-||c_g - S t_j||^2 / (2 sigma^2)) / Z_j, with c_g the cell
  centre in cell units (col + 0.5, row + 0.5), t_j = (u, v) the joint and Z_j
  the sum over the S*S cells (computed as a softmax, so the result sums to
  exactly 1 even for joints far outside the RoI, whose mass then sits on the
  nearest border cells: mark such joints invalid to drop them).

  Args:
    joints_uv: [B, J, 2] RoI-normalised (u, v).
    valid: [B, J] bool / 0-1 or None (all valid); invalid joints get all-zero maps.
    size: S, the heatmap size in cells.
    sigma: Gaussian standard deviation in cells (> 0).

  Returns:
    [B, S, S, J] float32, each valid joint's map summing to 1.
  """
  if sigma <= 0:
    raise ValueError(f"heatmap_targets: sigma must be > 0 cells, got {sigma}")
  joints_uv = jnp.asarray(joints_uv, jnp.float32)
  b, j, _ = joints_uv.shape
  centres = jnp.arange(size, dtype=jnp.float32) + 0.5
  t = joints_uv * size  # [B, J, 2] in cell units
  dx2 = jnp.square(centres[None, :, None] - t[:, None, :, 0])  # [B, S(col), J]
  dy2 = jnp.square(centres[None, :, None] - t[:, None, :, 1])  # [B, S(row), J]
  logits = -(dy2[:, :, None, :] + dx2[:, None, :, :]) / (2.0 * sigma * sigma)
  maps = jax.nn.softmax(logits.reshape(b, size * size, j), axis=1).reshape(
      b, size, size, j)
  if valid is not None:
    maps = maps * jnp.asarray(valid, jnp.float32)[:, None, None, :]
  return maps


def heatmap_loss(pred: Array, target: Array, weight: Array,
                 joint_valid: Array | None = None) -> Array:
  """L_H = sum over joints (and cells) of (H_j - H^_j)^2, weighted mean over examples.

  Args:
    pred, target: [B, S, S, J] heatmaps.
    weight: [B] per-example weight / mask.
    joint_valid: optional [B, J]; invalid joints contribute 0 (the sum over
      joints is not renormalised).

  Returns:
    Scalar float32.
  """
  sq = jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))
  per_joint = jnp.sum(sq, axis=(1, 2))  # [B, J]
  if joint_valid is not None:
    per_joint = jnp.where(jnp.asarray(joint_valid, jnp.float32) > 0, per_joint, 0.0)
  return weighted_mean(jnp.sum(per_joint, axis=1), weight)


def joints2d_loss(pred_uv: Array, target_uv: Array, weight: Array,
                  joint_valid: Array | None = None) -> Array:
  """Mean squared error of 2D joints (released code: F.mse_loss on RoI-normalised uv).

  Per example: mean over the valid joints and both coordinates of the squared
  error (all joints when joint_valid is None); then the weighted mean over
  examples. Examples without valid joints contribute 0 to the numerator but
  still count in the denominator (give them weight 0 to drop them).

  Args:
    pred_uv, target_uv: [B, J, 2].
    weight: [B].
    joint_valid: optional [B, J].

  Returns:
    Scalar float32.
  """
  sq = jnp.square(jnp.asarray(pred_uv, jnp.float32) -
                  jnp.asarray(target_uv, jnp.float32))  # [B, J, 2]
  mask = (jnp.ones(sq.shape[:2], jnp.float32) if joint_valid is None
          else jnp.asarray(joint_valid, jnp.float32))
  per_example = _masked_mean_over(sq, mask[..., None], axes=(1, 2))
  return weighted_mean(per_example, weight)


def _mse_per_example(a: Array, b: Array) -> Array:
  d = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
  return jnp.mean(jnp.square(d).reshape(d.shape[0], -1), axis=1)


def mano_loss(pred: Mapping[str, Array], target: Mapping[str, Array],
              weight: Array, *, pose_space: str = "axis_angle",
              joints_weight: float = MANO_LOSS_WEIGHTS["joints"],
              verts_weight: float = MANO_LOSS_WEIGHTS["verts"],
              pose_weight: float = MANO_LOSS_WEIGHTS["pose"],
              shape_weight: float = MANO_LOSS_WEIGHTS["shape"],
              ) -> tuple[Array, dict[str, Array]]:
  """L_M of Eq. 5: weighted sum of mean squared errors on MANO parameters and outputs.

  Each term is the mean over its elements of the squared error, per example
  (PyTorch `F.mse_loss` semantics within an example), then the weighted mean
  over examples:
    pose:   'axis_angle' -> theta [B, 48] (the paper's L2 on theta);
            'rotmat' -> rotmats [B, 16, 3, 3] (the released code with its 6D
            head compares rotation matrices; the target's matrices are made
            from target['theta'] by Rodrigues when 'rotmats' is absent);
    shape:  beta [B, 10];
    joints: joints [B, 21, 3] metres (both root-relative, as in the released
            code);
    verts:  verts [B, 778, 3] metres.
  A term is computed only when its key is in `target` (e.g. pseudo-labels with
  joints only); `pred` must then hold it too.

  Args:
    pred, target: dicts with keys among 'theta', 'rotmats', 'beta', 'joints',
      'verts'.
    weight: [B] per-example weight / mask.
    pose_space: 'axis_angle' or 'rotmat'.
    *_weight: term weights (defaults: the released code's 1e4, 1e4, 10, 0.1).

  Returns:
    (total, terms): terms holds the unweighted term values under 'pose',
    'shape', 'joints', 'verts' (those computed).
  """
  if pose_space not in ("axis_angle", "rotmat"):
    raise ValueError(f"mano_loss: pose_space must be 'axis_angle' or 'rotmat', "
                     f"got {pose_space!r}")
  terms: dict[str, Array] = {}
  if pose_space == "axis_angle" and "theta" in target:
    terms["pose"] = weighted_mean(
        _mse_per_example(pred["theta"], target["theta"]), weight)
  elif pose_space == "rotmat" and ("rotmats" in target or "theta" in target):
    if "rotmats" in target:
      target_rot = target["rotmats"]
    else:
      theta = jnp.asarray(target["theta"], jnp.float32)
      target_rot = rotation.axis_angle_to_matrix(
          theta.reshape(theta.shape[0], -1, 3))
    terms["pose"] = weighted_mean(
        _mse_per_example(pred["rotmats"], target_rot), weight)
  if "beta" in target:
    terms["shape"] = weighted_mean(
        _mse_per_example(pred["beta"], target["beta"]), weight)
  if "joints" in target:
    terms["joints"] = weighted_mean(
        _mse_per_example(pred["joints"], target["joints"]), weight)
  if "verts" in target:
    terms["verts"] = weighted_mean(
        _mse_per_example(pred["verts"], target["verts"]), weight)
  scale = dict(pose=pose_weight, shape=shape_weight, joints=joints_weight,
               verts=verts_weight)
  total = jnp.zeros((), jnp.float32)
  for name, value in terms.items():
    total = total + scale[name] * value
  return total, terms


CELL_REDUCTIONS = ("grid_mean", "mask_mean", "sum")


def object_loss(pred_points: Array, pred_conf: Array, target_points: Array,
                cell_mask: Array | None, example_mask: Array,
                lambda_p: float = 0.5, lambda_c: float = 0.1, *,
                cell_reduction: str = "grid_mean",
                conf_outside_mask: str = "ignore",
                conf_norm: str = "l2") -> tuple[Array, dict[str, Array]]:
  """L_object = lambda_p L_p2d + lambda_c L_conf (Sec. 4.3, Eq. 6).

  delta_{g,i} = pred_{g,i} - t_i (RoI-normalised), for cells g and control
  points i. Per example, over the cells of `cell_mask` (m_g) and all N points:
    L_p2d = R_g,i [ m_g ||delta_{g,i}||_1 ]          (|du| + |dv|)
    c_{g,i} = exp(-||delta_{g,i}||_2), with stop-gradient (a target)
    L_conf = R_g,i [ m_g (c^_{g,i} - c_{g,i})^2 ]     ('l2', the paper)
           or |c^ - c| ('l1', what the released code's L1Loss computes)
  with the reduction R (`cell_reduction`):
    'grid_mean' (default, released code): sum / (S * S * N), every cell of
       the grid counts in the denominator, masked-out cells add 0;
    'mask_mean': sum / (sum_g m_g * N), the mean over the object's cells
       (0 for an empty mask);
    'sum' (the paper's sum_g sum_i): no normalisation.
  then the weighted mean over examples with `example_mask`.
  `conf_outside_mask`: 'ignore' (default) drops cells outside the mask from
  L_conf as well; 'zero' trains their confidence towards 0 (target 0, weight
  1: the released code, whose confidence target is masked but whose
  prediction is not), which makes the test-time top-k selection of confident
  votes prefer the object's cells. With 'zero' the L_conf reduction runs
  over all cells ('mask_mean' then divides by S * S * N).
  The released code's weights are 500 (L_p2d) and 100 (L_conf) with
  'grid_mean' and conf_norm='l1'; the paper states lambda_p = 0.5,
  lambda_c = 0.1 (defaults here).

  Args:
    pred_points: [B, S, S, N, 2] per-cell votes (`ObjectDecoder` 'points').
    pred_conf: [B, S, S, N] confidences in (0, 1).
    target_points: [B, N, 2] RoI-normalised control points.
    cell_mask: [B, S, S] bool / 0-1 (the object's cells in the RoI, e.g. its
      segmentation); None = all cells.
    example_mask: [B] per-example weight / mask.

  Returns:
    (total, dict(p2d=L_p2d, conf=L_conf)) scalars (terms unweighted).
  """
  if cell_reduction not in CELL_REDUCTIONS:
    raise ValueError(f"object_loss: cell_reduction must be one of "
                     f"{CELL_REDUCTIONS}, got {cell_reduction!r}")
  if conf_outside_mask not in ("ignore", "zero"):
    raise ValueError(f"object_loss: conf_outside_mask must be 'ignore' or "
                     f"'zero', got {conf_outside_mask!r}")
  if conf_norm not in ("l2", "l1"):
    raise ValueError(f"object_loss: conf_norm must be 'l2' or 'l1', got "
                     f"{conf_norm!r}")
  pred_points = jnp.asarray(pred_points, jnp.float32)
  pred_conf = jnp.asarray(pred_conf, jnp.float32)
  target_points = jnp.asarray(target_points, jnp.float32)
  b, s, _, n, _ = pred_points.shape
  if cell_mask is None:
    cell_mask = jnp.ones((b, s, s), jnp.float32)
  m = jnp.asarray(cell_mask, jnp.float32)[..., None]  # [B, S, S, 1]

  delta = pred_points - target_points[:, None, None, :, :]
  l1 = jnp.sum(jnp.abs(delta), axis=-1)  # [B, S, S, N]
  d = jax.lax.stop_gradient(delta)
  dist = jnp.sqrt(jnp.sum(jnp.square(d), axis=-1))
  conf_target = jnp.exp(-dist)
  if conf_outside_mask == "zero":
    conf_target = conf_target * m
    conf_m = jnp.ones_like(m)
  else:
    conf_m = m
  err = pred_conf - conf_target
  conf_err = jnp.square(err) if conf_norm == "l2" else jnp.abs(err)

  def reduce(values, mask):
    total = jnp.sum(jnp.where(mask > 0, values * mask, 0.0), axis=(1, 2, 3))
    if cell_reduction == "sum":
      return total
    if cell_reduction == "grid_mean":
      return total / (s * s * n)
    count = jnp.sum(mask, axis=(1, 2, 3)) * n
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)

  p2d = weighted_mean(reduce(l1, m), example_mask)
  conf = weighted_mean(reduce(conf_err, conf_m), example_mask)
  return lambda_p * p2d + lambda_c * conf, dict(p2d=p2d, conf=conf)
