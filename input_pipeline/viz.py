"""The contact sheet of one synthetic clip (input-specific: it knows the clip layout of `synthetic_world`).

The drawing helpers themselves (flow colouring, overlays, points, skeletons, captions, PNG writing) live in
`handobj_jax.viz`. Images are RGB uint8 [H, W, 3]; points are (x, y) pixel coordinates with pixel centres
at integers; flow[..., 0] = dx, flow[..., 1] = dy.
"""

from __future__ import annotations

import cv2
import numpy as np

from handobj_jax import viz as draw
from input_pipeline import synthetic_world


def contact_sheet(clip: dict[str, np.ndarray], tile: int = 256) -> np.ndarray:
  """The contact sheet of one clip, [4 * tile, cols * tile, 3] uint8 RGB.

  Rows: frames; keypoints + vertices + query point; masks and boxes; flow from the second middle frame
  to each offset (exact flow when the clip has it, as from `synthetic_world`; else the stored flow),
  visibility of offset +3 and the stored (noisy) flow of offset +3.
  """
  frames = clip["frames"]
  num_t, h, w, _ = frames.shape
  scale = tile / max(h, w)
  size = (int(round(w * scale)), int(round(h * scale)))

  def up(img, nearest=False):
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

  valid = clip["hand_valid"]
  row0, row1, row2 = [], [], []
  for t in range(num_t):
    row0.append(draw.label(up(frames[t]), f"t={t}"))
    img = up(frames[t])
    for n in np.flatnonzero(valid):
      draw.draw_points(img, clip["hand_vertices"][t, n], (255, 255, 255) if n == 0 else (0, 255, 255), 1,
                       scale)
      draw.draw_skeleton(img, clip["keypoints"][t, n], scale, 2)
      draw.draw_points(img, clip["query_point"][t, n][None], (255, 255, 255), 4, scale)
      draw.draw_points(img, clip["query_point"][t, n][None], (0, 0, 0), 2, scale)
    row1.append(draw.label(img, "keypoints, vertices" if t == 0 else ""))
    person = clip["person_mask"][t]
    hands = clip["hand_mask"][t].any(0)
    objects = clip["object_mask"][t].any(0)
    moving = clip["moving_distractor_mask"][t]
    static = clip["distractor_mask"][t] & ~moving
    over = draw.overlay_masks(frames[t], [person & ~hands, hands, objects, static, moving],
                              [(255, 230, 0), (0, 220, 0), (40, 80, 255), (255, 0, 255), (255, 30, 30)])
    over = up(over, nearest=True)
    for n in np.flatnonzero(valid):
      for key, colour in (("hand_box", (0, 255, 0)), ("object_box", (60, 120, 255))):
        box = clip[key][t, n] * scale
        if box.any():
          cv2.rectangle(over, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), colour, 1)
    row2.append(draw.label(over, "masks" if t == 0 else ""))

  m = 1
  t_mid = synthetic_world.MIDDLE_FRAMES[m]
  flows = np.asarray(clip["flow_exact"] if "flow_exact" in clip else clip["flow"], np.float32)[m]
  mag = np.linalg.norm(flows, axis=-1)
  max_mag = float(np.percentile(mag, 99.5)) + 1e-3
  row3 = []
  for k, off in enumerate(synthetic_world.OFFSETS):
    row3.append(draw.label(up(draw.flow_to_rgb(flows[k], max_mag)), f"flow {t_mid}->{t_mid + off}"))
  k3 = synthetic_world.OFFSETS.index(3)
  vis = np.repeat(clip["flow_visible"][m, k3][..., None].astype(np.uint8) * 255, 3, axis=-1)
  row3.append(draw.label(up(vis, nearest=True), f"visible {t_mid}->{t_mid + 3}"))
  noisy = draw.flow_to_rgb(np.asarray(clip["flow"][m, k3], np.float32), max_mag)
  row3.append(draw.label(up(noisy), "noisy flow +3"))
  # Colour wheel legend.
  ys, xs = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
  wheel = np.stack([xs, ys], -1) * (np.hypot(xs, ys) <= 1)[..., None]
  row3.append(draw.label(up(draw.flow_to_rgb(wheel, 1.0)), f"wheel {max_mag:.1f}px"))
  blank = np.zeros_like(row1[0])
  while len(row3) < num_t:
    row3.append(blank)
  cols = max(num_t, len(row3))
  rows = []
  for row in (row0, row1, row2, row3):
    row = row + [blank] * (cols - len(row))
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0)

