"""COHESIV network (Shan et al., NeurIPS 2021, Sec. 3.2) and its query-key attention.

`CohesivNet` maps images to
  z:      [B, H, W, F]  per-pixel embedding from a U-Net (F = 64 in the paper);
  q:      [B, H, W, A]  query map Q ("per-hand detectors");
  k:      [B, H, W, A]  key map K ("object features");
  center: [B, H, W]     hand-centre heatmap (only when `with_center_head`).
All outputs are float32 at the input resolution. Pixel (x, y) of a map is
`map[b, y, x]`; pixel centres are at integer coordinates.

Heads. The paper specifies "two lightweight paths (two 3x3 Conv layers) from Z
to heads Q and K"; the supplement is not available, so each head here is
conv3x3(F -> A) -> ReLU -> conv3x3(A -> A), both with bias, no normalisation,
and a linear output (Q^T K is clamped to [0, 1] by the loss / attention, which
needs signed outputs). A defaults to 64 = F: the paper does not state A, and
using the embedding width keeps the heads as wide as their input. The hand-centre
head has the same form with a single output channel.

Frozen backbone for the hand-centre head. The paper trains the hand detector
"on a frozen backbone up to Z". With `freeze_backbone_for_center=True` (default)
the centre head reads `jax.lax.stop_gradient(z)`, so a centre loss updates only
`params['center_head']`, whatever else the loss contains; the trainer still
decides which parameters its optimiser updates (e.g. `optax.multi_transform`
with only `center_head` trainable for the detector stage).

Attention (`attention_map`): for a query point p = (x, y) in pixels,
  raw[i, j] = bilinear(Q, p)^T K[i, j],   attention = clip(raw, 0, 1)
(Sec. 3.3: "we clamp it to [0,1], meaning that the system can make an object not
match a query point by making the vectors orthogonal").

Parameter tree: params/{encoder, decoder, q_head, k_head[, center_head]} and
batch_stats/{encoder, decoder}; `pretrained.merge_into(..., prefix=('encoder',))`
places converted ImageNet weights.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from handobj_jax.geometry.responsibility import bilinear_sample
from handobj_jax.models import encoders as encoders_lib
from handobj_jax.models import fast_ops
from handobj_jax.models.unet import UNetDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CohesivNet.encoder name -> timm architecture name used by `encoders` and
# `pretrained` (the ablation "ResNet backbone" of Table 4 is 'resnet50').
ENCODER_ARCHS = {
    "seresnext50": "seresnext50_32x4d",
    "resnet50": "resnet50",
    "tiny": "tiny",
}


class ConvHead(nn.Module):
  """conv3x3(hidden) -> ReLU -> conv3x3(out): [B, H, W, F] -> [B, H, W, out]."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((1, 1), (1, 1))
    x = nn.Conv(self.hidden, (3, 3), padding=pad, kernel_init=encoders_lib.conv_init,
                name="conv1")(x)
    x = nn.relu(x)
    # Output layer: Flax's default LeCun init keeps initial Q^T K near zero.
    return nn.Conv(self.out, (3, 3), padding=pad, name="conv2")(x)


