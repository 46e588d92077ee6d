r"""Build the embedded synthetic dataset and look at one batch.

  python -m handobj_jax.main --config=configs/synthetic_data.py --workdir=/tmp/preview

Variants: '' (small: 128x128, 160/32/32 clips, ~1-2 min to build on 2 cores), 'tiny' (64x64, seconds),
'default' (256x256, 2000/200/200 clips). Writes <workdir>/preview/contact_sheet.png.
"""

import ml_collections

from handobj_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg, ("default", "tiny", "small"))
  config = ml_collections.ConfigDict()
  config.job = "preview_data"
  config.seed = 0
  config.batch_size = 2
  config.data = config_lib.synthetic_video_data("small" if variant == "default" else variant)
  return config
