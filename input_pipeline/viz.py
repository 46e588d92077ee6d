"""Small drawing helpers for inspecting clips: flow colouring, mask overlays, points and skeletons.

Images are RGB uint8 [H, W, 3]; points are (x, y) pixel coordinates with pixel centres at integers;
flow[..., 0] = dx, flow[..., 1] = dy.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

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
