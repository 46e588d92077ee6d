"""Tests for handobj_jax.models.fpn: shapes, parameter count, weight prefix, torch parity."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.models import fpn
from handobj_jax.models import pretrained

# timm resnet50 (torchvision layout) without its 2048 x 1000 classifier.
RESNET50_TRUNK_PARAMS = 25_557_032 - (2048 * 1000 + 1000)
# Hand count of the FPN layers at D = 256.
LATERAL_PARAMS = sum(c * 256 + 256 for c in (256, 512, 1024, 2048))
OUTPUT_CONV_PARAMS = 3 * 3 * 256 * 256 + 256

# Largest allowed relative error ||flax - torch|| / ||torch|| per level.
PARITY_RTOL = 1e-4


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _random_variables(shapes, seed=0):
  """Random float32 variables of the given shapes (BN variances > 0)."""
  rng = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(shapes)
  out = {}
  for k, s in flat.items():
    a = rng.randn(*s.shape)
    if k[-1] == "kernel":
      a = a / np.sqrt(np.prod(s.shape[:-1]))
    elif k[-1] == "var":
      a = np.abs(a) + 0.5
    out[k] = a.astype(np.float32)
  return flax.traverse_util.unflatten_dict(out)


def _init_shapes(module, size=64):
  return jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


@pytest.mark.parametrize("smooth_p5,expected", [
    (True, 26_852_416), (False, 26_262_336)])
def test_resnet50_fpn_shapes_and_parameter_count(smooth_p5, expected):
  model = fpn.FPN(smooth_p5=smooth_p5)
  shapes = _init_shapes(model)
  hand = RESNET50_TRUNK_PARAMS + LATERAL_PARAMS + (4 if smooth_p5 else 3) * OUTPUT_CONV_PARAMS
  assert hand == expected
  n = _count(shapes["params"])
  print(f"FPN(resnet50, smooth_p5={smooth_p5}) params: {n}")
  assert n == expected
  assert _count(shapes["params"]["encoder"]) == RESNET50_TRUNK_PARAMS
  assert set(shapes["params"]) == {"encoder", "lateral2", "lateral3", "lateral4",
                                   "lateral5", "output2", "output3", "output4"} | (
                                       {"output5"} if smooth_p5 else set())
  assert set(shapes["batch_stats"]) == {"encoder"}
  assert shapes["params"]["lateral5"]["kernel"].shape == (1, 1, 2048, 256)
  assert shapes["params"]["output2"]["kernel"].shape == (3, 3, 256, 256)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes,
                       jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32))
  assert [o.shape for o in out] == [(2, 128, 128, 256), (2, 64, 64, 256),
                                    (2, 32, 32, 256), (2, 16, 16, 256)]


def test_encoder_prefix_matches_the_timm_converter():
  """Converted trunk variables merge in at ('encoder',) and, nested, ('fpn', 'encoder')."""

  class Wrapper(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return fpn.FPN(arch="tiny", out_channels=8, name="fpn")(x, train)

  rng = np.random.RandomState(0)
  trunk_shapes = pretrained.expected_variable_shapes("tiny")
  trunk_vars = flax.traverse_util.unflatten_dict(
      {k: rng.rand(*v).astype(np.float32) + 0.5 for k, v in trunk_shapes.items()})
  for module, prefix in ((fpn.FPN(arch="tiny", out_channels=8), ("encoder",)),
                         (Wrapper(), ("fpn", "encoder"))):
    shapes = _init_shapes(module, 32)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    merged = pretrained.merge_into(zeros, trunk_vars, prefix=prefix)
    node = merged["params"]
    for name in prefix:
      node = node[name]
    np.testing.assert_array_equal(node["layer2_0"]["conv2"]["kernel"],
                                  trunk_vars["params"]["layer2_0"]["conv2"]["kernel"])
  with pytest.raises(ValueError, match="not in target"):
    pretrained.merge_into(zeros, trunk_vars, prefix=("encoder",))


def test_fpn_tiny_runs_and_validates_input():
  model = fpn.FPN(arch="tiny", out_channels=8)
  # Random variables rather than model.init: compiling the init RNG for every
  # parameter costs many seconds on CPU and is not what is tested here.
  variables = _random_variables(_init_shapes(model, 32))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
  out, updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert [o.shape for o in out] == [(2, 16, 24, 8), (2, 8, 12, 8), (2, 4, 6, 8),
                                    (2, 2, 3, 8)]
  assert all(np.isfinite(np.asarray(o)).all() for o in out)
  assert set(updates["batch_stats"]) == {"encoder"}
  with pytest.raises(ValueError, match="multiples of 32"):
    model.apply(variables, jnp.zeros((1, 48, 64, 3)), train=False)
  with pytest.raises(ValueError, match="upsample"):
    fpn.FPN(arch="tiny", upsample="cubic").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)


# ----------------------------------------------------------------- reference


@pytest.mark.reference
def test_upsample_bilinear_matches_torch():
  from reference_helpers import import_torch  # pylint: disable=import-outside-toplevel
  torch = import_torch()
  x = np.random.RandomState(0).randn(2, 5, 7, 3)
  ours = np.asarray(fpn.upsample_bilinear_2x(jnp.asarray(x, jnp.float32)))
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), scale_factor=2,
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


@pytest.mark.reference
def test_resnet50_fpn_parity_with_timm_and_torch():
  """timm resnet50 trunk + torch 1x1 / 3x3 convs and nearest upsampling, weights copied."""
  from reference_helpers import timm_model_with_random_bn  # pylint: disable=import-outside-toplevel
  trunk, torch = timm_model_with_random_bn("resnet50")
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  encoder_vars = pretrained.convert_torch_state_dict(
      {k: v.numpy() for k, v in trunk.state_dict().items()}, "resnet50")

  model = fpn.FPN()
  shapes = _init_shapes(model)
  rng = np.random.RandomState(2)
  flat = flax.traverse_util.flatten_dict(shapes)
  filled = {}
  for key, s in flat.items():
    if key[1] == "encoder":
      filled[key] = np.zeros(s.shape, np.float32)  # replaced below
    elif key[-1] == "kernel":
      fan_in = np.prod(s.shape[:-1])
      filled[key] = (rng.randn(*s.shape) / np.sqrt(fan_in)).astype(np.float32)
    else:
      filled[key] = (0.1 * rng.randn(*s.shape)).astype(np.float32)
  variables = pretrained.merge_into(flax.traverse_util.unflatten_dict(filled),
                                    encoder_vars, prefix=("encoder",))

  x = np.random.RandomState(3).randn(1, 64, 64, 3).astype(np.float32)
  with jax.default_matmul_precision("highest"):
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(x))

  p = variables["params"]

  def conv(t, name, pad):
    w = torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1).copy())
    b = torch.from_numpy(np.asarray(p[name]["bias"]).copy())
    return F.conv2d(t, w.double(), b.double(), padding=pad)

  with torch.no_grad():
    feats = trunk.double().forward_intermediates(
        torch.from_numpy(x.transpose(0, 3, 1, 2)).double(), intermediates_only=True)
    c2, c3, c4, c5 = feats[1:]
    m5 = conv(c5, "lateral5", 0)
    m4 = conv(c4, "lateral4", 0) + F.interpolate(m5, scale_factor=2, mode="nearest")
    m3 = conv(c3, "lateral3", 0) + F.interpolate(m4, scale_factor=2, mode="nearest")
    m2 = conv(c2, "lateral2", 0) + F.interpolate(m3, scale_factor=2, mode="nearest")
    ref = [conv(m, f"output{k}", 1) for k, m in zip((2, 3, 4, 5), (m2, m3, m4, m5))]
  errors = []
  for a, b in zip(ours, ref):
    b = b.numpy().transpose(0, 2, 3, 1)
    assert a.shape == b.shape
    errors.append(float(np.linalg.norm(np.asarray(a, np.float64) - b) /
                        np.linalg.norm(b)))
  print(f"FPN relative error per level (P2..P5) vs float64 torch: {errors}")
  assert max(errors) <= PARITY_RTOL, errors
  # The test can fail: swapping nearest for bilinear upsampling is detected.
  with torch.no_grad():
    m2_bilinear = conv(c2, "lateral2", 0) + F.interpolate(
        m3, scale_factor=2, mode="bilinear", align_corners=False)
    wrong = conv(m2_bilinear, "output2", 1).numpy().transpose(0, 2, 3, 1)
  assert np.linalg.norm(np.asarray(ours[0]) - wrong) / np.linalg.norm(wrong) > 100 * PARITY_RTOL
