"""The COHESIV task for the shared trainer (Shan et al., NeurIPS 2021, Sec. 3.2-3.3, 4.1).

Batch (global, sharded on B; pixels (x, y) with centres at integers; N = hand slots, padded):
  image            [B, H, W, 3] float32 in [0, 1] (uint8 is accepted and divided by 255)
  responsibility   [B, N, H, W] float32 in [0, 1] (uint8 = x255 is accepted), pseudo-label R_k per hand
  query_point      [B, N, 2] float32 (x, y) pixels: the point whose Q vector queries K
  query_valid      [B, N] bool
  hand_box         [B, N, 4] float32 [x0, y0, x1, y1] pixels (hand-centre target)
  person_mask, object_mask, background_mask   [B, H, W] bool pseudo-labels
  _mask            [B] bool, optional: False on evaluation padding (excluded from every term)

Loss (the value the trainer minimises, evaluates, schedules on and early-stops on):
  attention_weight * responsibility_loss + embedding_weight * embedding_loss     (paper: 10 : 1)
with `config.loss.attention_weight = 0` / `embedding_weight = 0` giving the Table 4 ablations
"Embeddings-Only" / "Attention-Only".

Clamp gradient (`config.loss.attention_gradient`). The paper clamps q^T K to [0, 1] before the Smooth-L1
('clamp'). A hard clamp has zero gradient outside [0, 1]: when early training pushes q^T K below 0 at
every pixel (most targets are 0), the attention is dead for good; our first 2-core CPU run did exactly
that (constant responsibility loss, all-zero attention maps). 'straight_through' (default) keeps the
clamped VALUE (a pixel with target 0 and q^T K < 0 still costs nothing, so orthogonal/negative keys remain
free, as the paper intends) but passes the gradient through the clamp, so a pixel whose target is
positive pulls q^T K up from below 0. The value of the loss is identical in both modes.

Hand-centre head (`config.model.center_head`, paper Sec. 3.2 "Hand Detector", trained "on a frozen backbone
up to Z"). Choice: masked gradients in one run, not a second phase. The head reads `stop_gradient(Z)`
(`CohesivNet.freeze_backbone_for_center`), so its MSE (Gaussian of `config.loss.center_sigma` px at each
valid hand-box centre, `losses.center_heatmap_target`) can only move `params['center_head']`; and the
centre term enters the loss as `w * (c - stop_gradient(c))`, which is 0 in value and `w * grad(c)` in
gradient, so the reported loss, the plateau schedule and early stopping are exactly the paper's 10 : 1
loss. The centre MSE is reported as the metric `center_loss`. Why not a second phase: one run, one
checkpoint, no second schedule; the head is fitted to the backbone as it converges, and with the frozen
input the backbone is bit-for-bit what it would be without the head (checked in the tests).

Augmentation: with `config.augment.flip_prob` > 0, training batches are mirrored per example inside the
jitted step (`flip_batch`), drawn from the step's key (`fold_in(state.rng, step)`), so a resumed run flips
exactly the same examples. (A stateful tf.random op in the parallel tf.data map would not replay after a
restart with `start_step`.)

Initialisation: scratch (Flax initialisers), then `config.model.pretrained` ('' = none): a timm/PyTorch
ImageNet state dict (.pth/.safetensors/.npz) converted by `models.pretrained` into `params/encoder`,
`batch_stats/encoder` (the trainer applies this only when the workdir has no checkpoint).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax import tasks
from handobj_jax import viz
from handobj_jax.losses import cohesiv_losses
from handobj_jax.models import cohesiv
from handobj_jax.models import precision
from handobj_jax.models import pretrained as pretrained_lib

Batch = dict[str, jax.Array]

# Colours of the pseudo-label overlay (RGB): person, object.
PERSON_RGB = (255, 200, 0)
OBJECT_RGB = (40, 90, 255)
QUERY_RGB = (0, 90, 255)


def make_model(model_config) -> cohesiv.CohesivNet:
  """`CohesivNet` from `config.model` (encoder, decoder_channels, embed_dim, attn_dim, center_head,
  tiny_stem_width, tiny_stage_planes, grouped_conv)."""
  return cohesiv.CohesivNet(
      encoder=model_config.encoder,
      decoder_channels=tuple(model_config.decoder_channels),
      embed_dim=model_config.embed_dim,
      attn_dim=model_config.attn_dim,
      with_center_head=model_config.center_head,
      freeze_backbone_for_center=True,
      tiny_stem_width=model_config.tiny_stem_width,
      tiny_stage_planes=tuple(model_config.tiny_stage_planes),
      grouped_conv=model_config.get("grouped_conv", "auto"))  # Older workdirs: "auto".


def as_unit_float(x: jax.Array) -> jax.Array:
  """uint8 (x255) -> float32 / 255; floats -> float32 unchanged."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def example_mask(batch: Batch) -> jax.Array:
  """[B] bool: True for real examples (`_mask` when present)."""
  if "_mask" in batch:
    return batch["_mask"].astype(bool)
  return jnp.ones(batch["image"].shape[:1], bool)


