"""Dataset registry: `config.data.name` -> a prepared TFDS builder.

Synthetic datasets are built offline on first use: `synthetic_handobj` (2D video, COHESIV), `synthetic_ho3d`
(labelled 3D hand-object frames, the pose model) and `synthetic_ho3d_video` (unlabelled clips with boxes).
Real datasets (HO-3D, EPIC-KITCHENS, 100DOH, FPHA, FreiHAND) are read from the user's
`config.data.manual_dir`; their builders are added to `_BUILDERS` as they are written.
"""

from __future__ import annotations

import ml_collections
import tensorflow_datasets as tfds

from input_pipeline import pipeline


def _synthetic_handobj(data_dir: str, data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_synthetic  # pylint: disable=g-import-not-at-top

  known = [c.name for c in tfds_synthetic.BUILDER_CONFIGS]
  if data.builder_config not in known:
    raise pipeline.DataError(f"unknown config.data.builder_config {data.builder_config!r} for "
                             f"synthetic_handobj; choose one of {known}")
  return tfds_synthetic.build(data_dir, data.builder_config)


def _synthetic_ho3d(data_dir: str, data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_ho3d_synth  # pylint: disable=g-import-not-at-top
  return tfds_ho3d_synth.build(data_dir, data.builder_config)


def _synthetic_ho3d_video(data_dir: str, data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_ho3d_synth  # pylint: disable=g-import-not-at-top
  return tfds_ho3d_synth.build(data_dir, data.builder_config, video=True)


def _something_else(data_dir: str, data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_something_else  # pylint: disable=g-import-not-at-top
  return tfds_something_else.build(data_dir, data.manual_dir, data.builder_config)


_BUILDERS = {
    "something_else": _something_else,
    "synthetic_handobj": _synthetic_handobj,
    "synthetic_ho3d": _synthetic_ho3d,
    "synthetic_ho3d_video": _synthetic_ho3d_video,
}


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Resolves the data dir, then builds or opens the dataset named by `data.name`."""
  if data.name not in _BUILDERS:
    raise pipeline.DataError(f"unknown dataset {data.name!r} (config.data.name); known: {sorted(_BUILDERS)}")
  data_dir = pipeline.resolve_data_dir(data.data_dir)
  return _BUILDERS[data.name](data_dir, data)
