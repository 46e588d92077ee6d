"""Tests for handobj_jax.models.cohesiv and unet (COHESIV network, Sec. 3.2)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.models import cohesiv
from handobj_jax.models import pretrained
from handobj_jax.models.cohesiv import CohesivNet

TINY = dict(encoder="tiny", decoder_channels=(32, 16, 16, 8, 8), embed_dim=16,
            attn_dim=8)
# Published timm parameter counts without the 1000-class classifier, plus the
# BN running mean/var buffers (2 per BN channel), i.e. torch params + buffers
# - num_batches_tracked - fc. Checked against timm in test_encoders.py.
ENCODER_VARS = {"seresnext50": 27_559_896 - 2_049_000 + 68_224,
                "resnet50": 25_557_032 - 2_049_000 + 53_120}
ENCODER_CHANNELS = (64, 256, 512, 1024, 2048)


def _decoder_and_heads_count(skips, decoder_channels, embed_dim, attn_dim,
                             center):
  """Parameter + BN-statistic count of U-Net decoder and heads, by hand."""
  n = 0
  x = skips[4]
  skip_channels = list(reversed(skips[:4])) + [0]
  for d, s in zip(decoder_channels, skip_channels):
    n += 9 * (x + s) * d + 4 * d  # conv (no bias) + BN scale/bias/mean/var
    n += 9 * d * d + 4 * d
    x = d
  n += 9 * x * embed_dim + embed_dim  # final conv with bias
  head = 9 * embed_dim * attn_dim + attn_dim + 9 * attn_dim * attn_dim + attn_dim
  n += 2 * head
  if center:
    n += 9 * embed_dim * attn_dim + attn_dim + 9 * attn_dim + 1
  return n


def _random_variables(model, images, seed=0):
  """Random variables with the structure of model.init (no RNG compile)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images,
                                             train=False))
  rng = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(shapes)
  out = {}
  for k, v in flat.items():
    if k[-1] == "kernel":
      fan_in = int(np.prod(v.shape[:-1]))
      a = rng.randn(*v.shape) * np.sqrt(2.0 / fan_in)
    elif k[-1] in ("scale", "var"):
      a = 1.0 + 0.1 * rng.rand(*v.shape)
    else:  # bias, mean
      a = 0.05 * rng.randn(*v.shape)
    out[k] = jnp.asarray(a, jnp.float32)
  return flax.traverse_util.unflatten_dict(out)


@pytest.mark.parametrize("encoder", ["seresnext50", "resnet50"])
def test_full_size_shapes_and_parameter_count(encoder):
  model = CohesivNet(encoder=encoder)
  images = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, images)
  assert out["z"].shape == (2, 256, 256, 64)
  assert out["q"].shape == out["k"].shape == (2, 256, 256, 64)
  assert out["center"].shape == (2, 256, 256)
  assert all(o.dtype == jnp.float32 for o in out.values())
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))
  expected = ENCODER_VARS[encoder] + _decoder_and_heads_count(
      ENCODER_CHANNELS, (256, 128, 64, 32, 16), 64, 64, True)
  print(f"CohesivNet({encoder}) parameters + BN statistics: {count:,}")
  assert count == expected
  assert set(variables["params"]) == {"encoder", "decoder", "q_head", "k_head",
                                      "center_head"}


@pytest.fixture(scope="module")
def tiny_run():
  model = CohesivNet(**TINY)
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
  variables = _random_variables(model, images)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  return model, images, variables, out


def test_tiny_forward_shapes(tiny_run):
  model, _, variables, out = tiny_run
  assert out["z"].shape == (2, 64, 64, 16)
  assert out["q"].shape == out["k"].shape == (2, 64, 64, 8)
  assert out["center"].shape == (2, 64, 64)
  for v in out.values():
    assert np.isfinite(np.asarray(v)).all()
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))
  enc = model.make_encoder()
  n_encoder = sum(int(np.prod(s)) for s in
                  pretrained.expected_variable_shapes(enc).values())
  assert count == n_encoder + _decoder_and_heads_count(
      enc.feature_channels, TINY["decoder_channels"], 16, 8, True)


