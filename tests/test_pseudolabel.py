"""Tests for the COHESIV pseudo-labelling job and examples (input_pipeline/cohesiv_examples.py,
handobj_jax/jobs/pseudolabel.py).

References independent of the code under test: the contract's field table (written out below by hand),
the source clips regenerated with `synthetic_world.generate_clip`, NumPy re-derivations of the mask rules
and of mirrored boxes, and the raw TFRecord bytes of an uninterrupted run.
"""

import glob
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import child_process
from configs import pseudolabel as pseudolabel_config
from handobj_jax.jobs import pseudolabel as job
from input_pipeline import cohesiv_examples as ce
from input_pipeline import synthetic_world as sw
from input_pipeline import tfds_synthetic

H = W = 64
N = 2
# The contract (FEATURES in the input_pipeline.cohesiv_examples docstring): field -> (shape, dtype).
CONTRACT = {
    "image": ((H, W, 3), np.uint8),
    "responsibility": ((N, H, W), np.uint8),
    "query_point": ((N, 2), np.float32),
    "query_valid": ((N,), np.bool_),
    "hand_box": ((N, 4), np.float32),
    "person_mask": ((H, W), np.bool_),
    "object_mask": ((H, W), np.bool_),
    "background_mask": ((H, W), np.bool_),
    "flow_next": ((H, W, 2), np.float16),
    "gt_hand_mask": ((N, H, W), np.bool_),
    "gt_object_mask": ((N, H, W), np.bool_),
    "has_gt": ((), np.bool_),
    "clip_id": ((), np.int64),
    "frame": ((), np.int32),
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **pseudo):
  config = pseudolabel_config.get_config("tiny")
  config.data.data_dir = str(data_dir)
  for k, v in pseudo.items():
    setattr(config.pseudo, k, v)
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The `pseudolabel` job on the tiny TFDS source, run once for the module."""
  data_dir = tmp_path_factory.mktemp("data")
  workdir = tmp_path_factory.mktemp("work")
  config = _config(data_dir)
  report = job.run(config, str(workdir))
  builder = job.ensure_pseudolabelled(config, str(data_dir))
  return config, builder, report, workdir


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_job_writes_contract_examples(built):
  config, builder, report, workdir = built
  src_builder = tfds_synthetic.SyntheticHandobj(data_dir=config.data.data_dir, config="tiny")
  src = src_builder.builder_config
  world = src.world_config()
  counts = {"train": src.num_train, "validation": src.num_validation, "test": src.num_test}
  assert os.path.exists(os.path.join(workdir, ce.REPORT_FILE))
  for split, n_clips in counts.items():
    assert builder.info.splits[split].num_examples == 4 * n_clips
    assert report["splits"][split] == {"clips": n_clips, "examples": 4 * n_clips, "failed_clips": 0}
    exs = _examples(builder, split)
    # clip_id = position in the source split's stored order (TFDS shuffles at build time); the clip itself
    # is regenerated from its stored seed.
    seeds = [int(c["clip_seed"]) for c in tfds.as_numpy(src_builder.as_dataset(split=split, shuffle_files=False))]
    keys = [(int(e["clip_id"]), int(e["frame"])) for e in exs]
    assert sorted(keys) == sorted((c, t) for c in range(n_clips) for t in (3, 4, 5, 6))
    for ex in exs[:4] if split == "train" else exs[:1]:
      assert set(ex) == set(CONTRACT)
      for name, (shape, dtype) in CONTRACT.items():
        arr = np.asarray(ex[name])
        assert arr.shape == shape, name
        assert arr.dtype == dtype, name
      clip = sw.generate_clip(world, seeds[int(ex["clip_id"])])
      t = int(ex["frame"])
      np.testing.assert_array_equal(ex["image"], clip["frames"][t])
      np.testing.assert_array_equal(ex["person_mask"], clip["person_mask"][t])
      np.testing.assert_array_equal(ex["gt_hand_mask"], clip["hand_mask"][t])
      np.testing.assert_array_equal(ex["gt_object_mask"], clip["object_mask"][t])
      k_next = sw.OFFSETS.index(1)
      np.testing.assert_allclose(ex["flow_next"].astype(np.float32),
                                 clip["flow"][t - 3, k_next], atol=0.05, rtol=1e-3)  # float16 storage.
      valid = clip["hand_valid"]
      np.testing.assert_allclose(ex["query_point"][valid], clip["hand_vertices"][t][valid].mean(1), atol=1e-4)
      assert not ex["query_valid"][~valid].any()
      assert not ex["responsibility"][~valid].any()
      assert ex["has_gt"]
      # Mask rules, re-derived from the stored (rounded) responsibilities with a rounding margin.
      total = ex["responsibility"].astype(np.float64).sum(0) / 255.0
      sure_obj = (total > 0.5 + N / 255.0) & ~ex["person_mask"]
      sure_not = (total < 0.5 - N / 255.0) | ex["person_mask"]
      assert ex["object_mask"][sure_obj].all() and not ex["object_mask"][sure_not].any()
      np.testing.assert_array_equal(ex["background_mask"], ~(ex["person_mask"] | ex["object_mask"]))


class _CleanSource(ce.GeneratorClipSource):
  """Generator source with exact flow and vertices and fast motion (test-only)."""

  def __init__(self, n):
    super().__init__("tiny", {"train": n, "validation": 0, "test": 0})
    self.world = sw.WorldConfig(height=H, width=W, motion_scale=2.0, p_hold=1.0, min_hands=1, max_hands=N,
                                num_moving_distractors=(0, 0))
    self.name = "clean_test"


def test_holding_hand_responsibility_high_on_object(tmp_path):
  source = _CleanSource(3)
  out = job.build_pseudolabels(_config(tmp_path), str(tmp_path), source=source)
  builder = tfds.builder_from_directory(out)
  checked = 0
  for ex in _examples(builder, "train"):
    clip = sw.generate_clip(source.world, source._seed(source._cfg, "train", int(ex["clip_id"])))
    t = int(ex["frame"])
    mi = sw.MIDDLE_FRAMES.index(t)
    visible = clip["flow_visible"][mi].all(0)
    for n in np.nonzero(clip["holding"])[0]:
      obj = clip["object_mask"][t, n] & visible
      if obj.sum() < 20:
        continue
      r = ex["responsibility"].astype(np.float32) / 255.0
      background = ~clip["person_mask"][t] & ~clip["distractor_mask"][t] & ~clip["object_mask"][t].any(0)
      assert r[n][obj].mean() > 0.6, (int(ex["clip_id"]), t, n)
      assert r[n][obj].mean() > r[n][background].mean() + 0.4
      assert ex["query_valid"][n]
      checked += 1
  assert checked >= 4


class _BrokenSource(ce.GeneratorClipSource):
  """Test-only: clip 1 has NaN flow everywhere, clip 2 no valid hand, clip 3 fails to decode."""

  def __init__(self):
    super().__init__("tiny", {"train": 5, "validation": 1, "test": 1})
    self.name = "broken_test"

  def read(self, split, start, stop):
    for i, clip in super().read(split, start, stop):
      if split == "train" and i == 1:
        clip["flow"][:] = np.nan
      elif split == "train" and i == 2:
        clip["hand_valid"][:] = False
      elif split == "train" and i == 3:
        clip = IOError("corrupt record")
      yield i, clip


def test_broken_clips_are_reported_and_skipped(tmp_path):
  out = job.build_pseudolabels(_config(tmp_path), str(tmp_path), source=_BrokenSource())
  builder = tfds.builder_from_directory(out)
  assert builder.info.splits["train"].num_examples == 4 * (5 - 3)
  assert {int(e["clip_id"]) for e in _examples(builder, "train")} == {0, 4}
  report = json.load(open(os.path.join(out, ce.REPORT_FILE)))
  reasons = {f["clip_id"]: f["reason"] for f in report["failed"]}
  assert set(reasons) == {1, 2, 3}
  assert "non-finite flow" in reasons[1]
  assert "no valid hands" in reasons[2]
  assert "corrupt record" in reasons[3]
  assert report["splits"]["train"] == {"clips": 5, "examples": 8, "failed_clips": 3}


def _records(out):
  """(clip_id, frame) keys and raw bytes of every record, shard by shard in order."""
  keys, raw = [], []
  builder = tfds.builder_from_directory(out)
  for split in ce.SPLITS:
    files = sorted(glob.glob(os.path.join(out, f"{ce.DATASET_NAME}-{split}.tfrecord-*")))
    for rec in tf.data.TFRecordDataset(files).as_numpy_iterator():
      ex = builder.info.features.deserialize_example_np(rec)
      keys.append((split, int(ex["clip_id"]), int(ex["frame"])))
      raw.append(rec)
  return keys, raw


# Run in a child process by the kill-and-restart test: the generator source of `configs/pseudolabel.py:tiny`
# through the public `build_pseudolabels(source=...)`, its `read` stalling for good before one clip, so the
# process is certain to be mid-run (a shard's clips partly labelled and written) when the test kills it.
_STALLING_BUILD = """
import sys, threading
from configs import pseudolabel as pseudolabel_config
from handobj_jax.jobs import pseudolabel as job
from input_pipeline import cohesiv_examples as ce
data_dir, stall_at, shard_clips, batch_clips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = pseudolabel_config.get_config("tiny")
config.data.data_dir = data_dir
config.pseudo.source, config.pseudo.shard_clips, config.pseudo.batch_clips = "generator", shard_clips, batch_clips
source = ce.make_source(config)
read = source.read
def stalling_read(split, start, stop):
  for i, clip in read(split, start, stop):
    if (split, i) == ("train", stall_at):
      threading.Event().wait()  # Until SIGKILL.
    yield i, clip
