"""The `fpha` builder on a tiny fake FPHA tree in the published layout, written by the test.

Ground truth is made in the OpenCV colour-camera frame (metres): synthetic-MANO hands (fingertips at the
'alternative' vertices, as the builder's fit uses) and object poses; the test converts them itself to the
files' conventions (world = CAM_EXTR^-1 camera, millimetres, the file's joint order, object-to-world
matrices stored transposed and applied to model points in mm). Sequences:
  train: Subject_1/put_salt/1 (4 frames, frame 2 has no object pose -> left out),
         Subject_1/open_juice_bottle/2 (3 frames), Subject_2/charge_cell_phone/1 (no object model -> not in
         the hand-object subset);
  test:  Subject_2/put_salt/1 (3 frames), Subject_2/open_juice_bottle/1 (no video frames -> warned, skipped).
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.models import mano as mano_lib
from input_pipeline import mesh_files
from input_pipeline import pipeline
from input_pipeline import synthetic_3d
from input_pipeline import tfds_fpha as fpha

JOINT_TOL_M = 1e-5
PIX_TOL = 1e-3            # px, 2D points against the test's own projection.
FIT_TOL_MM = 2.0          # The builder's MANO fit residual on exact synthetic-MANO joints.
VERT_TOL_M = 8e-3         # Fitted vertices against the generating hand (mean per frame).
SCALE = 160 / 1920        # The `tiny` config's resize factor.

# (subject, action, seq) -> (split, num_frames, frames with an object pose, video written?)
SEQS = {
    ("Subject_1", "put_salt", "1"): ("train", 4, (0, 1, 3), True),
    ("Subject_1", "open_juice_bottle", "2"): ("train", 3, (0, 1, 2), True),
    ("Subject_2", "charge_cell_phone", "1"): ("train", 3, (), True),
    ("Subject_2", "put_salt", "1"): ("test", 3, (0, 1, 2), True),
    ("Subject_2", "open_juice_bottle", "1"): ("test", 2, (0, 1), False),
}
MODELS = {"salt": ("box", (0.04, 0.05, 0.09), False), "juice": ("cylinder", (0.06, 0.06, 0.2), True)}


def _frame_image(seed: int) -> np.ndarray:
  """A smooth 1920x1080 RGB pattern that differs per frame (JPEG keeps it closely)."""
  yy, xx = np.mgrid[0:1080, 0:1920].astype(np.float32)
  rgb = np.stack([(xx / 1920 * 200 + 10 * seed) % 256, (yy / 1080 * 200 + 25 * seed) % 256,
                  np.full_like(xx, 40.0 + 13 * seed)], -1)
  return rgb.astype(np.uint8)


def _hand(rng, model, tip_ids):
  pose = np.zeros(48)
  pose[:3] = Rotation.random(random_state=rng.integers(1 << 30)).as_rotvec()
  pose[3:] = rng.uniform(0.0, 3.0) * model.hands_components[0] + rng.normal(0.0, 0.05, 45)
  betas = rng.normal(0.0, 0.5, 10)
  trans = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.45, 0.55)])
  verts, joints = mano_lib.mano_forward(model, pose, betas, trans, tip_ids=tip_ids, flat_hand_mean=True)
  return np.asarray(verts, np.float64), np.asarray(joints, np.float64)


def _write_tree(root, rng) -> tuple[dict, dict]:
  """Writes the fake download; returns the ground truth {(subject, action, seq, frame): dict} and the object
  models' vertices {object name: [V, 3]} (as stored: float32)."""
  model = mano_lib.synthetic_mano_model("right")
  inv_extr = np.linalg.inv(fpha.CAM_EXTR)
  truth, split_lines = {}, {"train": [], "test": []}
  infos: dict[str, list[str]] = {}
  for (subject, action, seq), (split, num_frames, pose_frames, video) in SEQS.items():
    split_lines[split].append(f"{subject}/{action}/{seq} 7")
    infos.setdefault(subject, []).append(f"{action} {seq} {num_frames}")
    skel_lines, pose_lines = [], []
    for f in range(num_frames):
      verts, joints = _hand(rng, model, mano_lib.ALT_TIP_IDS)
      file_order = np.zeros((21, 3))
      file_order[list(fpha.FPHA_TO_HO3D)] = joints * 1000.0                # ho3d[k] = file[FPHA_TO_HO3D[k]]
      world = file_order @ inv_extr[:3, :3].T + inv_extr[:3, 3]            # camera mm -> world mm
      skel_lines.append(f"{f} " + " ".join(f"{v:.7f}" for v in world.ravel()))
      rot = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
      trans = np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05), rng.uniform(0.4, 0.6)])
      cam_mm = np.eye(4)
      cam_mm[:3, :3], cam_mm[:3, 3] = rot, trans * 1000.0
      obj_to_world = inv_extr @ cam_mm                                     # Applied to model points in mm.
      if f in pose_frames:
        pose_lines.append(f"{f} " + " ".join(f"{v:.10f}" for v in obj_to_world.T.ravel()))
      seed = len(truth)
      if video:
        image = _frame_image(seed)
        path = root / "Video_files" / subject / action / seq / "color" / f"color_{f:04d}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
      truth[(subject, action, seq, f)] = dict(joints=joints, verts=verts, rot=rot, trans=trans, seed=seed)
    skel = root / "Hand_pose_annotation_v1" / subject / action / seq / "skeleton.txt"
    skel.parent.mkdir(parents=True)
    skel.write_text("\n".join(skel_lines) + "\n")
    if pose_frames:
      pose_file = root / "Object_6D_pose_annotation_v1_1" / subject / action / seq / "object_pose.txt"
      pose_file.parent.mkdir(parents=True)
      pose_file.write_text("\n".join(pose_lines) + "\n")
  models = {}
  for name, (kind, dims, binary) in MODELS.items():
    verts, faces = synthetic_3d.object_mesh(kind, np.asarray(dims))
    verts = verts + np.array([0.003, -0.002, 0.01])  # Not centred: control points follow the model's own box.
    models["juice_bottle" if name == "juice" else name] = verts.astype(np.float32).astype(np.float64)
    (root / "Object_models" / f"{name}_model").mkdir(parents=True)
    mesh_files.write_ply(str(root / "Object_models" / f"{name}_model" / f"{name}_model.ply"), verts, faces,
                         binary=binary)
  (root / "Subjects_info").mkdir()
  for subject, lines in infos.items():
    (root / "Subjects_info" / f"{subject}_info.txt").write_text(
        "Subject info\nheader 2\naction seq frames\n" + "\n".join(lines) + "\n")
  (root / fpha.SPLIT_FILE).write_text(
      f"Training {len(split_lines['train'])}\n" + "\n".join(split_lines["train"]) +
      f"\nTest {len(split_lines['test'])}\n" + "\n".join(split_lines["test"]) + "\n")
  return truth, models


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("fpha") / "manual"
  truth, models = _write_tree(root, np.random.default_rng(0))
  return root, truth, models


