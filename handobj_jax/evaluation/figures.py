"""Figures like the paper's Fig. 3: query, PCA of the embedding, attention, hand/object and all masks.

Pure NumPy/OpenCV functions on one image. Images are [H, W, 3] uint8 RGB, masks [H, W] bool, embeddings
[H, W, F] float, maps [H, W] float; query points (x, y) pixels, centres at integer coordinates.

Colours (RGB): query dot blue; hand mask green, object mask blue, their overlap cyan; all masks red.
PCA(Z) (paper Sec. 4.3) is `handobj_jax.viz.pca_rgb`, the normalisation defined there; the other drawing
helpers (viridis, overlays, upscaling, captions, PNG writing) come from `handobj_jax.viz` too.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from handobj_jax import viz

QUERY_RGB = (0, 0, 255)
HAND_RGB = (0, 255, 0)
OBJECT_RGB = (0, 0, 255)
OVERLAP_RGB = (0, 255, 255)
ALL_RGB = (255, 0, 0)


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
  return viz.draw_query_points(out, points, QUERY_RGB, radius)


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
  pca = viz.upscale(viz.pca_rgb(z), scale)
  all_mask = np.any(hand_masks | object_masks, axis=0)
  all_tile = viz.upscale(all_masks_overlay(image, all_mask), scale)
  rows = []
  for i in range(max(p, 1)):
    if p:
      tiles = [draw_queries(viz.upscale(image, scale), viz.upscale_points(queries[i:i + 1], scale),
                            radius=max(2, scale + 1)),
               pca.copy(), viz.upscale(viz.viridis(attention[i]), scale),
               viz.upscale(hand_object_overlay(image, hand_masks[i], object_masks[i]), scale),
               all_tile.copy()]
    else:
      blank = np.zeros_like(pca)
      tiles = [viz.upscale(image, scale), pca.copy(), blank, blank.copy(), blank.copy()]
    if captions:
      for tile, text in zip(tiles, ("query", "PCA(Z)", "attention", "hand / object", "all")):
        viz.label(tile, text)
    rows.append(np.concatenate(tiles, axis=1))
  return np.concatenate(rows, axis=0)


def overlay_legend() -> Sequence[tuple[str, tuple[int, int, int]]]:
  """(name, RGB) of the mask colours, for captions."""
  return (("hand", HAND_RGB), ("object", OBJECT_RGB), ("hand & object", OVERLAP_RGB), ("all", ALL_RGB))
