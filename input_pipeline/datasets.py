"""Dataset registry: `config.data.name` -> a prepared TFDS builder.

Synthetic datasets are built offline on first use: `synthetic_handobj` (2D video, COHESIV), `synthetic_ho3d`
(labelled 3D hand-object frames, the pose model) and `synthetic_ho3d_video` (unlabelled clips with boxes).
Real datasets are read from the user's `config.data.manual_dir` (nothing can be downloaded): `something_else`
(Something-Something v2 clips with Something-Else boxes), `ho3d` (HO-3D v2 / v3, `config.data.builder_config`
'v2' or 'v3'), `fpha` (the First-Person Hand Action hand-object subset) and `freihand` (FreiHAND's evaluation
split). HO-3D and FPHA hands are meshed at build time by the MANO layer of the official model file
(`config.mano.model_path`); `get_builder` refuses the licence-free synthetic model for them (`REAL_MANO_DATASETS`).
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


def _ho3d(data_dir: str, data: ml_collections.ConfigDict, mano_path: str) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_ho3d  # pylint: disable=g-import-not-at-top
  return tfds_ho3d.build(data_dir, data.manual_dir, data.builder_config, every=int(data.get("every", 1)),
                         num_model_points=int(data.get("num_model_points", 1000)),
                         validation_sequences=_names(data.get("validation_sequences", "")),
                         test_sequences=_names(data.get("test_sequences", "")),
                         models_dir=data.get("models_dir", ""), mano_path=mano_path)


def _fpha(data_dir: str, data: ml_collections.ConfigDict, mano_path: str) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_fpha  # pylint: disable=g-import-not-at-top
  return tfds_fpha.build(data_dir, data.manual_dir, data.builder_config, mano_path=mano_path)


def _freihand(data_dir: str, data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  from input_pipeline import tfds_freihand  # pylint: disable=g-import-not-at-top
  return tfds_freihand.build(data_dir, data.manual_dir, data.builder_config)


def _names(spec: str) -> tuple[str, ...]:
  return tuple(s.strip() for s in str(spec or "").split(",") if s.strip())


_BUILDERS = {
    "fpha": _fpha,
    "freihand": _freihand,
    "ho3d": _ho3d,
    "something_else": _something_else,
    "synthetic_handobj": _synthetic_handobj,
    "synthetic_ho3d": _synthetic_ho3d,
    "synthetic_ho3d_video": _synthetic_ho3d_video,
}


REAL_MANO_DATASETS = ("ho3d", "fpha")
_TAKES_MANO = ("ho3d", "fpha")


def check_mano_for(name: str, mano_path: str | None) -> None:
  """Refuses the synthetic MANO model for a dataset whose hands are official-MANO parameters."""
  if name in REAL_MANO_DATASETS and not mano_path:
    raise pipeline.DataError(
        f"config.mano.model_path is empty, so the licence-free synthetic MANO model would be used with {name}: "
        f"its hand annotations are parameters of the official MANO model, and the synthetic model would give "
        "meshes that do not match the images. Download MANO_RIGHT.pkl from https://mano.is.tue.mpg.de and set "
        "--config.mano.model_path to it")


def get_builder(data: ml_collections.ConfigDict, mano_path: str | None = None) -> tfds.core.DatasetBuilder:
  """Resolves the data dir, then builds or opens the dataset named by `data.name`.

  `mano_path` (config.mano.model_path) is required for the datasets in `REAL_MANO_DATASETS`."""
  if data.name not in _BUILDERS:
    raise pipeline.DataError(f"unknown dataset {data.name!r} (config.data.name); known: {sorted(_BUILDERS)}")
  check_mano_for(data.name, mano_path)
  data_dir = pipeline.resolve_data_dir(data.data_dir)
  if data.name in _TAKES_MANO:
    return _BUILDERS[data.name](data_dir, data, mano_path)
  return _BUILDERS[data.name](data_dir, data)
