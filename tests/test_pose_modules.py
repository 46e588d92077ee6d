"""Tests for the Semi-Hand-Object pose modules: CR, hand decoder, object decoder, MANO outputs.

References: NumPy float64 (CR, Eq. 1-4; cell conventions) and, marked
`reference`, float64 torch functional re-implementations of the hand and object
decoders (NCHW, F.conv2d / F.batch_norm / F.max_pool2d / F.interpolate) run on
the same weights; scipy's Rotation for the 6D -> axis-angle path.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf
from scipy.spatial.transform import Rotation

from handobj_jax.evaluation.ho3d import FINGERTIP_VERTEX_IDS
from handobj_jax.models import contextual_reasoning as cr_lib
from handobj_jax.models import hand_decoder as hd
from handobj_jax.models import mano as mano_lib
from handobj_jax.models import object_decoder as od

# ||ours - ref|| / ||ref|| for the CR module against NumPy float64.
CR_RTOL = 1e-5
CR_ATTN_ATOL = 1e-5  # attention weights (probabilities), absolute
# Hand / object decoders against float64 torch (relative, per output).
DECODER_RTOL = 1e-4
THETA_ATOL = 1e-4  # radians


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _random_variables(shapes, seed=0):
  """Random float32 variables (kernels ~ 1 / sqrt(fan_in), BN variances > 0)."""
  rng = np.random.RandomState(seed)
  out = {}
  for k, s in flax.traverse_util.flatten_dict(shapes).items():
    a = rng.randn(*s.shape)
    if k[-1] == "kernel":
      a = a / np.sqrt(np.prod(s.shape[:-1]))
    elif k[-1] == "var":
      a = np.abs(a) + 0.5
    elif k[-1] == "scale":
      a = 0.75 + 0.5 * np.abs(a)
    elif k[-1] == "inv_temperature":
      a = 1.0 + np.abs(a)
    else:
      a = 0.1 * a
    out[k] = a.astype(np.float32)
  return flax.traverse_util.unflatten_dict(out)


def _rel(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------- CR


def _np_cr(p, query, context, valid, heads):
  """Eq. 1-4 in float64 NumPy (single block, h heads, exact GELU, LN eps 1e-5)."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  q64 = np.asarray(query, np.float64)
  b, s, _, c = q64.shape
  n, d = s * s, c // heads
  fq = q64.reshape(b, n, c)
  fc = np.asarray(context, np.float64).reshape(b, n, c)
  dense = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]
  qq = dense(fq, "query").reshape(b, n, heads, d)
  kk = dense(fc, "key").reshape(b, n, heads, d)
  vv = dense(fc, "value").reshape(b, n, heads, d)
  logits = np.einsum("bqhd,bkhd->bhqk", qq, kk) / np.sqrt(d)
  logits -= logits.max(-1, keepdims=True)
  attn = np.exp(logits)
  attn /= attn.sum(-1, keepdims=True)
  att = np.einsum("bhqk,bkhd->bqhd", attn, vv).reshape(b, n, c)
  valid = np.asarray(valid, bool)
  att[~valid] = 0.0
  attn[~valid] = 0.0
  x = fq + att
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  ln = (x - mu) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
  h = dense(ln, "mlp_fc1")
  h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
  return (x + dense(h, "mlp_fc2")).reshape(b, s, s, c), attn


