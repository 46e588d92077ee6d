"""Writes a PNG contact sheet of one synthetic clip, for eyeballing the world.

Usage:
  python scripts/contact_sheet.py --out /tmp/sheet.png [--seed 0 --size 128|256 --camera_motion 0.0]

Rows (tiles are upscaled to 256 px):
  0. the frames;
  1. frames with the 21-keypoint skeleton and the hand vertices drawn, query point as a white dot;
  2. frames with masks: hands (green), held objects (blue), arms (yellow), static distractors (magenta),
     moving distractors (red), hand/object boxes;
  3. exact flow (HSV wheel, shared scale) from middle frame MIDDLE_FRAMES[1] to each offset, then the
     visibility of offset +3, and the noisy flow of offset +3.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from handobj_jax import viz  # pylint: disable=g-import-not-at-top
from input_pipeline import synthetic_world as sw  # pylint: disable=g-import-not-at-top
from input_pipeline import viz as clip_viz  # pylint: disable=g-import-not-at-top


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output PNG path")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", type=int, default=128, choices=(128, 256))
  parser.add_argument("--camera_motion", type=float, default=0.0, help="p_camera_motion of the config")
  parser.add_argument("--noise", type=float, default=0.0, help="flow_noise_sigma (px) of the config")
  args = parser.parse_args(argv)
  config = dataclasses.replace(sw.WorldConfig(), height=args.size, width=args.size,
                               p_camera_motion=args.camera_motion, flow_noise_sigma=args.noise)
  clip = sw.generate_clip(config, args.seed)
  sheet = clip_viz.contact_sheet(clip)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  viz.write_png(args.out, sheet)
  print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}); hands valid={clip['hand_valid'].tolist()} "
        f"holding={clip['holding'].tolist()}")


if __name__ == "__main__":
  main()
