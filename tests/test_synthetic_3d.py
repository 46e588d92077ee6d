"""Tests of the synthetic 3D hand-object world and its TFDS builders.

References are independent recomputations in float64 NumPy / OpenCV: pinhole
projection of the stored 3D labels, the bounding-box control points built
from itertools.product, mask dilation with cv2, and `mano_forward` re-run on
the stored MANO parameters.
"""
import functools
import itertools

import cv2
import jax
import numpy as np
import pytest

from handobj_jax.models import mano
from input_pipeline import synthetic_3d as s3

CFG = s3.World3DConfig()
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def examples():
  return [s3.generate_example(CFG, s) for s in SEEDS]


@functools.lru_cache(maxsize=None)
def _forward(side, flat):
  """Jitted mano_forward of the synthetic model (the model is closed over)."""
  model = mano.synthetic_mano_model(side)
  return jax.jit(functools.partial(mano.mano_forward, model,
                                   flat_hand_mean=flat))


def _project(points, k):
  p = np.asarray(points, np.float64) @ np.asarray(k, np.float64).T
  return p[..., :2] / p[..., 2:]


def test_config_validation_names_the_field():
  for kwargs, field in [({"height": 8}, "height"), ({"side": "middle"}, "side"),
                        ({"obj_size_range": (0.1, 0.05)}, "obj_size_range"),
                        ({"obj_types": ("cone",)}, "obj_types"),
                        ({"distance_range": (0.0, 0.5)}, "distance_range"),
                        ({"max_attempts": 0}, "max_attempts")]:
    with pytest.raises(ValueError, match=field):
      s3.World3DConfig(**kwargs)
  with pytest.raises(ValueError, match="num_frames"):
    s3.generate_sequence(CFG, 0, 0)


def test_opengl_to_opencv():
  rng = np.random.default_rng(0)
  flip = np.diag([1.0, -1.0, -1.0])
  x = rng.normal(size=(5, 3))
  np.testing.assert_allclose(s3.opengl_to_opencv(x), x @ flip.T)
  np.testing.assert_allclose(s3.opengl_to_opencv(s3.opengl_to_opencv(x)), x)
  # A pose X_gl = R X + t becomes X_cv = flip R X + flip t.
  from scipy.spatial.transform import Rotation
  r = Rotation.random(random_state=1).as_matrix()
  t = rng.normal(size=3)
  rt = np.concatenate([r, t[:, None]], 1)
  np.testing.assert_allclose(s3.opengl_to_opencv(rt), flip @ rt)
  np.testing.assert_allclose(s3.opengl_to_opencv(r), flip @ r)
  pts = rng.normal(size=(4, 3))
  np.testing.assert_allclose(pts @ s3.opengl_to_opencv(r).T
                             + s3.opengl_to_opencv(t),
                             s3.opengl_to_opencv(pts @ r.T + t))


def test_control_points_order_against_reference():
  rng = np.random.default_rng(0)
  pts = rng.normal(size=(50, 3)) * [0.03, 0.05, 0.02]
  lo, hi = pts.min(0), pts.max(0)
  ext = np.stack([lo, hi])
  corners = np.array([[ext[i, 0], ext[j, 1], ext[k, 2]]
                      for i, j, k in itertools.product((0, 1), repeat=3)])
  mids = []
  for axis in range(3):  # edges along x, y, z; other two bits in order
    for a, b in itertools.product((0, 1), repeat=2):
      bits = [a, b]
      bits.insert(axis, None)
      ends = [[ext[bits[d] if d != axis else e, d] for d in range(3)]
              for e in (0, 1)]
      mids.append(np.mean(ends, 0))
  ref = np.concatenate([corners, mids, [(lo + hi) / 2]])
  np.testing.assert_allclose(s3.control_points(pts), ref, atol=1e-12)
  # Each edge midpoint lies between two corners differing in exactly one bit.
  for m in ref[8:20]:
    d = np.linalg.norm(corners[:, None] + corners[None] - 2 * m, axis=-1)
    assert np.sum(d < 1e-12) == 2