@pytest.mark.parametrize("heads", [1, 4])
def test_contextual_reasoning_matches_numpy_eq_1_to_4(heads):
  b, s, c = 3, 6, 16
  rng = np.random.RandomState(heads)
  query = rng.randn(b, s, s, c).astype(np.float32)
  context = rng.randn(b, s, s, c).astype(np.float32)
  valid = np.array([True, False, True])
  module = cr_lib.ContextualReasoning(num_heads=heads)
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), query, context, valid))
  variables = _random_variables(shapes, seed=heads)
  # Sharper attention than random weights give, so the softmax matters.
  for name in ("query", "key"):
    variables["params"][name]["kernel"] *= 2.0
  apply = jax.jit(module.apply)
  with jax.default_matmul_precision("highest"):
    out, attn = apply(variables, query, context, valid)
    # The invalid example ignores its context entirely (bitwise).
    context2 = context.copy()
    context2[1] = rng.randn(s, s, c)
    context2[0] += 1.0
    out2, _ = apply(variables, query, context2, valid)
  ref, ref_attn = _np_cr(variables["params"], query, context, valid, heads)
  assert out.shape == (b, s, s, c) and attn.shape == (b, heads, s * s, s * s)
  err = _rel(out, ref)
  print(f"CR(heads={heads}) relative error vs float64 NumPy: {err:.2e}, "
        f"attention max abs error {np.abs(np.asarray(attn) - ref_attn).max():.1e}")
  assert err <= CR_RTOL
  np.testing.assert_allclose(attn, ref_attn, rtol=0, atol=CR_ATTN_ATOL)
  np.testing.assert_allclose(np.asarray(attn)[valid].sum(-1), 1.0, atol=1e-5)
  assert np.all(np.asarray(attn)[~valid] == 0.0)
  assert attn[0].max() > 5.0 / (s * s)  # not uniform
  np.testing.assert_array_equal(np.asarray(out2)[1], np.asarray(out)[1])
  assert not np.allclose(out2[0], out[0], atol=1e-3)
  # Invalid context: F+ = F_query + MLP(LN(F_query)) (NumPy with Att = 0).
  no_ctx, _ = _np_cr(variables["params"], query, context, [False] * b, heads)
  assert _rel(np.asarray(out)[1], no_ctx[1]) <= CR_RTOL
  assert _rel(np.asarray(out)[0], no_ctx[0]) > 1e-2  # attention matters


def test_contextual_reasoning_rejects_bad_shapes():
  module = cr_lib.ContextualReasoning(num_heads=3)
  x = jnp.zeros((1, 4, 4, 16))
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, x, jnp.ones(1)))
  with pytest.raises(ValueError, match="query and context"):
    jax.eval_shape(lambda: cr_lib.ContextualReasoning().init(
        jax.random.PRNGKey(0), x, jnp.zeros((1, 4, 4, 8)), jnp.ones(1)))


# ------------------------------------------------------- cell conventions


def test_cell_centers_and_soft_argmax_convention():
  s = 8
  grid = np.asarray(hd.cell_centers(s))
  assert grid.shape == (s, s, 2)
  np.testing.assert_allclose(grid[3, 5], [5.5 / s, 3.5 / s])  # (u, v) = (col, row)
  logits = np.full((1, s, s, 2), -1e4, np.float32)
  logits[0, 3, 5, 0] = 0.0          # joint 0 at row 3, col 5
  logits[0, 6, 1, 1] = 0.0          # joint 1 at row 6, col 1
  logits[0, 6, 2, 1] = 0.0          # ... and col 2: mean col 1.5
  heat = hd.spatial_softmax(jnp.asarray(logits), jnp.ones(2))
  np.testing.assert_allclose(np.asarray(heat).sum((1, 2)), 1.0, atol=1e-6)
  uv = np.asarray(hd.soft_argmax(heat))
  np.testing.assert_allclose(uv[0], [[5.5 / s, 3.5 / s], [2.0 / s, 6.5 / s]],
                             atol=1e-6)
  # Inverse temperature: heatmap = softmax(beta * logits) over the cells.
  z = np.random.RandomState(0).randn(2, s, s, 3)
  beta = np.array([0.5, 1.0, 3.0])
  heat = np.asarray(hd.spatial_softmax(jnp.asarray(z, jnp.float32), jnp.asarray(beta)))
  e = np.exp(z * beta - (z * beta).max(axis=(1, 2), keepdims=True))
  np.testing.assert_allclose(heat, e / e.sum(axis=(1, 2), keepdims=True),
                             rtol=1e-5, atol=1e-8)


# ------------------------------------------------ torch functional references


def _torch_ops():
  from reference_helpers import import_torch  # pylint: disable=import-outside-toplevel
  torch = import_torch()
  F = torch.nn.functional

  def t(a):
    return torch.from_numpy(np.asarray(a, np.float64).copy())

  def conv(x, p, pad=0):
    w = t(np.asarray(p["kernel"]).transpose(3, 2, 0, 1))
    return F.conv2d(x, w, t(p["bias"]) if "bias" in p else None, padding=pad)

  def bn(x, p, s):
    return F.batch_norm(x, t(s["mean"]), t(s["var"]), t(p["scale"]), t(p["bias"]),
                        training=False, eps=1e-5)

  return torch, F, t, conv, bn


