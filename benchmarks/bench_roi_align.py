"""RoIAlign formulations on CPU: forward and forward + feature gradient.

Workload (Semi-Hand-Object, Appendix A): P2 of a 512 x 512 input, B = 8,
128 x 128 x 256 float32, R = 3 boxes per image (hand, object, intersection)
of 60-160 px, 32 x 32 output, sampling ratio 2.

Formulations (all share `roi_align`'s per-axis indices and weights, and
agree to ~1e-6):
  flat_gather   the library's: one gather of the (2 sr)^2 neighbour rows
                per bin from the flattened [B*H*W, C] map, contracted with
                the outer product of the per-axis weights.
  index_gather  the same neighbourhood read with a 2-D advanced index
                features[b, rows, cols] and a weighted sum over both axes.
  patch_gather  one 2 x 2 x C dynamic slice per bilinear sample (vmapped),
                like geometry.responsibility.bilinear_sample.
  dense         separable dense interpolation matrices per RoI,
                einsum('brih,bhwc->briwc') then einsum('briwc,brjw->brijc').

Times are the minimum over repeats after compilation ("fwd": features out;
"fwd+grad": value_and_grad of sum(out^2) w.r.t. the features).

Usage: python benchmarks/bench_roi_align.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax.geometry import roi_align as ra

_HIGHEST = jax.lax.Precision.HIGHEST
OH = OW = 32
SR = 2
SCALE = 0.25


def _weights(features, boxes):
  _, h, w, _ = features.shape
  axis = ra._axis_samples  # pylint: disable=protected-access
  iy, wy = axis(boxes[..., 1], boxes[..., 3], h, OH, SR, SCALE)
  ix, wx = axis(boxes[..., 0], boxes[..., 2], w, OW, SR, SCALE)
  return iy, wy, ix, wx


def flat_gather(features, boxes):
  return ra.roi_align(features, boxes, output_size=(OH, OW),
                      sampling_ratio=SR, spatial_scale=SCALE).features


def index_gather(features, boxes):
  iy, wy, ix, wx = _weights(features, boxes)
  b = jnp.arange(features.shape[0])[:, None, None, None, None, None]
  g = features[b, iy[:, :, :, :, None, None], ix[:, :, None, None, :, :]]
  w = wy[:, :, :, :, None, None] * wx[:, :, None, None, :, :]
  return jnp.sum(g * w[..., None], axis=(3, 5))


def patch_gather(features, boxes):
  bsz, h, w, c = features.shape
  iy, wy, ix, wx = _weights(features, boxes)
  r = boxes.shape[1]

  def per_sample(idx, wgt, size, n):
    low = idx.reshape(bsz, r, n, SR, 2)[..., 0]
    wgt = wgt.reshape(bsz, r, n, SR, 2)
    start = jnp.minimum(low, size - 2)     # keep the 2-wide slice in range
    shifted = (low - start)[..., None] == 1
    wgt = jnp.where(shifted, jnp.stack(
        [jnp.zeros_like(wgt[..., 0]), wgt[..., 0] + wgt[..., 1]], -1), wgt)
    return start, wgt

  ys, wy = per_sample(iy, wy, h, OH)
  xs, wx = per_sample(ix, wx, w, OW)
  yy = jnp.broadcast_to(ys[:, :, :, :, None, None], (bsz, r, OH, SR, OW, SR))
  xx = jnp.broadcast_to(xs[:, :, None, None, :, :], (bsz, r, OH, SR, OW, SR))
  patch = lambda img, y, x: jax.lax.dynamic_slice(img, (y, x, 0), (2, 2, c))  # noqa: E731
  q = jax.vmap(jax.vmap(patch, in_axes=(None, 0, 0)))(
      features, yy.reshape(bsz, -1), xx.reshape(bsz, -1))
  q = q.reshape(bsz, r, OH, SR, OW, SR, 2, 2, c)
  wgt = wy[:, :, :, :, None, None, :, None] * wx[:, :, None, None, :, :, None, :]
  return jnp.sum(q * wgt[..., None], axis=(3, 5, 6, 7))


def dense(features, boxes):
  _, h, w, _ = features.shape
  iy, wy, ix, wx = _weights(features, boxes)
  ay = jnp.sum(wy[..., None] * (iy[..., None] == jnp.arange(h)), axis=-2)
  ax = jnp.sum(wx[..., None] * (ix[..., None] == jnp.arange(w)), axis=-2)
  t = jnp.einsum("brih,bhwc->briwc", ay, features, precision=_HIGHEST)
  return jnp.einsum("briwc,brjw->brijc", t, ax, precision=_HIGHEST)


FORMULATIONS = {"flat_gather": flat_gather, "index_gather": index_gather,
                "patch_gather": patch_gather, "dense": dense}


def _time(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  bsz, r, size, c = 8, 3, 128, 256
  features = jnp.asarray(rng.normal(size=(bsz, size, size, c)), jnp.float32)
  lo = rng.uniform(0, 350, (bsz, r, 2))
  boxes = jnp.asarray(np.concatenate(
      [lo, lo + rng.uniform(60, 160, (bsz, r, 2))], -1), jnp.float32)
  ref = None
  print(f"B={bsz} R={r} P2 {size}x{size}x{c} -> {OH}x{OW}, sr={SR}, "
        f"backend={jax.default_backend()}, devices={jax.device_count()}")
  print(f"{'formulation':14s} {'fwd ms':>8s} {'fwd+grad ms':>12s} {'max |diff|':>11s}")
  for name, fn in FORMULATIONS.items():
    fwd = jax.jit(fn)
    vg = jax.jit(jax.value_and_grad(
        lambda f, b, fn=fn: jnp.sum(jnp.square(fn(f, b)))))
    out = fwd(features, boxes)
    ref = out if ref is None else ref
    diff = float(jnp.max(jnp.abs(out - ref)))
    t_f = _time(fwd, (features, boxes), args.repeats)
    t_g = _time(vg, (features, boxes), args.repeats)
    print(f"{name:14s} {t_f * 1e3:8.1f} {t_g * 1e3:12.1f} {diff:11.1e}",
          flush=True)


if __name__ == "__main__":
  main()
