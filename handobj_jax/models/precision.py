"""Mixed precision: bfloat16 convolutions and matrix products, float32 parameters and optimiser state.

`config.model.compute_dtype = 'bfloat16'` (default 'float32') makes a task run its network through `apply`:
the float parameters are cast to bfloat16 for the forward pass (their gradients flow back to the float32
master copy that the optimiser holds), every convolution and dense layer receives bfloat16 inputs (a Flax
method interceptor, so the model code needs no dtype plumbing), BatchNorm keeps float32 statistics, and the
network's outputs come back as float32, so losses, metrics and the MANO layer run in float32. Meant for GPUs
and TPUs (bfloat16 matrix units); on CPU it is usually slower.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(config) -> Any:
  """The compute dtype a config names (`config.model.compute_dtype`, float32 when absent)."""
  name = config.model.get("compute_dtype", "float32") if "model" in config else "float32"
  if name not in DTYPES:
    raise ValueError(f"config.model.compute_dtype={name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating array of `tree` as `dtype` (others unchanged)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
                      tree)


def _matmul_modules() -> tuple[type, ...]:
  from handobj_jax.models import grouped_conv  # pylint: disable=g-import-not-at-top
  return (nn.Conv, nn.ConvTranspose, nn.Dense, nn.DenseGeneral, nn.Einsum, grouped_conv.GroupedConv)


def _interceptor(dtype: Any):
  modules = _matmul_modules()

  def intercept(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, modules):
      args = cast_floating(args, dtype)
    return next_fun(*args, **kwargs)

  return intercept


def apply(net: nn.Module, variables: dict[str, Any], *args, dtype: Any = jnp.float32, **kwargs) -> Any:
  """`net.apply(variables, *args, **kwargs)` computed in `dtype` (module docstring); float32: unchanged."""
  if jnp.dtype(dtype) == jnp.float32:
    return net.apply(variables, *args, **kwargs)
  variables = {**variables, "params": cast_floating(variables["params"], dtype)}
  with nn.intercept_methods(_interceptor(dtype)):
    out = net.apply(variables, *args, **kwargs)
  return cast_floating(out, jnp.float32)
