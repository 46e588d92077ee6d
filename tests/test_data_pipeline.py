"""TFDS builder `synthetic_handobj` (offline) and the sharded, deterministic tf.data pipeline."""

import socket

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import synthetic_world
from input_pipeline import tfds_synthetic


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))

  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted during an offline build: {args}")

  original = socket.socket.connect
  socket.socket.connect = no_network
  try:
    builder = tfds_synthetic.build(data_dir, "tiny")
  finally:
    socket.socket.connect = original
  return builder


def test_offline_build_splits_and_fields(tiny_builder):
  cfg = tiny_builder.builder_config
  assert {s: tiny_builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
      "train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
  ex = next(iter(tfds.as_numpy(tiny_builder.as_dataset(split="validation"))))
  clip = synthetic_world.generate_clip(cfg.world_config(), int(ex["clip_seed"]))
  np.testing.assert_array_equal(ex["frames"], clip["frames"])
  np.testing.assert_array_equal(ex["object_mask"], clip["object_mask"])
  np.testing.assert_array_equal(ex["hand_valid"], clip["hand_valid"])
  # float16 storage: relative error 2^-11 of the flow values.
  np.testing.assert_allclose(ex["flow"].astype(np.float32), clip["flow"],
                             atol=1e-3, rtol=2 ** -10)
  assert ex["frames"].shape == (10, 64, 64, 3) and ex["flow"].shape == (4, 6, 64, 64, 2)


def test_splits_use_disjoint_seeds(tiny_builder):
  seeds = {s: [int(e["clip_seed"]) for e in tfds.as_numpy(tiny_builder.as_dataset(split=s))]
           for s in ("train", "validation", "test")}
  flat = sum(seeds.values(), [])
  assert len(flat) == len(set(flat))


def test_global_batches_are_sharded_over_two_devices(tiny_builder):
  assert jax.device_count() == 2, "conftest should simulate 2 CPU devices"
  mesh = pipeline.make_data_mesh()
  def make():  # A fresh dataset per iteration: a tf.data shuffle reshuffles on each new iterator.
    return pipeline.train_dataset(pipeline.load_split(tiny_builder, "train"), batch_size=4, seed=1)

  host = next(iter(tfds.as_numpy(make())))
  batch = next(pipeline.global_batches(make(), mesh))
  frames = batch["frames"]
  assert frames.shape == (4, 10, 64, 64, 3)
  shards = sorted(frames.addressable_shards, key=lambda s: s.index[0].start)
  assert [s.data.shape[0] for s in shards] == [2, 2]
  assert len({s.device for s in shards}) == 2
  np.testing.assert_array_equal(np.asarray(batch["clip_seed"]), host["clip_seed"])


def _seeds(ds, n):
  it = iter(tfds.as_numpy(ds))
  return [tuple(next(it)["clip_seed"].tolist()) for _ in range(n)]


def test_train_order_is_deterministic_and_replayable(tiny_builder):
  split = pipeline.load_split(tiny_builder, "train")
  a = _seeds(pipeline.train_dataset(split, batch_size=2, seed=3), 8)
  b = _seeds(pipeline.train_dataset(split, batch_size=2, seed=3), 8)
  c = _seeds(pipeline.train_dataset(split, batch_size=2, seed=4), 8)
  resumed = _seeds(pipeline.train_dataset(split, batch_size=2, seed=3, start_step=5), 3)
  assert a == b
  assert a != c
  assert resumed == a[5:8]
  # Each epoch (3 batches of 2 over 6 clips) visits every clip once.
  assert sorted(sum(map(list, a[:3]), [])) == sorted(sum(map(list, a[3:6]), []))


def test_eval_batches_are_padded_with_mask(tiny_builder):
  ds = pipeline.eval_dataset(pipeline.load_split(tiny_builder, "train"), batch_size=4)
  batches = list(tfds.as_numpy(ds))
  assert [b["_mask"].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
  assert all(b["frames"].shape[0] == 4 for b in batches)
  assert not batches[1]["frames"][2:].any()
  exact = list(tfds.as_numpy(pipeline.eval_dataset(pipeline.load_split(tiny_builder, "train"), batch_size=3)))
  assert [b["_mask"].all() for b in exact] == [True, True]


def test_missing_split_and_data_dir_errors(tiny_builder, tmp_path):
  with pytest.raises(pipeline.DataError, match="no split 'holdout'"):
    pipeline.load_split(tiny_builder, "holdout")
  with pytest.raises(pipeline.DataError, match="config.data.data_dir"):
    pipeline.resolve_data_dir(str(tmp_path / "missing"))
  with pytest.raises(pipeline.DataError, match="not divisible"):
    pipeline.host_batch_size(3)


def test_eval_batches_agree_across_uneven_host_shards(monkeypatch):
  """`tfds.split_for_jax_process` gives shards of e.g. 401 and 400 examples; without a common batch count the
  hosts ran 51 and 50 eval steps and one waited forever in a collective. With `eval_num_batches` both run the
  same number, the extra batch all padding (mask False)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class FakeBuilder:
    class info:  # pylint: disable=invalid-name
      splits = {"validation": type("S", (), {"num_examples": 801})()}

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  steps = pipeline.eval_num_batches(FakeBuilder, "validation", 8)
  assert steps == 51
  counts, real = [], []
  for n in (401, 400):  # The two hosts' shards.
    ds = tf.data.Dataset.from_tensor_slices({"x": np.arange(n, dtype=np.float32)})
    batches = list(pipeline.eval_dataset(ds, batch_size=8, num_batches=steps).as_numpy_iterator())
    counts.append(len(batches))
    real.append(int(sum(b[pipeline.MASK_KEY].sum() for b in batches)))
    old = list(pipeline.eval_dataset(ds, batch_size=8).as_numpy_iterator())  # Per-host padding only.
    assert len(old) == -(-n // 8)
  assert counts == [51, 51] and real == [401, 400]
