r"""How good are the responsibility pseudo-labels on the synthetic world? (COHESIV Sec. 3.1)

  python scripts/responsibility_quality.py [--config small] [--split validation] [--clips 32]
                                           [--temperature 2] [--motion_scale 2.5]

For each clip of a `synthetic_handobj` builder config's split (regenerated from its seeds), the labels of
the 4 middle frames are computed exactly as the `pseudolabel` job does (`handobj_jax.jobs.pseudolabel.label_batch`,
t = 2, robust fits), once with the EXACT flow (`flow_exact`, i.e. flow_noise 0) and once with the stored
estimator-like noisy flow (`flow`). Printed, as means over pixels pooled over the split:
  * object: responsibility of the holding hand on its held object's moving (|exact flow to t+1| >= 0.5 px),
    non-occluded (visible at all 6 offsets) pixels; target >= 0.9;
  * background: background responsibility (1 - sum of hands) on static background pixels (not person,
    object or distractor; |exact flow| < 0.1 px at all 6 offsets); target >= 0.9;
  * the object figure binned by the pixel's mean exact motion over the 6 offsets, which shows the limit
    set by t = 2: a pixel whose motion is d px from the background model gets at most 1/(1 + exp(-d/2)).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from handobj_jax.jobs import pseudolabel as pseudolabel_job
from input_pipeline import synthetic_world as sw
from input_pipeline import tfds_synthetic

BINS = (0.0, 1.0, 2.0, 4.0, 8.0, np.inf)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="small")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--clips", type=int, default=-1, help="-1: the split's size")
  parser.add_argument("--temperature", type=float, default=2.0)
  parser.add_argument("--motion_scale", type=float, default=None,
                      help="override the world's WorldConfig.motion_scale (clips are regenerated)")
  args = parser.parse_args()
  cfg = {c.name: c for c in tfds_synthetic.BUILDER_CONFIGS}[args.config]
  world = cfg.world_config()
  if args.motion_scale is not None:
    world = dataclasses.replace(world, motion_scale=args.motion_scale)
  count = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}[args.split]
  count = count if args.clips < 0 else args.clips
  fn = jax.jit(lambda *a: pseudolabel_job.label_batch(*a, temperature=args.temperature, robust=True, robust_threshold=3.0,
                                         object_threshold=0.5))
  acc = {kind: {"obj": [], "obj_motion": [], "bg": []} for kind in ("exact", "noisy")}
  cam = 0
  mid = list(sw.MIDDLE_FRAMES)
  for i in range(count):
    clip = sw.generate_clip(world, tfds_synthetic.clip_seed(cfg, args.split, i))
    cam += not np.allclose(clip["camera_homography"], np.eye(3), atol=1e-6)
    flow_mag = np.linalg.norm(clip["flow_exact"], axis=-1)  # [M,K,H,W]
    visible = clip["flow_visible"].all(1)  # [M,H,W]
    moving = flow_mag[:, sw.OFFSETS.index(1)] >= 0.5
    motion = flow_mag.mean(1)
    fg = clip["person_mask"][mid] | clip["object_mask"][mid].any(1) | clip["distractor_mask"][mid]
    static_bg = ~fg & (flow_mag.max(1) < 0.1)
    for kind, flow in (("exact", clip["flow_exact"]), ("noisy", clip["flow"])):
      out = fn(flow[None], np.ones((1, 4, 6), bool), clip["hand_vertices"][mid][None], clip["hand_valid"][None],
               clip["person_mask"][mid][None])
      r = np.asarray(out["responsibility"][0], np.float32) / 255.0  # [M,N,H,W]
      bg = 1.0 - r.sum(1)
      acc[kind]["bg"].append(bg[static_bg])
      for n in np.nonzero(clip["holding"])[0]:
        sel = clip["object_mask"][mid, n] & visible & moving
        acc[kind]["obj"].append(r[:, n][sel])
        acc[kind]["obj_motion"].append(motion[sel])
  print(f"synthetic_handobj/{args.config} {args.split}: {count} clips ({cam} with camera motion), "
        f"{world.height}x{world.width}, t = {args.temperature}, motion_scale = {world.motion_scale}, robust fits")
  print("| flow | R(holding hand) on moving visible object px | R(background) on static background px | "
        "object px | background px |")
  print("|---|---|---|---|---|")
  for kind in ("exact", "noisy"):
    obj = np.concatenate(acc[kind]["obj"])
    bg = np.concatenate(acc[kind]["bg"])
    print(f"| {kind} | {obj.mean():.3f} | {bg.mean():.3f} | {obj.size} | {bg.size} |")
  print("\nR(holding hand) on its object by mean exact motion over the 6 offsets (px):")
  print("| motion bin | " + " | ".join(f"[{a:g}, {b:g})" for a, b in zip(BINS[:-1], BINS[1:])) + " |")
  print("|---|" + "---|" * (len(BINS) - 1))
  for kind in ("exact", "noisy"):
    obj = np.concatenate(acc[kind]["obj"])
    mot = np.concatenate(acc[kind]["obj_motion"])
    cells = []
    for a, b in zip(BINS[:-1], BINS[1:]):
      sel = (mot >= a) & (mot < b)
      cells.append(f"{obj[sel].mean():.2f} (n={sel.sum()})" if sel.any() else "-")
    print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
