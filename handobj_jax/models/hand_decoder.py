"""Hand decoder of Semi-Hand-Object (Sec. 4.2, Appendix A, Table 6) and the MANO output layer.

Shape vocabulary: B batch, S RoI size (32), C channels (256), J joints (21),
V vertices (778). Input: hand RoI features x [B, S, S, C] (RoIAlign of the
FPN's P2 on the hand box), S divisible by 2**depth (16 for depth 4).

RoI-normalised coordinates: the RoI (the hand box [x0, y0, x1, y1] in pixels)
is the unit square; u = (x - x0) / (x1 - x0), v = (y - y0) / (y1 - y0). Cell
(row, col) of an S x S map covers [col / S, (col + 1) / S] x [row / S,
(row + 1) / S] and its centre is ((col + 0.5) / S, (row + 0.5) / S). This is
the released code's `normalize_joints` convention; the caller maps back to
pixels with x = x0 + u (x1 - x0), y = y0 + v (y1 - y0).

2D joints localisation (`JointHeatmapHead`):
  hourglass (depth 4, one pre-activation bottleneck per position)
    -> 1 pre-activation bottleneck -> conv1x1(C)-BN-LeakyReLU -> conv1x1(J)
  logits [B, S, S, J]; heatmaps H = softmax over the S*S cells of
  (logits * beta_j), beta_j a learnable per-joint inverse temperature
  (initialised to 1); H >= 0 sums to 1 per joint. 2D joints (Appendix A,
  J_i = sum_p p H_i(p)) are the heatmap-weighted mean of the cell centres, in
  RoI-normalised (u, v) in [1 / (2S), 1 - 1 / (2S)].

Mesh regression (`ManoRegressor`):
  x = conv1x1(C)(H) + conv1x1(C)(F)   with F the head's features before the
                                      score conv (the released code's
                                      `hand_Encoder` input)
  4 stages of [blocks_per_stage pre-activation residual blocks of width
  stage_channels[s] -> 2x2 max-pool]: 32 -> 16 -> 8 -> 4 -> 2
  flatten (2 * 2 * stage_channels[-1]) -> Dense 1024 -> LeakyReLU
  -> Dense 512 -> LeakyReLU -> Dense P
  Defaults follow Table 6: one residual block per stage ("4 Residual Block"),
  widths (256, 256, 256, 512) so that the last stage gives 2 x 2 x 512 and a
  2048-D vector (the paper does not say where the width grows; here the first
  block of the last stage widens it with a 1x1 projection shortcut). The
  released supervised code uses `RELEASED_MANO_REGRESSOR`: two blocks per
  stage at constant width 256 (a 1024-D vector), 1024 -> 1024 -> 512 and
  6D rotations.
  Pose representation (`pose_repr`):
    'axis_angle' (paper): P = 48 + 10 = 58, theta [B, 48] axis-angle
      (3 global + 15 x 3 articulated, MANO joint order, radians) then beta.
    'rot6d' (released code): P = 16 * 6 + 10 = 106, 16 6D rotations
      (Zhou et al.; first two columns of R) then beta; converted to rotation
      matrices by Gram-Schmidt and to axis-angle for MANO.
  The last Dense layer is initialised with a tiny kernel (variance scale
  1e-4) and a bias giving theta = 0 (axis_angle) or identity rotations
  (rot6d) and beta = 0, so the initial hand is MANO's zero pose.

Pre-activation bottleneck (Newell et al.'s hourglass unit, as in the released
code): BN-LReLU-conv1x1(w/2) -> BN-LReLU-conv3x3(w/2) -> BN-LReLU-conv1x1(w),
plus the input (or a 1x1 conv of it when the width changes); convs with bias.
LeakyReLU slope 0.01 (PyTorch's default, used by the released hand head).
BatchNorm: epsilon 1e-5, Flax momentum 0.9 (PyTorch 0.1); `train=True` uses
batch statistics and needs `mutable=['batch_stats']`.

MANO (`mano_outputs`): a pure function, not a module. Pose theta [B, 48] and
shape beta [B, 10] -> vertices [B, V, 3] and 21 joints [B, 21, 3] in metres in
MANO's frame (the global rotation is theta[:3]; no translation), HO-3D joint
order (16 MANO joints, then fingertip vertices thumb, index, middle, ring,
little). With root_relative (default, as in the released code) joint 0 (the
wrist) is moved to the origin; the HO-3D test protocol adds the ground-truth
root. `flat_hand_mean=True` (default, the released code's MANO layer and the
synthetic 3D data's convention): theta = 0 is the flat hand.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax.evaluation.ho3d import FINGERTIP_VERTEX_IDS
from handobj_jax.geometry import rotation
from handobj_jax.models import fast_ops
from handobj_jax.models import mano as mano_lib
from handobj_jax.models.encoders import BN_EPSILON, BN_MOMENTUM
from handobj_jax.models.unet import upsample_nearest_2x

NUM_JOINTS = 21
NUM_MANO_ROTATIONS = 16
NUM_BETAS = 10
HAND_LEAKY_SLOPE = 0.01

# ManoRegressor attributes of the released supervised code (see module doc).
RELEASED_MANO_REGRESSOR = dict(stage_channels=(256, 256, 256, 256),
                               blocks_per_stage=2, hidden=(1024, 512),
                               pose_repr="rot6d")


def cell_centers(size: int) -> jax.Array:
  """[S, S, 2] RoI-normalised (u, v) = ((col + 0.5) / S, (row + 0.5) / S)."""
  c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
  return jnp.stack(jnp.meshgrid(c, c, indexing="xy"), axis=-1)


def _bn(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, name=name)


def _max_pool_2x(x: jax.Array) -> jax.Array:
  return fast_ops.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)))


class PreActBottleneck(nn.Module):
  """[B, H, W, Cin] -> [B, H, W, features]; see the module docstring."""
  features: int
  slope: float = HAND_LEAKY_SLOPE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mid = self.features // 2
    act = lambda y: nn.leaky_relu(y, self.slope)  # pylint: disable=unnecessary-lambda-assignment
    y = nn.Conv(mid, (1, 1), name="conv1")(act(_bn(train, "bn1")(x)))
    y = nn.Conv(mid, (3, 3), padding=((1, 1), (1, 1)),
                name="conv2")(act(_bn(train, "bn2")(y)))
    y = nn.Conv(self.features, (1, 1), name="conv3")(act(_bn(train, "bn3")(y)))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name="shortcut")(x)
    return x + y


class Hourglass(nn.Module):
  """Hourglass of `depth` levels, width = input channels. [B,S,S,C] -> [B,S,S,C].

  level n (n = depth .. 1), as in Newell et al. and the released code:
    skip = res(x);  low = res(maxpool2(x));  low = level(n-1)(low) if n > 1
    else res(low);  low = res(low);  out = skip + up2_nearest(low)
  where res = `num_blocks` pre-activation bottlenecks of width C.
  """
  depth: int = 4
  num_blocks: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    size = 2 ** self.depth
    if x.shape[1] % size or x.shape[2] % size:
      raise ValueError(f"Hourglass of depth {self.depth} needs H, W divisible "
                       f"by {size}, got {x.shape}")
    width = x.shape[-1]

    def res(y, name):
      for i in range(self.num_blocks):
        y = PreActBottleneck(width, name=f"{name}_{i}")(y, train)
      return y

    def level(n, y):
      skip = res(y, f"level{n}_skip")
      low = res(_max_pool_2x(y), f"level{n}_down")
      low = level(n - 1, low) if n > 1 else res(low, "bottom")
      low = res(low, f"level{n}_up")
      return skip + upsample_nearest_2x(low)

    return level(self.depth, x)


def spatial_softmax(logits: jax.Array, inv_temperature: jax.Array) -> jax.Array:
  """[B, S, S, J] logits, [J] inverse temperatures -> heatmaps summing to 1 per joint."""
  b, h, w, j = logits.shape
  flat = (logits * inv_temperature).reshape(b, h * w, j)
  return jax.nn.softmax(flat, axis=1).reshape(b, h, w, j)


def soft_argmax(heatmaps: jax.Array) -> jax.Array:
  """[B, S, S, J] heatmaps (sum 1) -> [B, J, 2] expected RoI-normalised (u, v)."""
  if heatmaps.shape[1] != heatmaps.shape[2]:
    raise ValueError(f"soft_argmax expects square heatmaps, got {heatmaps.shape}")
  grid = cell_centers(heatmaps.shape[1])
  return jnp.einsum("bhwj,hwc->bjc", heatmaps, grid,
                    precision=jax.lax.Precision.HIGHEST)


class JointHeatmapHead(nn.Module):
  """2D joints localisation network: x [B,S,S,C] -> heatmaps, joints_uv, features.

  Returns a dict:
    heatmaps [B, S, S, J] >= 0, sum 1 per joint (spatial softmax);
    logits [B, S, S, J] (before the inverse temperature);
    joints_uv [B, J, 2] RoI-normalised (u, v);
    features [B, S, S, C] the head's features (input of `ManoRegressor`).
  """
  num_joints: int = NUM_JOINTS
  depth: int = 4
  num_blocks: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"JointHeatmapHead input must be [B, S, S, C], got {x.shape}")
    width = x.shape[-1]
    y = Hourglass(self.depth, self.num_blocks, name="hourglass")(x, train)
    for i in range(self.num_blocks):
      y = PreActBottleneck(width, name=f"res_{i}")(y, train)
    y = nn.Conv(width, (1, 1), name="fc_conv")(y)
    y = nn.leaky_relu(_bn(train, "fc_bn")(y), HAND_LEAKY_SLOPE)
    logits = nn.Conv(self.num_joints, (1, 1), name="score")(y)
    inv_temperature = self.param("inv_temperature", nn.initializers.ones,
                                 (self.num_joints,), jnp.float32)
    heatmaps = spatial_softmax(logits, inv_temperature)
    return dict(heatmaps=heatmaps, logits=logits,
                joints_uv=soft_argmax(heatmaps), features=y)


# Last Dense layer of `ManoRegressor`: a tiny kernel (std 0.01 / sqrt(fan_in))
# so that the initial parameters are close to the bias.
pose_head_kernel_init = nn.initializers.variance_scaling(1e-4, "fan_in",
                                                         "truncated_normal")


def pose_head_bias_init(pose_repr: str):
  """Bias initialiser of the last layer: theta = 0 or identity 6D rotations, beta = 0."""
  def init(key, shape, dtype=jnp.float32):
    del key
    bias = np.zeros(shape, np.float32)
    if pose_repr == "rot6d":
      bias[:6 * NUM_MANO_ROTATIONS] = np.tile(
          np.array([1, 0, 0, 0, 1, 0], np.float32), NUM_MANO_ROTATIONS)
    return jnp.asarray(bias, dtype)
  return init


class ManoRegressor(nn.Module):
  """Mesh regression network: (heatmaps [B,S,S,J], features [B,S,S,C]) -> MANO parameters.

  Attributes:
    stage_channels: width of each of the 4 stages (each ends in a 2x2 max pool).
    blocks_per_stage: pre-activation residual blocks per stage.
    hidden: widths of the two hidden Dense layers.
    pose_repr: 'axis_angle' (paper, P = 58) or 'rot6d' (released code, P = 106).

  Returns a dict:
    theta [B, 48] axis-angle (global + 15 articulated, radians);
    beta [B, 10];
    rotmats [B, 16, 3, 3] the 16 rotations as matrices (from the 6D output for
      'rot6d', Rodrigues of theta for 'axis_angle');
    params [B, P] the raw last-layer output;
    embedding [B, 2 * 2 * stage_channels[-1]] the flattened ConvNet output.
  """
  stage_channels: Sequence[int] = (256, 256, 256, 512)
  blocks_per_stage: int = 1
  hidden: Sequence[int] = (1024, 512)
  pose_repr: str = "axis_angle"

  @nn.compact
  def __call__(self, heatmaps: jax.Array, features: jax.Array,
               train: bool) -> dict[str, jax.Array]:
    if self.pose_repr not in ("axis_angle", "rot6d"):
      raise ValueError(f"ManoRegressor.pose_repr must be 'axis_angle' or "
                       f"'rot6d', got {self.pose_repr!r}")
    if heatmaps.shape[:3] != features.shape[:3]:
      raise ValueError(f"ManoRegressor: heatmaps {heatmaps.shape} and features "
                       f"{features.shape} differ in B, S, S")
    width = features.shape[-1]
    x = (nn.Conv(width, (1, 1), name="heatmap_conv")(heatmaps) +
         nn.Conv(width, (1, 1), name="feature_conv")(features))
    for s, channels in enumerate(self.stage_channels):
      for i in range(self.blocks_per_stage):
        x = PreActBottleneck(channels, name=f"stage{s}_{i}")(x, train)
      x = _max_pool_2x(x)
    b = x.shape[0]
    embedding = x.reshape(b, -1)
    y = embedding
    for i, n in enumerate(self.hidden):
      y = nn.leaky_relu(nn.Dense(n, name=f"fc{i}")(y), HAND_LEAKY_SLOPE)
    rot_size = 3 if self.pose_repr == "axis_angle" else 6
    num_params = rot_size * NUM_MANO_ROTATIONS + NUM_BETAS
    params = nn.Dense(num_params, name="fc_out",
                      kernel_init=pose_head_kernel_init,
                      bias_init=pose_head_bias_init(self.pose_repr))(y)
    pose = params[:, :rot_size * NUM_MANO_ROTATIONS].reshape(
        b, NUM_MANO_ROTATIONS, rot_size)
    beta = params[:, rot_size * NUM_MANO_ROTATIONS:]
    if self.pose_repr == "axis_angle":
      rotmats = rotation.axis_angle_to_matrix(pose)
      theta = pose.reshape(b, 3 * NUM_MANO_ROTATIONS)
    else:
      rotmats = rotation.rotation_6d_to_matrix(pose)
      theta = rotation.matrix_to_axis_angle(rotmats).reshape(
          b, 3 * NUM_MANO_ROTATIONS)
    return dict(theta=theta, beta=beta, rotmats=rotmats, params=params,
                embedding=embedding)


class HandDecoder(nn.Module):
  """`JointHeatmapHead` then `ManoRegressor`: hand RoI features [B,S,S,C] -> dict.

  Output keys: heatmaps, logits, joints_uv, features (see `JointHeatmapHead`)
  and theta, beta, rotmats, params, embedding (see `ManoRegressor`). MANO
  itself is applied outside (`mano_outputs`). Submodules: 'joints', 'mesh'.
  """
  num_joints: int = NUM_JOINTS
  hourglass_depth: int = 4
  hourglass_blocks: int = 1
  stage_channels: Sequence[int] = (256, 256, 256, 512)
  blocks_per_stage: int = 1
  hidden: Sequence[int] = (1024, 512)
  pose_repr: str = "axis_angle"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    out = JointHeatmapHead(self.num_joints, self.hourglass_depth,
                           self.hourglass_blocks, name="joints")(x, train)
    mesh = ManoRegressor(tuple(self.stage_channels), self.blocks_per_stage,
                         tuple(self.hidden), self.pose_repr,
                         name="mesh")(out["heatmaps"], out["features"], train)
    return {**out, **mesh}


def mano_outputs(mano_model: mano_lib.ManoModel, theta: jax.Array,
                 beta: jax.Array, *, fingertips: str = "ho3d",
                 root_relative: bool = True,
                 flat_hand_mean: bool = True) -> dict[str, jax.Array]:
  """MANO vertices and HO-3D-ordered joints from predicted parameters.

  Args:
    mano_model: a `mano.ManoModel` (real or `synthetic_mano_model()`); closed
      over (not traced) under jit.
    theta: [B, 48] axis-angle pose (global rotation + 15 articulated), radians.
    beta: [B, 10] shape coefficients.
    fingertips: key of `evaluation.ho3d.FINGERTIP_VERTEX_IDS` ('ho3d' or
      'alternative') for joints 16-20.
    root_relative: subtract joint 0 (wrist) from vertices and joints.
    flat_hand_mean: theta = 0 is the flat hand (True, released code) or MANO's
      mean hand (False); see `mano.mano_forward`.

  Returns:
    dict(verts [B, 778, 3], joints [B, 21, 3], root [B, 3]) in metres; root
    is the wrist position before centring (MANO model frame).
  """
  if fingertips not in FINGERTIP_VERTEX_IDS:
    raise ValueError(f"mano_outputs: fingertips must be one of "
                     f"{sorted(FINGERTIP_VERTEX_IDS)}, got {fingertips!r}")
  verts, joints = mano_lib.mano_forward(
      mano_model, theta, beta, tip_ids=FINGERTIP_VERTEX_IDS[fingertips],
      flat_hand_mean=flat_hand_mean)
  root = joints[..., 0, :]
  if root_relative:
    verts = verts - root[..., None, :]
    joints = joints - root[..., None, :]
  return dict(verts=verts, joints=joints, root=root)

