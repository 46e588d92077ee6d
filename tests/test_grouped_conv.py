"""Tests for handobj_jax.models.grouped_conv: the im2col + batched-matmul and block-diagonal formulations against
`lax.conv_general_dilated(..., feature_group_count=G)` (the reference), in value and gradient.

The encoders use the formulation of `config.model.grouped_conv` ('auto' on CPU = 'fma' while a group has <= 8
input channels, else 'matmul'), so the timm parity tests of SE-ResNeXt-50 in tests/test_encoders.py check both
forward paths inside the whole network. 'fma' runs the 'matmul' formulation under differentiation; the gradient
tests here check that path.

Tolerance: float32 rounding of sums over kh * kw * Cg <= 9 * 16 terms in a different order: |diff| <=
1e-5 * (1 + |y|) on values, and 2e-5 of the largest element on the gradients.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.models import grouped_conv as gc

CASES = [
    # (N, H, W, Cin, Cout, groups, (kh, kw), strides, padding)
    (2, 9, 9, 8, 8, 2, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 10, 7, 32, 64, 8, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, 8, 8, 12, 6, 3, (3, 3), (2, 1), ((0, 1), (2, 0))),
    (3, 6, 6, 16, 16, 16, (1, 1), (1, 1), ((0, 0), (0, 0))),  # depthwise 1x1
    (2, 7, 7, 6, 4, 1, (5, 3), (1, 2), ((2, 2), (1, 1))),     # one group
]


def _inputs(case, seed=0):
  n, h, w, cin, cout, g, (kh, kw), _, _ = case
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
  k = rng.normal(size=(kh, kw, cin // g, cout)).astype(np.float32) / np.sqrt(kh * kw * cin / g)
  return jnp.asarray(x), jnp.asarray(k)


def _conv(impl, case):
  *_, g, _, strides, padding = case
  return lambda x, k: gc.grouped_conv(x, k, strides, padding, g, impl)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["matmul", "block_diag", "fma"])
def test_formulation_equals_xla_in_value(case, impl):
  x, k = _inputs(case)
  ref = np.asarray(jax.jit(_conv("xla", case))(x, k))
  ours = np.asarray(jax.jit(_conv(impl, case))(x, k))
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["matmul", "block_diag", "fma"])
def test_formulation_equals_xla_in_gradient(case, impl):
  x, k = _inputs(case, seed=1)
  # A loss whose cotangent varies per output element, so every gradient path is exercised.
  w = jnp.asarray(np.random.default_rng(2).normal(size=_conv("xla", case)(x, k).shape).astype(np.float32))

  def grads(impl):
    loss = lambda x, k: jnp.sum(w * _conv(impl, case)(x, k) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)

  for ref, ours in zip(grads("xla"), grads(impl)):
    ref, ours = np.asarray(ref), np.asarray(ours)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours / scale, ref / scale, rtol=0, atol=2e-5)


def test_module_matches_flax_conv_parameters_and_output():
  """GroupedConv stores flax.linen.Conv's parameter tree, so weights load into either."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 16)).astype(np.float32))
  ref_mod = nn.Conv(32, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=4,
                    use_bias=False)
  params = ref_mod.init(jax.random.PRNGKey(0), x)
  for impl in ("xla", "matmul", "block_diag", "fma", "auto"):
    mod = gc.GroupedConv(32, (3, 3), (2, 2), ((1, 1), (1, 1)), groups=4, impl=impl)
    ours_params = mod.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(mod.apply(params, x), ref_mod.apply(params, x), rtol=1e-5, atol=1e-5)


def test_auto_choice_and_bad_inputs_name_the_problem():
  cpu = jax.default_backend() == "cpu"
  assert gc.resolve_impl("auto", 32) == ("fma" if cpu else "xla")
  assert gc.resolve_impl("auto", 32, 8) == ("fma" if cpu else "xla")
  assert gc.resolve_impl("auto", 32, 16) == ("matmul" if cpu else "xla")
  assert gc.resolve_impl("auto", 2) == ("block_diag" if cpu else "xla")
  assert gc.resolve_impl("auto", 1) == "xla"
  with pytest.raises(ValueError, match="impl must be one of"):
    gc.resolve_impl("fast")
  x, k = _inputs(CASES[0])
  with pytest.raises(ValueError, match="do not fit 3 groups"):
    gc.grouped_conv(x, k, groups=3)
  with pytest.raises(ValueError, match="explicit padding"):
    gc.grouped_conv(x, k, padding="SAME", groups=2)

