r"""COHESIV pseudo-labels (paper Sec. 3.1): responsibilities of the middle frames of every clip, on device.

  python -m handobj_jax.main --config=configs/pseudolabel.py[:variant] --workdir=/tmp/pseudo

Writes <data_dir>/cohesiv_pseudo/<source>_<config>/1.0.0/ (TFDS-readable, see
input_pipeline/cohesiv_examples.py) and <workdir>/pseudolabel_report.json. Killed and restarted, it goes on
from the last finished shard. Variants:
  ''/'small'  synthetic_handobj/small (128x128, 160/32/32 clips): ~1-2 min to build the source and a few
              minutes to label on 2 CPU cores; seconds on one GPU.
  'tiny'      64x64, 6/2/2 clips (tests), seconds.
  'large'     synthetic_handobj/default (256x256, 2000/200/200 clips): about an hour on 2 CPU cores.
  'baseline', 'baseline_tiny', 'baseline_large': job `responsibility_baseline` on the same data: the
              Thresholded-Responsibility baseline (All/Pair IoU on validation -> threshold -> test), written
              to <workdir>/responsibility_baseline.{json,md}. Target: finite IoUs in [0, 1]; on synthetic
              small, the numbers are quoted in the project report.
`--config.pseudo.source=generator` labels clips generated on the fly (no source dataset on disk).
"""

import ml_collections

from handobj_jax import config_lib

_SIZES = {"default": "small", "small": "small", "tiny": "tiny", "large": "default"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg, ("default", "small", "tiny", "large", "baseline", "baseline_tiny",
                                           "baseline_small", "baseline_large"))
  baseline = variant.startswith("baseline")
  size = variant[len("baseline_"):] if variant.startswith("baseline_") else ("default" if baseline else variant)
  config = ml_collections.ConfigDict()
  config.job = "responsibility_baseline" if baseline else "pseudolabel"
  config.seed = 0
  config.data = config_lib.synthetic_video_data(_SIZES[size])

  config.pseudo = config_lib.pseudo_labelling(size)

  config.baseline = ml_collections.ConfigDict()
  config.baseline.num_thresholds = 101  # Grid of thresholds linspace(0, 1, n) searched on validation.
  return config