def _torch_hand_decoder(variables, x_nhwc, depth, blocks, stage_blocks, hidden,
                        pose_repr):
  torch, F, t, conv, bn = _torch_ops()
  P, S = variables["params"], variables["batch_stats"]

  def preact(x, p, s):
    act = lambda y: F.leaky_relu(y, 0.01)
    y = conv(act(bn(x, p["bn1"], s["bn1"])), p["conv1"])
    y = conv(act(bn(y, p["bn2"], s["bn2"])), p["conv2"], pad=1)
    y = conv(act(bn(y, p["bn3"], s["bn3"])), p["conv3"])
    return y + (conv(x, p["shortcut"]) if "shortcut" in p else x)

  def res(x, p, s, name):
    for i in range(blocks):
      x = preact(x, p[f"{name}_{i}"], s[f"{name}_{i}"])
    return x

  def hourglass(x, p, s, n):
    up1 = res(x, p, s, f"level{n}_skip")
    low = res(F.max_pool2d(x, 2, 2), p, s, f"level{n}_down")
    low = hourglass(low, p, s, n - 1) if n > 1 else res(low, p, s, "bottom")
    low = res(low, p, s, f"level{n}_up")
    return up1 + F.interpolate(low, scale_factor=2, mode="nearest")

  jp, js = P["joints"], S["joints"]
  with torch.no_grad():
    x = t(np.asarray(x_nhwc).transpose(0, 3, 1, 2))
    b, _, s, _ = x.shape
    y = hourglass(x, jp["hourglass"], js["hourglass"], depth)
    y = res(y, jp, js, "res")
    y = F.leaky_relu(bn(conv(y, jp["fc_conv"]), jp["fc_bn"], js["fc_bn"]), 0.01)
    logits = conv(y, jp["score"])  # [B, J, S, S]
    j = logits.shape[1]
    beta = t(jp["inv_temperature"]).view(1, j, 1)
    heat = torch.softmax(logits.reshape(b, j, s * s) * beta, dim=2).reshape(b, j, s, s)
    centres = (torch.arange(s, dtype=torch.float64) + 0.5) / s
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    uv = torch.stack([(heat * uu).sum((2, 3)), (heat * vv).sum((2, 3))], dim=-1)

    mp, ms = P["mesh"], S["mesh"]
    z = conv(heat, mp["heatmap_conv"]) + conv(y, mp["feature_conv"])
    for st in range(4):
      for i in range(stage_blocks):
        z = preact(z, mp[f"stage{st}_{i}"], ms[f"stage{st}_{i}"])
      z = F.max_pool2d(z, 2, 2)
    h = z.permute(0, 2, 3, 1).reshape(b, -1)  # NHWC flattening order
    for i in range(len(hidden)):
      h = F.leaky_relu(h @ t(mp[f"fc{i}"]["kernel"]) + t(mp[f"fc{i}"]["bias"]), 0.01)
    params = (h @ t(mp["fc_out"]["kernel"]) + t(mp["fc_out"]["bias"])).numpy()
  if pose_repr == "axis_angle":
    theta = params[:, :48]
    rotmats = Rotation.from_rotvec(theta.reshape(-1, 3)).as_matrix()
  else:
    d6 = params[:, :96].reshape(-1, 6)
    a1, a2 = d6[:, :3], d6[:, 3:]
    b1 = a1 / np.linalg.norm(a1, axis=1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    rotmats = np.stack([b1, b2, np.cross(b1, b2)], axis=-1)
    theta = Rotation.from_matrix(rotmats).as_rotvec().reshape(b, 48)
  return dict(heatmaps=heat.numpy().transpose(0, 2, 3, 1), joints_uv=uv.numpy(),
              params=params, theta=theta, beta=params[:, -10:],
              rotmats=rotmats.reshape(b, 16, 3, 3))


HAND_CONFIGS = {
    # Table 6 layout at reduced width: the last stage widens (1x1 shortcut).
    "paper": dict(stage_channels=(16, 16, 16, 32), blocks_per_stage=1,
                  hidden=(64, 32), pose_repr="axis_angle"),
    # Released layout at reduced width: 2 blocks per stage, 6D rotations.
    "released": dict(stage_channels=(16, 16, 16, 16), blocks_per_stage=2,
                     hidden=(64, 32), pose_repr="rot6d"),
}


@pytest.mark.reference
@pytest.mark.parametrize("config", sorted(HAND_CONFIGS))
def test_hand_decoder_matches_torch_reference(config):
  kw = HAND_CONFIGS[config]
  model = hd.HandDecoder(**kw)
  x = np.random.RandomState(1).randn(2, 32, 32, 16).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  variables = _random_variables(shapes, seed=7)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  ref = _torch_hand_decoder(variables, x, depth=4, blocks=1,
                            stage_blocks=kw["blocks_per_stage"],
                            hidden=kw["hidden"], pose_repr=kw["pose_repr"])
  assert out["heatmaps"].shape == (2, 32, 32, 21)
  assert out["joints_uv"].shape == (2, 21, 2)
  assert out["embedding"].shape == (2, 4 * kw["stage_channels"][-1])
  errors = {k: _rel(out[k], ref[k]) for k in
            ("heatmaps", "joints_uv", "params", "beta", "rotmats")}
  print(f"hand decoder ({config}) relative errors vs float64 torch: {errors}")
  assert max(errors.values()) <= DECODER_RTOL, errors
  np.testing.assert_allclose(out["theta"], ref["theta"], rtol=0, atol=THETA_ATOL)
  np.testing.assert_allclose(np.asarray(out["heatmaps"]).sum((1, 2)), 1.0, atol=1e-5)
  # The heatmaps are not trivially uniform, so the comparison is meaningful.
  assert np.asarray(out["heatmaps"]).max() > 3.0 / (32 * 32)


def _torch_object_decoder(variables, x_nhwc, num_shared, offset_scale):
  torch, F, t, conv, bn = _torch_ops()
  P, S = variables["params"], variables["batch_stats"]

  def cba(y, name):
    y = conv(y, P[f"{name}_conv"], pad=1)
    return F.leaky_relu(bn(y, P[f"{name}_bn"], S[f"{name}_bn"]), 0.1)

  with torch.no_grad():
    x = t(np.asarray(x_nhwc).transpose(0, 3, 1, 2))
    for i in range(num_shared):
      x = cba(x, f"shared{i}")
    loc = conv(cba(x, "loc"), P["loc_out"]).numpy().transpose(0, 2, 3, 1)
    conf = torch.sigmoid(conv(cba(x, "conf"), P["conf_out"])).numpy()
  b, s = loc.shape[:2]
  n = loc.shape[-1] // 2
  offsets = offset_scale * loc.reshape(b, s, s, n, 2)  # channel 2i: du, 2i+1: dv
  points = offsets.copy()
  for row in range(s):
    for col in range(s):
      points[:, row, col, :, 0] += (col + 0.5) / s
      points[:, row, col, :, 1] += (row + 0.5) / s
  return dict(offsets=offsets, points=points,
              confidence=conf.transpose(0, 2, 3, 1))


@pytest.mark.reference
def test_object_decoder_matches_torch_reference():
  model = od.ObjectDecoder(channels=16)
  x = np.random.RandomState(2).randn(2, 8, 8, 24).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  variables = _random_variables(shapes, seed=3)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  ref = _torch_object_decoder(variables, x, 4, 0.1)
  assert out["points"].shape == (2, 8, 8, 21, 2)
  assert out["confidence"].shape == (2, 8, 8, 21)
  errors = {k: _rel(out[k], ref[k]) for k in ("offsets", "points", "confidence")}
  print(f"object decoder relative errors vs float64 torch: {errors}")
  assert max(errors.values()) <= DECODER_RTOL, errors
  conf = np.asarray(out["confidence"])
  assert conf.min() > 0 and conf.max() < 1
  np.testing.assert_allclose(conf, 1 / (1 + np.exp(-np.asarray(out["confidence_logits"],
                                                             np.float64))), atol=1e-6)


# --------------------------------------------------------------- init, MANO


@pytest.mark.parametrize("pose_repr", ["axis_angle", "rot6d"])
def test_mano_regressor_initial_pose_is_near_zero(pose_repr):
  """The last layer's initialisers give a near-zero pose (identity rotations)."""
  model = hd.ManoRegressor(stage_channels=(8, 8, 8, 8), hidden=(64, 32),
                           pose_repr=pose_repr)
  rng = np.random.RandomState(0)
  heat = jax.nn.softmax(jnp.asarray(rng.randn(2, 16 * 16, 21), jnp.float32),
                        axis=1).reshape(2, 16, 16, 21)
  feats = jnp.asarray(rng.randn(2, 16, 16, 8), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), heat, feats,
                                             train=False))
  variables = _random_variables(shapes)
  # The body keeps its random weights; the last layer uses the module's initialisers.
  fc_out = shapes["params"]["fc_out"]
  variables["params"]["fc_out"] = {
      "kernel": hd.pose_head_kernel_init(jax.random.PRNGKey(1), fc_out["kernel"].shape),
      "bias": hd.pose_head_bias_init(pose_repr)(None, fc_out["bias"].shape)}
  out = jax.jit(functools.partial(model.apply, train=False))(variables, heat, feats)
  theta, beta = np.asarray(out["theta"]), np.asarray(out["beta"])
  print(f"{pose_repr}: initial |theta| max {np.abs(theta).max():.2e}, "
        f"|beta| max {np.abs(beta).max():.2e}")
  assert np.abs(theta).max() < 0.05 and np.abs(beta).max() < 0.05
  assert np.abs(theta).max() > 0  # not frozen at exactly zero
  np.testing.assert_allclose(out["rotmats"], np.broadcast_to(np.eye(3), (2, 16, 3, 3)),
                             atol=0.05)
  assert out["params"].shape == (2, 58 if pose_repr == "axis_angle" else 106)
  # theta and rotmats describe the same rotations.
  np.testing.assert_allclose(
      Rotation.from_rotvec(theta.reshape(-1, 3).astype(np.float64)).as_matrix(),
      np.asarray(out["rotmats"]).reshape(-1, 3, 3), atol=1e-5)
  # Without the small initialisers the same body gives a far-from-zero pose.
  big = _random_variables(shapes)
  far = jax.jit(functools.partial(model.apply, train=False))(big, heat, feats)
  assert np.abs(np.asarray(far["theta"])).max() > 0.1


