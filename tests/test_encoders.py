"""Tests for handobj_jax.models.encoders and handobj_jax.models.pretrained.

Fast tests run without torch; `reference` tests compare against timm.
"""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax import errors
from handobj_jax.models import encoders
from handobj_jax.models import pretrained
from reference_helpers import timm_model_with_random_bn

# Published timm parameter counts (torch `parameters()`, classifier included),
# as listed on the timm model cards / torchvision docs: independent of this code.
TIMM_PARAM_COUNT = {"seresnext50_32x4d": 27_559_896, "resnet50": 25_557_032}
IMAGENET_FC_PARAMS = 2048 * 1000 + 1000

# Largest allowed relative error ||flax - timm|| / ||timm|| per stage output.
PARITY_RTOL = 1e-4


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _shapes(arch):
  enc = encoders.create_encoder(arch)
  return jax.eval_shape(lambda: enc.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))


def _random_variables(arch_or_module, seed=0):
  """Random encoder variables in the Flax layout, float32, running var > 0."""
  flat = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in
          pretrained.expected_variable_shapes(arch_or_module).items()}
  rng = np.random.RandomState(seed)
  out = {}
  for k, v in flat.items():
    a = rng.randn(*v.shape).astype(np.float32)
    out[k] = np.abs(a) + 0.5 if k[-1] == "var" else a
  return flax.traverse_util.unflatten_dict(out)


@pytest.mark.parametrize("value,expected", [(256 / 16, 16), (2048 / 16, 128),
                                            (1.0, 8), (20.0, 24), (11.0, 8),
                                            (13.0, 16)])
def test_make_divisible(value, expected):
  # timm's rule with round_limit=0: nearest multiple of 8, at least 8.
  assert encoders.make_divisible(value, 8, round_limit=0.0) == expected


@pytest.mark.parametrize("arch", ["seresnext50_32x4d", "resnet50"])
def test_full_encoder_parameter_count(arch):
  shapes = _shapes(arch)
  n_params = _count(shapes["params"])
  n_stats = _count(shapes["batch_stats"])
  print(f"{arch}: params {n_params}, batch_stats {n_stats}")
  assert n_params + IMAGENET_FC_PARAMS == TIMM_PARAM_COUNT[arch]
  # Running mean and var for every BN: twice the BN scale count.
  bn_scales = sum(int(np.prod(v.shape)) for k, v in
                  flax.traverse_util.flatten_dict(shapes["params"]).items()
                  if k[-1] == "scale")
  assert n_stats == 2 * bn_scales


def test_full_encoder_feature_shapes():
  enc = encoders.SEResNeXt50()
  shapes = _shapes("seresnext50_32x4d")
  feats = jax.eval_shape(lambda v, x: enc.apply(v, x, train=False), shapes,
                         jax.ShapeDtypeStruct((2, 256, 192, 3), jnp.float32))
  expected = [(2, 128, 96, 64), (2, 64, 48, 256), (2, 32, 24, 512),
              (2, 16, 12, 1024), (2, 8, 6, 2048)]
  assert [f.shape for f in feats] == expected
  assert enc.feature_channels == (64, 256, 512, 1024, 2048)
  # SE-ResNeXt structure: 32 groups of 4 channels in the first stage 3x3 conv.
  k = shapes["params"]["layer1_0"]["conv2"]["kernel"]
  assert k.shape == (3, 3, 4, 128)
  assert shapes["params"]["layer1_0"]["se"]["fc1"]["kernel"].shape == (1, 1, 256, 16)


