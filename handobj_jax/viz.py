"""Drawing helpers, in one place: colour maps, overlays, captions, PCA to RGB, upscaling, PNG writing and
hand skeletons.

Imported by the paper figures (`evaluation.figures`), the training summaries (`tasks.cohesiv_task`), the
clip contact sheet (`input_pipeline.viz`), `predict`, the jobs and the scripts. It imports neither the jobs
nor `input_pipeline` (imports flow downwards: NumPy and OpenCV only).

Conventions: images are RGB uint8 [H, W, 3]; masks bool [H, W]; points (x, y) pixel coordinates with pixel
centres at integers; flow[..., 0] = dx, flow[..., 1] = dy. Drawing functions whose name starts with `draw_`
or `label` draw in place and return the image; the others return new arrays.

PCA to RGB (paper Sec. 4.3, the one normalisation used everywhere): fit on the H*W embedding vectors,
project onto the first d = 3 principal components, z-score each component over the image and map
z in [-Z_RANGE, Z_RANGE] linearly to [0, 255] (clipped), so 0 is mid-grey (128) and the colours of two
images are comparable in units of each image's own spread. The sign of each component is fixed so that its
largest-magnitude loading is positive (PCA signs are arbitrary). Components beyond the embedding's rank are
mid-grey.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

Z_RANGE = 2.0

# 21-keypoint hand skeletons as chains from the wrist (0) to each fingertip, thumb first, per joint order:
#   "wrist_fingers": wrist, then thumb, index, middle, ring, little, 4 joints each, base to tip (the
#                    synthetic world's `keypoints`; the OpenPose / FreiHAND order);
#   "ho3d":          MANO's 16 joints (wrist; index 1-3, middle 4-6, little 7-9, ring 10-12, thumb 13-15),
#                    then the tips 16 thumb, 17 index, 18 middle, 19 ring, 20 little (HO-3D's order).
HAND_CHAINS = {
    "wrist_fingers": tuple((0, 1 + 4 * f, 2 + 4 * f, 3 + 4 * f, 4 + 4 * f) for f in range(5)),
    "ho3d": ((0, 13, 14, 15, 16), (0, 1, 2, 3, 17), (0, 4, 5, 6, 18), (0, 10, 11, 12, 19), (0, 7, 8, 9, 20)),
}
# RGB per finger: thumb red, index yellow, middle green, ring blue, little magenta.
FINGER_COLOURS = ((255, 80, 80), (255, 200, 0), (80, 220, 80), (0, 180, 255), (200, 80, 255))


# ---- Colour maps ---------------------------------------------------------------------------------------


def viridis(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
  """[H, W] float -> [H, W, 3] uint8 RGB: OpenCV's viridis over [lo, hi] (clipped; NaN -> lo)."""
  v = np.nan_to_num(np.asarray(values, np.float64), nan=lo)
  v = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  bgr = cv2.applyColorMap(np.round(v * 255.0).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
  """Colours flow [H, W, 2] on the HSV wheel: hue = direction, value = magnitude / max_magnitude
  (default: the 99th percentile of the magnitudes)."""
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


def pca_components(z: np.ndarray, d: int = 3) -> np.ndarray:
  """Per-pixel scores on the first `d` principal components, z-scored: [H, W, F] -> [H, W, d] float32.

  See the module docstring. Components beyond the embedding's rank (or F < d) are zeros; constant
  embeddings give zeros; non-finite values are treated as 0.
  """
  z = np.nan_to_num(np.asarray(z, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  if z.ndim != 3:
    raise ValueError(f"pca_components: z must be [H, W, F], got {z.shape}")
  h, w, f = z.shape
  x = z.reshape(-1, f)
  x = x - x.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(d, vt.shape[0])
  vt = vt[:k]
  signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
  vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
  comps = x @ vt.T
  std = comps.std(axis=0)
  tiny = (s[:k] <= 1e-9 * max(float(s[0]) if s.size else 0.0, 1e-30)) | (std <= 1e-12)
  comps = np.where(tiny[None], 0.0, comps / np.where(std > 1e-12, std, 1.0)[None])
  if k < d:
    comps = np.pad(comps, ((0, 0), (0, d - k)))
  return comps.reshape(h, w, d).astype(np.float32)


def pca_rgb(z: np.ndarray) -> np.ndarray:
  """[H, W, F] embedding -> [H, W, 3] uint8: z-scored PCA components 1, 2, 3 as R, G, B (module docstring)."""
  comps = pca_components(z, 3).astype(np.float64)
  v = np.clip((comps + Z_RANGE) / (2.0 * Z_RANGE), 0.0, 1.0)
  return np.round(v * 255.0).astype(np.uint8)


# ---- Overlays, points, skeletons, captions --------------------------------------------------------------


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]],
                  opacity: float = 0.55) -> np.ndarray:
  """Copy of the image with each bool mask [H, W] blended in its colour (later masks on top)."""
  out = np.asarray(image).astype(np.float32).copy()
  for mask, colour in zip(masks, colours):
    mask = np.asarray(mask, bool)
    out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(colour, np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def draw_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], radius: int = 1,
                scale: float = 1.0) -> np.ndarray:
  """Draws filled circles at points [P, 2] (coordinates multiplied by `scale`; non-finite skipped), in
  place; returns image."""
  for x, y in np.asarray(points, np.float64).reshape(-1, 2) * scale:
    if np.isfinite(x) and np.isfinite(y):
      cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), radius * 16, colour, -1, cv2.LINE_AA,
                 shift=4)
  return image


