"""The Semi-Hand-Object pose task for the shared trainer (Sec. 4, 6.1): crops, augmentation, losses, metrics.

Batch (global, sharded on B), one labelled frame per example, as `input_pipeline.pose_data` reads it:
  image [B, H, W, 3] uint8; K [B, 3, 3]; joints3d [B, 21, 3], verts3d [B, 778, 3] metres, OpenCV camera
  frame; joints2d [B, 21, 2] pixels; mano_pose [B, 48] axis-angle (flat-hand-mean convention), mano_betas
  [B, 10]; obj_rot [B, 3, 3], obj_trans [B, 3]; obj_ctrl3d / obj_ctrl2d [B, 21, 3 / 2]; hand_box, obj_box
  [B, 4] pixels; obj_mask [B, H, W] bool; obj_type [B] int; optional `_mask` [B] (evaluation padding),
  `object_weight` [B] (the B of Eq. 8: 0 on pseudo-labelled examples, which have no object labels) and
  `has_hand_gt` [B] bool (False: no hand mesh, e.g. HO-3D's evaluation split; the given `hand_box` scaled by
  `data.hand_box_scale` is the hand RoI then, as in the released code's test protocol, and `joints3d[:, 0]`
  holds the given root joint).

Crop (in the jitted step, `prepare`): the square around the union of the hand and object boxes, scaled by
`config.data.crop_scale`, resized to `config.model.image_size`. Training augments it (Sec. 6.1): scale
+-`augment.scale`, in-plane rotation +-`augment.rotation_deg`, translation +-`augment.translation` of the
crop side, colour jitter +-`augment.color` (brightness, contrast, saturation), drawn from the step's key so a
resumed run augments the same way. The image, the 2D labels, the camera and the 3D labels move together
(`geometry.crop`: an in-plane rotation is a roll of the camera about its optical axis). The network's boxes
are the tight box of the projected hand vertices scaled by `data.hand_box_scale` and the box of the
projected object control points (HO-3D protocol: oracle boxes at test time too).

Targets and losses (`losses.pose_losses`):
  L = L_hand + B * L_object                                              (Eq. 5, 6, 8)
  L_hand = heatmap_weight * L_H + L_M                                     (Eq. 5, lambda_H = 0.1)
    L_H: Gaussian heatmaps (sigma `loss.heatmap_sigma` cells) at the RoI-normalised 2D joints
         (`loss.hand_2d='heatmap'`, the paper), or the MSE of the soft-argmax joints ('joints2d', the
         released code, weight `loss.joints2d_weight`);
    L_M: MSE on theta (or rotation matrices, `loss.pose_space`), beta, root-relative 3D joints and
         vertices, with the released code's weights (`loss.mano_*_weight`; the paper says only "L2").
  L_object = object_weight * (lambda_p L_p2d + lambda_c L_conf)            (Eq. 6, 0.5 and 0.1)
    L_p2d, L_conf are means over the grid (`loss.cell_reduction`); cells outside the object's silhouette in
    its RoI add no location loss and their confidence is trained towards 0 (`loss.conf_outside_mask`,
    as the released code does, so that the most confident votes lie on the object). `loss.object_weight`
    scales the means to the paper's sum-over-grid balance against L_hand (1000 here).

Metrics (every step): the loss terms; joint_err_mm (root-relative 3D joints, mean over joints);
ctrl_err_px (crop pixels, each control point's most confident cell); evaluation adds pa_joint_err_mm
(Procrustes-aligned, `geometry.procrustes`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax import errors
from handobj_jax import tasks
from handobj_jax.geometry import crop as crop_lib
from handobj_jax.geometry import pnp
from handobj_jax.geometry import procrustes
from handobj_jax.geometry import rotation

from handobj_jax.losses import pose_losses
from handobj_jax.models import hand_decoder
from handobj_jax.models import hand_object
from handobj_jax.models import mano as mano_lib
from handobj_jax.models import precision
from handobj_jax.models import pretrained as pretrained_lib

Batch = dict[str, jax.Array]
_HIGHEST = jax.lax.Precision.HIGHEST


def make_model(model_config) -> hand_object.HandObjectNet:
  m = model_config
  return hand_object.HandObjectNet(
      trunk=m.trunk, tiny_stem_width=m.tiny_stem_width, tiny_stage_planes=tuple(m.tiny_stage_planes),
      grouped_conv=m.get("grouped_conv", "auto"),  # Older workdirs lack it: "auto".
      channels=m.channels, roi_size=m.roi_size, sampling_ratio=m.sampling_ratio, cr=m.cr,
      cr_heads=m.cr_heads, cr_mlp_ratio=m.cr_mlp_ratio, hourglass_depth=m.hourglass_depth,
      mesh_stage_channels=tuple(m.mesh_stage_channels), mesh_blocks_per_stage=m.mesh_blocks_per_stage,
      mesh_hidden=tuple(m.mesh_hidden), pose_repr=m.pose_repr, object_channels=m.object_channels,
      object_shared_layers=m.object_shared_layers, offset_scale=m.offset_scale)


def load_mano_model(mano_config) -> mano_lib.ManoModel:
  """The MANO model of `config.mano` ('' = the licence-free synthetic model); a bad file is an InputError."""
  path = mano_config.model_path or None
  try:
    return mano_lib.load_mano(path, side=mano_config.side)
  except errors.InputError:
    raise
  except ValueError as e:
    raise errors.InputError(f"config.mano.model_path={mano_config.model_path!r}: {e}") from None


def project(k: jax.Array, points: jax.Array) -> jax.Array:
  """Pinhole projection [..., 3, 3] x [..., P, 3] -> [..., P, 2] (depth clamped to 1e-6)."""
  uvw = jnp.einsum("...ij,...pj->...pi", k, points, precision=_HIGHEST)
  z = jnp.maximum(uvw[..., 2:], 1e-6)
  return uvw[..., :2] / z


def example_mask(batch: Batch) -> jax.Array:
  if "_mask" in batch:
    return batch["_mask"].astype(bool)
  return jnp.ones(batch["image"].shape[:1], bool)


def _color_jitter(images: jax.Array, rng: jax.Array, amount: float) -> jax.Array:
  """Brightness, contrast and saturation factors in [1 - amount, 1 + amount], per example; [B,H,W,3] in [0,1]."""
  b = images.shape[0]
  f = jax.random.uniform(rng, (3, b), minval=1.0 - amount, maxval=1.0 + amount)
  x = images * f[0][:, None, None, None]
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * f[1][:, None, None, None] + mean
  gray = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - gray) * f[2][:, None, None, None] + gray
  return jnp.clip(x, 0.0, 1.0)


def prepare(batch: Batch, data_config, augment_config, image_size: int, roi_size: int,
            rng: jax.Array | None) -> dict[str, jax.Array]:
  """Crops (and with `rng`, augments) a batch; returns the network inputs and every target (module doc).

  Output keys: image [B, S_in, S_in, 3] float in [0, 1]; hand_box, obj_box [B, 4] crop pixels; affine
  [B, 2, 3] (image -> crop); K [B, 3, 3] of the crop camera; r3 [B, 3, 3] (camera roll); joints2d, ctrl2d
  [B, 21, 2] crop pixels; joints_uv [B, 21, 2] (hand RoI), ctrl_uv [B, 21, 2] (object RoI); joints_rel
  [B, 21, 3], verts_rel [B, 778, 3] root-relative, root [B, 3], in the crop camera frame; theta [B, 48];
  beta [B, 10]; obj_rot [B, 3, 3], obj_trans [B, 3]; cell_mask [B, S, S] (object silhouette at the object
  RoI's cell centres).
  """
  b = batch["image"].shape[0]
  hand_box0 = batch["hand_box"].astype(jnp.float32)
  obj_box0 = batch["obj_box"].astype(jnp.float32)
  centre, side = crop_lib.union_square(hand_box0, obj_box0, float(data_config.crop_scale))
  angle = jnp.zeros((b,), jnp.float32)
  if rng is not None:
    k_scale, k_rot, k_shift, k_color = jax.random.split(rng, 4)
    a = augment_config
    side = side / jax.random.uniform(k_scale, (b,), minval=1.0 - a.scale, maxval=1.0 + a.scale)
    angle = jax.random.uniform(k_rot, (b,), minval=-1.0, maxval=1.0) * math.radians(a.rotation_deg)
    centre = centre + jax.random.uniform(k_shift, (b, 2), minval=-1.0, maxval=1.0) * a.translation * side[:, None]
  affine = crop_lib.crop_affine(centre, side, image_size, angle)
  image = crop_lib.warp_image(batch["image"].astype(jnp.float32) / 255.0, affine, image_size)
  if rng is not None and augment_config.color > 0:
    image = _color_jitter(image, k_color, float(augment_config.color))

  k_img = batch["K"].astype(jnp.float32)
  r3 = crop_lib.rotation_about_optical_axis(angle)
  joints3d = batch["joints3d"].astype(jnp.float32)
  verts3d = batch["verts3d"].astype(jnp.float32)
  joints2d = crop_lib.apply_affine(affine, batch["joints2d"].astype(jnp.float32))
  ctrl2d = crop_lib.apply_affine(affine, batch["obj_ctrl2d"].astype(jnp.float32))
  verts2d = crop_lib.apply_affine(affine, project(k_img, verts3d))
  hand_box = crop_lib.scale_boxes(crop_lib.boxes_of(verts2d), float(data_config.hand_box_scale))
  if "has_hand_gt" in batch:  # Frames without a hand mesh (HO-3D's evaluation split): the given box.
    corners = jnp.stack([hand_box0[:, [0, 1]], hand_box0[:, [2, 1]], hand_box0[:, [0, 3]], hand_box0[:, [2, 3]]], 1)
    given = crop_lib.scale_boxes(crop_lib.boxes_of(crop_lib.apply_affine(affine, corners)),
                                 float(data_config.hand_box_scale))
    hand_box = jnp.where(batch["has_hand_gt"].astype(bool)[:, None], hand_box, given)
  obj_box = crop_lib.boxes_of(ctrl2d)

  root = joints3d[:, :1]
  theta = batch["mano_pose"].astype(jnp.float32)
  global_rot = rotation.axis_angle_to_matrix(theta[:, :3])
  theta = jnp.concatenate([rotation.matrix_to_axis_angle(jnp.einsum(
      "bij,bjk->bik", r3, global_rot, precision=_HIGHEST)), theta[:, 3:]], axis=1)

  # Object silhouette at the object RoI's cell centres (nearest pixel of the original image).
  cells = hand_decoder.cell_centers(roi_size)                                  # [S, S, 2] (u, v)
  cell_px = pnp.box_to_pixels(jnp.broadcast_to(cells.reshape(1, -1, 2), (b, roi_size * roi_size, 2)), obj_box)
  src = crop_lib.apply_affine(crop_lib.invert_affine(affine), cell_px)
  mask = batch["obj_mask"]
  h, w = mask.shape[1:3]
  xi, yi = jnp.round(src[..., 0]), jnp.round(src[..., 1])
  inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
  flat_idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
  cell_mask = jnp.take_along_axis(mask.reshape(b, -1), flat_idx, axis=1) & inside

  return dict(
      image=image, hand_box=hand_box, obj_box=obj_box, affine=affine, r3=r3,
      K=crop_lib.crop_intrinsics(k_img, affine), joints2d=joints2d, ctrl2d=ctrl2d,
      joints_uv=pnp.pixels_to_box(joints2d, hand_box), ctrl_uv=pnp.pixels_to_box(ctrl2d, obj_box),
      joints_rel=crop_lib.rotate_points(r3, joints3d - root),
      verts_rel=crop_lib.rotate_points(r3, verts3d - root),
      root=crop_lib.rotate_points(r3, root)[:, 0], theta=theta,
      beta=batch["mano_betas"].astype(jnp.float32),
      obj_rot=jnp.einsum("bij,bjk->bik", r3, batch["obj_rot"].astype(jnp.float32), precision=_HIGHEST),
      obj_trans=crop_lib.rotate_points(r3, batch["obj_trans"].astype(jnp.float32)[:, None])[:, 0],
      cell_mask=cell_mask.reshape(b, roi_size, roi_size).astype(jnp.float32))


def best_votes(points: jax.Array, confidence: jax.Array) -> jax.Array:
  """Each control point's most confident cell's prediction: [B, S, S, N, 2], [B, S, S, N] -> [B, N, 2]."""
  b, s, _, n, _ = points.shape
  flat_conf = confidence.reshape(b, s * s, n)
  best = jnp.argmax(flat_conf, axis=1)                                         # [B, N]
  flat_pts = points.reshape(b, s * s, n, 2)
  return jnp.take_along_axis(flat_pts, best[:, None, :, None], axis=1)[:, 0]


class HandObjectPoseTask:
  """Semi-Hand-Object's model, losses and metrics for `trainer.fit` (see the module docstring)."""

  epoch_metrics = ("joint_err_mm", "pa_joint_err_mm", "ctrl_err_px")

  def __init__(self, config):
    self.config = config
    self.net = make_model(config.model)
    self.compute_dtype = precision.dtype_of(config)  # bfloat16: mixed precision (models/precision.py).
    self.mano_model = load_mano_model(config.mano)
    self.image_size = int(config.model.image_size)
    self.roi_size = int(config.model.roi_size)
    self._predict = jax.jit(self.predict)

  # ---- Trainer protocol ---------------------------------------------------------------------------

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    s = self.image_size
    box = jnp.asarray([[0.2 * s, 0.2 * s, 0.7 * s, 0.7 * s]], jnp.float32)
    variables = self.net.init(rng, jnp.zeros((1, s, s, 3), jnp.float32), box, box, False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  def load_pretrained(self, variables: dict[str, Any]) -> dict[str, Any]:
    path = self.config.model.pretrained
    if not path:
      return variables
    m = self.config.model
    kwargs = ({"stem_width": m.tiny_stem_width, "stage_planes": tuple(m.tiny_stage_planes)}
              if m.trunk == "tiny" else {})
    from handobj_jax.models import encoders  # pylint: disable=g-import-not-at-top
    encoder_vars = pretrained_lib.load_pretrained(path, encoders.create_encoder(m.trunk, **kwargs))
    return pretrained_lib.merge_into(variables, encoder_vars, prefix=hand_object.PRETRAINED_PREFIX)

  def loss_fn(self, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    aug = self.config.augment
    use_aug = train and aug.enabled
    prep = prepare(batch, self.config.data, aug, self.image_size, self.roi_size, rng if use_aug else None)
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      out, updates = precision.apply(self.net, variables, prep["image"], prep["hand_box"], prep["obj_box"], True,
                                     mutable=["batch_stats"], dtype=self.compute_dtype)
      new_batch_stats = updates["batch_stats"]
    else:
      out = precision.apply(self.net, variables, prep["image"], prep["hand_box"], prep["obj_box"], False,
                          dtype=self.compute_dtype)
      new_batch_stats = batch_stats
    loss, metrics = self.losses(out, prep, batch, evaluation=not train)
    return loss, (metrics, new_batch_stats)

  # ---- Pieces -------------------------------------------------------------------------------------

  def hand_mesh(self, theta: jax.Array, beta: jax.Array) -> dict[str, jax.Array]:
    """Root-relative MANO joints [B, 21, 3] (HO-3D order) and vertices [B, 778, 3] of predicted parameters."""
    return hand_decoder.mano_outputs(self.mano_model, theta, beta, fingertips=self.config.mano.fingertips,
                                     root_relative=True, flat_hand_mean=self.config.mano.flat_hand_mean)

  def losses(self, out: dict[str, jax.Array], prep: dict[str, jax.Array], batch: Batch,
             evaluation: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    lc = self.config.loss
    valid = example_mask(batch).astype(jnp.float32)
    obj_w = valid * (batch["object_weight"].astype(jnp.float32) if "object_weight" in batch else 1.0)
    metrics: dict[str, jax.Array] = {}

    if lc.hand_2d == "heatmap":
      target = pose_losses.heatmap_targets(prep["joints_uv"], None, self.roi_size, lc.heatmap_sigma)
      l2d = pose_losses.heatmap_loss(out["heatmaps"], target, valid)
      hand_2d = lc.heatmap_weight * l2d
      metrics["heatmap_loss"] = l2d
    else:
      l2d = pose_losses.joints2d_loss(out["joints_uv"], prep["joints_uv"], valid)
      hand_2d = lc.joints2d_weight * l2d
      metrics["joints2d_loss"] = l2d
    mano = self.hand_mesh(out["theta"], out["beta"])
    pred = {"theta": out["theta"], "rotmats": out["rotmats"], "beta": out["beta"], "joints": mano["joints"],
            "verts": mano["verts"]}
    gt = {"theta": prep["theta"], "beta": prep["beta"], "joints": prep["joints_rel"],
          "verts": prep["verts_rel"]}
    l_mano, mano_terms = pose_losses.mano_loss(
        pred, gt, valid, pose_space=lc.pose_space, joints_weight=lc.mano_joints_weight,
        verts_weight=lc.mano_verts_weight, pose_weight=lc.mano_pose_weight, shape_weight=lc.mano_shape_weight)
    metrics.update({f"mano_{k}": v for k, v in mano_terms.items()})
    l_obj, obj_terms = pose_losses.object_loss(
        out["obj_points"], out["obj_confidence"], prep["ctrl_uv"], prep["cell_mask"], obj_w,
        lc.lambda_p, lc.lambda_c, cell_reduction=lc.cell_reduction, conf_outside_mask=lc.conf_outside_mask,
        conf_norm=lc.conf_norm)
    metrics.update({f"object_{k}": v for k, v in obj_terms.items()})
    hand_loss = hand_2d + l_mano
    object_loss = lc.object_weight * l_obj
    loss = hand_loss + object_loss
    metrics.update(hand_loss=hand_loss, object_loss=object_loss, loss=loss)

    # Errors in natural units.
    denom = jnp.maximum(jnp.sum(valid), 1.0)
    joint_err = jnp.mean(jnp.linalg.norm(mano["joints"] - prep["joints_rel"], axis=-1), axis=-1)
    metrics["joint_err_mm"] = 1000.0 * jnp.sum(joint_err * valid) / denom
    votes_uv = best_votes(out["obj_points"], out["obj_confidence"])
    votes_px = pnp.box_to_pixels(votes_uv, prep["obj_box"])
    ctrl_err = jnp.mean(jnp.linalg.norm(votes_px - prep["ctrl2d"], axis=-1), axis=-1)
    obj_denom = jnp.maximum(jnp.sum(obj_w), 1.0)
    metrics["ctrl_err_px"] = jnp.sum(ctrl_err * obj_w) / obj_denom
    if evaluation:
      aligned = procrustes.procrustes_align(mano["joints"], prep["joints_rel"])
      pa = jnp.mean(jnp.linalg.norm(aligned - prep["joints_rel"], axis=-1), axis=-1)
      metrics["pa_joint_err_mm"] = 1000.0 * jnp.sum(pa * valid) / denom
    return loss, metrics

  def predict(self, variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
    """Evaluation forward pass (no augmentation) with everything the pose evaluation needs, per example:
    the crop (affine, K, boxes), network outputs, MANO joints / vertices in the camera frame (root-relative
    + the ground-truth root: the test protocol), and the ground truth in the same frame."""
    prep = prepare(batch, self.config.data, self.config.augment, self.image_size, self.roi_size, None)
    out = precision.apply(self.net, variables, prep["image"], prep["hand_box"], prep["obj_box"], False,
                          dtype=self.compute_dtype)
    mano = self.hand_mesh(out["theta"], out["beta"])
    root = prep["root"][:, None]
    result = {
        "joints3d": mano["joints"] + root, "verts3d": mano["verts"] + root,
        "gt_joints3d": prep["joints_rel"] + root, "gt_verts3d": prep["verts_rel"] + root,
        "obj_points": pnp.box_to_pixels(out["obj_points"], prep["obj_box"][:, None, None]),
        "obj_confidence": out["obj_confidence"], "joints_uv": out["joints_uv"],
        "heatmaps": out["heatmaps"], "theta": out["theta"], "beta": out["beta"],
        "affine": prep["affine"], "K_crop": prep["K"], "hand_box": prep["hand_box"],
        "obj_box": prep["obj_box"], "inter_box": out["boxes"][:, 2], "inter_valid": out["inter_valid"],
        "roi_valid": out["roi_valid"], "image": prep["image"],
        "joints2d_pred": pnp.box_to_pixels(out["joints_uv"], prep["hand_box"]), "gt_ctrl2d": prep["ctrl2d"],
    }
    for name in ("attention_object", "attention_hand"):
      if name in out:
        result[name] = out[name]
    return result

  def visualize(self, variables: dict[str, Any], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fig. 6 style panels of the first validation examples (see `evaluation.pose_figures`)."""
    from handobj_jax.evaluation import pose_figures  # pylint: disable=g-import-not-at-top
    sub = tasks.first_examples(batch, self.config.viz.num_examples)
    if sub is None:
      return {}
    pred = jax.device_get(self._predict(variables, sub))
    faces = np.asarray(self.mano_model.faces)
    return {f"pose_{i}": pose_figures.pose_panel({k: v[i] for k, v in pred.items()}, faces)
            for i in range(len(sub["image"]))}
