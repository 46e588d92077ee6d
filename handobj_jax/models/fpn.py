"""Feature Pyramid Network (Lin et al., CVPR 2017) on the ResNet trunks of `encoders.py`.

The backbone of Semi-Hand-Object (Sec. 4, Appendix A / Table 6): "Res-50-FPN (P2)",
P2 is 128 x 128 x 256 for a 512 x 512 input; the RoIAlign of hand, object and
intersection boxes reads P2 only. P3..P5 are returned as well.

Input: x [B, H, W, 3] float32, ImageNet mean/std normalised, H and W multiples of 32.
Output: (P2, P3, P4, P5) with Pk [B, H / 2**k, W / 2**k, D], float32, linear
(no activation), D = `out_channels` (256).

Architecture (C2..C5 = the trunk's layer1..layer4 outputs, strides 4..32; the
trunk's stem feature is not used):
  L_k = conv1x1(D, bias)(C_k)                          lateral, k = 2..5
  M_5 = L_5;  M_k = L_k + up2_nearest(M_{k+1})          top-down, k = 4, 3, 2
  P_k = conv3x3(D, bias, padding 1)(M_k)                output convs, k = 2..4
  P_5 = conv3x3(D)(M_5) if `smooth_p5` else M_5
No normalisation and no activation in the FPN layers (standard FPN).

Choices, and where they follow the paper / standard FPN / the released code:
  * Upsampling is nearest x2 (standard FPN and the brief); the released
    supervised code upsamples bilinearly (align_corners=False).
    `upsample='bilinear'` reproduces that (half-pixel centres, edge clamped,
    identical to PyTorch's `F.interpolate(mode='bilinear', align_corners=False)`
    for an exact x2 scale).
  * `smooth_p5=True` (default, standard FPN as in torchvision's
    `FeaturePyramidNetwork`): P5 also gets a 3x3 output conv. The released code
    uses M_5 directly as P5 (`smooth_p5=False`). P2 -- the only level the
    pose network reads -- is the same function either way (the top-down path
    starts from M_5); the P5 conv adds 590,080 parameters that the pose
    network never uses.
  * Kernels: Flax LeCun-normal default for the FPN convs, zero biases
    (initialisation only; no weights of the released model are converted).

Parameter tree: params/{encoder, lateral{2..5}, output{2..5}} (output5 only
with `smooth_p5`) and batch_stats/encoder. The trunk is the submodule `encoder`,
so the timm ImageNet converter's variables go in with
  `pretrained.merge_into(variables, encoder_vars, prefix=('encoder',))`
for a bare FPN, and with `prefix=(<name of the FPN submodule>, 'encoder')`,
e.g. `prefix=('fpn', 'encoder')`, when the FPN is a submodule named 'fpn'.

Parameter count, ResNet-50 trunk, D = 256 (tested against a hand count):
  trunk (timm resnet50 without the ImageNet classifier)   23,508,032
  laterals   256 * (256 + 512 + 1024 + 2048) + 4 * 256        984,064
  output convs  (9 * 256 * 256 + 256) each: 3 -> 1,770,240, 4 -> 2,360,320
  total: 26,852,416 (smooth_p5=True), 26,262,336 (smooth_p5=False).

BatchNorm in the trunk: `train=True` uses batch statistics and updates
`batch_stats` (pass `mutable=['batch_stats']`), `train=False` the running ones.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from handobj_jax.models import encoders as encoders_lib
from handobj_jax.models.unet import upsample_nearest_2x


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], bilinear, half-pixel centres, edges clamped.

  Output pixel i samples the input at (i + 0.5) / 2 - 0.5, so the interior
  weights are (0.25, 0.75) / (0.75, 0.25) and the first / last output rows copy
  the edge (PyTorch `align_corners=False` semantics).
  """
  def along(a: jax.Array, axis: int) -> jax.Array:
    n = a.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(a, 0, 1, axis=axis),
                            jax.lax.slice_in_dim(a, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(a, 1, n, axis=axis),
                           jax.lax.slice_in_dim(a, n - 1, n, axis=axis)], axis)
    even = 0.25 * prev + 0.75 * a   # output 2i samples input i - 0.25
    odd = 0.75 * a + 0.25 * nxt     # output 2i + 1 samples input i + 0.25
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(a.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)

  return along(along(x, 1), 2)


class FPN(nn.Module):
  """ResNet trunk + FPN; see the module docstring for shapes and layers.

  Attributes:
    arch: trunk, any name of `encoders.ARCHS` ('resnet50' = the paper's
      ResNet-50; 'seresnext50_32x4d'; 'tiny' for tests). Lateral input
      channels are read from the trunk's outputs.
    out_channels: D, channels of every pyramid level (256 in the paper).
    smooth_p5: 3x3 output conv on P5 too (standard FPN); False = released code.
    upsample: 'nearest' (standard FPN) or 'bilinear' (released code).
  """
  arch: str = "resnet50"
  out_channels: int = 256
  smooth_p5: bool = True
  upsample: str = "nearest"
  tiny_stem_width: int = 8              # Widths of the 'tiny' trunk (CPU configs and tests).
  tiny_stage_planes: tuple[int, ...] = (4, 8, 16, 32)
  grouped_conv: str = "auto"            # The trunk's grouped convs (grouped_conv.IMPLS).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    """Returns (P2, P3, P4, P5), Pk [B, H / 2**k, W / 2**k, out_channels]."""
    if self.upsample not in ("nearest", "bilinear"):
      raise ValueError(f"FPN.upsample must be 'nearest' or 'bilinear', got "
                       f"{self.upsample!r}")
    if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
      raise ValueError(f"FPN input must be [B, H, W, C] with H, W multiples of "
                       f"32, got shape {x.shape}")
    up = upsample_nearest_2x if self.upsample == "nearest" else upsample_bilinear_2x
    kwargs = {"grouped_conv": self.grouped_conv}
    if self.arch == "tiny":
      kwargs.update(stem_width=self.tiny_stem_width, stage_planes=tuple(self.tiny_stage_planes))
    trunk = encoders_lib.create_encoder(self.arch, name="encoder", **kwargs)
    c2, c3, c4, c5 = trunk(x, train=train)[1:]
    lateral = [nn.Conv(self.out_channels, (1, 1), use_bias=True,
                       name=f"lateral{k}")(c)
               for k, c in zip((2, 3, 4, 5), (c2, c3, c4, c5))]
    merged = [lateral[3]]
    for k in (2, 1, 0):  # levels 4, 3, 2
      merged.insert(0, lateral[k] + up(merged[0]))
    outputs = []
    for k, m in zip((2, 3, 4, 5), merged):
      if k == 5 and not self.smooth_p5:
        outputs.append(m)
        continue
      outputs.append(nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)),
                             use_bias=True, name=f"output{k}")(m))
    return tuple(outputs)
