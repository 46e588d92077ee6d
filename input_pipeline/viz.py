"""Small drawing helpers for inspecting clips: flow colouring, mask overlays, points and skeletons.

Images are RGB uint8 [H, W, 3]; points are (x, y) pixel coordinates with pixel centres at integers;
flow[..., 0] = dx, flow[..., 1] = dy.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from input_pipeline import synthetic_world

# Keypoint chains for the 21-point hand (wrist, then thumb, index, middle, ring, little, base to tip).
HAND_CHAINS = tuple((0, 1 + 4 * f, 2 + 4 * f, 3 + 4 * f, 4 + 4 * f) for f in range(5))
FINGER_COLOURS = ((255, 80, 80), (255, 200, 0), (80, 220, 80), (0, 180, 255), (200, 80, 255))


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
  """Colours flow [H, W, 2] on the HSV wheel: hue = direction, value = magnitude / max_magnitude."""
  dx, dy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
  mag, ang = cv2.cartToPolar(dx, dy, angleInDegrees=True)
  if max_magnitude is None:
    max_magnitude = float(np.percentile(mag, 99)) if mag.size else 1.0
  max_magnitude = max(max_magnitude, 1e-6)
  hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
  hsv[..., 0] = (ang / 2).astype(np.uint8)  # OpenCV hue range is [0, 180).
  hsv[..., 1] = 255
  hsv[..., 2] = np.clip(mag / max_magnitude * 255, 0, 255).astype(np.uint8)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]],
                  opacity: float = 0.55) -> np.ndarray:
  """Blends each bool mask [H, W] in its colour over the image (later masks on top)."""
  out = image.astype(np.float32).copy()
  for mask, colour in zip(masks, colours):
    out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(colour, np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def draw_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], radius: int = 1,
                scale: float = 1.0) -> np.ndarray:
  """Draws filled circles at points [P, 2] (coordinates multiplied by `scale`), in place; returns image."""
  for x, y in np.asarray(points, np.float64) * scale:
    if np.isfinite(x) and np.isfinite(y):
      cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), radius * 16, colour, -1, cv2.LINE_AA, shift=4)
  return image


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, scale: float = 1.0, thickness: int = 1) -> np.ndarray:
  """Draws the 21-keypoint hand skeleton, one colour per finger, in place; returns image."""
  kp = np.asarray(keypoints, np.float64) * scale
  for chain, colour in zip(HAND_CHAINS, FINGER_COLOURS):
    for a, b in zip(chain[:-1], chain[1:]):
      pa = tuple(int(round(v * 16)) for v in kp[a])
      pb = tuple(int(round(v * 16)) for v in kp[b])
      cv2.line(image, pa, pb, colour, thickness, cv2.LINE_AA, shift=4)
  return image


def label(image: np.ndarray, text: str) -> np.ndarray:
  """Writes a small white-on-black caption in the top-left corner, in place; returns image."""
  cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 3, cv2.LINE_AA)
  cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
  return image


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
    row0.append(label(up(frames[t]), f"t={t}"))
    img = up(frames[t])
    for n in np.flatnonzero(valid):
      draw_points(img, clip["hand_vertices"][t, n], (255, 255, 255) if n == 0 else (0, 255, 255), 1, scale)
      draw_skeleton(img, clip["keypoints"][t, n], scale, 2)
      draw_points(img, clip["query_point"][t, n][None], (255, 255, 255), 4, scale)
      draw_points(img, clip["query_point"][t, n][None], (0, 0, 0), 2, scale)
    row1.append(label(img, "keypoints, vertices" if t == 0 else ""))
    person = clip["person_mask"][t]
    hands = clip["hand_mask"][t].any(0)
    objects = clip["object_mask"][t].any(0)
    moving = clip["moving_distractor_mask"][t]
    static = clip["distractor_mask"][t] & ~moving
    over = overlay_masks(frames[t], [person & ~hands, hands, objects, static, moving],
                             [(255, 230, 0), (0, 220, 0), (40, 80, 255), (255, 0, 255), (255, 30, 30)])
    over = up(over, nearest=True)
    for n in np.flatnonzero(valid):
      for key, colour in (("hand_box", (0, 255, 0)), ("object_box", (60, 120, 255))):
        box = clip[key][t, n] * scale
        if box.any():
          cv2.rectangle(over, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), colour, 1)
    row2.append(label(over, "masks" if t == 0 else ""))

  m = 1
  t_mid = synthetic_world.MIDDLE_FRAMES[m]
  flows = np.asarray(clip["flow_exact"] if "flow_exact" in clip else clip["flow"], np.float32)[m]
  mag = np.linalg.norm(flows, axis=-1)
  max_mag = float(np.percentile(mag, 99.5)) + 1e-3
  row3 = []
  for k, off in enumerate(synthetic_world.OFFSETS):
    row3.append(label(up(flow_to_rgb(flows[k], max_mag)), f"flow {t_mid}->{t_mid + off}"))
  k3 = synthetic_world.OFFSETS.index(3)
  vis = np.repeat(clip["flow_visible"][m, k3][..., None].astype(np.uint8) * 255, 3, axis=-1)
  row3.append(label(up(vis, nearest=True), f"visible {t_mid}->{t_mid + 3}"))
  row3.append(label(up(flow_to_rgb(np.asarray(clip["flow"][m, k3], np.float32), max_mag)), "noisy flow +3"))
  # Colour wheel legend.
  ys, xs = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
  wheel = np.stack([xs, ys], -1) * (np.hypot(xs, ys) <= 1)[..., None]
  row3.append(label(up(flow_to_rgb(wheel, 1.0)), f"wheel {max_mag:.1f}px"))
  blank = np.zeros_like(row1[0])
  while len(row3) < num_t:
    row3.append(blank)
  cols = max(num_t, len(row3))
  rows = []
  for row in (row0, row1, row2, row3):
    row = row + [blank] * (cols - len(row))
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0)


def write_png(path: str, image: np.ndarray) -> None:
  """Writes an RGB uint8 image; raises OSError naming the path on failure."""
  if not cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
    raise OSError(f"could not write PNG {path!r}")
