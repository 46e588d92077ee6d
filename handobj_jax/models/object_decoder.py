"""Object decoder of Semi-Hand-Object (Sec. 4.3, Appendix A, Table 6): grid control-point votes.

Input: object RoI features x [B, S, S, C] (the CR module's enhanced object
features, S = 32, C = 256). N = 21 control points (the 8 corners, 12 edge
midpoints and centre of the object's 3D bounding box; order as in
`input_pipeline.synthetic_3d`).

Layers (Sec. 4.3: "4 shared convolution layers and 2 separate convolution
layers for each stream"; Table 6: "4 Shared 2D Convolution 32x32x256"):
  shared:        4 x [conv3x3(C_h) -> BN -> LeakyReLU(0.1)]
  localisation:  conv3x3(C_h) -> BN -> LeakyReLU(0.1) -> conv1x1(2N)
  confidence:    conv3x3(C_h) -> BN -> LeakyReLU(0.1) -> conv1x1(N) -> sigmoid
C_h = `channels` (256). Convs before BN have no bias; the two output convs
have a bias (initialised to 0, as in the released code). The released
supervised code differs: three [conv1x1(C/2)-BN-LReLU, conv3x3(C)-BN-LReLU]
pairs and one shared conv1x1 to 3N outputs (confidence and both coordinates);
we follow the paper's two-stream description. LeakyReLU slope 0.1 and the
offset scale follow the released code.

Outputs (dict), in RoI-normalised coordinates (the object box is the unit
square; (u, v) = ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)); see
`hand_decoder` for the cell convention):
  offsets     [B, S, S, N, 2]  v_{g,i} = offset_scale * raw conv output,
                               (du, dv) per cell g = (row, col) and point i;
  points      [B, S, S, N, 2]  p_g + v_{g,i}, p_g = ((col + 0.5) / S,
                               (row + 0.5) / S) the cell centre: the cell's
                               vote for control point i (Appendix A);
  confidence  [B, S, S, N]     sigmoid of the confidence stream, in (0, 1);
  confidence_logits [B, S, S, N].
`offset_scale` = 0.1 is the released code's coordinate normalisation: it
computes pred = (raw + 10 p_g) / 10, i.e. v = raw / 10, which keeps the
initial votes near their own cells.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from handobj_jax.models.encoders import BN_EPSILON, BN_MOMENTUM
from handobj_jax.models.hand_decoder import cell_centers

NUM_CONTROL_POINTS = 21
OBJECT_LEAKY_SLOPE = 0.1


class ObjectDecoder(nn.Module):
  """x [B, S, S, C] -> dict(offsets, points, confidence, confidence_logits).

  Attributes:
    num_points: N control points.
    channels: width of the hidden conv layers.
    num_shared: number of shared conv layers (4 in the paper).
    offset_scale: v = offset_scale * raw output (0.1, released code).
  """
  num_points: int = NUM_CONTROL_POINTS
  channels: int = 256
  num_shared: int = 4
  offset_scale: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"ObjectDecoder input must be [B, S, S, C], got {x.shape}")

    def conv_bn_act(y, name):
      y = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)),
                  use_bias=False, name=f"{name}_conv")(y)
      y = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                       epsilon=BN_EPSILON, name=f"{name}_bn")(y)
      return nn.leaky_relu(y, OBJECT_LEAKY_SLOPE)

    for i in range(self.num_shared):
      x = conv_bn_act(x, f"shared{i}")
    b, s = x.shape[0], x.shape[1]
    loc = conv_bn_act(x, "loc")
    loc = nn.Conv(2 * self.num_points, (1, 1), bias_init=nn.initializers.zeros,
                  name="loc_out")(loc)
    offsets = self.offset_scale * loc.reshape(b, s, s, self.num_points, 2)
    conf = conv_bn_act(x, "conf")
    logits = nn.Conv(self.num_points, (1, 1), bias_init=nn.initializers.zeros,
                     name="conf_out")(conf)
    points = cell_centers(s)[None, :, :, None, :] + offsets
    return dict(offsets=offsets, points=points,
                confidence=jax.nn.sigmoid(logits), confidence_logits=logits)