source.read = stalling_read
job.build_pseudolabels(config, data_dir, source=source)
"""


def test_kill_and_restart_loses_and_duplicates_nothing(tmp_path):
  """SIGKILL mid-run (train shard 0 of 2 finished, shard 1 open), then a restart: the result equals an
  uninterrupted build record for record, byte for byte. 3 clips per shard, batches of 1 clip."""
  killed_dir, ref_dir = tmp_path / "killed", tmp_path / "ref"
  killed_dir.mkdir()
  ref_dir.mkdir()
  overrides = dict(source="generator", shard_clips=3, batch_clips=1)
  # Train clips 0-2 form shard 0, 3-5 shard 1; the child stalls at clip 5 at the latest (clip 3 labelled and
  # written by then), the test kills it as soon as shard 0 is finished and shard 1's file is open.
  cmd = [sys.executable, "-c", _STALLING_BUILD, str(killed_dir), "5", "3", "1"]
  log = tmp_path / "killed_build.log"
  out = ce.output_dir(str(killed_dir), "synthetic_world_tiny")

  def mid_run():  # Shard 0 finished, shard 1's temporary file open.
    return (glob.glob(os.path.join(out, "_progress", "*.json")) and os.path.isdir(out)
            and [f for f in os.listdir(out) if f.startswith(".tmp-")])

  child_process.kill_when(cmd, REPO, log, mid_run, "mid-run", timeout=180, poll=0.2)
  assert [os.path.basename(f) for f in glob.glob(os.path.join(out, "_progress", "*.json"))] == [
      f"{ce.DATASET_NAME}-train.tfrecord-00000-of-00002.json"]
  assert not os.path.exists(os.path.join(out, "dataset_info.json"))
  assert job.build_pseudolabels(_config(killed_dir, **overrides), str(killed_dir)) == out
  ref = job.build_pseudolabels(_config(ref_dir, **overrides), str(ref_dir))
  keys, raw = _records(out)
  ref_keys, ref_raw = _records(ref)
  assert len(keys) == len(set(keys)) == 4 * (6 + 2 + 2)
  assert keys == ref_keys
  decoded = tfds.builder_from_directory(ref).info.features.deserialize_example_np
  for a, b in zip(raw, ref_raw):  # Content, field by field, then the records themselves.
    ea, eb = decoded(a), decoded(b)
    assert all(np.asarray(ea[k]).tobytes() == np.asarray(eb[k]).tobytes() for k in ea)
  assert raw == ref_raw  # Byte for byte.
  assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_changed_settings_are_refused(built):
  config, _, _, _ = built
  config = _config(config.data.data_dir, object_threshold=0.7)
  with pytest.raises(ValueError, match="object_threshold"):
    job.ensure_pseudolabelled(config, config.data.data_dir)


def test_responsibility_baseline_job(built, tmp_path):
  config, _, _, _ = built
  config = _config(config.data.data_dir)
  config.baseline.num_thresholds = 21
  results = job.run_baseline(config, str(tmp_path))
  assert (tmp_path / "responsibility_baseline.md").exists()
  saved = json.load(open(tmp_path / "responsibility_baseline.json"))
  assert set(saved["tasks"]) == {"all", "pair"}
  for task in ("all", "pair"):
    for stat in ("per_example", "pooled"):
      r = results["tasks"][task][stat]
      for v in (r["validation"], r["test"]):
        assert np.isfinite(v) and 0.0 <= v <= 1.0
      assert 0.0 <= r["threshold"] <= 1.0
      assert r["validation"] >= 0.05  # Beats an empty prediction (IoU 0) on validation.


def _box_of(mask):
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_flip_twice_is_identity_and_query_points_follow(built):
  _, builder, _, _ = built
  exs = _examples(builder, "train")
  found = 0
  for ex in exs:
    tf_ex = {k: tf.constant(v) for k, v in ex.items()}
    once = {k: v.numpy() for k, v in ce.flip_example(tf_ex).items()}
    twice = {k: v.numpy() for k, v in ce.flip_example(ce.flip_example(tf_ex)).items()}
    for k in ex:  # Exact, except float32 coordinates: (W-1) - ((W-1) - x) may differ from x by an ulp.
      if k in ("query_point", "hand_box"):
        np.testing.assert_allclose(twice[k], ex[k], atol=1e-4, rtol=0, err_msg=k)
      else:
        np.testing.assert_array_equal(twice[k], ex[k], err_msg=k)
    np.testing.assert_array_equal(once["image"], ex["image"][:, ::-1])
    np.testing.assert_array_equal(once["flow_next"][..., 0], -ex["flow_next"][:, ::-1, 0])
    for n in range(N):
      if not ex["gt_hand_mask"][n].any():
        continue
      # Ground-truth boxes of the synthetic world are the boxes of the hand masks.
      np.testing.assert_allclose(once["hand_box"][n], _box_of(once["gt_hand_mask"][n]))
      x, y = np.rint(ex["query_point"][n]).astype(int)
      if ex["gt_hand_mask"][n][y, x]:
        fx, fy = np.rint(once["query_point"][n]).astype(int)
        assert once["gt_hand_mask"][n][fy, fx]
        assert fx == W - 1 - x and fy == y
        found += 1
  assert found >= 3


def test_train_preprocess_in_tf_data(built):
  _, builder, _, _ = built
  ds = builder.as_dataset(split="validation", shuffle_files=False)
  plain = next(iter(ds.map(ce.train_preprocess).as_numpy_iterator()))
  assert plain["image"].dtype == np.float32 and 0.0 <= plain["image"].min() <= plain["image"].max() <= 1.0
  assert plain["responsibility"].dtype == np.float32 and plain["responsibility"].max() <= 1.0
  raw = next(iter(tfds.as_numpy(ds)))
  np.testing.assert_allclose(plain["responsibility"], raw["responsibility"] / 255.0, atol=1e-6)
  always = next(iter(ds.map(lambda e: ce.train_preprocess(e, flip_prob=1.0, seed=0)).as_numpy_iterator()))
  np.testing.assert_allclose(always["image"], plain["image"][:, ::-1])
  np.testing.assert_array_equal(always["object_mask"], plain["object_mask"][:, ::-1])
