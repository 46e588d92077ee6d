"""Draws a grid of synthetic 3D hand-object examples with their labels.

Each tile: the rendered image with the projected 21 hand joints (skeleton in
HO-3D order, thumb red ... little magenta), the object's 21 projected control
points (corners and bounding-box edges in white, edge midpoints yellow, centre
cyan), and the hand (green) / object (orange) boxes. A second row per example
shows the hand / object masks.

Usage:
  python scripts/show_3d_examples.py --out synthetic_3d.png \
      [--num 6] [--size 256] [--seed 0] [--sequence]
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from handobj_jax import viz  # pylint: disable=wrong-import-position
from input_pipeline import synthetic_3d  # pylint: disable=wrong-import-position

# Box edges between corner indices (corner 4i + 2j + k; edges flip one bit).
_EDGES = [(a, a ^ b) for a in range(8) for b in (1, 2, 4) if a < a ^ b]


def _pt(p, scale):
  return (int(round(p[0] * scale)), int(round(p[1] * scale)))


def draw_example(ex: dict, scale: int) -> np.ndarray:
  """Labels drawn on an upscaled copy of the image; returns RGB uint8."""
  img = viz.upscale(ex["image"], scale)
  j2 = viz.upscale_points(ex["joints2d"], scale)
  c2 = viz.upscale_points(ex["obj_ctrl2d"], scale)
  for a, b in _EDGES:
    cv2.line(img, _pt(c2[a], 1), _pt(c2[b], 1), (255, 255, 255), 1,
             cv2.LINE_AA)
  for i, p in enumerate(c2):
    color = (255, 255, 255) if i < 8 else (255, 255, 0) if i < 20 else (
        0, 255, 255)
    cv2.circle(img, _pt(p, 1), 3, color, -1, cv2.LINE_AA)
  viz.draw_skeleton(img, j2, thickness=2, order="ho3d")
  for chain, color in zip(viz.HAND_CHAINS["ho3d"], viz.FINGER_COLOURS):
    viz.draw_points(img, j2[list(chain[1:])], color, radius=3)
  viz.draw_points(img, j2[:1], (255, 255, 255), radius=4)
  for box, color in ((ex["hand_box"], (0, 255, 0)),
                     (ex["obj_box"], (255, 140, 0))):
    b = viz.upscale_points(np.reshape(box, (2, 2)), scale)
    cv2.rectangle(img, _pt(b[0], 1), _pt(b[1], 1), color, 1)
  return img


def draw_masks(ex: dict, scale: int) -> np.ndarray:
  return viz.upscale(viz.overlay_masks(ex["image"], [ex["hand_mask"], ex["obj_mask"]],
                                       [(0, 200, 0), (255, 140, 0)], opacity=0.6), scale)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output PNG path")
  parser.add_argument("--num", type=int, default=6)
  parser.add_argument("--size", type=int, default=128, help="render size")
  parser.add_argument("--scale", type=int, default=2, help="display upscale")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sequence", action="store_true",
                      help="show consecutive frames of one sequence instead")
  args = parser.parse_args()
  cfg = synthetic_3d.World3DConfig(height=args.size, width=args.size)
  if args.sequence:
    seq = synthetic_3d.generate_sequence(cfg, args.seed, args.num)
    examples = []
    for t in range(args.num):
      ex = {k[3:]: v[t] for k, v in seq.items()
            if k.startswith("gt/") and np.ndim(v) > 0 and
            np.shape(v)[0] == args.num}
      ex.update(image=seq["frames"][t], hand_box=seq["hand_boxes"][t],
                obj_box=seq["obj_boxes"][t])
      examples.append(ex)
  else:
    examples = [synthetic_3d.generate_example(cfg, args.seed + i)
                for i in range(args.num)]
  cols = [np.concatenate([draw_example(ex, args.scale),
                          draw_masks(ex, args.scale)], axis=0)
          for ex in examples]
  sep = np.full((cols[0].shape[0], 4, 3), 255, np.uint8)
  grid = np.concatenate(sum([[c, sep] for c in cols], [])[:-1], axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  viz.write_png(args.out, grid)
  print(f"wrote {args.out} {grid.shape}")


if __name__ == "__main__":
  main()