def test_builder_fields_splits_and_conventions(tree, tmp_path, capsys):
  root, truth, models = tree
  builder = fpha.build(str(tmp_path / "data"), str(root), "tiny")
  assert "Subject_2/open_juice_bottle/1 skipped" in capsys.readouterr().err
  splits = {s: list(pipeline.load_split(builder, s).as_numpy_iterator()) for s in ("train", "test")}
  keys = {s: sorted((e["subject"].decode(), e["action"].decode(), e["sequence"].decode(), int(e["frame_index"]))
                    for e in exs) for s, exs in splits.items()}
  assert keys["train"] == [("Subject_1", "open_juice_bottle", "2", 0), ("Subject_1", "open_juice_bottle", "2", 1),
                           ("Subject_1", "open_juice_bottle", "2", 2), ("Subject_1", "put_salt", "1", 0),
                           ("Subject_1", "put_salt", "1", 1), ("Subject_1", "put_salt", "1", 3)]
  assert keys["test"] == [("Subject_2", "put_salt", "1", f) for f in range(3)]

  k_full = fpha.CAM_INTR
  k_tiny = np.array([[k_full[0, 0] * SCALE, 0, (k_full[0, 2] + 0.5) * SCALE - 0.5],
                     [0, k_full[1, 1] * SCALE, (k_full[1, 2] + 0.5) * SCALE - 0.5], [0, 0, 1]])
  model = mano_lib.synthetic_mano_model("right")
  for e in splits["train"] + splits["test"]:
    key = (e["subject"].decode(), e["action"].decode(), e["sequence"].decode(), int(e["frame_index"]))
    gt = truth[key]
    obj = fpha.OBJECT_NAMES[e["obj_type"]]
    assert obj == fpha.object_of_action(key[1])
    assert e["image"].shape == (90, 160, 3) and e["obj_mask"].shape == (90, 160)
    assert all(v.dtype == np.float32 for k, v in e.items() if k not in (
        "image", "obj_mask", "obj_type", "subject", "action", "sequence", "frame_index"))
    np.testing.assert_allclose(e["K"], k_tiny, rtol=1e-6)
    # Hand joints: the camera-frame truth, HO-3D order, metres.
    np.testing.assert_allclose(e["joints3d"], gt["joints"], atol=JOINT_TOL_M)
    # 2D: projection with the stored K, and the test's own full-resolution projection mapped to the small image.
    np.testing.assert_allclose(e["joints2d"], _project(e["joints3d"].astype(np.float64), e["K"]), atol=PIX_TOL)
    uv_full = _project(gt["joints"], k_full)
    np.testing.assert_allclose(e["joints2d"], (uv_full + 0.5) * SCALE - 0.5, atol=PIX_TOL)
    # MANO fit: consistent parameters, small residual, close to the generating mesh.
    assert e["mano_fit_error_mm"] < FIT_TOL_MM
    verts, joints = mano_lib.mano_forward(model, e["mano_pose"], e["mano_betas"], e["mano_trans"],
                                          tip_ids=mano_lib.ALT_TIP_IDS, flat_hand_mean=True)
    np.testing.assert_allclose(np.asarray(verts), e["verts3d"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(joints) - e["joints3d"], axis=-1).mean() * 1000,
                               e["mano_fit_error_mm"], atol=0.05)
    assert np.linalg.norm(e["verts3d"] - gt["verts"], axis=-1).mean() < VERT_TOL_M
    both = _project(np.concatenate([e["joints3d"], e["verts3d"]]).astype(np.float64), e["K"])
    np.testing.assert_allclose(e["hand_box"], np.concatenate([both.min(0), both.max(0)]), atol=PIX_TOL)
    # Object pose, model points and control points.
    np.testing.assert_allclose(e["obj_rot"], gt["rot"], atol=1e-5)
    np.testing.assert_allclose(e["obj_trans"], gt["trans"], atol=1e-6)
    mverts = models[obj]
    assert e["obj_points3d"].shape == (64, 3)
    assert np.all(np.min(np.linalg.norm(e["obj_points3d"][:, None] - mverts[None], axis=-1), axis=1) < 1e-6)
    ctrl3d = synthetic_3d.control_points(mverts) @ gt["rot"].T + gt["trans"]
    np.testing.assert_allclose(synthetic_3d.control_points(e["obj_points3d"]), synthetic_3d.control_points(mverts),
                               atol=1e-6)
    np.testing.assert_allclose(e["obj_ctrl3d"], ctrl3d, atol=1e-5)
    ctrl2d = (_project(ctrl3d, k_full) + 0.5) * SCALE - 0.5
    np.testing.assert_allclose(e["obj_ctrl2d"], ctrl2d, atol=PIX_TOL)
    np.testing.assert_allclose(e["obj_box"], np.concatenate([ctrl2d.min(0), ctrl2d.max(0)]), atol=PIX_TOL)
    np.testing.assert_allclose(e["obj_diameter"], np.linalg.norm(mverts.max(0) - mverts.min(0)), rtol=1e-6)
    # Mask: the hull of the projected model; its pixel box matches the projected vertices' box.
    v2d = (_project(mverts @ gt["rot"].T + gt["trans"], k_full) + 0.5) * SCALE - 0.5
    ys, xs = np.nonzero(e["obj_mask"])
    lo, hi = np.maximum(np.ceil(v2d.min(0)), 0), np.minimum(np.floor(v2d.max(0)), [159, 89])
    assert len(xs) > 0
    assert abs(xs.min() - lo[0]) <= 1 and abs(xs.max() - hi[0]) <= 1
    assert abs(ys.min() - lo[1]) <= 1 and abs(ys.max() - hi[1]) <= 1
    # Image: the written JPEG, resized with INTER_AREA (exact), and close to the pattern itself.
    path = fpha.frame_path(str(root), *key)
    decoded = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(e["image"], cv2.resize(decoded, (160, 90), interpolation=cv2.INTER_AREA))
    pattern = cv2.resize(_frame_image(gt["seed"]), (160, 90), interpolation=cv2.INTER_AREA)
    assert np.abs(e["image"].astype(int) - pattern).mean() < 3.0

  # A second build with another MANO model must not reuse this one silently.
  other = tmp_path / "mano.npz"
  mano_lib.save_npz(model, str(other))
  with pytest.raises(pipeline.DataError, match=r"built with the MANO model \(config.mano.model_path\) 'synthetic'"):
    fpha.build(str(tmp_path / "data"), str(root), "tiny", mano_path=str(other))
  # Reopening with the same model reuses the build.
  again = fpha.build(str(tmp_path / "data"), str(root), "tiny")
  assert again.info.splits["train"].num_examples == 6


