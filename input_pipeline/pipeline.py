"""tf.data input pipelines that feed data-parallel JAX steps.

Every host reads its own shard of a split (`tfds.split_for_jax_process`), batches `global_batch_size /
process_count` examples, and `global_batches` turns each host batch into one global `jax.Array` sharded
over the batch axis of a `('data',)` mesh spanning every device of every host. Order is deterministic given
the seed (`options.deterministic`, seeded shuffles). Training streams are indexed by epoch (epoch e is the split
shuffled with a seed derived from (seed, e)), so resuming at step s starts at epoch s*B // N and skips fewer
than N examples of it: the resumed run sees exactly the batches of an uninterrupted one, at a cost bounded by
one epoch whatever the step (`epoch_stream`). Evaluation batches are padded to a fixed size with a boolean
`_mask` so every host runs the same number of steps.

Damaged data is reported, never a raw TensorFlow traceback: `open_prepared` checks a prepared dataset's
`dataset_info.json` and that every shard file exists with the size the metadata records (a truncated or
missing shard is named at once); a record that fails its checksum while reading (flipped bytes) is traced to
its shard file by `find_damaged_shard`, and `global_batches(..., source=DataSource(...))` raises a
`DataError` naming that file and how to rebuild it.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from handobj_jax import console
from handobj_jax import errors
from handobj_jax import fileio
from handobj_jax import multihost
from handobj_jax import preemption

# tf.data must not grab an accelerator that JAX owns; TFDS progress bars stay off the user's terminal
# (builds report through handobj_jax.console).
tf.config.set_visible_devices([], "GPU")
tfds.disable_progress_bar()
TFRECORD_FRAMING_BYTES = 16  # Per record: length (8) + its CRC (4) + data CRC (4).

DEFAULT_DATA_DIR_ENV = "HANDOBJ_DATA_DIR"
MASK_KEY = "_mask"


class DataError(errors.InputError):
  """An unusable data source (missing directory, dataset or field), reported in one line."""


def resolve_data_dir(data_dir: str) -> str:
  """Returns the directory datasets are read from and built into.

  '' means $HANDOBJ_DATA_DIR, else ~/tensorflow_datasets (created on demand). An explicitly configured
  directory must already exist: a typo must not silently start a fresh multi-hour build elsewhere.
  """
  if not data_dir:
    from_env = os.environ.get(DEFAULT_DATA_DIR_ENV)
    data_dir = os.path.abspath(os.path.expanduser(from_env or os.path.join("~", "tensorflow_datasets")))
    source = f"${DEFAULT_DATA_DIR_ENV}={from_env!r}" if from_env else f"the default data dir {data_dir!r}"
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
      raise DataError(f"{source} is a file, not a directory; point ${DEFAULT_DATA_DIR_ENV} at a directory")
    try:
      os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
      raise DataError(f"cannot create {source}: {e.strerror or e}") from None
    return data_dir
  try:
    fileio.check_local_path(data_dir, "config.data.data_dir")
  except ValueError as e:
    raise DataError(str(e)) from None
  resolved = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.isdir(resolved):
    raise DataError(f"data dir {data_dir!r} (config.data.data_dir) does not exist; create it or leave "
                    f"data_dir empty to use ${DEFAULT_DATA_DIR_ENV} or ~/tensorflow_datasets")
  return resolved


def make_data_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D `('data',)` mesh over all devices of all hosts."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def host_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
  """Examples per host per step; the global batch must divide over hosts and devices."""
  num_devices = mesh.devices.size if mesh is not None else jax.device_count()
  if global_batch_size % num_devices:
    raise DataError(f"global batch size {global_batch_size} (config.batch_size) is not divisible by "
                    f"the {num_devices} devices")
  return global_batch_size // jax.process_count()


def host_split(split: str) -> str:
  """This host's even share of `split`."""
  return tfds.split_for_jax_process(split) if jax.process_count() > 1 else split


def host_block(split: str, total: int) -> tuple[str, int, int]:
  """This process's contiguous block of the first `total` examples of `split`: a TFDS split spec
  ('test[120:240]'), its length, and the longest block's length (to pad every process to the same number of batches).
  Blocks in process order are the split's order: concatenated (`multihost.concat_examples`) they give a
  1-process run's examples. One process: ('split[0:total]', total, total)."""
  hosts = jax.process_count()
  bounds = np.linspace(0, total, hosts + 1).astype(int)
  lo, hi = int(bounds[jax.process_index()]), int(bounds[jax.process_index() + 1])
  if hi <= lo:
    raise DataError(f"split {split!r}: {total} examples to evaluate, fewer than the {hosts} processes of this run")
  return f"{split}[{lo}:{hi}]", hi - lo, int(np.diff(bounds).max())


