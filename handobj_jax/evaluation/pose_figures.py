"""Figures of the pose model, in the style of Semi-Hand-Object's Fig. 6 and Fig. 7.

Inputs are one example of `tasks.pose_task.HandObjectPoseTask.predict` (NumPy): the network's crop `image`
[S_in, S_in, 3] in [0, 1], the crop camera `K_crop`, predicted `verts3d` / `joints2d_pred`, the object votes
`obj_points` [S, S, 21, 2] (crop pixels) with `obj_confidence`, the boxes, and for the evaluation figures the
PnP pose (`rot_pred`, `t_pred`) and the ground truth (`rot_gt`, `t_gt`, `ctrl_obj` object-frame control
points, `K_image`, `affine` image -> crop).

  * `pose_panel`: [crop | predicted mesh over it | 2D joints and the object's most confident votes].
  * Fig. 6 (`fig6_panel`): the predicted hand mesh drawn on the image (painter's order, shaded by depth)
    and the object's 3D box from the predicted pose (green) next to the true one (white).
  * Fig. 7 (`fig7_panel`): the CR module's attention: for object query cells (red dots), the attention
    weights over the hand-object intersection box (viridis: yellow = high), drawn over the image; hand box
    yellow, object box green, intersection box blue, as in the paper's figure.
Drawing helpers (colours, overlays, captions, skeletons, upscaling, PNG writing) come from `handobj_jax.viz`.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from handobj_jax import viz

TILE = 256
HAND_BOX_RGB, OBJECT_BOX_RGB, INTER_BOX_RGB = (255, 220, 0), (0, 220, 0), (40, 120, 255)
PRED_RGB, GT_RGB, MESH_RGB = (0, 230, 0), (255, 255, 255), (230, 160, 120)
# Edges of the 3D box between the 8 corner control points (corner 4i + 2j + k = (x_i, y_j, z_k)).
BOX_EDGES = tuple((a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1)


def _project(k: np.ndarray, points: np.ndarray) -> np.ndarray:
  uvw = np.asarray(points, np.float64) @ np.asarray(k, np.float64).T
  return uvw[:, :2] / np.maximum(uvw[:, 2:], 1e-6)


def _to_crop(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
  return np.asarray(points, np.float64) @ np.asarray(affine, np.float64)[:, :2].T + affine[:, 2]


def _base(image: np.ndarray) -> tuple[np.ndarray, float]:
  rgb = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
  scale = TILE / rgb.shape[0]
  return cv2.resize(rgb, (TILE, TILE), interpolation=cv2.INTER_LINEAR), scale


def draw_mesh(canvas: np.ndarray, verts2d: np.ndarray, depth: np.ndarray, faces: np.ndarray,
              opacity: float = 0.7) -> np.ndarray:
  """Filled triangles, far to near, shaded by depth, blended over `canvas` (pixels already scaled)."""
  layer = canvas.copy()
  tri_depth = depth[faces].mean(1)
  near, far = float(np.min(depth)), float(np.max(depth))
  for f in np.argsort(-tri_depth):
    shade = 1.0 - 0.5 * (tri_depth[f] - near) / max(far - near, 1e-9)
    colour = tuple(int(c * shade) for c in MESH_RGB)
    pts = np.round(verts2d[faces[f]] * 16).astype(np.int32)
    cv2.fillConvexPoly(layer, pts, colour, cv2.LINE_AA, shift=4)
  return cv2.addWeighted(layer, opacity, canvas, 1.0 - opacity, 0.0)


def draw_box3d(canvas: np.ndarray, corners2d: np.ndarray, colour, thickness: int = 1) -> np.ndarray:
  for a, b in BOX_EDGES:
    pa = tuple(int(round(v * 16)) for v in corners2d[a])
    pb = tuple(int(round(v * 16)) for v in corners2d[b])
    cv2.line(canvas, pa, pb, colour, thickness, cv2.LINE_AA, shift=4)
  return canvas


def draw_box2d(canvas: np.ndarray, box: np.ndarray, scale: float, colour) -> np.ndarray:
  x0, y0, x1, y1 = (np.asarray(box, np.float64) * scale).round().astype(int)
  cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 1)
  return canvas


def best_votes(points: np.ndarray, confidence: np.ndarray) -> np.ndarray:
  """[S, S, N, 2], [S, S, N] -> [N, 2]: each control point's most confident cell's vote."""
  s, _, n, _ = points.shape
  best = np.argmax(confidence.reshape(s * s, n), axis=0)
  return points.reshape(s * s, n, 2)[best, np.arange(n)]


def pose_panel(pred: dict[str, np.ndarray], faces: np.ndarray) -> np.ndarray:
  """[input crop | predicted mesh | 2D joints + best object votes], each TILE x TILE."""
  base, scale = _base(pred["image"])
  mesh = draw_mesh(base.copy(), _project(pred["K_crop"], pred["verts3d"]) * scale, pred["verts3d"][:, 2],
                   faces)
  joints = base.copy()
  viz.draw_skeleton(joints, pred["joints2d_pred"], scale, 2, order="ho3d")
  viz.draw_points(joints, best_votes(pred["obj_points"], pred["obj_confidence"]), PRED_RGB, 2, scale)
  if pred.get("has_object", True):
    viz.draw_points(joints, pred["gt_ctrl2d"], GT_RGB, 1, scale)
  for img, box, colour in ((joints, pred["hand_box"], HAND_BOX_RGB), (joints, pred["obj_box"], OBJECT_BOX_RGB)):
    draw_box2d(img, box, scale, colour)
  return np.concatenate([viz.label(base, "input crop"), viz.label(mesh, "predicted mesh"),
                         viz.label(joints, "2D joints, object votes")], axis=1)


def fig6_panel(pred: dict[str, np.ndarray], faces: np.ndarray) -> np.ndarray:
  """The predicted mesh and object box (pose by PnP, green) with the true object box (white)."""
  base, scale = _base(pred["image"])
  out = draw_mesh(base.copy(), _project(pred["K_crop"], pred["verts3d"]) * scale, pred["verts3d"][:, 2], faces)
  corners = pred["ctrl_obj"][:8]
  poses = ((pred["rot_gt"], pred["t_gt"], GT_RGB), (pred["rot_pred"], pred["t_pred"], PRED_RGB))
  for rot, t, colour in (poses if pred.get("has_object", True) else ()):  # Hand-only frames: no box.
    cam = corners @ np.asarray(rot, np.float64).T + np.asarray(t, np.float64)
    if np.all(cam[:, 2] > 1e-3):
      draw_box3d(out, _to_crop(pred["affine"], _project(pred["K_image"], cam)) * scale, colour, 2)
  return viz.label(out, "mesh + object box (pred green, GT white)")


def fig7_panel(pred: dict[str, np.ndarray], num_queries: int = 3) -> np.ndarray | None:
  """The CR attention of `num_queries` object cells (the most confident ones) over the intersection box."""
  att = pred.get("attention_object")
  if att is None or not bool(pred["inter_valid"]):
    return None
  s = int(round(np.sqrt(att.shape[-1])))
  base, scale = _base(pred["image"])
  conf = pred["obj_confidence"].max(-1).reshape(-1)
  queries = np.argsort(-conf)[:num_queries]
  tiles = []
  x0, y0, x1, y1 = np.asarray(pred["inter_box"], np.float64) * scale
  for q in queries:
    weights = att.mean(0)[q].reshape(s, s)
    weights = weights / max(float(weights.max()), 1e-12)
    w, h = max(int(round(x1 - x0)), 1), max(int(round(y1 - y0)), 1)
    heat = viz.viridis(cv2.resize(weights.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))
    tile = base.copy()
    xs, ys = int(round(x0)), int(round(y0))
    region = tile[max(ys, 0):ys + h, max(xs, 0):xs + w]
    sub = heat[max(-ys, 0):max(-ys, 0) + region.shape[0], max(-xs, 0):max(-xs, 0) + region.shape[1]]
    region[:] = (0.4 * region + 0.6 * sub).astype(np.uint8)
    for box, colour in ((pred["hand_box"], HAND_BOX_RGB), (pred["obj_box"], OBJECT_BOX_RGB),
                        (pred["inter_box"], INTER_BOX_RGB)):
      draw_box2d(tile, box, scale, colour)
    row, col = divmod(int(q), s)
    ob = np.asarray(pred["obj_box"], np.float64)
    qx = ob[0] + (col + 0.5) / s * (ob[2] - ob[0])
    qy = ob[1] + (row + 0.5) / s * (ob[3] - ob[1])
    viz.draw_points(tile, np.array([[qx, qy]]), (255, 0, 0), 4, scale)
    tiles.append(viz.label(tile, f"CR attention, query cell {row},{col}"))
  return np.concatenate(tiles, axis=1)


def write_eval_figures(out_dir: str, examples: Sequence[dict[str, np.ndarray]], faces: np.ndarray) -> list[str]:
  """Fig. 6 and Fig. 7 panels of the first evaluated examples as PNGs; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, pred in enumerate(examples):
    path = os.path.join(out_dir, f"fig6_{i:02d}.png")
    viz.write_png(path, np.concatenate([pose_panel(pred, faces), fig6_panel(pred, faces)], axis=1))
    paths.append(path)
    attention = fig7_panel(pred)
    if attention is not None:
      path = os.path.join(out_dir, f"fig7_{i:02d}.png")
      viz.write_png(path, attention)
      paths.append(path)
  return paths
