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
  """The optimiser `config.optim` names, with an injectable learning rate (the schedule sets it per epoch).

  config.optim: name 'adamw' (decoupled weight decay, COHESIV) or 'adam' (Semi-Hand-Object; a non-zero
  weight_decay is added to the gradient as an L2 term, as PyTorch's Adam does), learning_rate, weight_decay,
  grad_clip_norm (0 = off; applied first). `inject_hyperparams`' state stays outermost so
  `TrainState.with_learning_rate` finds it.
  """
  name = optim.name if "name" in optim else "adamw"

  def build(learning_rate, weight_decay):
    parts = []
    if optim.grad_clip_norm:
      parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if name == "adamw":
      parts.append(optax.adamw(learning_rate=learning_rate, weight_decay=weight_decay))
    elif name == "adam":
      if optim.weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
      parts.append(optax.adam(learning_rate=learning_rate))
    else:
      raise ValueError(f"config.optim.name={name!r}; expected 'adamw' or 'adam'")
    return optax.chain(*parts) if len(parts) > 1 else parts[0]

  return optax.inject_hyperparams(build)(learning_rate=optim.learning_rate, weight_decay=optim.weight_decay)