def load_split(builder: tfds.core.DatasetBuilder, split: str, *, shuffle_files: bool = False,
               seed: int = 0, per_host: bool = True) -> tf.data.Dataset:
  """This host's shard of `split` (`per_host`), or the whole split (for `train_dataset(global_order=True)`)."""
  if split.split("[")[0] not in builder.info.splits:
    raise DataError(f"dataset {builder.info.full_name} has no split {split!r}; it has "
                    f"{sorted(builder.info.splits)}")
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1)
  return builder.as_dataset(split=host_split(split) if per_host else split, shuffle_files=shuffle_files,
                            read_config=read_config)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options)


def epoch_stream(ds: tf.data.Dataset, *, seed: int, shuffle_buffer: int, start: int = 0,
                 cache: bool = True) -> tf.data.Dataset:
  """`ds` repeated forever, each epoch e shuffled with its own seed (from `seed` and e), from example `start`.

  Example p of the stream is the same whatever `start` the stream began at: a resumed run rebuilds the stream
  at its position and skips at most one epoch's worth of examples (before any map a caller adds), instead of
  replaying every earlier batch. `cache`: keep the decoded split in memory after its first pass.
  """
  n = int(ds.cardinality())
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError("epoch_stream needs a finite dataset")
  if n < 0:  # Unknown (e.g. after a filter): count it once.
    n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
  if n == 0:
    raise DataError("the training split is empty")
  if cache:
    ds = ds.cache()
  base_seed = tf.constant(seed, tf.int64) * 1_000_003

  def epoch(e):
    return ds.shuffle(shuffle_buffer, seed=base_seed + e, reshuffle_each_iteration=False)

  return tf.data.Dataset.range(start // n, 2**62).flat_map(epoch).skip(start % n)


def train_dataset(ds: tf.data.Dataset, *, batch_size: int, seed: int,
                  preprocess: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
                  shuffle_buffer: int = 1024, start_step: int = 0, cache: bool = True,
                  prefetch: int = 2, global_order: bool = False) -> tf.data.Dataset:
  """Infinite, reshuffled every epoch, batched per host, starting at batch `start_step` (resume: O(1) in the
  step, see `epoch_stream`). An infinite `ds` (`mix_datasets`) is taken as already shuffled and positioned.

  Data order with several processes (`config.data.global_order`):
    False (default): `ds` is this host's shard (`load_split`); each host shuffles its own shard, so the global
      batches depend on the number of processes. Each host decodes only its share: the input scales with them.
    True: `ds` is the whole split on every host (`load_split(per_host=False)`); every host shuffles it the
      same way, forms global batches of `batch_size x process_count` and keeps its slice, so a run's batches
      are the same whatever the number of processes (a 2-process run reproduces a 1-process run). Every host
      decodes every example: P times the input work.
  """
  hosts = jax.process_count() if global_order else 1
  if int(ds.cardinality()) != tf.data.INFINITE_CARDINALITY:
    ds = epoch_stream(ds, seed=seed, shuffle_buffer=shuffle_buffer, start=start_step * batch_size * hosts,
                      cache=cache)
  elif start_step:
    raise ValueError("train_dataset: position an infinite dataset yourself (mix_datasets(start=...))")
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size * hosts, drop_remainder=True)
  if hosts > 1:
    lo = jax.process_index() * batch_size
    ds = ds.map(lambda b: tf.nest.map_structure(lambda x: x[lo:lo + batch_size], b))
  return _deterministic(ds).prefetch(prefetch)


