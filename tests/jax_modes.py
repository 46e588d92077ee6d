"""Runs a function eagerly, under jax.jit, or under jax.vmap, for tests that check all three agree."""
import jax
import jax.numpy as jnp

MODES = ("eager", "jit", "vmap")


def run(mode, fn, *args):
  """fn(*args) in `mode`: eager, jitted, or vmapped over a new leading axis of 1 (then removed)."""
  if mode == "eager":
    return fn(*args)
  if mode == "jit":
    return jax.jit(fn)(*args)
  if mode == "vmap":
    out = jax.vmap(fn)(*[jnp.asarray(a)[None] for a in args])
    return jax.tree_util.tree_map(lambda x: x[0], out)
  raise ValueError(mode)
