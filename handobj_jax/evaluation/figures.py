"""Figures like the paper's Fig. 3: query, PCA of the embedding, attention, hand/object and all masks.

Pure NumPy/OpenCV functions on one image. Images are [H, W, 3] uint8 RGB, masks [H, W] bool, embeddings
[H, W, F] float, maps [H, W] float; query points (x, y) pixels, centres at integer coordinates.

Colours (RGB): query dot blue; hand mask green, object mask blue, their overlap cyan; all masks red.
PCA (paper Sec. 4.3): fit on the H*W embedding vectors, project onto the first d = 3 components, z-score
each component over the image and map z in [-Z_RANGE, Z_RANGE] linearly to [0, 255] (clipped). The sign of
each component is fixed so that its largest-magnitude loading is positive (PCA signs are arbitrary).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from input_pipeline import viz

QUERY_RGB = (0, 0, 255)
HAND_RGB = (0, 255, 0)
OBJECT_RGB = (0, 0, 255)
OVERLAP_RGB = (0, 255, 255)
ALL_RGB = (255, 0, 0)
Z_RANGE = 2.0


def pca_components(z: np.ndarray, d: int = 3) -> np.ndarray:
  """Per-pixel scores on the first `d` principal components, z-scored: [H, W, F] -> [H, W, d] float32.

  Components beyond the embedding's rank (or F < d) are zeros; constant embeddings give zeros.
  """
  z = np.asarray(z, np.float64)
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
  """[H, W, F] embedding -> [H, W, 3] uint8: z-scored PCA components 1, 2, 3 as R, G, B."""
  comps = pca_components(z, 3).astype(np.float64)
  v = np.clip((comps + Z_RANGE) / (2.0 * Z_RANGE), 0.0, 1.0)
  return np.round(v * 255.0).astype(np.uint8)


def viridis(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
  """[H, W] float -> [H, W, 3] uint8 RGB (OpenCV's viridis over [lo, hi], clipped; NaN -> lo)."""
  v = np.nan_to_num(np.asarray(values, np.float64), nan=lo)
  v = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  bgr = cv2.applyColorMap(np.round(v * 255.0).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def hand_object_overlay(image: np.ndarray, hand: np.ndarray, obj: np.ndarray,
                        opacity: float = 0.6) -> np.ndarray:
  """Hand green, object blue, pixels in both cyan, blended over the image."""
  hand = np.asarray(hand, bool)
  obj = np.asarray(obj, bool)
  return viz.overlay_masks(image, [hand & ~obj, obj & ~hand, hand & obj],
                           [HAND_RGB, OBJECT_RGB, OVERLAP_RGB], opacity)


def all_masks_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.6) -> np.ndarray:
  """Every predicted hand and object pixel in red."""
  return viz.overlay_masks(image, [np.asarray(mask, bool)], [ALL_RGB], opacity)


def draw_queries(image: np.ndarray, points: np.ndarray, radius: int = 3) -> np.ndarray:
  """Copy of the image with a blue dot (white rim) at each query point [P, 2]; non-finite skipped."""
  out = np.ascontiguousarray(np.asarray(image, np.uint8).copy())
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  viz.draw_points(out, pts, (255, 255, 255), radius=radius + 1)
  viz.draw_points(out, pts, QUERY_RGB, radius=radius)
  return out


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  if scale <= 1:
    return np.ascontiguousarray(image)
  return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale),
                    interpolation=cv2.INTER_NEAREST)


def cohesiv_figure(image: np.ndarray, z: np.ndarray, queries: np.ndarray, attention: np.ndarray,
                   hand_masks: np.ndarray, object_masks: np.ndarray, min_tile: int = 192,
                   captions: bool = True) -> np.ndarray:
  """One Fig. 3 panel: a row per query of
  [image + query dot | PCA(Z) | attention (viridis) | hand (green) / object (blue) | all masks (red)].

  Args:
    image: [H, W, 3] uint8.
    z: [H, W, F] embedding.
    queries: [P, 2] query points (x, y).
    attention: [P, H, W] attention in [0, 1] per query.
    hand_masks, object_masks: [P, H, W] bool per query.
    min_tile: tiles are upscaled (nearest) by an integer factor to at least this size.
    captions: write tile captions.

  Returns:
    [P * h, 5 * w, 3] uint8 with h, w the (upscaled) tile size (P = 0 gives one row without masks).
  """
  image = np.asarray(image, np.uint8)
  h, w = image.shape[:2]
  queries = np.asarray(queries, np.float64).reshape(-1, 2)
  p = queries.shape[0]
  attention = np.asarray(attention, np.float32).reshape(p, h, w)
  hand_masks = np.asarray(hand_masks, bool).reshape(p, h, w)
  object_masks = np.asarray(object_masks, bool).reshape(p, h, w)
  scale = max(1, int(np.ceil(min_tile / max(h, w))))
  pca = upscale(pca_rgb(z), scale)
  all_mask = np.any(hand_masks | object_masks, axis=0)
  all_tile = upscale(all_masks_overlay(image, all_mask), scale)
  rows = []
  for i in range(max(p, 1)):
    if p:
      tiles = [draw_queries(upscale(image, scale), queries[i:i + 1] * scale + (scale - 1) / 2.0,
                            radius=max(2, scale + 1)),
               pca.copy(), upscale(viridis(attention[i]), scale),
               upscale(hand_object_overlay(image, hand_masks[i], object_masks[i]), scale),
               all_tile.copy()]
    else:
      blank = np.zeros_like(pca)
      tiles = [upscale(image, scale), pca.copy(), blank, blank.copy(), blank.copy()]
    if captions:
      for tile, text in zip(tiles, ("query", "PCA(Z)", "attention", "hand / object", "all")):
        viz.label(tile, text)
    rows.append(np.concatenate(tiles, axis=1))
  return np.concatenate(rows, axis=0)


def write_png(path: str, image: np.ndarray) -> None:
  """RGB uint8 [H, W, 3] (or bool/uint8 [H, W] mask, written 0/255) to PNG; raises OSError on failure."""
  img = np.asarray(image)
  if img.dtype == bool:
    img = img.astype(np.uint8) * 255
  if img.ndim == 3:
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
  if not cv2.imwrite(path, img):
    raise OSError(f"could not write {path!r}")


def overlay_legend() -> Sequence[tuple[str, tuple[int, int, int]]]:
  """(name, RGB) of the mask colours, for captions."""
  return (("hand", HAND_RGB), ("object", OBJECT_RGB), ("hand & object", OVERLAP_RGB), ("all", ALL_RGB))
