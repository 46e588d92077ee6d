"""Grouped 2D convolution (ResNeXt's 3x3 conv) with a choice of formulation.

XLA:CPU compiles the gradient of `lax.conv_general_dilated(..., feature_group_count=G)` into a very slow
kernel: on a 2-core CPU, forward + backward of a 32-group 3x3 conv at 10x64x64x256 takes ~21.6 s against
~0.17 s in PyTorch (jax-ml/jax issue 13800 reports the same symptom). The same operation written as im2col
patches followed by one batched matmul over the groups differentiates into matmuls and slices and runs the
forward + backward in ~0.55 s there (benchmarks/bench_grouped_conv.py prints the table).

Formulations (`impl`):
  'xla'     `lax.conv_general_dilated` with `feature_group_count` (what `flax.linen.Conv` does).
  'block_diag'  a dense convolution with the block-diagonal (Cin x Cout) kernel, zero between groups: G
            times the FLOPs, but XLA:CPU's dense conv and its gradients are fast; wins for few groups.
  'matmul'  im2col: the kh * kw shifted (strided) views of the padded input are stacked to
            [N*Ho*Wo, G, kh*kw*Cg] and multiplied by the kernel as [G, kh*kw*Cg, Og] with one batched
            matmul. Same arithmetic, different summation order: it equals 'xla' to float32 rounding.
  'auto'    on CPU 'block_diag' for <= 4 groups (the 'tiny' encoders), 'matmul' for more (ResNeXt's 32);
            'xla' on GPU and TPU, whose grouped-conv kernels are fast. Decided when the function is traced.
            Measured on a 2-core CPU, fwd + bwd / PyTorch: 32 groups at 10x64x64x256: xla 130x,
            block_diag 9.3x, matmul 3.3x; 2 groups at 10x32x32x64: xla 9.6x, block_diag 1.7x, matmul 2.9x.

Layout: NHWC input, HWIO kernel of shape (kh, kw, Cin / G, Cout) exactly as `flax.linen.Conv` stores it, so
checkpoints and converted timm weights are the same for every formulation; output channel g * Og + o comes
from group g, as in `lax.conv_general_dilated`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "matmul", "block_diag")
# On CPU, 'auto' takes 'block_diag' up to this many groups (G x the FLOPs of one dense conv), else 'matmul'.
AUTO_BLOCK_DIAG_MAX_GROUPS = 4


def resolve_impl(impl: str, groups: int = 32) -> str:
  """'auto' -> on CPU 'block_diag' for <= 4 groups, else 'matmul'; 'xla' on GPU / TPU. Checks the name."""
  if impl not in IMPLS:
    raise ValueError(f"grouped conv impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    if jax.default_backend() != "cpu" or groups == 1:
      return "xla"
    return "block_diag" if groups <= AUTO_BLOCK_DIAG_MAX_GROUPS else "matmul"
  return impl


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
  """(kh, kw, Cin / G, Cout) grouped kernel -> the (kh, kw, Cin, Cout) dense kernel that is zero between
  groups (input channel block f feeds only output block f)."""
  kh, kw, cg, cout = kernel.shape
  k = kernel.reshape(kh, kw, cg, groups, cout // groups)
  eye = jnp.eye(groups, dtype=kernel.dtype)
  return jnp.einsum("hwcgo,fg->hwfcgo", k, eye).reshape(kh, kw, groups * cg, cout)


def _explicit_padding(padding, kernel_size) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, str):
    raise ValueError(f"grouped_conv wants explicit padding ((top, bottom), (left, right)), got {padding!r}")
  (t, b), (l, r) = padding
  return (int(t), int(b)), (int(l), int(r))


def grouped_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                 padding=((0, 0), (0, 0)), groups: int = 1, impl: str = "auto") -> jax.Array:
  """y = conv(x, kernel) with `groups` feature groups, NHWC / HWIO.

  Args:
    x: [N, H, W, Cin].
    kernel: [kh, kw, Cin / groups, Cout], Cout divisible by groups.
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) zero padding.
    groups: number of feature groups G.
    impl: 'auto', 'xla', 'matmul' or 'block_diag' (module docstring).

  Returns:
    [N, Ho, Wo, Cout] with Ho = (H + top + bottom - kh) // sh + 1 (likewise Wo).
  """
  kh, kw, cg, cout = kernel.shape
  if x.ndim != 4:
    raise ValueError(f"grouped_conv input must be [N, H, W, C], got shape {x.shape}")
  if x.shape[-1] != cg * groups or cout % groups:
    raise ValueError(f"grouped_conv: input channels {x.shape[-1]} and kernel {kernel.shape} do not fit "
                     f"{groups} groups")
  pad = _explicit_padding(padding, (kh, kw))
  sh, sw = (int(s) for s in strides)
  impl = resolve_impl(impl, groups)
  if impl in ("xla", "block_diag"):
    dense = impl == "block_diag" and groups > 1
    return jax.lax.conv_general_dilated(
        x, block_diagonal_kernel(kernel, groups) if dense else kernel, (sh, sw), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1 if dense else groups)
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  ho = (h + pad[0][0] + pad[0][1] - kh) // sh + 1
  wo = (w + pad[1][0] + pad[1][1] - kw) // sw + 1
  taps = [jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, xp.shape[3]),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  og = cout // groups
  # [N, Ho, Wo, T, G, Cg] -> [G, N*Ho*Wo, T*Cg]; the kernel [T, Cg, G, Og] -> [G, T*Cg, Og].
  patches = jnp.stack(taps, axis=3).reshape(n * ho * wo, kh * kw, groups, cg)
  patches = patches.transpose(2, 0, 1, 3).reshape(groups, n * ho * wo, kh * kw * cg)
  k = kernel.reshape(kh * kw, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, kh * kw * cg, og)
  y = jnp.einsum("gnk,gko->gno", patches, k.astype(patches.dtype))
  return y.transpose(1, 0, 2).reshape(n, ho, wo, cout)


class GroupedConv(nn.Module):
  """A bias-free grouped conv whose parameter is `flax.linen.Conv`'s: 'kernel' (kh, kw, Cin / G, Cout).

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)).
    groups: feature groups.
    impl: 'auto', 'xla', 'matmul' or 'block_diag' (module docstring).
    kernel_init: initialiser of the kernel.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Sequence[Sequence[int]] = ((1, 1), (1, 1))
  groups: int = 1
  impl: str = "auto"
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    if cin % self.groups:
      raise ValueError(f"GroupedConv: {cin} input channels are not divisible by {self.groups} groups")
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, cin // self.groups, self.features), jnp.float32)
    return grouped_conv(x, kernel.astype(x.dtype), self.strides, self.padding, self.groups, self.impl)