def test_mano_outputs_root_relative_ho3d_joints():
  model = mano_lib.synthetic_mano_model("right")
  rng = np.random.RandomState(0)
  theta = (0.3 * rng.randn(3, 48)).astype(np.float32)
  beta = rng.randn(3, 10).astype(np.float32)
  out = hd.mano_outputs(model, theta, beta)
  verts, joints = mano_lib.mano_forward(model, theta, beta, flat_hand_mean=True)
  verts, joints = np.asarray(verts), np.asarray(joints)
  assert out["verts"].shape == (3, 778, 3) and out["joints"].shape == (3, 21, 3)
  np.testing.assert_array_equal(np.asarray(out["joints"])[:, 0], 0.0)
  np.testing.assert_allclose(out["root"], joints[:, 0], atol=1e-7)
  np.testing.assert_allclose(out["joints"], joints - joints[:, :1], atol=1e-6)
  np.testing.assert_allclose(out["verts"], verts - joints[:, :1], atol=1e-6)
  # Joints 16-20 are the HO-3D fingertip vertices (thumb, index, middle, ring, little).
  tips = np.asarray(out["verts"])[:, list(FINGERTIP_VERTEX_IDS["ho3d"])]
  np.testing.assert_allclose(np.asarray(out["joints"])[:, 16:], tips, atol=1e-7)
  alt = hd.mano_outputs(model, theta, beta, fingertips="alternative")
  np.testing.assert_allclose(
      np.asarray(alt["joints"])[:, 16:],
      np.asarray(alt["verts"])[:, list(FINGERTIP_VERTEX_IDS["alternative"])], atol=1e-7)
  assert np.abs(np.asarray(alt["joints"])[:, 16:] - tips).max() > 1e-3
  absolute = hd.mano_outputs(model, theta, beta, root_relative=False)
  np.testing.assert_allclose(absolute["joints"], joints, atol=1e-7)
  # flat_hand_mean=False adds MANO's mean pose.
  mean = hd.mano_outputs(model, theta, beta, flat_hand_mean=False)
  assert np.abs(np.asarray(mean["verts"]) - np.asarray(out["verts"])).max() > 1e-3
  with pytest.raises(ValueError, match="fingertips"):
    hd.mano_outputs(model, theta, beta, fingertips="mano")


