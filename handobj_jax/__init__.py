"""handobj_jax: hand / held-object segmentation and 3D hand-object pose in JAX."""

__version__ = "0.1.0"