def mix_datasets(sources: list[tf.data.Dataset], weights: list[float], *, seed: int, shuffle_buffer: int,
                 cache: bool, start: int = 0) -> tf.data.Dataset:
  """An infinite mixture of two datasets, each an `epoch_stream` (own seed), from example `start` of the mix.

  Slot p holds an example of the second source when floor((p + 1) r) > floor(p r), r = weights[1] / sum (to
  1e-6): the second source fills that fraction of every stretch of the stream (of every batch, to within one
  example), and how many of the first p slots each source filled is known without replaying them, so a
  resumed run restarts both sources at their positions (O(1) in the step). Feed it to `train_dataset`.
  """
  if len(sources) != 2 or len(weights) != 2:
    raise ValueError(f"mix_datasets mixes two datasets, got {len(sources)} with weights {weights}")
  den = 1_000_000
  num = int(round(den * float(weights[1]) / (float(weights[0]) + float(weights[1]))))
  second = start * num // den
  streams = [epoch_stream(ds, seed=seed + i, shuffle_buffer=shuffle_buffer, start=pos, cache=cache)
             for i, (ds, pos) in enumerate(zip(sources, (start - second, second)))]
  choice = tf.data.Dataset.range(start, 2**62).map(lambda p: (p + 1) * num // den - p * num // den)
  mixed = tf.data.Dataset.choose_from_datasets(streams, choice)
  # tf.data reports the mixture's cardinality as unknown; `train_dataset` must see that it is infinite.
  return mixed.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def _add_mask(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {**example, MASK_KEY: tf.constant(True)}


def eval_num_batches(builder: tfds.core.DatasetBuilder, split: str, host_batch_size: int,
                     global_order: bool = False) -> int:
  """Batches every process runs over `split`: enough for the largest host shard. `tfds.split_for_jax_process`
  gives shards whose sizes differ by one (e.g. 401 and 400), so a per-host count could differ by a batch and
  leave one process waiting in a collective; padding every host to this count cannot. With `global_order`
  (every host reads the whole split and keeps its slice of each global batch): the global batch count."""
  n = builder.info.splits[split].num_examples
  if global_order:
    return -(-n // (host_batch_size * jax.process_count()))
  per_host = -(-n // jax.process_count())
  return -(-per_host // host_batch_size)


def eval_dataset(ds: tf.data.Dataset, *, batch_size: int,
                 preprocess: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
                 prefetch: int = 2, num_batches: int | None = None, global_order: bool = False) -> tf.data.Dataset:
  """One pass in order; the last batch is padded to `batch_size` with `_mask` False on the padding.

  `num_batches` (from `eval_num_batches`; needed with several processes): exactly that many batches, the
  missing ones all padding, so every process runs the same number of steps. `global_order` (with
  `num_batches`): `ds` is the whole split on every host, batched at the global size, each host keeping its
  slice, so the global batches are those of a 1-process run."""
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(_add_mask)
  if num_batches is not None:
    hosts = jax.process_count() if global_order else 1
    padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat()
    ds = ds.concatenate(padding).batch(batch_size * hosts, drop_remainder=True).take(num_batches)
    if hosts > 1:
      lo = jax.process_index() * batch_size
      ds = ds.map(lambda b: tf.nest.map_structure(lambda x: x[lo:lo + batch_size], b))
    return _deterministic(ds).prefetch(prefetch)
  # Append batch_size - 1 all-zero examples (mask False) and keep only full batches holding real data:
  # the ragged last batch is completed by padding, and leftover padding-only batches are dropped.
  padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat(batch_size - 1)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
  ds = ds.filter(lambda b: tf.reduce_any(b[MASK_KEY]))
  return _deterministic(ds).prefetch(prefetch)


@dataclasses.dataclass(frozen=True)
class DataSource:
  """Where a tf.data pipeline reads from, to name a damaged file: a builder, a split and a rebuild hint."""
  builder: Any
  split: str
  rebuild: str


def global_batches(ds: tf.data.Dataset | Any, mesh: Mesh, source: DataSource | None = None,
                   prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Host batches -> global `jax.Array`s sharded over the mesh's 'data' axis.

  `prefetch` batches beyond the one handed out are already on their way to the devices (transfers are
  asynchronous), so on an accelerator the copy of batch k + 1 overlaps step k. A read error (a damaged record)
  becomes a `DataError`; with `source` it names the damaged shard file.
  """
  sharding = batch_sharding(mesh)
  batches = numpy_batches(ds, source) if isinstance(ds, tf.data.Dataset) else ds
  on_device = (jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
               for batch in batches)
  return lookahead(on_device, prefetch)


def lookahead(iterator: Iterator[Any], size: int) -> Iterator[Any]:
  """Yields the items of `iterator` in order, having pulled up to `size` more before handing each out."""
  queue: collections.deque = collections.deque(itertools.islice(iterator, size + 1))
  while queue:
    yield queue.popleft()
    queue.extend(itertools.islice(iterator, 1))


def host_local(tree: Any, mesh: Mesh) -> Any:
  """Batch-sharded global arrays (e.g. a jitted forward pass's outputs) -> this process's rows as NumPy, in
  the order `global_batches` took them from this host's batch."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  local = multihost_utils.global_array_to_host_local_array(tree, mesh, PartitionSpec("data"))
  return jax.device_get(local)


def numpy_batches(ds: tf.data.Dataset, source: DataSource | None = None) -> Iterator[Any]:
  """`tfds.as_numpy(ds)`, with a read error turned into a `DataError` (see `read_error`)."""
  batches = iter(tfds.as_numpy(ds))
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise read_error(e, source) from None
    yield batch


def read_error(error: Exception, source: DataSource | None) -> DataError:
  """The one-line DataError for a failed read: the damaged file (found by `find_damaged_shard`) and how to
  rebuild it, or TensorFlow's first line when the source is unknown."""
  first = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
  if source is None:
    return DataError(f"reading the dataset failed: {type(error).__name__}: {first}")
  bad = find_damaged_shard(source.builder, source.split)
  name = getattr(getattr(source.builder, "info", None), "full_name", "dataset")
  if bad is None:
    return DataError(f"reading split {source.split!r} of {name} failed ({first}); {source.rebuild}")
  return DataError(f"{bad} is damaged ({first}); {source.rebuild}")


# ---------------------------------------------------------------------------------------------------------
# Prepared datasets on disk: metadata and shard checks.


def split_files(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
  directory = os.fspath(builder.data_dir)
  return [os.path.join(directory, f) for f in builder.info.splits[split].filenames]


def check_files(builder: tfds.core.DatasetBuilder, rebuild: str) -> None:
  """Every shard file of every split exists and the sizes add up to what the metadata records."""
  for split, info in builder.info.splits.items():
    files = split_files(builder, split)
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
      raise DataError(f"{missing[0]} is missing ({len(missing)} of the {len(files)} shard files of split "
                      f"{split!r}); {rebuild}")
    size = sum(tf.io.gfile.stat(f).length for f in files)
    payload = int(info.num_bytes)
    if size not in (payload, payload + TFRECORD_FRAMING_BYTES * int(info.num_examples)):
      bad = find_damaged_shard(builder, split)
      what = f"{bad} is damaged" if bad else f"the shard files of split {split!r} have the wrong size"
      raise DataError(f"{what} ({size} bytes on disk, the metadata records {payload} + framing); {rebuild}")


def find_damaged_shard(builder: tfds.core.DatasetBuilder, split: str) -> str | None:
  """The first shard file of `split` whose records do not all read back (checksums, truncation)."""
  for path in split_files(builder, split):
    if not tf.io.gfile.exists(path):
      return path
    try:
      for _ in tf.data.TFRecordDataset(path):
        pass
    except tf.errors.OpError:
      return path
  return None


def open_prepared(directory: str, rebuild: str) -> tfds.core.DatasetBuilder:
  """Opens a prepared dataset directory (dataset_info.json + shards), checking metadata and files first."""
  info_path = os.path.join(directory, "dataset_info.json")
  try:
    with tf.io.gfile.GFile(info_path) as f:
      json.load(f)
    builder = tfds.builder_from_directory(directory)
  except Exception as e:  # pylint: disable=broad-except  (json, protobuf and TFDS errors alike)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{info_path} is unreadable ({type(e).__name__}: {first}); {rebuild}") from None
  check_files(builder, rebuild)
  return builder


# ---------------------------------------------------------------------------------------------------------
# The project's own TFDS builders: progress, stop requests and damaged files.


class ReportingBuilder:
  """Mixin for the project's `GeneratorBasedBuilder`s: TFDS's own console prints go to the log, a build
  shows one progress line per split (`reported`) and stops at the next example on SIGTERM / Ctrl-C (TFDS
  writes into a temporary directory, so a stopped build leaves nothing half-written behind)."""

  def _log_download_bytes(self) -> None:
    console.say(f"building {self.info.full_name} into {self.data_dir} (first use; later runs reuse it)")

  def _log_download_done(self) -> None:
    console.say(f"built {self.info.full_name}: " +
                ", ".join(f"{s} {self.info.splits[s].num_examples}" for s in self.info.splits))

  def reported(self, split: str, total: int, examples: Iterator[Any]) -> Iterator[Any]:
    meter = console.Progress(total, f"{self.name}/{split}", unit="example")
    for i, example in enumerate(examples):
      preemption.check(f"while building {self.info.full_name} (nothing kept; rerun to build it again)")
      yield example
      meter.update(i + 1)
    meter.close()


def prepare(make_builder: Callable[[], tfds.core.DatasetBuilder], directory: str,
            rebuild: str, download_config: Any = None) -> tfds.core.DatasetBuilder:
  """Constructs a generator-based builder whose prepared data lives in `directory`, builds it if needed, and
  checks its files (see `check_files`).

  A corrupt `dataset_info.json` or a damaged shard is a `DataError` naming the file, with `rebuild` (how to
  rebuild it) appended.
  """
  # Several processes share one data dir: process 0 builds, the others wait and then open the build.
  with multihost.main_process_first(f"prepare {directory}"):
    return _prepare(make_builder, directory, rebuild, download_config)


def _prepare(make_builder, directory: str, rebuild: str, download_config: Any) -> tfds.core.DatasetBuilder:
  try:
    builder = make_builder()
  except Exception as e:  # pylint: disable=broad-except  (protobuf/json/TFDS errors from dataset_info.json)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{os.path.join(directory, 'dataset_info.json')} is unreadable ({type(e).__name__}: "
                    f"{first}); {rebuild}") from None
  if download_config is None:
    builder.download_and_prepare()
  else:  # E.g. the manual_dir of a dataset read from a user's download.
    builder.download_and_prepare(download_config=download_config)
  check_files(builder, rebuild)
  return builder


# ---------------------------------------------------------------------------------------------------------
# Feature and build helpers shared by the builders.


def float_tensor(shape) -> tfds.features.Tensor:
  """A float32 TFDS tensor feature."""
  return tfds.features.Tensor(shape=tuple(shape), dtype=np.float32)


def bool_mask(shape) -> tfds.features.Tensor:
  """A bool TFDS tensor feature stored zlib-compressed (masks)."""
  return tfds.features.Tensor(shape=tuple(shape), dtype=np.bool_, encoding=tfds.features.Encoding.ZLIB)


METADATA_FILE = "metadata.json"


def recorded_metadata(directory: str, key: str) -> Any:
  """A value a prepared build recorded in its metadata.json (None when absent or unreadable)."""
  try:
    with open(os.path.join(directory, METADATA_FILE)) as f:
      return json.load(f).get(key)
  except (OSError, ValueError, AttributeError):
    return None


def prepare_manual(cls, data_dir: str, manual_dir: str, config: Any, what: str,
                   recorded: tuple[str, str, str] | None = None, **builder_kwargs) -> tfds.core.DatasetBuilder:
  """`prepare` for a builder read from a user's download in `manual_dir` (one-line errors naming the config key).

  Args:
    cls: the builder class; config: a BuilderConfig or the name of one of cls.BUILDER_CONFIGS.
    what: the dataset's name in messages ('HO-3D'); the builder's module docstring describes the layout.
    recorded: optional (metadata key, wanted value, what it is): a build recorded with another value (e.g. made
      with a different MANO file) is refused, naming the directory to delete.
    builder_kwargs: passed to the builder's constructor.
  """
  if isinstance(config, str):
    known = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in known:
      raise DataError(f"unknown config.data.builder_config {config!r} for {cls.name}; choose one of {known}")
  if not manual_dir or not os.path.isdir(manual_dir):
    raise DataError(f"config.data.manual_dir={manual_dir!r} is not a directory: point it at the {what} download "
                    f"(its layout: input_pipeline/tfds_{cls.name}.py)")
  name = config if isinstance(config, str) else config.name
  directory = os.path.join(data_dir, cls.name, name, str(cls.VERSION))
  if recorded is not None:
    key, wanted, label = recorded
    found = recorded_metadata(directory, key)
    if found is not None and found != wanted:
      raise DataError(f"{directory} was built with {label} {found!r}, not {wanted!r}; delete it and rerun to "
                      "rebuild it")
  return prepare(lambda: cls(data_dir=data_dir, config=config, **builder_kwargs), directory,
                 f"delete {directory} and rerun: it is rebuilt from {manual_dir}",
                 download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