def test_object_meshes_are_closed_and_bounded():
  rng = np.random.default_rng(0)
  for name in s3.OBJECT_TYPES:
    dims = np.array([0.05, 0.08, 0.11])
    v, f = s3.object_mesh(name, dims)
    pts = s3.model_points(v, f, 500, rng)
    np.testing.assert_allclose(np.ptp(pts, 0), dims, atol=1e-9)
    np.testing.assert_allclose((pts.max(0) + pts.min(0)) / 2, 0, atol=1e-9)
    # Closed, outward-wound surface: the signed volume (divergence theorem)
    # is close to the analytic volume of the shape.
    tri = v[f]
    vol = np.sum(np.einsum("ij,ij->i", tri[:, 0],
                           np.cross(tri[:, 1], tri[:, 2]))) / 6
    a, b, c = dims / 2
    ref = {"box": 8 * a * b * c, "cylinder": np.pi * a * b * 2 * c,
           "ellipsoid": 4 / 3 * np.pi * a * b * c}[name]
    assert abs(vol - ref) < 0.05 * ref, (name, vol, ref)


def test_example_shapes_and_dtypes(examples):
  ex = examples[0]
  h, w, p = CFG.height, CFG.width, CFG.num_model_points
  spec = {"image": ((h, w, 3), np.uint8), "K": ((3, 3), np.float32),
          "joints3d": ((21, 3), np.float32), "joints2d": ((21, 2), np.float32),
          "verts3d": ((778, 3), np.float32), "mano_pose": ((48,), np.float32),
          "mano_betas": ((10,), np.float32), "mano_trans": ((3,), np.float32),
          "obj_rot": ((3, 3), np.float32), "obj_trans": ((3,), np.float32),
          "obj_points3d": ((p, 3), np.float32),
          "obj_ctrl3d": ((21, 3), np.float32),
          "obj_ctrl2d": ((21, 2), np.float32), "obj_type": ((), np.int32),
          "obj_dims": ((3,), np.float32), "obj_diameter": ((), np.float32),
          "hand_box": ((4,), np.float32), "obj_box": ((4,), np.float32),
          "hand_mask": ((h, w), np.bool_), "obj_mask": ((h, w), np.bool_)}
  for key, (shape, dtype) in spec.items():
    assert np.shape(ex[key]) == shape, key
    assert np.asarray(ex[key]).dtype == dtype, key
  assert ex["side"] == "right"
  assert set(ex) == set(spec) | {"side"}


def test_projections_and_boxes(examples):
  """2D labels are the float64 pinhole projection of the 3D labels; control
  points are K (R x + t) of the model points' box corners; boxes contain
  their points and their visible masks."""
  for ex in examples:
    k = ex["K"]
    np.testing.assert_allclose(ex["joints2d"], _project(ex["joints3d"], k),
                               atol=1e-3)
    ctrl_obj = s3.control_points(ex["obj_points3d"].astype(np.float64))
    ctrl3d = ctrl_obj @ ex["obj_rot"].astype(np.float64).T + ex["obj_trans"]
    np.testing.assert_allclose(ex["obj_ctrl3d"], ctrl3d, atol=1e-6)
    ctrl2d = _project(ctrl3d, k)
    np.testing.assert_allclose(ex["obj_ctrl2d"], ctrl2d, atol=1e-4, rtol=0)
    box = ex["obj_box"]
    assert np.all(ctrl2d >= box[:2] - 1e-4) and np.all(
        ctrl2d <= box[2:] + 1e-4)
    np.testing.assert_allclose(box, np.r_[ctrl2d.min(0), ctrl2d.max(0)],
                               atol=1e-4)
    hv = _project(ex["verts3d"], k)
    np.testing.assert_allclose(ex["hand_box"], np.r_[hv.min(0), hv.max(0)],
                               atol=1e-3)
    for mask, b in ((ex["hand_mask"], ex["hand_box"]),
                    (ex["obj_mask"], ex["obj_box"])):
      ys, xs = np.nonzero(mask)
      assert np.all((xs >= b[0] - 0.5) & (xs <= b[2] + 0.5))
      assert np.all((ys >= b[1] - 0.5) & (ys <= b[3] + 0.5))
    # Boxes lie inside the image (the generator re-samples the camera).
    assert np.all(box >= 0) and box[2] <= CFG.width - 1
    assert box[3] <= CFG.height - 1
    # obj_rot is a rotation; the object is in front of the camera.
    r = ex["obj_rot"].astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
    assert np.linalg.det(r) > 0.999
    assert 0.25 < ex["obj_trans"][2] < 1.0