def test_mano_regressor_to_mano_gradients_are_finite_at_identity():
  """rot6d regressor -> axis-angle -> MANO: finite gradients at identity rotations.

  Identity is the degenerate point of the matrix -> axis-angle map (angle 0),
  and where the 6D head starts.
  """
  model = hd.ManoRegressor(stage_channels=(4, 4, 4, 4), hidden=(16, 16),
                           pose_repr="rot6d")
  mano_model = mano_lib.synthetic_mano_model("right")
  rng = np.random.RandomState(0)
  heat = jnp.asarray(rng.rand(1, 16, 16, 21) / 256, jnp.float32)
  feats = jnp.asarray(rng.randn(1, 16, 16, 4), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), heat, feats,
                                             train=False))
  variables = _random_variables(shapes)
  variables["params"]["fc_out"]["kernel"][:] = 0.0  # exactly identity rotations
  variables["params"]["fc_out"]["bias"][:] = hd.pose_head_bias_init("rot6d")(
      None, (106,))

  def f(params):
    out = model.apply({**variables, "params": params}, heat, feats, train=False)
    mano_out = hd.mano_outputs(mano_model, out["theta"], out["beta"])
    return jnp.sum(jnp.square(mano_out["joints"][:, 1:] - 0.01))

  grads = jax.jit(jax.grad(f))(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert np.abs(np.asarray(grads["fc_out"]["kernel"])).max() > 0


# --------------------------------------------------------- parameter counts


def _preact(cin, w):
  """Parameters of a pre-activation bottleneck (BNs, 3 convs with bias, shortcut)."""
  m = w // 2
  n = 2 * cin + 4 * m + (cin * m + m) + (9 * m * m + m) + (m * w + w)
  return n + (cin * w + w if cin != w else 0)


def test_full_size_head_parameter_counts():
  c, s, j = 256, 32, 21
  x = jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
  valid = jax.ShapeDtypeStruct((1,), jnp.bool_)
  counts = {}
  cr = jax.eval_shape(lambda a, v: cr_lib.ContextualReasoning().init(
      jax.random.PRNGKey(0), a, a, v), x, valid)
  counts["CR"] = _count(cr["params"])
  hand = jax.eval_shape(lambda a: hd.HandDecoder().init(
      jax.random.PRNGKey(0), a, train=False), x)
  counts["hand joints"] = _count(hand["params"]["joints"])
  counts["hand mesh (paper)"] = _count(hand["params"]["mesh"])
  released = jax.eval_shape(lambda a: hd.HandDecoder(**hd.RELEASED_MANO_REGRESSOR).init(
      jax.random.PRNGKey(0), a, train=False), x)
  counts["hand mesh (released)"] = _count(released["params"]["mesh"])
  obj = jax.eval_shape(lambda a: od.ObjectDecoder().init(
      jax.random.PRNGKey(0), a, train=False), x)
  counts["object"] = _count(obj["params"])
  print("head parameter counts (S=32, C=256):", counts)

  expected = {
      "CR": 3 * (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c),
      "hand joints": 14 * _preact(c, c) + (c * c + c) + 2 * c + (c * j + j) + j,
      "hand mesh (paper)": (j * c + c) + (c * c + c) + 3 * _preact(c, c) +
                           _preact(c, 512) + (2048 * 1024 + 1024) +
                           (1024 * 512 + 512) + (512 * 58 + 58),
      "hand mesh (released)": (j * c + c) + (c * c + c) + 8 * _preact(c, c) +
                              (1024 * 1024 + 1024) + (1024 * 512 + 512) +
                              (512 * 106 + 106),
      "object": 6 * (9 * c * c + 2 * c) + (c * 2 * j + 2 * j) + (c * j + j),
  }
  assert counts == expected
  assert counts == {"CR": 723_456, "hand joints": 3_075_114,
                    "hand mesh (paper)": 4_288_314,
                    "hand mesh (released)": 3_416_426, "object": 3_558_207}
