"""A test stand-in for a TFDS builder over in-memory splits (shared by the COHESIV train and eval tests)."""
import types

import tensorflow as tf


class MemoryBuilder:
  """The part of a `tfds.core.DatasetBuilder` the pipeline uses, over in-memory splits."""

  def __init__(self, splits):
    self._splits = splits
    self.info = types.SimpleNamespace(
        full_name="memory_cohesiv/1.0.0",
        splits={k: types.SimpleNamespace(num_examples=len(v["image"])) for k, v in splits.items()})
    self.data_dir = "<memory>"

  def as_dataset(self, split, shuffle_files=False, read_config=None):
    del shuffle_files, read_config
    return tf.data.Dataset.from_tensor_slices(self._splits[split])