def test_normalisation_inside_model(tiny_run):
  """The model normalises [0,1] images with ImageNet mean/std before the encoder."""
  model, images, variables, _ = tiny_run
  enc = model.make_encoder()
  enc_vars = {c: variables[c]["encoder"] for c in ("params", "batch_stats")}
  captured = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=lambda m, _: m.name == "encoder",
      mutable=["intermediates"])[1])(variables, images)
  feats = captured["intermediates"]["encoder"]["__call__"][0]
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  manual = jax.jit(lambda v, x: enc.apply(v, x, train=False))(
      enc_vars, (np.asarray(images) - mean) / std)
  for a, b in zip(feats, manual):
    # Relative error of the whole feature map (as the timm parity tests; ~3e-7
    # on AVX-512): the two paths may round the normalisation differently
    # (x * (1/std) vs x / std), which reaches near-zero activations as
    # absolute, not relative, noise. A missing or doubled normalisation gives
    # errors of order 1.
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)


def _bilinear_np(img, x, y):
  """float64 NumPy bilinear sample of img [H, W, C] at (x, y), border clamped."""
  h, w = img.shape[:2]
  x = min(max(x, 0.0), w - 1.0)
  y = min(max(y, 0.0), h - 1.0)
  x0, y0 = int(np.floor(x)), int(np.floor(y))
  x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
  ax, ay = x - x0, y - y0
  img = img.astype(np.float64)
  return ((1 - ay) * ((1 - ax) * img[y0, x0] + ax * img[y0, x1]) +
          ay * ((1 - ax) * img[y1, x0] + ax * img[y1, x1]))


def test_attention_matches_manual_dot_product(tiny_run):
  _, _, _, out = tiny_run
  q, k = np.asarray(out["q"]), np.asarray(out["k"])
  # Rescale so that raw values are O(1), straddle [0, 1] and exercise the clamp.
  q = q / q.std()
  k = k / (k.std() * np.sqrt(q.shape[-1]))
  points = np.array([[[5.0, 17.0], [30.25, 8.75], [70.0, -3.0]],
                     [[63.0, 63.0], [0.5, 40.0], [12.0, 1.0]]], np.float32)
  att = cohesiv.attention_map(jnp.asarray(q), jnp.asarray(k),
                              jnp.asarray(points))
  assert att.attention.shape == att.raw.shape == (2, 3, 64, 64)
  a = np.asarray(att.attention)
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert (np.asarray(att.raw) < 0).any() and (np.asarray(att.raw) > 1).any()
  for b in range(2):
    for p in range(3):
      qv = _bilinear_np(q[b], *points[b, p])
      ref = np.einsum("hwa,a->hw", k[b].astype(np.float64), qv)
      np.testing.assert_allclose(att.raw[b, p], ref, rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(a[b, p], np.clip(ref, 0, 1), rtol=1e-5,
                                 atol=1e-4)
  # Integer query: exactly Q[y, x] (row y, column x). Absolute tolerance: the
  # dot product may be near 0 (raw values are O(1) here, float32 sums of
  # products err by ~1e-7); a neighbouring pixel's Q differs by O(0.1).
  np.testing.assert_allclose(att.raw[0, 0, 3, 4],
                             np.dot(q[0, 17, 5].astype(np.float64),
                                    k[0, 3, 4].astype(np.float64)),
                             rtol=0, atol=1e-5)


def test_attention_jit_vmap_eager_agree():
  rng = np.random.RandomState(2)
  q = jnp.asarray(rng.randn(3, 9, 11, 4), jnp.float32)
  k = jnp.asarray(rng.randn(3, 9, 11, 4), jnp.float32)
  pts = jnp.asarray(rng.uniform(-2, 12, (3, 5, 2)), jnp.float32)
  eager = cohesiv.attention_map(q, k, pts)
  jitted = jax.jit(cohesiv.attention_map)(q, k, pts)
  vmapped = jax.vmap(lambda a, b, c: cohesiv.attention_map(
      a[None], b[None], c[None]))(q, k, pts)
  # Raw values are 4-term dot products of N(0, 1) features (|raw| < ~10):
  # modes may sum in another order (a few float32 ulps, < 1e-5 absolute, also
  # where terms cancel to ~0); a wrong axis or sample point differs by O(1).
  for x in (jitted, vmapped):
    np.testing.assert_allclose(x.raw.reshape(eager.raw.shape), eager.raw,
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        x.attention.reshape(eager.raw.shape), eager.attention, rtol=0,
        atol=1e-5)
  # Degenerate points stay finite.
  bad = pts.at[0, 0].set(jnp.nan).at[1, 1].set(jnp.inf)
  assert np.isfinite(np.asarray(cohesiv.attention_map(q, k, bad).raw)).all()
  with pytest.raises(ValueError, match="points must be"):
    cohesiv.attention_map(q, k, pts[0])


def test_center_head_gradient_is_stopped(tiny_run):
  """A centre loss reaches the centre head but not Z (hence no backbone update)."""
  model, images, variables, _ = tiny_run

  def grads(net):
    # Differentiate w.r.t. the last layer before Z and the centre head only, so
    # the backward pass (and its compile) stays small; stop_gradient on Z cuts
    # everything upstream of final_conv as well.
    def loss(final_conv, center_head):
      params = {**variables["params"], "center_head": center_head,
                "decoder": {**variables["params"]["decoder"],
                            "final_conv": final_conv}}
      out = net.apply({**variables, "params": params}, images, train=False)
      return jnp.sum(out["center"] ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(
        variables["params"]["decoder"]["final_conv"],
        variables["params"]["center_head"])

  def norm(tree):
    return float(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree)))

  to_z, to_head = grads(model)
  assert norm(to_head) > 0
  assert norm(to_z) == 0
  to_z, to_head = grads(model.clone(freeze_backbone_for_center=False))
  assert norm(to_head) > 0 and norm(to_z) > 0