def draw_query_points(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int],
                      radius: int = 3) -> np.ndarray:
  """Dots of `colour` with a white rim (one pixel wider) at points [P, 2], in place; returns image."""
  draw_points(image, points, (255, 255, 255), radius=radius + 1)
  return draw_points(image, points, colour, radius=radius)


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, scale: float = 1.0, thickness: int = 1,
                  order: str = "wrist_fingers") -> np.ndarray:
  """Draws the 21-keypoint hand skeleton (joint `order`: a key of HAND_CHAINS), one colour per finger
  (FINGER_COLOURS), in place; returns image."""
  if order not in HAND_CHAINS:
    raise ValueError(f"draw_skeleton: order must be one of {sorted(HAND_CHAINS)}, got {order!r}")
  kp = np.asarray(keypoints, np.float64) * scale
  for chain, colour in zip(HAND_CHAINS[order], FINGER_COLOURS):
    for a, b in zip(chain[:-1], chain[1:]):
      if not (np.all(np.isfinite(kp[a])) and np.all(np.isfinite(kp[b]))):
        continue
      pa = tuple(int(round(v * 16)) for v in kp[a])
      pb = tuple(int(round(v * 16)) for v in kp[b])
      cv2.line(image, pa, pb, colour, thickness, cv2.LINE_AA, shift=4)
  return image


def label(image: np.ndarray, text: str) -> np.ndarray:
  """Writes a small white-on-black caption in the top-left corner, in place; returns image."""
  cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 3, cv2.LINE_AA)
  cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
  return image


# ---- Resizing and files ---------------------------------------------------------------------------------


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling by an integer factor (each pixel becomes a scale x scale block); always a
  new contiguous array, safe to draw on."""
  if scale <= 1:
    return np.array(image, copy=True, order="C")
  return cv2.resize(np.asarray(image), (image.shape[1] * scale, image.shape[0] * scale),
                    interpolation=cv2.INTER_NEAREST)


def upscale_points(points: np.ndarray, scale: int) -> np.ndarray:
  """Points (x, y) of an image -> the same points in `upscale(image, scale)`: pixel p's block spans
  [p * scale, p * scale + scale - 1], its centre is p * scale + (scale - 1) / 2."""
  return np.asarray(points, np.float64) * scale + (scale - 1) / 2.0


SERIES_COLOURS = ((40, 90, 200), (220, 90, 40), (40, 160, 60), (150, 60, 180))


def line_chart(xs: Sequence[float], series: dict[str, Sequence[float]], *, title: str = "", xlabel: str = "",
               size: tuple[int, int] = (360, 240)) -> np.ndarray:
  """A small line chart [h, w, 3] uint8 (white background): each series drawn with its points, the y range
  padded by 10%, min / max tick values on both axes and a legend. Non-finite values are skipped."""
  w, h = size
  img = np.full((h, w, 3), 255, np.uint8)
  left, right, top, bottom = 52, 12, 30, 36
  xs = np.asarray(xs, np.float64)
  ys_all = np.concatenate([np.asarray(v, np.float64) for v in series.values()])
  ys_all = ys_all[np.isfinite(ys_all)]
  if not len(xs) or not len(ys_all):
    return label(img, title)
  y0, y1 = float(ys_all.min()), float(ys_all.max())
  pad = 0.1 * (y1 - y0) if y1 > y0 else max(abs(y0) * 0.1, 1.0)
  y0, y1 = y0 - pad, y1 + pad
  x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1.0
  px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
  py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
  black, grey = (0, 0, 0), (120, 120, 120)
  cv2.rectangle(img, (left, top), (w - right, h - bottom), grey, 1)
  font = cv2.FONT_HERSHEY_SIMPLEX
  for y in (y0 + pad, y1 - pad):
    cv2.putText(img, f"{y:.3g}", (2, int(py(y)) + 4), font, 0.33, black, 1, cv2.LINE_AA)
  for x in xs:
    cv2.putText(img, f"{x:g}", (int(px(x)) - 8, h - bottom + 14), font, 0.33, black, 1, cv2.LINE_AA)
  cv2.putText(img, xlabel, (left, h - 6), font, 0.38, black, 1, cv2.LINE_AA)
  cv2.putText(img, title, (left, 18), font, 0.45, black, 1, cv2.LINE_AA)
  for i, (name, ys) in enumerate(series.items()):
    colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
    pts = [(int(round(px(x))), int(round(py(y)))) for x, y in zip(xs, np.asarray(ys, np.float64)) if np.isfinite(y)]
    for a, b in zip(pts[:-1], pts[1:]):
      cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
    for p in pts:
      cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
    cv2.putText(img, name, (left + 6, top + 14 + 14 * i), font, 0.35, colour, 1, cv2.LINE_AA)
  return img


def grid(tiles: Sequence[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
  """Tiles [h, w, 3] uint8 (same size) laid out row-major in `cols` columns with `pad` black pixels
  between them; missing tiles of the last row are black."""
  if not tiles:
    raise ValueError("grid: no tiles")
  h, w = tiles[0].shape[:2]
  cols = max(1, min(int(cols), len(tiles)))
  rows = -(-len(tiles) // cols)
  out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, cols)
    out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = t
  return out


def write_png(path: str, image: np.ndarray) -> None:
  """Writes RGB uint8 [H, W, 3], or a bool / uint8 [H, W] mask (bool written 0/255), to a PNG; raises
  OSError naming the path on failure."""
  img = np.asarray(image)
  if img.dtype == bool:
    img = img.astype(np.uint8) * 255
  if img.ndim == 3:
    img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
  if not cv2.imwrite(path, img):
    raise OSError(f"could not write PNG {path!r}")
