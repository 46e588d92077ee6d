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

from input_pipeline import synthetic_3d  # pylint: disable=wrong-import-position

# HO-3D joint order: 0 wrist; index 1-3, middle 4-6, little 7-9, ring 10-12,
# thumb 13-15; tips 16 thumb, 17 index, 18 middle, 19 ring, 20 little.
_CHAINS = {
    "thumb": ((255, 40, 40), (0, 13, 14, 15, 16)),
    "index": ((255, 200, 0), (0, 1, 2, 3, 17)),
    "middle": ((60, 220, 60), (0, 4, 5, 6, 18)),
    "ring": ((40, 140, 255), (0, 10, 11, 12, 19)),
    "little": ((230, 60, 230), (0, 7, 8, 9, 20)),
}
# Box edges between corner indices (corner 4i + 2j + k; edges flip one bit).
_EDGES = [(a, a ^ b) for a in range(8) for b in (1, 2, 4) if a < a ^ b]


def _pt(p, scale):
  return (int(round(p[0] * scale)), int(round(p[1] * scale)))


def draw_example(ex: dict, scale: int) -> np.ndarray:
  """Labels drawn on an upscaled copy of the image; returns RGB uint8."""
  h, w = ex["image"].shape[:2]
  img = cv2.resize(ex["image"], (w * scale, h * scale),
                   interpolation=cv2.INTER_NEAREST).copy()
  # Pixel centres are integer coordinates: upscaled centre = (p + 0.5) s - 0.5.
  tr = lambda p: (np.asarray(p) + 0.5) * scale - 0.5
  j2 = tr(ex["joints2d"])
  c2 = tr(ex["obj_ctrl2d"])
  for a, b in _EDGES:
    cv2.line(img, _pt(c2[a], 1), _pt(c2[b], 1), (255, 255, 255), 1,
             cv2.LINE_AA)
  for i, p in enumerate(c2):
    color = (255, 255, 255) if i < 8 else (255, 255, 0) if i < 20 else (
        0, 255, 255)
    cv2.circle(img, _pt(p, 1), 3, color, -1, cv2.LINE_AA)
  for color, chain in _CHAINS.values():
    for a, b in zip(chain[:-1], chain[1:]):
      cv2.line(img, _pt(j2[a], 1), _pt(j2[b], 1), color, 2, cv2.LINE_AA)
    for j in chain[1:]:
      cv2.circle(img, _pt(j2[j], 1), 3, color, -1, cv2.LINE_AA)
  cv2.circle(img, _pt(j2[0], 1), 4, (255, 255, 255), -1, cv2.LINE_AA)
  for box, color in ((ex["hand_box"], (0, 255, 0)),
                     (ex["obj_box"], (255, 140, 0))):
    b = tr(np.reshape(box, (2, 2)))
    cv2.rectangle(img, _pt(b[0], 1), _pt(b[1], 1), color, 1)
  return img


def draw_masks(ex: dict, scale: int) -> np.ndarray:
  h, w = ex["hand_mask"].shape
  m = np.zeros((h, w, 3), np.uint8)
  m[ex["hand_mask"]] = (0, 200, 0)
  m[ex["obj_mask"]] = (255, 140, 0)
  blend = (0.4 * ex["image"] + 0.6 * m).astype(np.uint8)
  return cv2.resize(blend, (w * scale, h * scale),
                    interpolation=cv2.INTER_NEAREST)


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
  cv2.imwrite(args.out, grid[..., ::-1])
  print(f"wrote {args.out} {grid.shape}")


if __name__ == "__main__":
  main()
