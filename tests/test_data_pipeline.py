"""TFDS builder `synthetic_handobj` (offline) and the sharded, deterministic tf.data pipeline."""

import socket

import jax
import numpy as np
import pytest
import tensorflow as tf
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


def _counted(n: int, reads: list[int]) -> tf.data.Dataset:
  """range(n) through Python, counting the examples read (the decoding a resume pays for)."""
  def gen():
    for i in range(n):
      reads[0] += 1
      yield {"clip_seed": np.int64(i)}
  ds = tf.data.Dataset.from_generator(gen, output_signature={"clip_seed": tf.TensorSpec((), tf.int64)})
  return ds.apply(tf.data.experimental.assert_cardinality(n))


@pytest.mark.parametrize("start_step", [7, 1_000_003])
def test_resume_costs_at_most_one_epoch_whatever_the_step(start_step):
  """Resuming at step s reads fewer than one epoch (+ the shuffle buffer) of examples, not s batches' worth, and
  gives the batches an uninterrupted run has at steps s, s+1, ...: epoch e is the split shuffled with a seed from
  (seed, e) (`pipeline.epoch_stream`). Before: `ds.skip(start_step)` decoded every earlier batch (10^6 steps x
  3 examples here)."""
  reads = [0]
  resumed = _seeds(pipeline.train_dataset(_counted(10, reads), batch_size=3, seed=5, shuffle_buffer=10,
                                          start_step=start_step), 4)
  assert reads[0] <= 2 * 10
  # The uninterrupted stream at those positions: epoch e of a fresh stream started at e's first example.
  pos = start_step * 3
  stream = []
  e = pos // 10
  while len(stream) < (pos % 10) + 12:
    stream += _seeds(pipeline.epoch_stream(_counted(10, [0]), seed=5, shuffle_buffer=10, start=e * 10).batch(10), 1)[0]
    e += 1
  flat = stream[pos % 10:pos % 10 + 12]
  assert [x for b in resumed for x in b] == flat
  # Every epoch is a permutation of the split, and consecutive epochs differ.
  one = _seeds(pipeline.epoch_stream(_counted(10, [0]), seed=5, shuffle_buffer=10).batch(10), 2)
  assert sorted(one[0]) == sorted(one[1]) == list(range(10)) and one[0] != one[1]


def test_mixture_resumes_at_its_position_and_keeps_the_ratio():
  """`mix_datasets`: the second source fills a quarter of every 4 slots; started at example p the mixture equals
  the uninterrupted one from p, reading at most about one epoch of each source."""
  def mix(start, reads=None):
    reads = reads or [[0], [0]]
    a = _counted(10, reads[0])
    b = _counted(6, reads[1]).map(lambda ex: {"clip_seed": ex["clip_seed"] + 100})
    return pipeline.mix_datasets([a, b], [0.75, 0.25], seed=2, shuffle_buffer=16, cache=True, start=start)

  full = [int(x["clip_seed"]) for x in tfds.as_numpy(mix(0).take(400))]
  assert sum(x >= 100 for x in full) == 100
  assert all(sum(x >= 100 for x in full[i:i + 4]) == 1 for i in range(0, 400, 4))
  reads = [[0], [0]]
  later = [int(x["clip_seed"]) for x in tfds.as_numpy(mix(350, reads).take(50))]
  assert later == full[350:400]
  big = [[0], [0]]
  list(tfds.as_numpy(mix(10**9, big).take(5)))
  assert big[0][0] <= 20 and big[1][0] <= 12
  # Through train_dataset (the pose job's path), with a filtered source of unknown length: before, the mixture's
  # unknown cardinality sent it into epoch_stream, which counted the infinite stream forever.
  filtered = _counted(12, [0]).filter(lambda ex: ex["clip_seed"] % 2 == 0)
  batches = pipeline.train_dataset(
      pipeline.mix_datasets([_counted(10, [0]), filtered], [0.5, 0.5], seed=2, shuffle_buffer=16, cache=True),
      batch_size=4, seed=0, cache=False)
  got = [b["clip_seed"].tolist() for b in tfds.as_numpy(batches.take(3))]
  assert all(len(b) == 4 and sum(x % 2 == 0 for x in b[1::2]) == 2 for b in got), got


def test_global_batches_send_the_next_batches_ahead_in_order():
  """`global_batches(prefetch=2)`: when batch k is handed out, batches k + 1 and k + 2 have been put on the
  devices already (their transfer overlaps step k); order and count are unchanged."""
  pulled = []

  def host():
    for i in range(5):
      pulled.append(i)
      yield {"x": np.full((2, 3), i, np.float32)}

  mesh = pipeline.make_data_mesh()
  seen = []
  for batch in pipeline.global_batches(host(), mesh, prefetch=2):
    assert isinstance(batch["x"], jax.Array)
    seen.append(int(np.asarray(batch["x"])[0, 0]))
    assert len(pulled) == min(5, len(seen) + 2)
  assert seen == [0, 1, 2, 3, 4]
  assert [int(np.asarray(b["x"])[0, 0]) for b in pipeline.global_batches(host(), mesh, prefetch=0)] == seen


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
