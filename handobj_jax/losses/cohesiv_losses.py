"""COHESIV training losses (paper Sec. 3.2 "Hand Detector" and Sec. 3.3).

Pure JAX functions, float32, jit/vmap-safe and finite when any mask is empty.

Shape vocabulary: B batch, P query hands per image (padded to the maximum number
of hands, invalid slots masked by `query_valid`), N hand boxes, H, W the
resolution of the embedding / attention maps, F the embedding dimension.

* `responsibility_loss`: Smooth-L1 (beta = 0.5) between the clamped attention
  q^T K and the queried hand's responsibility pseudo-label.
* `embedding_loss`: the contrastive loss of Eq. 3 over person / object /
  background masks.
* `center_heatmap_target`, `center_loss`: the optional hand-centre detector head
  (Gaussian at each hand box centre, MSE).
* `cohesiv_total_loss`: attention : embedding = 10 : 1 (configurable).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from handobj_jax.models import fast_ops

Array = jax.Array


def smooth_l1(x: Array, beta: float = 0.5) -> Array:
  """Elementwise Smooth-L1 (PyTorch `SmoothL1Loss` semantics, reduction='none').

  0.5 x^2 / beta if |x| < beta, else |x| - 0.5 beta.

  Args:
    x: residual, any shape.
    beta: transition point, > 0.

  Returns:
    Same shape as `x`.
  """
  if beta <= 0:
    raise ValueError(f"smooth_l1: beta must be > 0, got {beta}")
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * jnp.square(x) / beta, ax - 0.5 * beta)


def responsibility_loss(attn_raw: Array,
                        target: Array,
                        query_valid: Array,
                        beta: float = 0.5,
                        pixel_valid: Array | None = None) -> Array:
  """Responsibility (attention) loss of COHESIV Sec. 3.3.

  The prediction q^T K is clamped to [0, 1] (so a pixel is "not responsible"
  as soon as its key is orthogonal to the query, and the gradient is zero
  outside that range), then compared with the responsibility of the queried
  hand using a per-pixel Smooth-L1 with `beta`. Several hands per image are
  handled by batching queries along P.

  Args:
    attn_raw: [B, P, H, W] raw q^T K before the clamp.
    target: [B, P, H, W] responsibility of the queried hand, in [0, 1].
    query_valid: [B, P] bool, False for padded query slots.
    beta: Smooth-L1 transition point (paper: 0.5).
    pixel_valid: optional [B, H, W] bool, False for padded pixels.

  Returns:
    Scalar float32: mean over the pixels of all valid queries (0 when there is
    no valid query).
  """
  if attn_raw.ndim != 4 or attn_raw.shape != target.shape:
    raise ValueError("responsibility_loss: attn_raw and target must both be "
                     f"[B, P, H, W]; got {attn_raw.shape} and {target.shape}")
  if query_valid.shape != attn_raw.shape[:2]:
    raise ValueError(f"responsibility_loss: query_valid must be "
                     f"{attn_raw.shape[:2]}, got {query_valid.shape}")
  pred = jnp.clip(attn_raw.astype(jnp.float32), 0.0, 1.0)
  per_pixel = smooth_l1(pred - target.astype(jnp.float32), beta)
  weight = jnp.broadcast_to(
      query_valid.astype(jnp.float32)[:, :, None, None], per_pixel.shape)
  if pixel_valid is not None:
    if pixel_valid.shape != (attn_raw.shape[0],) + attn_raw.shape[2:]:
      raise ValueError("responsibility_loss: pixel_valid must be [B, H, W] = "
                       f"{(attn_raw.shape[0],) + attn_raw.shape[2:]}, got "
                       f"{pixel_valid.shape}")
    weight = weight * pixel_valid.astype(jnp.float32)[:, None]
  return jnp.sum(per_pixel * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _masked_mean_embedding(z: Array, mask: Array) -> tuple[Array, Array]:
  """[B, H, W, F], [B, H, W] -> mean [B, F] (zero if empty), count [B]."""
  m = mask.astype(jnp.float32)
  count = jnp.sum(m, axis=(1, 2))
  total = jnp.einsum("bhwf,bhw->bf", z, m, precision=jax.lax.Precision.HIGHEST)
  return total / jnp.maximum(count, 1.0)[:, None], count


def embedding_loss(z: Array,
                   person_mask: Array,
                   object_mask: Array,
                   background_mask: Array,
                   eps: float = 1e-3,
                   stop_gradient_means: bool = False,
                   return_terms: bool = False) -> Any:
  """Contrastive embedding loss, COHESIV Eq. 3.

  Per image, z_P, z_O, z_B are the mean embeddings over the person, object and
  background masks (a zero vector when the mask is empty). With the raw dot
  products a_k = z_k^T Z_ij (the paper does not normalise Z; neither do we),
  the loss at a pixel of group g in {P, O, B} is

    -log((exp(a_g) + eps) / (exp(a_P) + exp(a_O) + exp(a_B) + eps))
      = LSE(a_P, a_O, a_B, log eps) - LSE(a_g, log eps),

  evaluated in this log-sum-exp form, which is exact (eps keeps its meaning)
  and cannot overflow for large dot products.

  Reduction (our choice; the paper does not say): each group's term is the
  mean over that group's pixels within an image, then averaged over the
  images in which the group is non-empty (an image with an empty mask adds 0
  to that group and is not counted). The total is the SUM of the three group
  terms, so each group has the same weight whatever its area.

  An empty group's mean is the zero vector and still appears in the
  denominator of the other groups' terms as exp(0) = 1, exactly as Eq. 3
  evaluated with z_k = 0 would give.

  Args:
    z: [B, H, W, F] embeddings.
    person_mask, object_mask, background_mask: [B, H, W] bool.
    eps: the epsilon of Eq. 3 (paper: 1e-3), > 0.
    stop_gradient_means: if True, the mean embeddings are treated as
      constants (prototype style); the paper does not say, default False.
    return_terms: also return {'person', 'object', 'background'} terms.

  Returns:
    Scalar float32 loss, or (loss, terms dict) if `return_terms`.
  """
  if z.ndim != 4:
    raise ValueError(f"embedding_loss: z must be [B, H, W, F], got {z.shape}")
  for name, m in (("person_mask", person_mask), ("object_mask", object_mask),
                  ("background_mask", background_mask)):
    if m.shape != z.shape[:3]:
      raise ValueError(f"embedding_loss: {name} must be {z.shape[:3]}, got "
                       f"{m.shape}")
  if eps <= 0:
    raise ValueError(f"embedding_loss: eps must be > 0, got {eps}")
  z = z.astype(jnp.float32)
  masks = (person_mask, object_mask, background_mask)
  means_counts = [_masked_mean_embedding(z, m) for m in masks]
  means = jnp.stack([mc[0] for mc in means_counts], axis=1)  # [B, 3, F]
  counts = jnp.stack([mc[1] for mc in means_counts], axis=1)  # [B, 3]
  if stop_gradient_means:
    means = jax.lax.stop_gradient(means)
  logits = fast_ops.pixel_dot(z, means)  # [B, H, W, 3]
  log_eps = jnp.full(logits.shape[:-1] + (1,), jnp.log(eps), jnp.float32)
  log_den = jax.nn.logsumexp(jnp.concatenate([logits, log_eps], -1), axis=-1)
  # log(exp(a_g) + eps) for each of the three possible numerators.
  log_num = jnp.logaddexp(logits, jnp.log(eps))  # [B, H, W, 3]
  per_pixel = log_den[..., None] - log_num  # [B, H, W, 3], >= 0
  m = jnp.stack([mk.astype(jnp.float32) for mk in masks], axis=-1)
  per_image = jnp.sum(per_pixel * m, axis=(1, 2)) / jnp.maximum(counts, 1.0)
  present = (counts > 0).astype(jnp.float32)  # [B, 3]
  per_group = (jnp.sum(per_image * present, axis=0) /
               jnp.maximum(jnp.sum(present, axis=0), 1.0))  # [3]
  loss = jnp.sum(per_group)
  if return_terms:
    terms = {"person": per_group[0], "object": per_group[1],
             "background": per_group[2]}
    return loss, terms
  return loss


def center_heatmap_target(boxes: Array, valid: Array, height: int, width: int,
                          sigma: float) -> Array:
  """Gaussian hand-centre heatmap (paper Sec. 3.2, "Hand Detector").

  Pixel centres are at integer (x, y); the centre of box [x0, y0, x1, y1] is
  ((x0 + x1) / 2, (y0 + y1) / 2) in the same pixel coordinates. Value at a
  pixel = max over valid hands of exp(-d^2 / (2 sigma^2)); 0 with no hand.

  Args:
    boxes: [B, N, 4] float boxes [x0, y0, x1, y1] in heatmap pixels.
    valid: [B, N] bool.
    height, width: heatmap size.
    sigma: Gaussian standard deviation in pixels, > 0.

  Returns:
    [B, H, W] float32 in [0, 1].
  """
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"center_heatmap_target: boxes must be [B, N, 4], got "
                     f"{boxes.shape}")
  if valid.shape != boxes.shape[:2]:
    raise ValueError(f"center_heatmap_target: valid must be {boxes.shape[:2]},"
                     f" got {valid.shape}")
  if sigma <= 0:
    raise ValueError(f"center_heatmap_target: sigma must be > 0, got {sigma}")
  boxes = boxes.astype(jnp.float32)
  cx = 0.5 * (boxes[..., 0] + boxes[..., 2])  # [B, N]
  cy = 0.5 * (boxes[..., 1] + boxes[..., 3])
  xs = jnp.arange(width, dtype=jnp.float32)
  ys = jnp.arange(height, dtype=jnp.float32)
  dx2 = jnp.square(xs[None, None, None, :] - cx[..., None, None])  # [B,N,1,W]
  dy2 = jnp.square(ys[None, None, :, None] - cy[..., None, None])  # [B,N,H,1]
  g = jnp.exp(-(dx2 + dy2) / (2.0 * sigma * sigma))  # [B, N, H, W]
  g = jnp.where(valid[..., None, None], g, 0.0)
  if boxes.shape[1] == 0:
    return jnp.zeros((boxes.shape[0], height, width), jnp.float32)
  return jnp.max(g, axis=1)


def center_loss(pred: Array, target: Array) -> Array:
  """Mean squared error between a predicted and a target centre heatmap.

  Args:
    pred: [B, H, W] (or any shape equal to target's).
    target: same shape as pred.

  Returns:
    Scalar float32.
  """
  if pred.shape != target.shape:
    raise ValueError(f"center_loss: pred {pred.shape} and target "
                     f"{target.shape} must have the same shape")
  return jnp.mean(jnp.square(pred.astype(jnp.float32) -
                             target.astype(jnp.float32)))


def cohesiv_total_loss(attn_raw: Array,
                       resp_target: Array,
                       query_valid: Array,
                       z: Array,
                       person_mask: Array,
                       object_mask: Array,
                       background_mask: Array,
                       *,
                       attention_weight: float = 10.0,
                       embedding_weight: float = 1.0,
                       beta: float = 0.5,
                       eps: float = 1e-3,
                       pixel_valid: Array | None = None,
                       stop_gradient_means: bool = False,
                       ) -> tuple[Array, dict[str, Array]]:
  """Weighted COHESIV loss: attention : embedding = 10 : 1 by default.

  Args:
    attn_raw, resp_target, query_valid, beta, pixel_valid: see
      `responsibility_loss`.
    z, person_mask, object_mask, background_mask, eps, stop_gradient_means:
      see `embedding_loss` (z is the embedding the contrastive loss acts on).
    attention_weight, embedding_weight: loss weights (set one to 0 for the
      Attention-only / Embedding-only ablations).

  Returns:
    (loss scalar, aux dict with the unweighted terms 'responsibility_loss',
    'embedding_loss', 'embedding_person', 'embedding_object',
    'embedding_background' and the total 'loss').
  """
  l_att = responsibility_loss(attn_raw, resp_target, query_valid, beta=beta,
                              pixel_valid=pixel_valid)
  l_emb, terms = embedding_loss(z, person_mask, object_mask, background_mask,
                                eps=eps,
                                stop_gradient_means=stop_gradient_means,
                                return_terms=True)
  loss = attention_weight * l_att + embedding_weight * l_emb
  aux = {
      "loss": loss,
      "responsibility_loss": l_att,
      "embedding_loss": l_emb,
      "embedding_person": terms["person"],
      "embedding_object": terms["object"],
      "embedding_background": terms["background"],
  }
  return loss, aux
