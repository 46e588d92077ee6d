"""tf.data input pipelines that feed data-parallel JAX steps.

Every host reads its own shard of a split (`tfds.split_for_jax_process`), batches `global_batch_size /
process_count` examples, and `global_batches` turns each host batch into one global `jax.Array` sharded
over the batch axis of a `('data',)` mesh spanning every device of every host. Order is deterministic given
the seed (`options.deterministic`, seeded shuffles), so `start_step` can replay a run's data exactly after a
restart. Evaluation batches are padded to a fixed size with a boolean `_mask` so every host runs the same
number of steps.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# tf.data must not grab an accelerator that JAX owns.
tf.config.set_visible_devices([], "GPU")

DEFAULT_DATA_DIR_ENV = "HANDOBJ_DATA_DIR"
MASK_KEY = "_mask"


class DataError(ValueError):
  """An unusable data source (missing directory, dataset or field), reported in one line."""


def resolve_data_dir(data_dir: str) -> str:
  """Returns the directory datasets are read from and built into.

  '' means $HANDOBJ_DATA_DIR, else ~/tensorflow_datasets (created on demand). An explicitly configured
  directory must already exist: a typo must not silently start a fresh multi-hour build elsewhere.
  """
  if not data_dir:
    data_dir = os.environ.get(DEFAULT_DATA_DIR_ENV) or os.path.join("~", "tensorflow_datasets")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    os.makedirs(data_dir, exist_ok=True)
    return data_dir
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


def load_split(builder: tfds.core.DatasetBuilder, split: str, *, shuffle_files: bool = False,
               seed: int = 0) -> tf.data.Dataset:
  if split not in builder.info.splits:
    raise DataError(f"dataset {builder.info.full_name} has no split {split!r}; it has "
                    f"{sorted(builder.info.splits)}")
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1)
  return builder.as_dataset(split=host_split(split), shuffle_files=shuffle_files, read_config=read_config)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options)


def train_dataset(ds: tf.data.Dataset, *, batch_size: int, seed: int,
                  preprocess: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
                  shuffle_buffer: int = 1024, start_step: int = 0, cache: bool = True,
                  prefetch: int = 2) -> tf.data.Dataset:
  """Infinite, reshuffled every epoch, batched per host; `start_step` batches are skipped (resume)."""
  if cache:
    ds = ds.cache()
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  if start_step:
    ds = ds.skip(start_step)
  return _deterministic(ds).prefetch(prefetch)


def _add_mask(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {**example, MASK_KEY: tf.constant(True)}


def eval_dataset(ds: tf.data.Dataset, *, batch_size: int,
                 preprocess: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
                 prefetch: int = 2) -> tf.data.Dataset:
  """One pass in order; the last batch is padded to `batch_size` with `_mask` False on the padding."""
  if preprocess is not None:
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(_add_mask)
  # Append batch_size - 1 all-zero examples (mask False) and keep only full batches holding real data:
  # the ragged last batch is completed by padding, and leftover padding-only batches are dropped.
  padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat(batch_size - 1)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
  ds = ds.filter(lambda b: tf.reduce_any(b[MASK_KEY]))
  return _deterministic(ds).prefetch(prefetch)


def global_batches(ds: tf.data.Dataset | Any, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  """Host batches -> global `jax.Array`s sharded over the mesh's 'data' axis."""
  sharding = batch_sharding(mesh)
  for batch in (tfds.as_numpy(ds) if isinstance(ds, tf.data.Dataset) else ds):
    yield jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
