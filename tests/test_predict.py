"""`python -m handobj_jax.predict`: one-line errors (exit 2), the resize/pad geometry against OpenCV, and
runs on a generated image, a generated video and (when installed) a real photograph of a hand, with a
random-parameter smoke checkpoint."""

import json
import os

import cv2
import numpy as np
import pytest

from handobj_jax import predict
from test_cohesiv_eval import make_workdir, smoke_config

REAL_HAND_PHOTO = "/usr/share/doc/opencv-doc/opencv4/html/handSrc.jpg"  # Debian package opencv-doc
CONFIG = "configs/cohesiv.py:smoke"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("predict_ckpt"))
  config = smoke_config()
  make_workdir(path, config)
  rng = np.random.default_rng(0)
  f = config.model.embed_dim
  np.savez(os.path.join(path, "inference_stats.npz"), person_embedding=rng.normal(size=f).astype(np.float32),
           object_embedding=rng.normal(size=f).astype(np.float32),
           background_embedding=rng.normal(size=f).astype(np.float32))
  return path


def _image(tmp_path, h=50, w=70):
  rng = np.random.default_rng(3)
  img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
  path = str(tmp_path / "gen.png")
  cv2.imwrite(path, img)
  return path


def _run(args, capsys):
  rc = predict.main(args)
  out = capsys.readouterr()
  return rc, out.out, out.err


@pytest.mark.parametrize("case", ["missing", "garbage", "outside", "malformed"])
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
  img = _image(tmp_path)
  args = ["--checkpoint", str(tmp_path), "--image", img]
  expect = {"missing": "no such file", "garbage": "not a readable image", "outside": "outside the image",
            "malformed": "expected X,Y"}[case]
  if case == "missing":
    args[3] = str(tmp_path / "nope.jpg")
  elif case == "garbage":
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    args[3] = str(bad)
  elif case == "outside":
    args += ["--query", "70,10"]  # width 70: x must be <= 69
  else:
    args += ["--query", "12;4"]
  rc, _, err = _run(args, capsys)
  assert rc == 2
  assert err.startswith("error: ") and expect in err and err.count("\n") == 1


def test_missing_checkpoint_and_config_are_one_line_errors(tmp_path, capsys):
  img = _image(tmp_path)
  rc, _, err = _run(["--checkpoint", str(tmp_path), "--image", img], capsys)
  assert rc == 2 and "config.json" in err and err.count("\n") == 1
  rc, _, err = _run(["--checkpoint", str(tmp_path), "--image", img, "--config", CONFIG], capsys)
  assert rc == 2 and "inference_stats.npz" in err and err.count("\n") == 1


def test_resize_geometry_matches_opencv():
  """A ramp image whose value is its x coordinate, resized by OpenCV (bilinear): the value at resized
  pixel x' is the original coordinate `to_image_points(x')`; padding goes to multiples of 32."""
  h, w = 40, 100
  ramp = np.tile(np.arange(w, dtype=np.float32), (h, 1))
  s, rh, rw, ph, pw = predict.fit_size(h, w, 64)
  assert (rh, rw, ph, pw) == (26, 64, 32, 64)
  small = cv2.resize(ramp, (rw, rh), interpolation=cv2.INTER_LINEAR)
  xs = np.arange(2, rw - 2, dtype=np.float64)
  np.testing.assert_allclose(small[5, 2:rw - 2], predict.to_image_points(np.stack([xs, xs], -1), s)[:, 0],
                             atol=2e-3)
  pts = np.array([[0.0, 0.0], [99.0, 39.0], [12.3, 7.7]])
  np.testing.assert_allclose(predict.to_image_points(predict.to_model_points(pts, s), s), pts, atol=1e-9)
  maps = np.zeros((2, ph, pw), np.float32)
  maps[:, :rh, :rw] = small
  maps[:, rh:] = 1e6  # padding must be cropped away
  back = predict.map_back(maps, (rh, rw), (h, w))
  assert back.shape == (2, h, w) and back.max() < w


@pytest.mark.slow  # shares a ~20 s fixture (smoke model init + checkpoint)
def test_predict_on_generated_image(workdir, tmp_path, capsys):
  img = _image(tmp_path)
  out = tmp_path / "out"
  rc, stdout, err = _run(["--checkpoint", workdir, "--config", CONFIG, "--image", img, "--query", "10,20",
                          "--query", "69,49", "--out", str(out)], capsys)
  assert rc == 0, err
  assert "thresholds.json not found" in err  # warned, defaults used
  for name in ("gen_hand_0.png", "gen_object_1.png", "gen_all.png", "gen_figure.png", "gen_annotated.png"):
    assert (out / name).is_file(), name
  mask = cv2.imread(str(out / "gen_hand_0.png"), cv2.IMREAD_UNCHANGED)
  assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
  meta = json.load(open(out / "gen_queries.json"))
  assert meta["queries_xy"] == [[10.0, 20.0], [69.0, 49.0]] and meta["source"] == "user"
  # Without --query the hand-centre head proposes the queries (possibly none for random weights).
  rc, stdout, err = _run(["--checkpoint", workdir, "--config", CONFIG, "--image", img, "--out",
                          str(tmp_path / "head")], capsys)
  assert rc == 0, err
  assert json.load(open(tmp_path / "head" / "gen_queries.json"))["source"] == "head"


@pytest.mark.slow  # shares a ~20 s fixture (smoke model init + checkpoint)
def test_predict_on_generated_video(workdir, tmp_path, capsys):
  path = str(tmp_path / "clip.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 40))
  rng = np.random.default_rng(0)
  for _ in range(5):
    writer.write(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8))
  writer.release()
  out = tmp_path / "vid"
  rc, stdout, err = _run(["--checkpoint", workdir, "--config", CONFIG, "--video", path, "--every", "2",
                          "--query", "20,20", "--out", str(out)], capsys)
  assert rc == 0, err
  assert sorted(os.listdir(out / "frames")) == ["clip_000000.png", "clip_000002.png", "clip_000004.png"]
  video = [f for f in os.listdir(out) if f.startswith("clip_annotated")]
  assert len(video) == 1
  cap = cv2.VideoCapture(str(out / video[0]))
  frames = 0
  while cap.read()[0]:
    frames += 1
  cap.release()
  assert frames == 3


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(REAL_HAND_PHOTO) and not os.environ.get("CI"),
                    reason=f"no real hand photograph at {REAL_HAND_PHOTO} (apt-get install opencv-doc)")
def test_predict_on_a_real_hand_photo(workdir, tmp_path, capsys):
  """Runs in CI always (.ci/run installs opencv-doc; a missing photo there is a failure, not a skip)."""
  assert os.path.isfile(REAL_HAND_PHOTO), f"{REAL_HAND_PHOTO} missing: apt-get install opencv-doc"
  rc, stdout, err = _run(["--checkpoint", workdir, "--config", CONFIG, "--image", REAL_HAND_PHOTO,
                          "--query", "250,250", "--out", str(tmp_path)], capsys)
  assert rc == 0, err
  mask = cv2.imread(str(tmp_path / "handSrc_hand_0.png"), cv2.IMREAD_UNCHANGED)
  assert mask.shape == (480, 640)