def _project(points, k):
  uvw = points @ np.asarray(k, np.float64).T
  return uvw[:, :2] / uvw[:, 2:]


def _broken(tree, tmp_path, edit):
  root = tmp_path / "manual"
  shutil.copytree(tree[0], root)
  edit(root)
  return root


SALT = ("Subject_1", "put_salt", "1")


@pytest.mark.parametrize("edit, message", [
    (lambda r: (r / fpha.SPLIT_FILE).unlink(), r"data_split_action_recognition.txt is missing"),
    (lambda r: (r / "Hand_pose_annotation_v1" / "Subject_1" / "put_salt" / "1" / "skeleton.txt").unlink(),
     r"Hand_pose_annotation_v1/Subject_1/put_salt/1/skeleton.txt is missing"),
    (lambda r: _replace_line(r / "Hand_pose_annotation_v1" / "Subject_1" / "put_salt" / "1" / "skeleton.txt", 2,
                             "1 0.5 0.25"), r"put_salt/1/skeleton.txt:2: malformed line"),
    (lambda r: _replace_line(r / "Object_6D_pose_annotation_v1_1" / "Subject_2" / "put_salt" / "1" /
                             "object_pose.txt", 3, "2 1 0 0 x"), r"put_salt/1/object_pose.txt:3: malformed line"),
    (lambda r: (r / "Object_models" / "salt_model" / "salt_model.ply").unlink(),
     r"Object_models/salt_model/salt_model.ply is missing"),
    (lambda r: (r / "Object_models" / "juice_model" / "juice_model.ply").write_bytes(b"ply\nformat ascii 1.0\n"),
     r"juice_model.ply: not a PLY file"),
    (lambda r: (r / "Video_files" / "Subject_1" / "put_salt" / "1" / "color" / "color_0001.jpeg").unlink(),
     r"Subject_1/put_salt/1/color/color_0001.jpeg is missing"),
    (lambda r: (r / "Subjects_info" / "Subject_2_info.txt").unlink(), r"Subjects_info/Subject_2_info.txt is missing"),
    (lambda r: (r / "Video_files" / "Subject_2" / "put_salt" / "1" / "color" / "color_0002.jpeg").write_bytes(
        b"not a jpeg"), r"Subject_2/put_salt/1/color/color_0002.jpeg: missing or not a readable image"),
])
def test_bad_inputs_are_one_clear_error(tree, tmp_path, edit, message):
  root = _broken(tree, tmp_path, edit)
  with pytest.raises(pipeline.DataError, match=message) as info:
    fpha.build(str(tmp_path / "data"), str(root), "tiny")
  assert "\n" not in str(info.value)


