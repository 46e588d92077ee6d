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
  'fma'     when not differentiated (inference), kh * kw * Cg broadcast multiply-adds of the strided views
            ([N, Ho, Wo, G, 1] x [G, Og]), which XLA:CPU fuses into one elementwise loop: at
            10x64x64x128, 32 groups of 4, 7.5 ms against 144 ms for 'matmul' and 29 ms for PyTorch. Under
            differentiation (a custom VJP) the 'matmul' formulation runs, forward and backward, because its
            backward reuses the forward's patches. Fast while Cg is small (<= 8); slower than 'matmul' from
            Cg = 16 (the multiply-adds grow with Cg, the matmul's efficiency too).
  'auto'    on CPU 'block_diag' for <= 4 groups (the 'tiny' encoders); for more groups (ResNeXt's 32)
            'fma' while Cg <= 8 (stages 1 and 2 of ResNeXt-50 32x4d), else 'matmul'; 'xla' on GPU and TPU,
            whose grouped-conv kernels are fast. Decided when the function is traced.
            Measured on a 2-core CPU, fwd + bwd / PyTorch: 32 groups at 10x64x64x256: xla 130x,
            block_diag 9.3x, matmul 3.3x; 2 groups at 10x32x32x64: xla 9.6x, block_diag 1.7x, matmul 2.9x.

Layout: NHWC input, HWIO kernel of shape (kh, kw, Cin / G, Cout) exactly as `flax.linen.Conv` stores it, so
checkpoints and converted timm weights are the same for every formulation; output channel g * Og + o comes
from group g, as in `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "matmul", "block_diag", "fma")
# On CPU, 'auto' takes 'block_diag' up to this many groups (G x the FLOPs of one dense conv), else 'fma' up
# to this many input channels per group, else 'matmul'.
AUTO_BLOCK_DIAG_MAX_GROUPS = 4
AUTO_FMA_MAX_GROUP_CHANNELS = 8


def resolve_impl(impl: str, groups: int = 32, group_channels: int = 4) -> str:
  """'auto' -> on CPU 'block_diag' for <= 4 groups, else 'fma' for <= 8 input channels per group, else
  'matmul'; 'xla' on GPU / TPU. Checks the name."""
  if impl not in IMPLS:
    raise ValueError(f"grouped conv impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    if jax.default_backend() != "cpu" or groups == 1:
      return "xla"
    if groups <= AUTO_BLOCK_DIAG_MAX_GROUPS:
      return "block_diag"
    return "fma" if group_channels <= AUTO_FMA_MAX_GROUP_CHANNELS else "matmul"
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
  impl = resolve_impl(impl, groups, cg)
  if impl in ("xla", "block_diag"):
    dense = impl == "block_diag" and groups > 1
    return jax.lax.conv_general_dilated(
        x, block_diagonal_kernel(kernel, groups) if dense else kernel, (sh, sw), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1 if dense else groups)
  if impl == "fma":
    return _fma_conv(x, kernel, (sh, sw), pad, groups)
  return _matmul_conv(x, kernel, (sh, sw), pad, groups)


def _taps(xp: jax.Array, ho: int, wo: int, kh: int, kw: int, sh: int, sw: int) -> list[jax.Array]:
  """The kh * kw strided views of the padded input, each [N, Ho, Wo, C], in (i, j) row-major order."""
  n, c = xp.shape[0], xp.shape[3]
  return [jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def _out_size(x, kernel, strides, pad) -> tuple[int, int]:
  (kh, kw), (sh, sw) = kernel.shape[:2], strides
  return ((x.shape[1] + pad[0][0] + pad[0][1] - kh) // sh + 1,
          (x.shape[2] + pad[1][0] + pad[1][1] - kw) // sw + 1)


def _fma_forward(x, kernel, strides, pad, groups):
  kh, kw, cg, cout = kernel.shape
  n = x.shape[0]
  ho, wo = _out_size(x, kernel, strides, pad)
  xp = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  w = kernel.reshape(kh * kw, cg, groups, cout // groups)
  y = None
  for t, tap in enumerate(_taps(xp, ho, wo, kh, kw, *strides)):
    tap = tap.reshape(n, ho, wo, groups, cg)
    for c in range(cg):  # [N, Ho, Wo, G, 1] * [G, Og]: one multiply-add per input channel of the group.
      term = tap[..., c:c + 1] * w[t, c].astype(x.dtype)
      y = term if y is None else y + term
  return y.reshape(n, ho, wo, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fma_conv(x, kernel, strides, pad, groups):
  return _fma_forward(x, kernel, strides, pad, groups)


def _fma_conv_fwd(x, kernel, strides, pad, groups):
  # Under differentiation the matmul formulation runs instead: its backward reuses the forward's patches,
  # which makes forward + backward cheaper than the multiply-adds' forward plus a separate backward.
  y, vjp = jax.vjp(lambda x, k: _matmul_conv(x, k, strides, pad, groups), x, kernel)
  return y, vjp


def _fma_conv_bwd(strides, pad, groups, vjp, dy):
  del strides, pad, groups
  return vjp(dy)


_fma_conv.defvjp(_fma_conv_fwd, _fma_conv_bwd)


def _matmul_conv(x, kernel, strides, pad, groups):
  kh, kw, cg, cout = kernel.shape
  n = x.shape[0]
  ho, wo = _out_size(x, kernel, strides, pad)
  taps = _taps(jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0))), ho, wo, kh, kw, *strides)
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