def test_train_mode_updates_batch_stats(tiny_run):
  model, images, variables, _ = tiny_run
  _, updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"]))(variables, images)
  old = variables["batch_stats"]["decoder"]["block0"]["conv1"]["bn"]["mean"]
  new = updates["batch_stats"]["decoder"]["block0"]["conv1"]["bn"]["mean"]
  assert not np.allclose(old, new)


def test_merge_pretrained_encoder(tiny_run):
  model, _, variables, _ = tiny_run
  enc = model.make_encoder()
  rng = np.random.RandomState(7)
  state = {k: rng.randn(*v.shape).astype(np.float32) for k, v in
           pretrained.flax_to_torch_state_dict(
               {c: variables[c]["encoder"]
                for c in ("params", "batch_stats")}).items()}
  enc_vars = pretrained.convert_torch_state_dict(state, enc)
  merged = pretrained.merge_into(variables, enc_vars, prefix=("encoder",))
  np.testing.assert_array_equal(
      merged["params"]["encoder"]["layer2_0"]["conv2"]["kernel"],
      state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      merged["batch_stats"]["encoder"]["bn1"]["var"], state["bn1.running_var"])
  # Decoder untouched, input not modified.
  assert merged["params"]["decoder"] is not None
  np.testing.assert_array_equal(merged["params"]["q_head"]["conv1"]["kernel"],
                                variables["params"]["q_head"]["conv1"]["kernel"])
  assert not np.array_equal(variables["batch_stats"]["encoder"]["bn1"]["var"],
                            state["bn1.running_var"])
  # Mis-shaped and missing encoder variables: every difference is named.
  wrong = jax.tree_util.tree_map(lambda x: x, enc_vars)
  wrong["params"]["conv1"]["kernel"] = jnp.zeros((7, 7, 3, 9))
  del wrong["params"]["layer4_0"]["se"]
  with pytest.raises(ValueError) as err:
    pretrained.merge_into(variables, wrong)
  msg = str(err.value)
  assert "params/encoder/conv1/kernel: encoder_vars (7, 7, 3, 9)" in msg
  assert "params/encoder/layer4_0/se/fc1/kernel" in msg
  assert "params/encoder/layer4_0/se/fc2/bias" in msg


def test_bad_input_errors():
  model = CohesivNet(**TINY)
  with pytest.raises(ValueError, match="multiples of 32"):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                   jax.ShapeDtypeStruct((1, 48, 64, 3), jnp.float32))
  with pytest.raises(ValueError, match="divide uint8"):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                   jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))
  with pytest.raises(ValueError, match="CohesivNet.encoder"):
    CohesivNet(encoder="vgg").make_encoder()
