"""Converts an official MANO pickle (chumpy, Python 2) to a plain .npz.

Usage: python scripts/convert_mano.py MANO_RIGHT.pkl mano_right.npz [--side right]

chumpy is not needed: the file is read with a restricted unpickler that only
builds numpy/scipy arrays. The .npz holds the ManoModel field names and loads
with ``handobj_jax.models.mano.load_mano(path, side)``.
"""
import argparse
import os
import sys

from handobj_jax import errors
from handobj_jax.models import mano


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("input", help="MANO_RIGHT.pkl or MANO_LEFT.pkl")
  parser.add_argument("output", help="output .npz path")
  parser.add_argument("--side", choices=("right", "left"), default=None,
                      help="default: from the input file name (LEFT -> left)")
  args = parser.parse_args()
  side = args.side or (
      "left" if "LEFT" in os.path.basename(args.input).upper() else "right")
  try:
    model = mano.load_mano(args.input, side=side)
    tmp = f"{args.output}.tmp-{os.getpid()}.npz"
    mano.save_npz(model, tmp)
    os.replace(tmp, args.output)  # Never a half-written output.
  except (errors.InputError, ValueError, OSError) as e:
    sys.stderr.write(f"error: {str(e).splitlines()[0]}\n")
    return 2
  print(f"wrote {args.output}: {side} hand, {model.v_template.shape[0]} "
        f"vertices, {model.faces.shape[0]} faces")
  return 0


if __name__ == "__main__":
  sys.exit(main())