def test_joints_fall_on_rendered_hand_or_object(examples):
  """Criterion: >= 90% of the 21 projected joints of each example lie within
  2 px (Chebyshev) of a hand or object pixel. Joints are inside the hand and
  may be hidden by the object, hence 'hand or object'. Over all examples,
  >= 75% of joints lie within 2 px of a hand pixel."""
  on_hand = []
  for ex in examples:
    fg = (ex["hand_mask"] | ex["obj_mask"]).astype(np.uint8)
    fg = cv2.dilate(fg, np.ones((5, 5), np.uint8)).astype(bool)
    hand = cv2.dilate(ex["hand_mask"].astype(np.uint8),
                      np.ones((5, 5), np.uint8)).astype(bool)
    j = np.round(ex["joints2d"]).astype(int)
    assert np.mean(fg[j[:, 1], j[:, 0]]) >= 0.9
    on_hand.append(hand[j[:, 1], j[:, 0]])
  assert np.mean(on_hand) >= 0.75


def test_masks_disjoint_and_visible(examples):
  for ex in examples:
    assert not np.any(ex["hand_mask"] & ex["obj_mask"])
    assert ex["hand_mask"].sum() >= CFG.min_visible_pixels
    assert ex["obj_mask"].sum() >= CFG.min_visible_pixels


def test_object_geometry_labels(examples):
  for ex in examples:
    pts = ex["obj_points3d"].astype(np.float64)
    np.testing.assert_allclose(ex["obj_dims"], np.ptp(pts, 0), atol=1e-6)
    np.testing.assert_allclose(ex["obj_diameter"],
                               np.linalg.norm(np.ptp(pts, 0)), atol=1e-6)
    assert np.all((ex["obj_dims"] >= 0.04 - 1e-6) & (ex["obj_dims"] <= 0.12))
    assert 0 <= ex["obj_type"] < len(s3.OBJECT_TYPES)
  assert len({int(ex["obj_type"]) for ex in examples}) >= 2


@pytest.mark.parametrize("flat", [True, False])
def test_mano_consistency(examples, flat):
  """Stored joints / vertices equal mano_forward(stored pose, betas, trans)
  under the config's pose convention; the convention only changes the
  stored pose, not the geometry."""
  cfg = CFG if flat else s3.World3DConfig(flat_hand_mean=False)
  exs = examples[:3] if flat else [s3.generate_example(cfg, s)
                                   for s in SEEDS[:3]]
  model = mano.synthetic_mano_model("right")
  for ex, ref in zip(exs, examples):
    v, j = _forward("right", flat)(ex["mano_pose"], ex["mano_betas"],
                                   ex["mano_trans"])
    np.testing.assert_allclose(ex["joints3d"], np.asarray(j), atol=2e-5)
    np.testing.assert_allclose(ex["verts3d"], np.asarray(v), atol=2e-5)
    np.testing.assert_allclose(ex["joints3d"], ref["joints3d"], atol=1e-5)
  if not flat:
    np.testing.assert_allclose(
        exs[0]["mano_pose"][3:] + np.asarray(model.hands_mean),
        examples[0]["mano_pose"][3:], atol=1e-5)


def test_left_hand():
  cfg = s3.World3DConfig(side="left")
  ex = s3.generate_example(cfg, 0)
  assert ex["side"] == "left"
  _, j = _forward("left", True)(ex["mano_pose"], ex["mano_betas"],
                                ex["mano_trans"])
  np.testing.assert_allclose(ex["joints3d"], np.asarray(j), atol=2e-5)
  assert not np.any(ex["hand_mask"] & ex["obj_mask"])


def test_determinism(examples):
  again = s3.generate_example(CFG, SEEDS[1])
  for key, value in examples[1].items():
    np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value))
  assert not np.array_equal(examples[0]["image"], examples[1]["image"])
  assert not np.allclose(examples[0]["joints3d"], examples[1]["joints3d"])


@pytest.fixture(scope="module")
def sequence():
  return s3.generate_sequence(CFG, 11, 12)