class CohesivTask:
  """COHESIV: U-Net embedding Z, query/key heads, optional hand-centre head. See the module docstring."""

  def __init__(self, config):
    self.config = config
    self.net = make_model(config.model)
    self.compute_dtype = precision.dtype_of(config)  # bfloat16: mixed precision (models/precision.py).
    self.loss_config = config.loss
    self._forward = jax.jit(self._apply_eval)

  # ---- Trainer protocol ---------------------------------------------------------------------------

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    height, width = batch["image"].shape[1:3]
    variables = self.net.init(rng, jnp.zeros((1, height, width, 3), jnp.float32), train=False)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

  def loss_fn(self, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    if train and self.config.augment.flip_prob > 0:
      flips = jax.random.bernoulli(rng, self.config.augment.flip_prob, batch["image"].shape[:1])
      batch = flip_batch(batch, flips)
    variables = {"params": params, "batch_stats": batch_stats}
    images = as_unit_float(batch["image"])
    if train:
      out, updates = precision.apply(self.net, variables, images, train=True, mutable=["batch_stats"],
                                     dtype=self.compute_dtype)
      new_batch_stats = updates["batch_stats"]
    else:
      out = precision.apply(self.net, variables, images, train=False, dtype=self.compute_dtype)
      new_batch_stats = batch_stats
    loss, metrics = self._loss_and_metrics(out, batch)
    return loss, (metrics, new_batch_stats)

  def load_pretrained(self, variables: dict[str, Any]) -> dict[str, Any]:
    path = self.config.model.pretrained
    if not path:
      return variables
    encoder_vars = pretrained_lib.load_pretrained(path, self.net.make_encoder())
    return pretrained_lib.merge_into(variables, encoder_vars, prefix=("encoder",))

  def visualize(self, variables: dict[str, Any], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One panel per shown example: a row per valid query hand of
    [image + query dot | attention (viridis) | pseudo-label R (viridis) | PCA(Z) RGB | pseudo-label masks
    (| centre heatmap)]."""
    sub = tasks.first_examples(batch, self.config.viz.num_examples)
    if sub is None:
      return {}
    images = np.asarray(as_unit_float(jnp.asarray(sub["image"])))
    out = jax.device_get(self._forward(variables, images, jnp.asarray(sub["query_point"], jnp.float32)))
    panels = {}
    for i in range(len(sub["image"])):
      panels[f"cohesiv_{i}"] = self._panel(images[i], {k: v[i] for k, v in sub.items()},
                                           {k: v[i] for k, v in out.items()})
    return panels

  # ---- Pure pieces (also used by jobs) ------------------------------------------------------------

  def _loss_and_metrics(self, out: dict[str, jax.Array], batch: Batch) -> tuple[jax.Array, dict]:
    lc = self.loss_config
    valid = example_mask(batch)                                      # [B]
    query_valid = batch["query_valid"].astype(bool) & valid[:, None]  # [B, N]
    attention = cohesiv.attention_map(out["q"], out["k"], batch["query_point"].astype(jnp.float32))
    raw = attention.raw
    if lc.attention_gradient == "straight_through":
      # Value clip(raw, 0, 1) (so the loss clamps it again as the identity), gradient as if unclamped.
      raw = jnp.clip(raw, 0.0, 1.0) + (raw - jax.lax.stop_gradient(raw))
    elif lc.attention_gradient != "clamp":
      raise ValueError(f"config.loss.attention_gradient={lc.attention_gradient!r}; expected 'clamp' or "
                       "'straight_through'")
    keep = valid[:, None, None]
    loss, metrics = cohesiv_losses.cohesiv_total_loss(
        raw, as_unit_float(batch["responsibility"]), query_valid, out["z"],
        batch["person_mask"].astype(bool) & keep, batch["object_mask"].astype(bool) & keep,
        batch["background_mask"].astype(bool) & keep,
        attention_weight=lc.attention_weight, embedding_weight=lc.embedding_weight, beta=lc.beta,
        eps=lc.eps, stop_gradient_means=lc.stop_gradient_means)
    metrics = dict(metrics)
    if self.net.with_center_head:
      center = self.center_mse(out["center"], batch, valid)
      # Zero in value, `center_weight * grad(center)` in gradient (see the module docstring).
      loss = loss + lc.center_weight * (center - jax.lax.stop_gradient(center))
      metrics["center_loss"] = center
    metrics["loss"] = loss
    return loss, metrics

  def center_mse(self, pred: jax.Array, batch: Batch, valid: jax.Array) -> jax.Array:
    """MSE of the centre heatmap [B, H, W] against Gaussians at the valid hand-box centres, over the
    pixels of real examples."""
    boxes = batch["hand_box"].astype(jnp.float32)
    has_box = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    target = cohesiv_losses.center_heatmap_target(
        boxes, batch["query_valid"].astype(bool) & has_box, pred.shape[1], pred.shape[2],
        self.loss_config.center_sigma)
    w = valid.astype(jnp.float32)[:, None, None]
    err = jnp.square(pred.astype(jnp.float32) - target) * w
    return jnp.sum(err) / jnp.maximum(jnp.sum(w) * pred.shape[1] * pred.shape[2], 1.0)

  def _apply_eval(self, variables: dict[str, Any], images: jax.Array,
                  points: jax.Array) -> dict[str, jax.Array]:
    out = precision.apply(self.net, variables, images, train=False, dtype=self.compute_dtype)
    att = cohesiv.attention_map(out["q"], out["k"], points)
    result = {"z": out["z"], "attention": att.attention}
    if "center" in out:
      result["center"] = out["center"]
    return result

  def class_embedding_sums(self, variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
    """Sums of Z over the person / object / background pseudo-label pixels of the real examples:
    {'sums': [3, F], 'counts': [3]} in that order (for the inference statistics of Sec. 3.2)."""
    out = precision.apply(self.net, variables, as_unit_float(batch["image"]), train=False,
                          dtype=self.compute_dtype)
    keep = example_mask(batch)[:, None, None]
    masks = jnp.stack([batch[k].astype(bool) & keep for k in
                       ("person_mask", "object_mask", "background_mask")], axis=1).astype(jnp.float32)
    sums = jnp.einsum("bkhw,bhwf->kf", masks, out["z"], precision=jax.lax.Precision.HIGHEST)
    return {"sums": sums, "counts": jnp.sum(masks, axis=(0, 2, 3))}

  # ---- Drawing ------------------------------------------------------------------------------------

  def _panel(self, image: np.ndarray, ex: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> np.ndarray:
    height, width = image.shape[:2]
    scale = max(1, int(np.ceil(self.config.viz.tile / max(height, width))))
    rgb = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    pca = viz.upscale(viz.pca_rgb(out["z"]), scale)
    masks = viz.overlay_masks(rgb, [ex["person_mask"].astype(bool), ex["object_mask"].astype(bool)],
                              [PERSON_RGB, OBJECT_RGB])
    masks = viz.upscale(masks, scale)
    target = np.asarray(ex["responsibility"], np.float32)
    if ex["responsibility"].dtype == np.uint8:
      target = target / 255.0
    hands = np.flatnonzero(np.asarray(ex["query_valid"], bool))
    rows = []
    for n in (hands if hands.size else [0]):
      query = viz.draw_query_points(viz.upscale(rgb, scale), viz.upscale_points(ex["query_point"][n], scale),
                                    QUERY_RGB, scale // 2 + 2)
      tiles = [viz.label(query, f"query hand {n}"),
               viz.label(viz.upscale(viz.viridis(out["attention"][n]), scale), "attention q^T K"),
               viz.label(viz.upscale(viz.viridis(target[n]), scale), "pseudo-label R"),
               viz.label(pca.copy(), "PCA(Z)"),
               viz.label(masks.copy(), "person / object")]
      if "center" in out:
        tiles.append(viz.label(viz.upscale(viz.viridis(out["center"]), scale), "centre heatmap"))
      rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def flip_batch(batch: Batch, flip: jax.Array) -> Batch:
  """Mirrors the examples with `flip` [B] True horizontally (x -> W - 1 - x), all fields together.

  image [B,H,W,3] and the masks [B,H,W] are reversed along W, responsibility [B,N,H,W] along its last axis;
  query points (x, y) -> (W - 1 - x, y) (pixel centres at integers) where `query_valid` (the explicit
  validity field: a coordinate value is never a marker; other points are left as stored); boxes [x0, y0,
  x1, y1] (x1 one past the last column) -> [W - x1, y0, W - x0, y1], all of them (a flip keeps an empty
  box, x1 <= x0, empty). As `input_pipeline.cohesiv_examples.flip_example`. Other fields pass through.
  """
  out = dict(batch)
  width = batch["image"].shape[2]

  def sel(x, flipped):
    return jnp.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), flipped, x)

  out["image"] = sel(batch["image"], batch["image"][:, :, ::-1])
  for key in ("person_mask", "object_mask", "background_mask"):
    out[key] = sel(batch[key], batch[key][:, :, ::-1])
  out["responsibility"] = sel(batch["responsibility"], batch["responsibility"][..., ::-1])
  qp = batch["query_point"]
  qp_flipped = jnp.where(batch["query_valid"].astype(bool)[..., None],
                         jnp.concatenate([(width - 1.0) - qp[..., :1], qp[..., 1:]], axis=-1), qp)
  out["query_point"] = sel(qp, qp_flipped)
  box = batch["hand_box"]
  box_flipped = jnp.stack([width - box[..., 2], box[..., 1], width - box[..., 0], box[..., 3]], -1)
  out["hand_box"] = sel(box, box_flipped)
  return out
