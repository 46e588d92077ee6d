"""handobj_jax: hand / held-object segmentation and 3D hand-object pose in JAX."""

from handobj_jax import xla_cpu as _xla_cpu

# Before JAX creates its CPU backend: XLA:CPU's faster convolution path when HANDOBJ_JAX_XLA_CPU_YNN=1 is set
# (opt-in; see handobj_jax/xla_cpu.py).
_xla_cpu.apply()

__version__ = "0.1.0"
