"""Frames/s of clip responsibility maps: jitted JAX vs a NumPy + OpenCV loop.

Workload per frame (COHESIV Sec. 3.1): N = 2 hands with V = 778 vertices
(MANO), K = 6 neighbour offsets (+-3 frames); per (offset, hand) a
homography is fit from the vertices to vertices + flow(vertices), then the
per-pixel responsibility (Eq. 1-2, t = 2) is averaged over offsets.
Inputs are synthetic: per-hand random homographies generate the flow on two
hand regions, the rest is small random background motion plus noise.

  (a) JAX: `clip_responsibility` under jax.jit, timed after compilation with
      block_until_ready (min and median of repeated runs over the batch).
  (b) NumPy: a straightforward per-frame, per-offset, per-hand loop with
      bilinear sampling in NumPy, cv2.findHomography(method=0) and the
      Eq. 1-2 maps in NumPy (float64 where NumPy promotes).

Both outputs are compared (max |R_jax - R_numpy|).

Usage: python benchmarks/bench_responsibility.py [--batch 8] [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax.geometry.responsibility import clip_responsibility

NUM_HANDS = 2
NUM_OFFSETS = 6
NUM_VERTS = 778


def make_inputs(rng, batch, size):
  """Synthetic flow [B,K,S,S,2], flow_valid, vertices [B,N,V,2], hand_valid."""
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  flow = rng.normal(0.0, 0.3, (batch, NUM_OFFSETS, size, size, 2))
  verts = np.zeros((batch, NUM_HANDS, NUM_VERTS, 2))
  for b in range(batch):
    for n in range(NUM_HANDS):
      cx = size * (0.3 + 0.4 * n) + rng.uniform(-4, 4)
      cy = size * 0.5 + rng.uniform(-4, 4)
      rad = size * 0.15
      verts[b, n] = np.stack([cx, cy]) + rng.uniform(-rad, rad, (NUM_VERTS, 2))
      region = (np.abs(xs - cx) < rad * 1.3) & (np.abs(ys - cy) < rad * 1.3)
      for k in range(NUM_OFFSETS):
        step = (k - 3 if k < 3 else k - 2)  # offsets -3..-1, 1..3
        hom = np.eye(3)
        hom[:2, 2] = step * rng.uniform(-3, 3, 2)
        hom[:2, :2] += step * rng.normal(0, 0.01, (2, 2))
        hom[2, :2] = step * rng.normal(0, 2e-5, 2)
        den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
        px = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den
        py = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
        flow[b, k, region, 0] = (px - xs)[region]
        flow[b, k, region, 1] = (py - ys)[region]
  flow_valid = np.ones((batch, NUM_OFFSETS), bool)
  hand_valid = np.ones((batch, NUM_HANDS), bool)
  return (flow.astype(np.float32), flow_valid, verts.astype(np.float32),
          hand_valid)


def numpy_bilinear(img, pts):
  """Edge-clamped bilinear sampling of img [H,W,C] at pts [P,2] (x, y)."""
  h, w = img.shape[:2]
  x = np.clip(pts[:, 0], 0, w - 1)
  y = np.clip(pts[:, 1], 0, h - 1)
  x0 = np.floor(x).astype(int)
  y0 = np.floor(y).astype(int)
  x1 = np.minimum(x0 + 1, w - 1)
  y1 = np.minimum(y0 + 1, h - 1)
  fx = (x - x0)[:, None]
  fy = (y - y0)[:, None]
  top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
  bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
  return top * (1 - fy) + bot * fy


def numpy_clip_responsibility(flow, flow_valid, verts, hand_valid, temp=2.0):
  """Reference loop: NumPy maps + cv2.findHomography per (frame, offset, hand)."""
  batch, num_k, h, w, _ = flow.shape
  ys, xs = np.mgrid[0:h, 0:w]
  out = np.zeros((batch, h, w, NUM_HANDS + 1))
  for b in range(batch):
    acc = np.zeros((h, w, NUM_HANDS + 1))
    n_valid = 0
    for k in range(num_k):
      if not flow_valid[b, k]:
        continue
      n_valid += 1
      o = flow[b, k]
      dists = [np.sqrt(o[..., 0] ** 2 + o[..., 1] ** 2)]
      valid = [True]
      for n in range(NUM_HANDS):
        v = verts[b, n]
        inside = ((v[:, 0] >= 0) & (v[:, 0] <= w - 1) & (v[:, 1] >= 0)
                  & (v[:, 1] <= h - 1))
        src = v[inside]
        dst = src + numpy_bilinear(o, src)
        hom = None
        if hand_valid[b, n] and len(src) >= 4:
          hom, _ = cv2.findHomography(src, dst, 0)
        if hom is None:
          dists.append(np.zeros((h, w)))
          valid.append(False)
          continue
        den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
        px = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den
        py = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
        dists.append(np.sqrt((xs + o[..., 0] - px) ** 2
                             + (ys + o[..., 1] - py) ** 2))
        valid.append(True)
      logits = -np.stack(dists, -1) / temp
      logits[..., ~np.array(valid)] = -np.inf
      logits -= logits.max(-1, keepdims=True)
      e = np.exp(logits)
      acc += e / e.sum(-1, keepdims=True)
    out[b] = acc / max(n_valid, 1)
  return out


def jax_responsibility_fn():
  """The jitted JAX side of the comparison: R [B, S, S, N + 1] from (flow, flow_valid, verts, hand_valid)."""
  return jax.jit(
      lambda f, fv, v, hv: clip_responsibility(f, fv, v, None, hv, 2.0)[0])


def time_fn(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times), float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  jit_fn = jax_responsibility_fn()
  rows = []
  for size in args.sizes:
    flow, flow_valid, verts, hand_valid = make_inputs(rng, args.batch, size)
    dev = [jnp.asarray(x) for x in (flow, flow_valid, verts, hand_valid)]
    r_jax = np.asarray(jax.block_until_ready(jit_fn(*dev)))  # compile
    jax_min, jax_med = time_fn(
        lambda: jax.block_until_ready(jit_fn(*dev)), args.repeats)
    r_np = numpy_clip_responsibility(flow, flow_valid, verts, hand_valid)
    np_min, np_med = time_fn(
        lambda: numpy_clip_responsibility(flow, flow_valid, verts, hand_valid),
        max(2, args.repeats // 3))
    rows.append((size, args.batch / jax_min, args.batch / jax_med,
                 args.batch / np_min, args.batch / np_med, np_min / jax_min,
                 float(np.abs(r_jax - r_np).max())))

  print(f"devices: {jax.devices()}  batch={args.batch}  hands={NUM_HANDS}  "
        f"offsets={NUM_OFFSETS}  vertices={NUM_VERTS}  "
        f"load average: {os.getloadavg()[0]:.2f}")
  print("| size | JAX fps (best) | JAX fps (median) | NumPy fps (best) | "
        "NumPy fps (median) | speed-up (best/best) | max abs diff |")
  print("|---|---|---|---|---|---|---|")
  for size, jb, jm, nb, nm, ratio, diff in rows:
    print(f"| {size}^2 | {jb:.1f} | {jm:.1f} | {nb:.1f} | {nm:.1f} | "
          f"{ratio:.1f}x | {diff:.2e} |")


if __name__ == "__main__":
  main()
