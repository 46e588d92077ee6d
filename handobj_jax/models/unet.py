"""U-Net decoder (NHWC Flax Linen) from five encoder features to a per-pixel embedding.

Input: the tuple returned by the encoders in `encoders.py`,
  features[i]: [B, H / 2**(i+1), W / 2**(i+1), C_i], i = 0..4 (strides 2..32).
Output: Z [B, H, W, F], float32, linear (no activation), F = `out_channels`.

Decoder stage j = 0..4 (decoder_channels[j] = D_j, default (256, 128, 64, 32, 16)):
  x <- nearest x2 upsample(x)                        (stride 32/2**(j+1))
  x <- concat(x, features[3 - j]) when j < 4          (skip at the same stride)
  x <- relu(BN(conv3x3(D_j)(x)));  x <- relu(BN(conv3x3(D_j)(x)))
starting from x = features[4] (stride 32); the last stage has no skip and
returns to the input resolution. A final conv3x3 (with bias) maps D_4 -> F.

This is the layout of the common "U-Net with ResNet encoder" segmentation
models (no extra centre block, no attention), the "standard U-Net-style
network" of COHESIV Sec. 3.2. Convolutions use explicit symmetric padding 1.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from handobj_jax.models.encoders import BN_EPSILON, BN_MOMENTUM, conv_init


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated in a 2x2 block."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvBNReLU(nn.Module):
  """conv3x3 (no bias, padding 1) -> BatchNorm -> ReLU."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)),
                use_bias=False, kernel_init=conv_init, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


class DecoderBlock(nn.Module):
  """Upsample x2, concatenate the skip (if any), two ConvBNReLU."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None,
               train: bool) -> jax.Array:
    x = upsample_nearest_2x(x)
    if skip is not None:
      if skip.shape[:3] != x.shape[:3]:
        raise ValueError(f"skip feature shape {skip.shape} does not match the "
                         f"upsampled decoder feature {x.shape} in B, H, W")
      x = jnp.concatenate([x, skip], axis=-1)
    x = ConvBNReLU(self.features, name="conv1")(x, train)
    return ConvBNReLU(self.features, name="conv2")(x, train)


class UNetDecoder(nn.Module):
  """Five-stage U-Net decoder; see the module docstring for shapes."""
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  out_channels: int = 64

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
    if len(features) != 5 or len(self.decoder_channels) != 5:
      raise ValueError(
          f"UNetDecoder needs 5 encoder features and 5 decoder_channels, got "
          f"{len(features)} features and decoder_channels "
          f"{tuple(self.decoder_channels)}")
    x = features[4]
    for j, channels in enumerate(self.decoder_channels):
      skip = features[3 - j] if j < 4 else None
      x = DecoderBlock(channels, name=f"block{j}")(x, skip, train)
    return nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)),
                   use_bias=True, kernel_init=conv_init, name="final_conv")(x)
