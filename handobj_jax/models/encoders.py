"""ResNet-family image encoders (NHWC Flax Linen) that mirror timm layer for layer.

The encoders return five feature maps that a U-Net decoder uses as skips:

  index  name     stride  channels (SE-ResNeXt-50 / ResNet-50)  tiny default
  0      stem     2       64                                    8
  1      layer1   4       256                                   16
  2      layer2   8       512                                   32
  3      layer3   16      1024                                  64
  4      layer4   32      2048                                  128

For an input [B, H, W, 3] (H, W multiples of 32) feature i has shape
[B, H / 2**(i+1), W / 2**(i+1), C_i]. The stem output is taken after conv, BN and
ReLU and before the max pool, which is what timm's `forward_intermediates` calls
its first feature.

Architecture (timm `resnet50` / `seresnext50_32x4d`):
  stem: conv 7x7 stride 2 pad 3 (no bias) -> BN -> ReLU -> max pool 3x3 stride 2 pad 1.
  stages of (3, 4, 6, 3) bottleneck blocks with planes (64, 128, 256, 512):
    width = floor(planes * base_width / 64) * cardinality, out = 4 * planes,
    conv1x1(width) BN ReLU -> conv3x3(width, stride, groups=cardinality) BN ReLU
    -> conv1x1(out) BN -> [SE] -> + shortcut -> ReLU.
  The stride sits on the 3x3 conv; the first block of every stage has a shortcut
  conv1x1(out, stride) + BN. SE: global mean -> 1x1 conv(rd, bias) -> ReLU ->
  1x1 conv(out, bias) -> sigmoid gate, rd = make_divisible(out / 16, 8).

Padding is explicit and symmetric, as in PyTorch ('SAME' in XLA pads stride-2
convolutions asymmetrically and would shift every feature by half a pixel). The
max pool pads with -inf, as PyTorch does.

BatchNorm: epsilon 1e-5, Flax momentum 0.9 (= PyTorch momentum 0.1). `train=True`
normalises with batch statistics and updates `batch_stats` (the caller must pass
`mutable=['batch_stats']`); `train=False` uses the running statistics. One known
difference: PyTorch stores the unbiased batch variance in its running average,
Flax the biased one; for batch sizes of thousands of pixels the difference is
negligible, and pretrained running statistics are copied verbatim anyway.

Precision: on CPU the encoders match timm to ~1e-6 relative error. On H100 GPUs
JAX's default float32 convolution precision uses TF32 tensor cores, which gave
2.5e-4 (SE-ResNeXt-50) to 1.3e-3 (ResNet-50, layer4) relative error against a
float64 timm forward at 224x224; under `jax.default_matmul_precision('highest')`
the error was <= 2.1e-6. Training is fine with the default; use 'highest' for
parity checks.

Parameter names mirror the PyTorch state dict so that the converter in
`pretrained.py` is a plain renaming: `conv1`, `bn1`, `layer{s}_{b}/conv{1,2,3}`,
`layer{s}_{b}/bn{1,2,3}`, `layer{s}_{b}/se/fc{1,2}`, `layer{s}_{b}/downsample_conv`
and `layer{s}_{b}/downsample_bn` (s from 1, b from 0).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from handobj_jax.models import fast_ops
from handobj_jax.models import grouped_conv as grouped_conv_lib

# timm initialises every conv with kaiming normal, fan_out, ReLU gain.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: new = m * old + (1 - m) * batch.


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
  """Rounds a channel count to the nearest multiple of `divisor` (timm's rule).

  The result is at least `min_value` (default `divisor`), and if rounding down
  lost more than (1 - round_limit) of the value, one more `divisor` is added.
  """
  min_value = min_value or divisor
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < round_limit * value:
    rounded += divisor
  return rounded


def se_reduced_channels(channels: int, reduction: int = 16) -> int:
  """Hidden width of a squeeze-excitation block on `channels` channels."""
  return make_divisible(channels / reduction, 8, round_limit=0.0)


def _batch_norm(train: bool, name: str, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, scale_init=scale_init, name=name)


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


class SqueezeExcite(nn.Module):
  """Channel gate: x * sigmoid(fc2(relu(fc1(mean_hw(x))))). x: [B, H, W, C]."""
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(se_reduced_channels(channels, self.reduction), (1, 1),
                use_bias=True, kernel_init=conv_init, name="fc1")(s)
    s = nn.relu(s)
    s = nn.Conv(channels, (1, 1), use_bias=True, kernel_init=conv_init,
                name="fc2")(s)
    return x * nn.sigmoid(s)


class Bottleneck(nn.Module):
  """ResNet / ResNeXt bottleneck block with optional SE. [B,H,W,Cin] -> [B,H/s,W/s,4p]."""
  planes: int
  stride: int = 1
  cardinality: int = 1
  base_width: int = 64
  use_se: bool = False
  downsample: bool = False
  zero_init_last: bool = True
  grouped_conv: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = int(self.planes * (self.base_width / 64)) * self.cardinality
    out_channels = self.planes * 4
    shortcut = x

    y = nn.Conv(width, (1, 1), use_bias=False, kernel_init=conv_init,
                name="conv1")(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    if self.cardinality > 1:
      # Same parameter ('conv2/kernel') as nn.Conv; its formulation is the config's (grouped_conv.py).
      y = grouped_conv_lib.GroupedConv(width, (3, 3), (self.stride, self.stride), _pad(3),
                                       groups=self.cardinality, impl=self.grouped_conv,
                                       kernel_init=conv_init, name="conv2")(y)
    else:
      y = nn.Conv(width, (3, 3), strides=(self.stride, self.stride), padding=_pad(3),
                  use_bias=False, kernel_init=conv_init, name="conv2")(y)
    y = nn.relu(_batch_norm(train, "bn2")(y))
    y = nn.Conv(out_channels, (1, 1), use_bias=False, kernel_init=conv_init,
                name="conv3")(y)
    # timm zero-initialises the last BN scale so each block starts as identity.
    y = _batch_norm(train, "bn3", nn.initializers.zeros
                    if self.zero_init_last else nn.initializers.ones)(y)
    if self.use_se:
      y = SqueezeExcite(name="se")(y)

    if self.downsample:
      shortcut = nn.Conv(out_channels, (1, 1),
                         strides=(self.stride, self.stride), use_bias=False,
                         kernel_init=conv_init, name="downsample_conv")(x)
      shortcut = _batch_norm(train, "downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNetEncoder(nn.Module):
  """Bottleneck ResNet encoder returning stem + 4 stage features (see module doc).

  Attributes:
    stage_sizes: blocks per stage.
    stage_planes: bottleneck planes per stage (output channels are 4x).
    stem_width: output channels of the 7x7 stem conv.
    cardinality: groups of the 3x3 conv (ResNeXt); 1 for ResNet.
    base_width: per-group width at planes=64 (ResNeXt "4d" = 4).
    use_se: squeeze-excitation after the third BN of every block.
    zero_init_last: zero-init the last BN scale of every block (timm default).
    grouped_conv: formulation of the grouped 3x3 convs, 'auto' / 'xla' / 'matmul' / 'block_diag'
      (grouped_conv.py; on CPU 'auto' avoids XLA:CPU's slow grouped-conv gradient).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stage_planes: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  cardinality: int = 1
  base_width: int = 64
  use_se: bool = False
  zero_init_last: bool = True
  grouped_conv: str = "auto"

  @property
  def feature_channels(self) -> tuple[int, ...]:
    """Channels of the five returned features (stem, layer1..layer4)."""
    return (self.stem_width,) + tuple(4 * p for p in self.stage_planes)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    """Encodes normalised images.

    Args:
      x: [B, H, W, 3] float32, already mean/std normalised.
      train: use batch statistics in BatchNorm (and update them).

    Returns:
      Tuple of 5 features at strides 2, 4, 8, 16, 32 (see module docstring).
    """
    if x.ndim != 4:
      raise ValueError(f"encoder input must be [B, H, W, C], got shape {x.shape}")
    if len(self.stage_sizes) != len(self.stage_planes):
      raise ValueError(f"stage_sizes {self.stage_sizes} and stage_planes "
                       f"{self.stage_planes} differ in length")
    y = nn.Conv(self.stem_width, (7, 7), strides=(2, 2), padding=_pad(7),
                use_bias=False, kernel_init=conv_init, name="conv1")(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    features = [y]
    # Max-pool padding is -inf, as in PyTorch (fast_ops: the same values, a faster gradient on CPU).
    y = fast_ops.max_pool(y, (3, 3), (2, 2), _pad(3))
    in_channels = self.stem_width
    for s, (num_blocks, planes) in enumerate(
        zip(self.stage_sizes, self.stage_planes)):
      for b in range(num_blocks):
        stride = 2 if (b == 0 and s > 0) else 1
        needs_shortcut = b == 0 and (stride != 1 or in_channels != 4 * planes)
        y = Bottleneck(planes=planes, stride=stride,
                       cardinality=self.cardinality, base_width=self.base_width,
                       use_se=self.use_se, downsample=needs_shortcut,
                       zero_init_last=self.zero_init_last, grouped_conv=self.grouped_conv,
                       name=f"layer{s + 1}_{b}")(y, train)
        in_channels = 4 * planes
      features.append(y)
    return tuple(features)


class SEResNeXt50(ResNetEncoder):
  """timm `seresnext50_32x4d`: 32 groups x 4 width, SE reduction 16."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  cardinality: int = 32
  base_width: int = 4
  use_se: bool = True


class ResNet50(ResNetEncoder):
  """timm `resnet50` (torchvision layout, stride on the 3x3 conv)."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  cardinality: int = 1
  base_width: int = 64
  use_se: bool = False


class TinyEncoder(ResNetEncoder):
  """A few-thousand-parameter SE-ResNeXt with the same interface, for tests.

  One block per stage, stem 8 channels, planes (4, 8, 16, 32) -> features
  (8, 16, 32, 64, 128) channels at strides (2, 4, 8, 16, 32).
  """
  stage_sizes: Sequence[int] = (1, 1, 1, 1)
  stage_planes: Sequence[int] = (4, 8, 16, 32)
  stem_width: int = 8
  cardinality: int = 2
  base_width: int = 32
  use_se: bool = True


ARCHS = {
    "seresnext50_32x4d": SEResNeXt50,
    "resnet50": ResNet50,
    "tiny": TinyEncoder,
}


def create_encoder(arch: str, **kwargs) -> ResNetEncoder:
  """Builds an encoder by timm name ('seresnext50_32x4d', 'resnet50') or 'tiny'."""
  if arch not in ARCHS:
    raise ValueError(f"unknown encoder arch {arch!r}; expected one of "
                     f"{sorted(ARCHS)}")
  return ARCHS[arch](**kwargs)