def _replace_line(path, lineno, text):
  lines = path.read_text().splitlines()
  lines[lineno - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_bad_arguments(tmp_path):
  with pytest.raises(pipeline.DataError, match="manual_dir"):
    fpha.build(str(tmp_path / "data"), str(tmp_path / "nowhere"), "tiny")
  with pytest.raises(pipeline.DataError, match="unknown config.data.builder_config"):
    fpha.build(str(tmp_path / "data"), str(tmp_path), "huge")


def test_conventions_helpers():
  # The file-order -> HO-3D-order map agrees with the joint names.
  names = {"Wrist": "wrist", "IMCP": "index1", "IPIP": "index2", "IDIP": "index3", "MMCP": "middle1",
           "MPIP": "middle2", "MDIP": "middle3", "PMCP": "little1", "PPIP": "little2", "PDIP": "little3",
           "RMCP": "ring1", "RPIP": "ring2", "RDIP": "ring3", "TMCP": "thumb1", "TPIP": "thumb2", "TDIP": "thumb3",
           "TTIP": "thumb_tip", "ITIP": "index_tip", "MTIP": "middle_tip", "RTIP": "ring_tip", "PTIP": "little_tip"}
  assert [names[fpha.FILE_JOINT_NAMES[i]] for i in fpha.FPHA_TO_HO3D] == list(mano_lib.JOINT21_NAMES)
  assert fpha.object_of_action("open_juice_bottle") == "juice_bottle"
  assert fpha.object_of_action("pour_liquid_soap") == "liquid_soap"
  assert fpha.object_of_action("put_salt") == "salt"
  assert fpha.model_path("r", "juice_bottle").endswith("Object_models/juice_model/juice_model.ply")
  assert fpha.output_size(640) == (360, 640)
  # Model subsets keep the model's box, whatever P is.
  verts = np.random.default_rng(0).normal(size=(50, 3))
  for p in (6, 20, 50, 200):
    sub = mesh_files.model_point_subset(verts, p)
    assert sub.shape == (p, 3)
    np.testing.assert_array_equal(sub.min(0), verts.min(0))
    np.testing.assert_array_equal(sub.max(0), verts.max(0))


def test_ply_reader_formats(tmp_path):
  verts = np.array([[0.1, -0.2, 0.3], [1.5, 2.25, -3.0], [0.0, 0.5, 0.125]])
  # ASCII with comments, extra vertex properties, and the face element first.
  ascii_text = ("ply\nformat ascii 1.0\ncomment made by hand\nelement face 1\n"
                "property list uchar int vertex_indices\nelement vertex 3\nproperty float nx\nproperty float x\n"
                "property float y\nproperty float z\nproperty uchar red\nend_header\n3 0 1 2\n" +
                "".join(f"9 {x} {y} {z} 255\n" for x, y, z in verts))
  (tmp_path / "a.ply").write_text(ascii_text)
  np.testing.assert_allclose(mesh_files.read_ply_vertices(str(tmp_path / "a.ply")), verts, atol=1e-7)
  # Binary, both byte orders: a list element before the vertices, double coordinates, a colour property.
  for fmt, order in (("binary_little_endian", "<"), ("binary_big_endian", ">")):
    header = (f"ply\nformat {fmt} 1.0\nelement face 2\nproperty list uchar int vertex_indices\n"
              "element vertex 3\nproperty double x\nproperty double y\nproperty double z\nproperty uchar red\n"
              "element edge 1\nproperty int a\nproperty int b\nend_header\n").encode()
    faces = (np.array([3], "u1").tobytes() + np.array([0, 1, 2], order + "i4").tobytes() +
             np.array([4], "u1").tobytes() + np.array([0, 1, 2, 0], order + "i4").tobytes())
    rows = np.zeros(3, [("x", order + "f8"), ("y", order + "f8"), ("z", order + "f8"), ("r", "u1")])
    rows["x"], rows["y"], rows["z"] = verts.T
    (tmp_path / "b.ply").write_bytes(header + faces + rows.tobytes() + np.zeros(2, order + "i4").tobytes())
    np.testing.assert_array_equal(mesh_files.read_ply_vertices(str(tmp_path / "b.ply")), verts)
  # The writer used by the tests round-trips (float32) in both formats.
  for binary in (False, True):
    mesh_files.write_ply(str(tmp_path / "c.ply"), verts, [[0, 1, 2]], binary=binary)
    np.testing.assert_array_equal(mesh_files.read_ply_vertices(str(tmp_path / "c.ply")),
                                  verts.astype(np.float32).astype(np.float64))
  (tmp_path / "d.ply").write_bytes(header + faces + rows.tobytes()[:20])
  with pytest.raises(mesh_files.MeshFileError, match="d.ply: truncated"):
    mesh_files.read_ply_vertices(str(tmp_path / "d.ply"))
  (tmp_path / "e.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
  with pytest.raises(mesh_files.MeshFileError, match="e.ply: the vertex element has no y/z property"):
    mesh_files.read_ply_vertices(str(tmp_path / "e.ply"))
