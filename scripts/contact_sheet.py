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

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import synthetic_world as sw  # pylint: disable=g-import-not-at-top
from input_pipeline import viz  # pylint: disable=g-import-not-at-top


def make_sheet(clip: dict[str, np.ndarray], tile: int = 256) -> np.ndarray:
  """Builds the contact sheet image [4 * tile, cols * tile, 3] uint8 RGB."""
  frames = clip["frames"]
  num_t, h, w, _ = frames.shape
  scale = tile / max(h, w)
  size = (int(round(w * scale)), int(round(h * scale)))

  def up(img, nearest=False):
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

  valid = clip["hand_valid"]
  row0, row1, row2 = [], [], []
  for t in range(num_t):
    row0.append(viz.label(up(frames[t]), f"t={t}"))
    img = up(frames[t])
    for n in np.flatnonzero(valid):
      viz.draw_points(img, clip["hand_vertices"][t, n], (255, 255, 255) if n == 0 else (0, 255, 255), 1, scale)
      viz.draw_skeleton(img, clip["keypoints"][t, n], scale, 2)
      viz.draw_points(img, clip["query_point"][t, n][None], (255, 255, 255), 4, scale)
      viz.draw_points(img, clip["query_point"][t, n][None], (0, 0, 0), 2, scale)
    row1.append(viz.label(img, "keypoints, vertices" if t == 0 else ""))
    person = clip["person_mask"][t]
    hands = clip["hand_mask"][t].any(0)
    objects = clip["object_mask"][t].any(0)
    moving = clip["moving_distractor_mask"][t]
    static = clip["distractor_mask"][t] & ~moving
    over = viz.overlay_masks(frames[t], [person & ~hands, hands, objects, static, moving],
                             [(255, 230, 0), (0, 220, 0), (40, 80, 255), (255, 0, 255), (255, 30, 30)])
    over = up(over, nearest=True)
    for n in np.flatnonzero(valid):
      for key, colour in (("hand_box", (0, 255, 0)), ("object_box", (60, 120, 255))):
        box = clip[key][t, n] * scale
        if box.any():
          cv2.rectangle(over, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), colour, 1)
    row2.append(viz.label(over, "masks" if t == 0 else ""))

  m = 1
  t_mid = sw.MIDDLE_FRAMES[m]
  flows = clip["flow_exact"][m]
  mag = np.linalg.norm(flows, axis=-1)
  max_mag = float(np.percentile(mag, 99.5)) + 1e-3
  row3 = []
  for k, off in enumerate(sw.OFFSETS):
    row3.append(viz.label(up(viz.flow_to_rgb(flows[k], max_mag)), f"flow {t_mid}->{t_mid + off}"))
  k3 = sw.OFFSETS.index(3)
  vis = np.repeat(clip["flow_visible"][m, k3][..., None].astype(np.uint8) * 255, 3, axis=-1)
  row3.append(viz.label(up(vis, nearest=True), f"visible {t_mid}->{t_mid + 3}"))
  row3.append(viz.label(up(viz.flow_to_rgb(clip["flow"][m, k3], max_mag)), "noisy flow +3"))
  # Colour wheel legend.
  ys, xs = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
  wheel = np.stack([xs, ys], -1) * (np.hypot(xs, ys) <= 1)[..., None]
  row3.append(viz.label(up(viz.flow_to_rgb(wheel, 1.0)), f"wheel {max_mag:.1f}px"))
  blank = np.zeros_like(row1[0])
  while len(row3) < num_t:
    row3.append(blank)
  cols = max(num_t, len(row3))
  rows = []
  for row in (row0, row1, row2, row3):
    row = row + [blank] * (cols - len(row))
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0)


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
  sheet = make_sheet(clip)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  if not cv2.imwrite(args.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
    raise IOError(f"could not write contact sheet to {args.out}")
  print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}); hands valid={clip['hand_valid'].tolist()} "
        f"holding={clip['holding'].tolist()}")


if __name__ == "__main__":
  main()