def test_sequence_labels_and_smoothness(sequence):
  t = 12
  seq = sequence
  assert seq["frames"].shape == (t, CFG.height, CFG.width, 3)
  assert seq["frames"].dtype == np.uint8
  assert seq["hand_boxes"].shape == (t, 4) and seq["obj_boxes"].shape == (t, 4)
  public = {k for k in seq if not k.startswith("gt/")}
  assert public == {"frames", "hand_boxes", "obj_boxes"}
  k = seq["gt/K"]
  hv = _project(seq["gt/verts3d"], k)
  np.testing.assert_allclose(seq["hand_boxes"],
                             np.concatenate([hv.min(1), hv.max(1)], 1),
                             atol=1e-3)
  c2 = _project(seq["gt/obj_ctrl3d"], k)
  np.testing.assert_allclose(seq["obj_boxes"],
                             np.concatenate([c2.min(1), c2.max(1)], 1),
                             atol=1e-3)
  _, j = _forward("right", True)(seq["gt/mano_pose"], seq["gt/mano_betas"],
                                 seq["gt/mano_trans"])
  np.testing.assert_allclose(seq["gt/joints3d"], np.asarray(j), atol=2e-5)
  assert not np.any(seq["gt/hand_mask"] & seq["gt/obj_mask"])
  # Smooth: per-frame steps are small, yet the clip is not static.
  step = np.linalg.norm(np.diff(seq["gt/joints3d"], axis=0), axis=-1)
  assert step.max() < 0.03
  assert np.linalg.norm(seq["gt/joints3d"][-1] - seq["gt/joints3d"][0],
                        axis=-1).mean() > 1e-3
  obj_step = np.linalg.norm(np.diff(seq["gt/obj_trans"], axis=0), axis=-1)
  assert obj_step.max() < 0.03
  # Object rigidly attached to the grasp: the object centre stays at a fixed
  # distance from the wrist joint.
  d = np.linalg.norm(seq["gt/obj_trans"] - seq["gt/joints3d"][:, 0], axis=-1)
  np.testing.assert_allclose(d, d[0], atol=1e-5)


def test_sequence_determinism(sequence):
  again = s3.generate_sequence(CFG, 11, 12)
  for key in sequence:
    np.testing.assert_array_equal(np.asarray(again[key]),
                                  np.asarray(sequence[key]))


def test_tfds_builders_offline_round_trip(tmp_path):
  """Both builders build `tiny` offline; decoded examples equal a fresh
  generator call with the stored seed (shapes, dtypes and values)."""
  import tensorflow_datasets as tfds  # A core dependency: missing, the test fails rather than skips.
  from input_pipeline import tfds_ho3d_synth as builders
  b = builders.SyntheticHo3d(config="tiny", data_dir=str(tmp_path))
  b.download_and_prepare()
  assert b.info.splits["train"].num_examples == 24
  assert b.info.splits["validation"].num_examples == 8
  assert b.info.splits["test"].num_examples == 8
  ds = tfds.as_numpy(b.as_dataset(split="test").take(2))
  world = b.builder_config.world_config()
  for ex in ds:
    ref = s3.generate_example(world, int(ex["seed"]))
    for key, value in ref.items():
      got = ex[key]
      if key == "side":
        assert builders.SIDES[got] == value
        continue
      assert got.shape == np.shape(value), key
      if key == "obj_type":
        assert got == value
      else:
        assert got.dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(got, value, err_msg=key)
  v = builders.SyntheticHo3dVideo(config="tiny", data_dir=str(tmp_path))
  v.download_and_prepare()
  seq = next(iter(tfds.as_numpy(v.as_dataset(split="train"))))
  ref = s3.generate_sequence(v.builder_config.world_config(),
                             int(seq["seed"]), v.builder_config.num_frames)
  np.testing.assert_array_equal(seq["frames"], ref["frames"])
  np.testing.assert_array_equal(seq["hand_boxes"], ref["hand_boxes"])
  np.testing.assert_array_equal(seq["gt"]["joints3d"], ref["gt/joints3d"])
  np.testing.assert_array_equal(seq["gt"]["obj_mask"], ref["gt/obj_mask"])
  assert seq["gt"]["hand_mask"].dtype == np.bool_
