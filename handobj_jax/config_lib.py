"""Config pieces shared by the experiment files in `configs/`.

Experiment configs stay one file each (`get_config(arg)` with variants); only the blocks that must be
identical across experiments (data sources, checkpointing, logging) are built here.
"""

from __future__ import annotations

import ml_collections


def synthetic_video_data(builder_config: str = "small") -> ml_collections.ConfigDict:
  """The embedded default: `synthetic_handobj` clips, built offline on first use."""
  data = ml_collections.ConfigDict()
  data.name = "synthetic_handobj"
  data.builder_config = builder_config
  data.data_dir = ""           # '' -> $HANDOBJ_DATA_DIR or ~/tensorflow_datasets
  data.manual_dir = ""         # real datasets: where the user put the downloaded files
  data.shuffle_buffer = 512
  return data


def checkpointing() -> ml_collections.ConfigDict:
  ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 200
  ckpt.keep = 3
  return ckpt


def parse_variant(arg: str | None, known: tuple[str, ...]) -> str:
  """`arg` of `get_config(arg)`: '' / None -> 'default'; anything unknown is an error naming the choices."""
  variant = arg or "default"
  if variant not in known:
    raise ValueError(f"unknown config variant {variant!r}; choose one of {', '.join(known)}")
  return variant