class CohesivNet(nn.Module):
  """U-Net embedding Z plus Q / K heads (and optional hand-centre head).

  Attributes:
    encoder: 'seresnext50' (paper), 'resnet50' (Table 4 ablation) or 'tiny'
      (small test encoder with the same interface).
    decoder_channels: U-Net decoder widths, 5 stages, coarse to fine.
    embed_dim: F, channels of Z.
    attn_dim: A, channels of Q and K.
    with_center_head: add the 1-channel hand-centre heatmap head.
    freeze_backbone_for_center: stop gradients from the centre head into Z.
    tiny_stem_width / tiny_stage_planes: widths of the 'tiny' encoder.
    grouped_conv: formulation of the encoder's grouped convs (grouped_conv.IMPLS; 'auto' by backend).
  """
  encoder: str = "seresnext50"
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  embed_dim: int = 64
  attn_dim: int = 64
  with_center_head: bool = True
  freeze_backbone_for_center: bool = True
  tiny_stem_width: int = 8
  tiny_stage_planes: Sequence[int] = (4, 8, 16, 32)
  grouped_conv: str = "auto"

  @nn.nowrap
  def make_encoder(self, name: str | None = None) -> encoders_lib.ResNetEncoder:
    """The encoder module this network uses (also for weight conversion).

    Callable on an unbound CohesivNet, e.g. to pass as `arch` to
    `pretrained.load_pretrained`.
    """
    if self.encoder not in ENCODER_ARCHS:
      raise ValueError(f"CohesivNet.encoder={self.encoder!r}; expected one of "
                       f"{sorted(ENCODER_ARCHS)}")
    arch = ENCODER_ARCHS[self.encoder]
    kwargs = {"grouped_conv": self.grouped_conv}
    if arch == "tiny":
      kwargs.update(stem_width=self.tiny_stem_width,
                    stage_planes=tuple(self.tiny_stage_planes))
    return encoders_lib.create_encoder(arch, name=name, **kwargs)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Runs the network.

    Args:
      images: [B, H, W, 3] float32 RGB in [0, 1]; H and W multiples of 32.
      train: BatchNorm uses (and updates) batch statistics.

    Returns:
      dict with z [B,H,W,F], q [B,H,W,A], k [B,H,W,A] and, with the centre
      head, center [B,H,W].
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}"
                       " (divide uint8 images by 255)")
    height, width = images.shape[1:3]
    if height % 32 or width % 32:
      raise ValueError(f"image height and width must be multiples of 32 (five "
                       f"stride-2 stages), got {height}x{width}")
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(
        IMAGENET_STD, jnp.float32)

    features = self.make_encoder(name="encoder")(x, train)
    z = UNetDecoder(decoder_channels=tuple(self.decoder_channels),
                    out_channels=self.embed_dim, name="decoder")(features, train)
    out = {
        "z": z,
        "q": ConvHead(self.attn_dim, self.attn_dim, name="q_head")(z),
        "k": ConvHead(self.attn_dim, self.attn_dim, name="k_head")(z),
    }
    if self.with_center_head:
      z_c = jax.lax.stop_gradient(z) if self.freeze_backbone_for_center else z
      out["center"] = ConvHead(self.attn_dim, 1, name="center_head")(z_c)[..., 0]
    return out


class Attention(NamedTuple):
  """Output of `attention_map`: both [B, P, H, W] float32."""
  attention: jax.Array  # clip(raw, 0, 1)
  raw: jax.Array        # q(p)^T K before clamping


def attention_map(q: jax.Array, k: jax.Array, points: jax.Array) -> Attention:
  """Query-key attention of Sec. 3.2 / 3.3.

  Args:
    q: [B, H, W, A] query map.
    k: [B, H, W, A] key map.
    points: [B, P, 2] query points (x, y) in pixels of the same resolution,
      sub-pixel allowed: Q is sampled bilinearly with
      `geometry.responsibility.bilinear_sample` (border-clamped; non-finite
      points read pixel (0, 0), keeping the output finite).

  Returns:
    Attention(attention=clip(raw, 0, 1), raw=bilinear(Q, p)^T K), each
    [B, P, H, W].
  """
  if q.shape != k.shape or q.ndim != 4:
    raise ValueError(f"q and k must both be [B, H, W, A], got {q.shape} and "
                     f"{k.shape}")
  if points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != q.shape[0]:
    raise ValueError(f"points must be [B, P, 2] with B={q.shape[0]}, got "
                     f"{points.shape}")
  q_at = bilinear_sample(q, points)  # [B, P, A]
  raw = fast_ops.pixel_dot(k, q_at).transpose(0, 3, 1, 2)  # Q(p)^T K, [B, P, H, W].
  return Attention(attention=jnp.clip(raw, 0.0, 1.0), raw=raw)
