"""handobj_jax: hand / held-object segmentation and 3D hand-object pose in JAX."""

from handobj_jax import xla_cpu as _xla_cpu

# Before JAX creates its CPU backend: XLA:CPU's fast convolution path (see handobj_jax/xla_cpu.py; the
# environment variable HANDOBJ_JAX_XLA_CPU_YNN=0 turns it off).
_xla_cpu.apply()

__version__ = "0.1.0"
