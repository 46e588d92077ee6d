"""Job `preview_data`: build the configured dataset, read one global batch, save a contact sheet.

The quickest end-to-end check of a data setup: it runs the same builder and tf.data pipeline as training
and writes `<workdir>/preview/contact_sheet.png` so a person can look at what the model will see.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from handobj_jax import console
from handobj_jax import viz
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import viz as clip_viz


def run(config, workdir: str) -> dict[str, tuple[int, ...]]:
  builder = datasets.get_builder(config.data)
  mesh = pipeline.make_data_mesh()
  host_bs = pipeline.host_batch_size(config.batch_size, mesh)
  ds = pipeline.train_dataset(pipeline.load_split(builder, "train"), batch_size=host_bs,
                              seed=config.seed, shuffle_buffer=config.data.shuffle_buffer)
  batch = next(pipeline.global_batches(ds, mesh))
  shapes = {k: tuple(v.shape) for k, v in batch.items()}
  for k, v in sorted(batch.items()):
    logging.info("batch[%s]: shape %s %s, sharding %s", k, v.shape, v.dtype, v.sharding.spec)
  out_dir = os.path.join(workdir, "preview")
  os.makedirs(out_dir, exist_ok=True)
  if jax.process_index() == 0:
    clip = {k: np.asarray(v.addressable_shards[0].data[0]) for k, v in batch.items()}
    path = os.path.join(out_dir, "contact_sheet.png")
    viz.write_png(path, clip_viz.contact_sheet(clip))
    logging.info("wrote %s", path)
  console.say(f"dataset {builder.info.full_name} at {builder.data_dir}: "
              f"{ {s: builder.info.splits[s].num_examples for s in builder.info.splits} }")
  console.say(f"one global batch of {config.batch_size} clips over {mesh.devices.size} device(s); "
              f"frames {shapes['frames']}; contact sheet: {os.path.join(out_dir, 'contact_sheet.png')}")
  return shapes
