"""Tasks: a model plus its losses, visualisations and pretrained weights, in the shape the shared trainer
(`handobj_jax.train.trainer.Task`) drives. Tasks import models and losses, never jobs or input pipelines."""


def first_examples(batch, count: int):
  """The first `count` real examples (`_mask` True, when present) of a host batch as NumPy, or None."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  keep = (np.flatnonzero(np.asarray(batch["_mask"], bool)) if "_mask" in batch
          else np.arange(len(batch["image"])))[:count]
  if keep.size == 0:
    return None
  return {k: np.asarray(v)[keep] for k, v in batch.items()}
