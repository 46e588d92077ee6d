"""Random PnP scenes shared by tests/test_pnp.py and benchmarks/bench_pnp.py.

A scene: a random box (5-30 cm sides, 300 interior points plus two opposite corners) with its 21 control
points (order of input_pipeline.synthetic_3d.control_points), at a random rotation, 0.4-1.0 m in front of a
512 x 512 camera with fx in [500, 1000] px, fy within 2% of fx and the principal point near the centre.
"""
import numpy as np
from scipy.spatial.transform import Rotation

from input_pipeline.synthetic_3d import control_points


def random_box_scene(rng: np.random.Generator):
  """Returns (control points (21, 3), model points (302, 3), K (3, 3), R (3, 3), t (3,)), float64."""
  dims = rng.uniform(0.05, 0.3, 3)
  model = rng.uniform(-0.5, 0.5, (300, 3)) * dims
  model = np.concatenate([model, [-0.5 * dims, 0.5 * dims]])
  f = rng.uniform(500, 1000)
  k = np.array([[f, 0, 255.5 + rng.normal(0, 5)],
                [0, f * rng.uniform(0.98, 1.02), 255.5 + rng.normal(0, 5)],
                [0, 0, 1]])
  rot = Rotation.random(random_state=rng.integers(2**31)).as_matrix()
  z = rng.uniform(0.4, 1.0)
  xy = rng.uniform(-0.25, 0.25, 2) * z * 256 / f
  return control_points(model), model, k, rot, np.array([xy[0], xy[1], z])
