"""Object-pose PnP: the jitted JAX solver vs the OpenCV RANSAC loop.

Workload (Semi-Hand-Object, HO-3D protocol): a batch of examples, each 21
control points x 10 votes = 210 correspondences. Synthetic scenes: a random
box (5-30 cm sides) at a random rotation 0.4-1.0 m in front of a 512 x 512
camera (fx 500-1000 px); its 21 box control points (corners, edge
midpoints, centre) projected, plus Gaussian noise; a fraction of the votes
are outliers moved 40-200 px away.

  (a) JAX: `solve_pnp` on the whole batch (jitted, CPU), timed after
      compilation (minimum over repeats).
  (b) OpenCV: `solve_pnp_opencv`, the reference loop (cv2.solvePnPRansac,
      EPnP, one example at a time).

Accuracy against the ground truth on the same inputs: median rotation error
(degrees), median translation error (mm), ADD-0.1D success (ADD over 300
model points in the box <= 10% of the box diagonal).

Usage: python benchmarks/bench_pnp.py [--batch 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from handobj_jax.geometry import pnp
from tests.pnp_scenes import random_box_scene

NUM_VOTES = 10


def make_batch(rng, batch, noise, outlier_frac):
  ctrl, model, ks, rots, ts, votes = [], [], [], [], [], []
  for _ in range(batch):
    c, pts, k, rot, t = random_box_scene(rng)
    q = (c @ rot.T + t) @ k.T
    uv = q[:, :2] / q[:, 2:]
    v = uv[:, None, :] + rng.normal(0, noise, (21, NUM_VOTES, 2))
    bad = rng.random((21, NUM_VOTES)) < outlier_frac
    ang = rng.uniform(0, 2 * np.pi, (21, NUM_VOTES))
    off = rng.uniform(40, 200, (21, NUM_VOTES, 1)) * np.stack(
        [np.cos(ang), np.sin(ang)], -1)
    votes.append(np.where(bad[..., None], v + off, v))
    ctrl.append(c)
    model.append(pts)
    ks.append(k)
    rots.append(rot)
    ts.append(t)
  return tuple(np.stack(a) for a in (ctrl, model, ks, rots, ts, votes))


def accuracy(rot_p, t_p, rots, ts, model):
  chord = np.linalg.norm(rot_p - rots, axis=(-2, -1)) / (2 * np.sqrt(2))
  rot_err = np.degrees(2 * np.arcsin(np.minimum(chord, 1.0)))
  t_err = np.linalg.norm(t_p - ts, axis=-1) * 1e3
  gt = np.einsum("bij,bpj->bpi", rots, model) + ts[:, None]
  pr = np.einsum("bij,bpj->bpi", rot_p, model) + t_p[:, None]
  add = np.mean(np.linalg.norm(gt - pr, axis=-1), axis=-1)
  diameter = np.linalg.norm(model.max(1) - model.min(1), axis=-1)
  return np.median(rot_err), np.median(t_err), np.mean(add <= 0.1 * diameter)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  valid = np.ones((args.batch, 21, NUM_VOTES), bool)
  solve = jax.jit(pnp.solve_pnp)
  print(f"batch {args.batch} x {21 * NUM_VOTES} votes, backend "
        f"{jax.default_backend()}, OpenCV {cv2.__version__}")
  print(f"{'inputs':24s} {'solver':18s} {'examples/s':>10s} {'ok':>5s} "
        f"{'med rot deg':>11s} {'med t mm':>9s} {'ADD-0.1D':>9s}")
  for noise, outliers in ((0.0, 0.0), (1.5, 0.0), (1.5, 0.3), (2.0, 0.5)):
    ctrl, model, ks, rots, ts, votes = make_batch(rng, args.batch, noise,
                                                  outliers)
    p3, p2, w = pnp.votes_to_correspondences(ctrl, votes, valid)
    kf = ks.astype(np.float32)
    res = jax.block_until_ready(solve(p3, p2, w, kf))
    best = np.inf
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(solve(p3, p2, w, kf))
      best = min(best, time.perf_counter() - t0)
    label = f"{noise:.1f} px, {int(100 * outliers)}% outliers"
    stats = accuracy(np.asarray(res.rotation, np.float64),
                     np.asarray(res.translation, np.float64), rots, ts, model)
    print(f"{label:24s} {'JAX solve_pnp':18s} {args.batch / best:10.0f} "
          f"{np.mean(np.asarray(res.ok)):5.2f} {stats[0]:11.3f} "
          f"{stats[1]:9.3f} {stats[2]:9.3f}", flush=True)
    cv2.setRNGSeed(0)
    best = np.inf
    for _ in range(max(1, args.repeats // 2)):
      t0 = time.perf_counter()
      rot_cv, t_cv, ok_cv = pnp.solve_pnp_opencv(ctrl, votes, valid, ks)
      best = min(best, time.perf_counter() - t0)
    stats = accuracy(rot_cv, t_cv, rots, ts, model)
    print(f"{'':24s} {'OpenCV RANSAC EPnP':18s} {args.batch / best:10.0f} "
          f"{np.mean(ok_cv):5.2f} {stats[0]:11.3f} {stats[1]:9.3f} "
          f"{stats[2]:9.3f}", flush=True)


if __name__ == "__main__":
  main()
