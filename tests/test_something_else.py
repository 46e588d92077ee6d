"""The `something_else` builder (Something-Something v2 + Something-Else boxes) on a tiny fake tree that the
test writes: extracted frames for one video, an encoded video for another, a video with neither (reported and
skipped), the official validation list."""
import json

import cv2
import numpy as np
import pytest

from input_pipeline import pipeline
from input_pipeline import tfds_something_else as sse

W, H = 80, 60  # Source frames (landscape, as Something-Something's).


def _frame(k):
  """Frame number k: a flat grey level 20 k (identifies the frame after JPEG / MJPG coding)."""
  return np.full((H, W, 3), 20 * k, np.uint8)


def _label(cat, std, box):
  return {"box2d": {"x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]}, "category": cat,
          "standard_category": std}


def _tree(root):
  ann = {}
  # Video 101: extracted JPEG frames 1-10; frame 5 lacks the object box (it ends a run).
  (root / "frames" / "101").mkdir(parents=True)
  for k in range(1, 11):
    cv2.imwrite(str(root / "frames" / "101" / f"{k:04d}.jpg"), _frame(k))
  ann["101"] = [{"name": f"101/{k:04d}.jpg", "labels": [_label("hand", "hand", (10 + k, 12, 30 + k, 40))] + (
      [] if k == 5 else [_label("cup", "0000", (25, 20, 50, 45))])} for k in range(1, 10)]
  # Video 202: an MJPG .avi of 6 frames with two hands; the one on the object is the hand of the clip.
  (root / "videos").mkdir()
  writer = cv2.VideoWriter(str(root / "videos" / "202.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 12, (W, H))
  for k in range(1, 7):
    writer.write(_frame(k))
  writer.release()
  ann["202"] = [{"name": f"202/{k:04d}.jpg", "labels": [
      _label("hand", "hand", (0, 0, 8, 8)), _label("hand", "hand", (40, 30, 70, 58)),
      _label("box", "0000", (50, 35, 78, 59)), _label("lid", "0001", (0, 40, 10, 50))]} for k in range(1, 7)]
  # Video 303: annotated, but its frames were never downloaded.
  ann["303"] = [{"name": f"303/{k:04d}.jpg", "labels": [_label("hand", "hand", (1, 1, 9, 9)),
                                                        _label("pen", "0000", (2, 2, 8, 8))]} for k in range(1, 5)]
  (root / "annotations").mkdir()
  (root / "annotations" / "bounding_box_smthsmth_part1.json").write_text(json.dumps(ann))
  (root / "something-something-v2-validation.json").write_text(json.dumps([{"id": "202"}]))


def test_builder_reads_frames_and_videos_and_skips_broken_ones(tmp_path, capsys):
  root = tmp_path / "manual"
  _tree(root)
  builder = sse.build(str(tmp_path / "data"), str(root), "tiny")
  train = list(pipeline.load_split(builder, "train").as_numpy_iterator())
  val = list(pipeline.load_split(builder, "validation").as_numpy_iterator())
  assert "video 303 skipped" in capsys.readouterr().err
  assert [(e["video_id"].decode(), e["frame_numbers"].tolist()) for e in train] == [
      ("101", [1, 2, 3, 4]), ("101", [6, 7, 8, 9])]
  assert [(e["video_id"].decode(), e["frame_numbers"].tolist()) for e in val] == [("202", [1, 2, 3, 4])]
  scale = 64 / W
  for e in train + val:
    assert e["frames"].shape == (4, 64, 64, 3) and e["scale"] == pytest.approx(scale)
    for img, k in zip(e["frames"], e["frame_numbers"]):
      content = img[:int(H * scale) - 1, :63]
      assert abs(float(content.mean()) - 20 * k) < 3.0            # The right frame, in order.
      assert img[int(H * scale) + 1:].max() == 0                   # Letterbox padding at the bottom.
    assert sse.SIDES[e["side"]] == "unknown"
  np.testing.assert_allclose(train[1]["hand_boxes"][0], np.asarray([16, 12, 36, 40]) * scale, rtol=1e-5)
  np.testing.assert_allclose(train[0]["obj_boxes"][2], np.asarray([25, 20, 50, 45]) * scale, rtol=1e-5)
  # Of two hands, the one overlapping the object ("0000"; "0001" is ignored).
  np.testing.assert_allclose(val[0]["hand_boxes"][0], np.asarray([40, 30, 70, 58]) * scale, rtol=1e-5)


def test_missing_or_bad_manual_dir_is_one_clear_error(tmp_path):
  with pytest.raises(pipeline.DataError, match="manual_dir"):
    sse.build(str(tmp_path / "data"), str(tmp_path / "nowhere"), "tiny")
  (tmp_path / "empty").mkdir()
  with pytest.raises(pipeline.DataError, match="no Something-Else box annotations"):
    sse.build(str(tmp_path / "data"), str(tmp_path / "empty"), "tiny")
  (tmp_path / "bad" / "annotations").mkdir(parents=True)
  (tmp_path / "bad" / "annotations" / "a.json").write_text("{not json")
  with pytest.raises(pipeline.DataError, match="a.json: not a readable JSON"):
    sse.build(str(tmp_path / "data"), str(tmp_path / "bad"), "tiny")
  with pytest.raises(pipeline.DataError, match="unknown config.data.builder_config"):
    sse.build(str(tmp_path / "data"), str(tmp_path / "bad"), "huge")


def test_clip_cutting_rules():
  frames = [{"name": f"v/{k:04d}.jpg", "labels": [_label("hand", "hand", (0, 0, 5, 5)),
                                                   _label("x", "0000", (1, 1, 4, 4))]} for k in (1, 2, 3, 5, 6, 7, 8, 9)]
  clips = sse.clips_of_video(frames, 3)
  assert [[k for k, _, _ in c] for c in clips] == [[1, 2, 3], [5, 6, 7]]
  assert sse.frame_boxes({"labels": [_label("hand", "hand", (0, 0, 1, 1))]}) is None