def test_tiny_encoder_train_and_eval():
  enc = encoders.TinyEncoder()
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 96, 3))
  # Random variables rather than enc.init: compiling the init RNG for every
  # parameter costs several seconds on CPU and is not what is tested here.
  variables = jax.tree_util.tree_map(jnp.asarray, _random_variables(enc))
  variables["batch_stats"] = {  # Flax's initial running statistics.
      k: {"mean": jnp.zeros_like(v["mean"]), "var": jnp.ones_like(v["var"])}
      for k, v in flax.traverse_util.flatten_dict(
          variables["batch_stats"], is_leaf=lambda _, x: "mean" in x).items()}
  variables["batch_stats"] = flax.traverse_util.unflatten_dict(
      variables["batch_stats"])
  # One compile for both modes.
  feats, (_, updates) = jax.jit(lambda v, x: (
      enc.apply(v, x, train=False),
      enc.apply(v, x, train=True, mutable=["batch_stats"])))(variables, x)
  assert [f.shape for f in feats] == [
      (2, 32, 48, 8), (2, 16, 24, 16), (2, 8, 12, 32), (2, 4, 6, 64),
      (2, 2, 3, 128)]
  assert all(np.isfinite(np.asarray(f)).all() for f in feats)
  old = variables["batch_stats"]["bn1"]["mean"]
  new = updates["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(old, new)
  # Momentum 0.9 (PyTorch 0.1): new = 0.9 * 0 + 0.1 * batch mean of bn1 input.
  stem_conv = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (2, 2),
      ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(new, 0.1 * np.mean(np.asarray(stem_conv), (0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_stem_padding_matches_symmetric_reference():
  """Stride-2 stem conv + max pool against a NumPy float64 symmetric-pad reference."""
  enc = encoders.TinyEncoder()
  x = np.random.RandomState(0).rand(1, 32, 32, 3).astype(np.float32)
  variables = _random_variables(enc, seed=3)
  # Identity BN so that the stem output is relu(conv(x)).
  for name in ("scale", "bias"):
    variables["params"]["bn1"][name] = np.full_like(
        variables["params"]["bn1"][name], 1.0 if name == "scale" else 0.0)
  variables["batch_stats"]["bn1"]["mean"][:] = 0.0
  variables["batch_stats"]["bn1"]["var"][:] = 1.0 - 1e-5
  stem = np.asarray(jax.jit(lambda v, x: enc.apply(v, x, train=False)[0])(
      variables, jnp.asarray(x)))
  w = variables["params"]["conv1"]["kernel"].astype(np.float64)
  xp = np.pad(x[0].astype(np.float64), ((3, 3), (3, 3), (0, 0)))
  ref = np.zeros((16, 16, w.shape[-1]))
  for i in range(16):
    for j in range(16):
      patch = xp[2 * i:2 * i + 7, 2 * j:2 * j + 7]
      ref[i, j] = np.einsum("hwc,hwco->o", patch, w)
  ref = np.maximum(ref, 0.0)
  np.testing.assert_allclose(stem[0], ref, rtol=1e-4, atol=1e-4)
  # Max pool 3x3/2 with -inf padding 1 (on a signed input to see the padding).
  signed = jnp.asarray(np.random.RandomState(1).randn(1, 7, 7, 2), jnp.float32) - 5
  pooled = np.asarray(flax.linen.max_pool(signed, (3, 3), (2, 2), ((1, 1), (1, 1))))
  sp = np.pad(np.asarray(signed[0], np.float64), ((1, 1), (1, 1), (0, 0)),
              constant_values=-np.inf)
  ref_pool = np.array([[sp[2 * i:2 * i + 3, 2 * j:2 * j + 3].max((0, 1))
                        for j in range(4)] for i in range(4)])
  np.testing.assert_allclose(pooled[0], ref_pool, rtol=1e-6)


def test_convert_roundtrip_tiny():
  enc = encoders.TinyEncoder()
  variables = _random_variables(enc)
  state = pretrained.flax_to_torch_state_dict(variables)
  assert "layer1.0.se.fc1.weight" in state
  assert "layer1.0.downsample.0.weight" in state
  assert state["conv1.weight"].shape == (8, 3, 7, 7)  # OIHW
  state["bn1.num_batches_tracked"] = np.array(7)
  state["fc.weight"] = np.zeros((10, 128), np.float32)
  back = pretrained.convert_torch_state_dict(state, enc)
  flat_a = flax.traverse_util.flatten_dict(variables)
  flat_b = flax.traverse_util.flatten_dict(back)
  assert set(flat_a) == set(flat_b)
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], np.asarray(flat_b[k]))


def test_convert_errors_list_every_offending_name():
  arch = "seresnext50_32x4d"
  flat = {k: np.zeros(v, np.float32) for k, v in
          pretrained.expected_variable_shapes(arch).items()}
  state = pretrained.flax_to_torch_state_dict(
      flax.traverse_util.unflatten_dict(flat))
  # The full-size state dict converts cleanly (names cover the whole model).
  pretrained.convert_torch_state_dict(state, arch)
  del state["layer3.5.conv2.weight"]
  state["layer2.0.se.fc1.weight"] = np.zeros((33, 512, 1, 1), np.float32)
  state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  state["head.proj.weight"] = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError) as err:
    pretrained.convert_torch_state_dict(state, arch, classifier="require")
  msg = str(err.value)
  for name in ("layer3_5/conv2/kernel (3, 3, 16, 512)", "layer2.0.se.fc1.weight",
               "(33, 512, 1, 1)", "layer5.0.conv1.weight", "head.proj.weight",
               "fc.weight", "fc.bias"):
    assert name in msg, (name, msg)
  assert "3 unexpected keys" not in msg  # fc.* is missing, not unexpected.
  assert re.search(r"2 unexpected keys", msg)


def test_load_pretrained_npz(tmp_path):
  enc = encoders.TinyEncoder()
  variables = _random_variables(enc, seed=5)
  path = tmp_path / "tiny.npz"
  np.savez(path, **pretrained.flax_to_torch_state_dict(variables))
  loaded = pretrained.load_pretrained(path, enc)
  np.testing.assert_array_equal(
      loaded["params"]["layer2_0"]["conv2"]["kernel"],
      variables["params"]["layer2_0"]["conv2"]["kernel"])
  with pytest.raises(errors.InputError, match="missing.npz"):
    pretrained.load_pretrained(tmp_path / "missing.npz", enc)
  bad = tmp_path / "w.h5"
  bad.write_bytes(b"")
  with pytest.raises(errors.InputError, match="unsupported weights file"):
    pretrained.load_pretrained(bad, enc)
  # NaN weights are refused, naming the file and the tensor.
  state = pretrained.flax_to_torch_state_dict(variables)
  key = sorted(state)[3]
  state[key] = np.full_like(state[key], np.nan)
  nan_path = tmp_path / "nan.npz"
  np.savez(nan_path, **state)
  with pytest.raises(errors.InputError, match=rf"nan\.npz.*{re.escape(key)}.*NaN"):
    pretrained.load_pretrained(nan_path, enc)
  # A truncated file is named too.
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(path.read_bytes()[:200])
  with pytest.raises(errors.InputError, match="truncated.npz"):
    pretrained.load_pretrained(truncated, enc)


# ----------------------------------------------------------------- reference


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["seresnext50_32x4d", "resnet50"])
def test_parity_with_timm(arch):
  model, torch = timm_model_with_random_bn(arch)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = pretrained.convert_torch_state_dict(state, arch,
                                                  classifier="require")
  n_torch = sum(v.numel() for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked") and
                not k.startswith("fc."))
  assert _count(variables) == n_torch
  assert sum(p.numel() for p in model.parameters()) == TIMM_PARAM_COUNT[arch]

  x = np.random.RandomState(0).randn(2, 96, 96, 3).astype(np.float32)
  with torch.no_grad():
    ref = model.forward_intermediates(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), intermediates_only=True)
  ours = encoders.create_encoder(arch).apply(variables, jnp.asarray(x),
                                             train=False)
  assert len(ours) == len(ref) == 5
  errors = []
  for a, b in zip(ours, ref):
    b = b.numpy().transpose(0, 2, 3, 1)
    assert a.shape == b.shape
    errors.append(float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)))
  print(f"{arch} relative error per feature (stem, layer1..4): {errors}")
  assert max(errors) <= PARITY_RTOL, errors


