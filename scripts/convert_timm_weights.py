"""Converts a timm ResNet / SE-ResNeXt checkpoint to an .npz that needs no torch.

Usage:
  python scripts/convert_timm_weights.py --arch seresnext50_32x4d \
      --in seresnext50_32x4d.pth --out seresnext50_32x4d.npz

The input is a PyTorch state dict (.pth/.pt/.bin; needs torch) or a
.safetensors file (e.g. timm's Hugging Face `model.safetensors`). The output
npz keeps the PyTorch key names (so it stays a faithful copy of the state dict)
and is read by `handobj_jax.models.pretrained.load_pretrained(path, arch)`.
Before writing, the state dict is converted once to Flax variables, so a file
that would not load (unexpected, missing or mis-shaped tensors) fails here with
the full list of offending names.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from handobj_jax.models import encoders
from handobj_jax.models import pretrained


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", required=True, choices=sorted(encoders.ARCHS))
  parser.add_argument("--in", dest="src", required=True,
                      help="timm checkpoint: .pth/.pt/.bin/.safetensors/.npz")
  parser.add_argument("--out", required=True, help="output .npz path")
  parser.add_argument("--classifier", default="ignore",
                      choices=("ignore", "require"),
                      help="'require': fail unless fc.weight/fc.bias exist")
  args = parser.parse_args(argv)
  if not args.out.endswith(".npz"):
    parser.error(f"--out must end in .npz, got {args.out}")

  try:
    state = pretrained.read_state_dict(args.src)
    pretrained.check_finite(state, args.src)
    variables = pretrained.convert_torch_state_dict(state, args.arch,
                                                    classifier=args.classifier)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in state.items()})
    os.replace(tmp, args.out)  # Never a half-written output.
  except Exception as e:  # pylint: disable=broad-except  (torch/zip errors of damaged files too)
    lines = str(e).strip().splitlines()
    detail = " ".join(l.strip() for l in lines[:4]) if lines else type(e).__name__
    where = "" if args.src in detail else f"{args.src}: "
    sys.stderr.write(f"error: {where}{detail}\n")
    return 2
  n_vars = sum(int(np.prod(np.shape(v)))
               for c in variables.values()
               for v in _leaves(c))
  print(f"wrote {args.out}: {len(state)} tensors, {n_vars:,} encoder values "
        f"(params + BN statistics) for {args.arch}")
  return 0


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
