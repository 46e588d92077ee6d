"""The Semi-Hand-Object network (Liu et al., CVPR 2021, Sec. 4 and Appendix A / Table 6), assembled.

  images [B, H, W, 3] in [0, 1] (ImageNet-normalised inside), H, W multiples of 32
    -> ResNet FPN (`fpn.FPN`) -> P2 [B, H/4, W/4, C]
    -> RoIAlign (`geometry.roi_align`, S x S, aligned, sampling ratio 2) of the hand box, the object box and
       their intersection: F^h, F^o, F^inter [B, S, S, C]
    -> contextual reasoning (`contextual_reasoning.ContextualReasoning`), by `cr`:
         'none'  no CR (Table 2 "w/o CR");
         'o+'    object features as the query, intersection as key/value; F^o+ feeds the object decoder
                 (the paper's model, Sec. 4.1; its text and Fig. 3 take the object as query where Eq. 1
                 writes F^h: we follow the text);
         'h+'    hand features as the query, F^h+ feeds the hand decoder;
         'h+o+'  two separate CR modules, one per decoder.
    -> hand decoder (`hand_decoder.HandDecoder`): heatmaps [B, S, S, 21], joints_uv [B, 21, 2] (RoI-normalised,
       u = (col + 0.5) / S), MANO theta [B, 48] (axis-angle) and beta [B, 10]
    -> object decoder (`object_decoder.ObjectDecoder`): per-cell control-point predictions points
       [B, S, S, 21, 2] (RoI-normalised) and confidences [B, S, S, 21].

Boxes [B, 4] = [x0, y0, x1, y1] are input-image pixels (pixel centres at integers). RoI-normalised coordinates
(u, v) of a box map to pixels x0 + u (x1 - x0), y0 + v (y1 - y0) (`geometry.pnp.box_to_pixels`); RoIAlign's
bin centres sit exactly there. No intersection (the boxes do not overlap): the intersection features are
zero and the CR module's attention output is set to 0 for that example (`inter_valid` False), so the query
features pass through the CR block's feed-forward part only. A hand or object box that is empty, non-finite
or entirely outside the image gives zero RoI features and `roi_valid` False (finite outputs, never NaN).

MANO is applied outside the module (`hand_decoder.mano_outputs`): the network is the learnable part.

Parameters: params/{fpn{encoder, lateral*, output*}, cr_object | cr_hand, hand{joints, mesh}, object};
batch_stats likewise. ImageNet weights go into params/fpn/encoder (`PRETRAINED_PREFIX`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from handobj_jax.geometry import roi_align as roi_lib
from handobj_jax.models import contextual_reasoning as cr_lib
from handobj_jax.models import fpn as fpn_lib
from handobj_jax.models import hand_decoder as hand_lib
from handobj_jax.models import object_decoder as object_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CR_VARIANTS = ("none", "o+", "h+", "h+o+")
PRETRAINED_PREFIX = ("fpn", "encoder")
P2_STRIDE = 4


class HandObjectNet(nn.Module):
  """See the module docstring. Widths default to the paper's (C = 256, S = 32, ResNet-50)."""
  trunk: str = "resnet50"
  tiny_stem_width: int = 8
  tiny_stage_planes: Sequence[int] = (4, 8, 16, 32)
  grouped_conv: str = "auto"
  channels: int = 256
  fpn_upsample: str = "nearest"
  roi_size: int = 32
  sampling_ratio: int = 2
  cr: str = "o+"
  cr_heads: int = 1
  cr_mlp_ratio: float = 4.0
  hourglass_depth: int = 4
  mesh_stage_channels: Sequence[int] = (256, 256, 256, 512)
  mesh_blocks_per_stage: int = 1
  mesh_hidden: Sequence[int] = (1024, 512)
  pose_repr: str = "axis_angle"
  object_channels: int = 256
  object_shared_layers: int = 4
  offset_scale: float = 0.1

  @nn.compact
  def __call__(self, images: jax.Array, hand_box: jax.Array, obj_box: jax.Array,
               train: bool) -> dict[str, jax.Array]:
    """images [B, H, W, 3] float in [0, 1]; hand_box, obj_box [B, 4] pixels -> outputs (module docstring).

    Returns a flat dict: the hand decoder's keys (heatmaps, joints_uv, theta, beta, rotmats, ...), the object
    decoder's under 'obj_' (obj_points, obj_confidence, obj_offsets), 'attention_object' / 'attention_hand'
    [B, heads, S*S, S*S] for the CR modules present, 'boxes' [B, 3, 4] (hand, object, intersection),
    'roi_valid' [B, 3] and 'inter_valid' [B].
    """
    if self.cr not in CR_VARIANTS:
      raise ValueError(f"HandObjectNet.cr={self.cr!r}; expected one of {', '.join(CR_VARIANTS)}")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    if 2 ** self.hourglass_depth > self.roi_size:
      raise ValueError(f"hourglass_depth={self.hourglass_depth} needs roi_size >= {2 ** self.hourglass_depth}")
    x = (images.astype(jnp.float32) - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(
        IMAGENET_STD, jnp.float32)
    p2 = fpn_lib.FPN(arch=self.trunk, out_channels=self.channels, upsample=self.fpn_upsample,
                     tiny_stem_width=self.tiny_stem_width, tiny_stage_planes=tuple(self.tiny_stage_planes),
                     grouped_conv=self.grouped_conv, name="fpn")(x, train)[0]
    hand_box = jnp.asarray(hand_box, jnp.float32)
    obj_box = jnp.asarray(obj_box, jnp.float32)
    inter_box, inter_ok = roi_lib.box_intersection(hand_box, obj_box)
    boxes = jnp.stack([hand_box, obj_box, inter_box], axis=1)               # [B, 3, 4]
    rois = roi_lib.roi_align(p2, boxes, output_size=(self.roi_size, self.roi_size),
                             spatial_scale=1.0 / P2_STRIDE, sampling_ratio=self.sampling_ratio)
    inter_valid = inter_ok & rois.valid[:, 2]
    f_hand, f_obj = rois.features[:, 0], rois.features[:, 1]
    f_inter = rois.features[:, 2] * inter_valid[:, None, None, None].astype(rois.features.dtype)
    out: dict[str, jax.Array] = {}
    if self.cr in ("o+", "h+o+"):
      f_obj, out["attention_object"] = cr_lib.ContextualReasoning(
          self.cr_heads, self.cr_mlp_ratio, name="cr_object")(f_obj, f_inter, inter_valid)
    if self.cr in ("h+", "h+o+"):
      f_hand, out["attention_hand"] = cr_lib.ContextualReasoning(
          self.cr_heads, self.cr_mlp_ratio, name="cr_hand")(f_hand, f_inter, inter_valid)
    hand = hand_lib.HandDecoder(hourglass_depth=self.hourglass_depth,
                                stage_channels=tuple(self.mesh_stage_channels),
                                blocks_per_stage=self.mesh_blocks_per_stage,
                                hidden=tuple(self.mesh_hidden), pose_repr=self.pose_repr,
                                name="hand")(f_hand, train)
    obj = object_lib.ObjectDecoder(channels=self.object_channels, num_shared=self.object_shared_layers,
                                   offset_scale=self.offset_scale, name="object")(f_obj, train)
    out.update({k: v for k, v in hand.items() if k not in ("features", "embedding", "params", "logits")})
    out.update({f"obj_{k}": v for k, v in obj.items() if k != "confidence_logits"})
    out.update(boxes=boxes, roi_valid=rois.valid, inter_valid=inter_valid)
    return out
