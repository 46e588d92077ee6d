"""The training state shared by every trainer: a small keyword-only pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass(kw_only=True)
class TrainState:
  """step: int32 scalar; params / batch_stats: Flax collections; opt_state: optax state;
  rng: a raw uint32 PRNG key from which every step folds its own key (so a resumed run draws the same)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any, **updates: Any) -> "TrainState":
    deltas, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, deltas)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **updates)

  def learning_rate(self) -> jax.Array:
    return self.opt_state.hyperparams["learning_rate"]

  def with_learning_rate(self, lr: float) -> "TrainState":
    """Sets the injected learning rate (the plateau schedule changes it between epochs)."""
    hyper = dict(self.opt_state.hyperparams)
    old = hyper["learning_rate"]
    hyper["learning_rate"] = jax.device_put(jax.numpy.asarray(lr, old.dtype), old.sharding)
    return self.replace(opt_state=self.opt_state._replace(hyperparams=hyper))


def make_optimizer(optim) -> optax.GradientTransformation:
  """AdamW with an injectable learning rate (config.optim: learning_rate, weight_decay, grad_clip_norm)."""
  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=optim.learning_rate,
                                                weight_decay=optim.weight_decay)
  if optim.grad_clip_norm:
    # Keep inject_hyperparams' state outermost so `with_learning_rate` finds it: clip inside the chain.
    return optax.inject_hyperparams(
        lambda learning_rate, weight_decay: optax.chain(
            optax.clip_by_global_norm(optim.grad_clip_norm),
            optax.adamw(learning_rate=learning_rate, weight_decay=weight_decay)))(
                learning_rate=optim.learning_rate, weight_decay=optim.weight_decay)
  return adamw