@pytest.mark.reference
def test_convert_script_pth_to_npz(tmp_path, capsys):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  model, torch = timm_model_with_random_bn("resnet50")
  src = tmp_path / "w.pth"
  torch.save(model.state_dict(), src)
  script = pathlib.Path(__file__).parents[1] / "scripts" / "convert_timm_weights.py"
  spec = importlib.util.spec_from_file_location("convert_timm_weights", script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = tmp_path / "w.npz"
  assert module.main(["--arch", "resnet50", "--in", str(src), "--out", str(out),
                      "--classifier", "require"]) == 0
  from_npz = pretrained.load_pretrained(out, "resnet50")
  from_pth = pretrained.load_pretrained(src, "resnet50")
  np.testing.assert_array_equal(
      from_npz["params"]["layer3_2"]["conv2"]["kernel"],
      model.layer3[2].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
  for a, b in zip(jax.tree_util.tree_leaves(from_npz),
                  jax.tree_util.tree_leaves(from_pth)):
    np.testing.assert_array_equal(a, b)
  # A checkpoint of another architecture fails in one line naming the file and the offending tensors;
  # nothing is written.
  capsys.readouterr()
  assert module.main(["--arch", "seresnext50_32x4d", "--in", str(src), "--out",
                      str(tmp_path / "x.npz")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {src}") and "layer1.0.conv1.weight" in err[0]
  assert not (tmp_path / "x.npz").exists()
