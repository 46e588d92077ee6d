"""A test stand-in for a TFDS builder over in-memory splits (shared by the COHESIV train and eval tests)."""
import re
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
    """A split name, or a TFDS absolute slice of one ('test[2:5]', as `pipeline.host_block` makes)."""
    del shuffle_files, read_config
    m = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
    name, lo, hi = m.group(1), m.group(2), m.group(3)
    data = self._splits[name]
    if m.group(2) is not None:
      cut = slice(int(lo) if lo else None, int(hi) if hi else None)
      data = {k: v[cut] for k, v in data.items()}
    return tf.data.Dataset.from_tensor_slices(data)
