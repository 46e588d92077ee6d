"""Learning-rate schedules driven once per epoch, and early stopping; chosen by `config.optim.schedule`.

* 'plateau' (COHESIV, Sec. 4.1): halve the learning rate after `lr_patience` epochs without a validation-loss
  decrease (`lr_factor`), stop after `stop_patience`.
* 'step' (Semi-Hand-Object, Sec. 6.1): multiply the learning rate by `decay_factor` every
  `decay_every_epochs` epochs (the paper: 0.7 every 10 epochs); no early stopping.

Both keep the best validation loss (for messages and the best checkpoint). The state is a plain dict so it
lives in the checkpoint's JSON metadata, and a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import dataclasses
import math


def _check(val_loss: float) -> None:
  if not math.isfinite(val_loss):
    raise FloatingPointError(f"validation loss is {val_loss}")


@dataclasses.dataclass
class Plateau:
  learning_rate: float
  factor: float = 0.5
  lr_patience: int = 5
  stop_patience: int = 10
  min_delta: float = 0.0
  best: float = math.inf
  epochs_since_best: int = 0        # for early stopping
  epochs_since_change: int = 0      # for the next lr cut: counts from the last best or the last cut
  stopped: bool = False

  def update(self, val_loss: float) -> str:
    """Feeds one epoch's validation loss; returns 'improved', 'same', 'lr_cut' or 'stop'."""
    _check(val_loss)
    if val_loss < self.best - self.min_delta:
      self.best, self.epochs_since_best, self.epochs_since_change = val_loss, 0, 0
      return "improved"
    self.epochs_since_best += 1
    self.epochs_since_change += 1
    if self.epochs_since_best >= self.stop_patience:
      self.stopped = True
      return "stop"
    if self.epochs_since_change >= self.lr_patience:
      self.learning_rate *= self.factor
      self.epochs_since_change = 0
      return "lr_cut"
    return "same"

  def to_dict(self) -> dict:
    return _to_dict(self, "plateau")

  @classmethod
  def from_dict(cls, d: dict) -> "Plateau":
    return _from_dict(cls, d)


@dataclasses.dataclass
class StepDecay:
  learning_rate: float
  every_epochs: int = 10
  factor: float = 0.7
  epochs: int = 0
  best: float = math.inf
  stopped: bool = False             # Never set: the run lasts config.num_epochs.

  def update(self, val_loss: float) -> str:
    """Feeds one epoch's validation loss; returns 'improved' or 'same', or 'lr_cut' on a decay epoch."""
    _check(val_loss)
    self.epochs += 1
    improved = val_loss < self.best
    self.best = min(self.best, val_loss)
    if self.epochs % self.every_epochs == 0:
      self.learning_rate *= self.factor
      return "lr_cut"
    return "improved" if improved else "same"

  def to_dict(self) -> dict:
    return _to_dict(self, "step")

  @classmethod
  def from_dict(cls, d: dict) -> "StepDecay":
    return _from_dict(cls, d)


SCHEDULES = {"plateau": Plateau, "step": StepDecay}


def _to_dict(schedule, kind: str) -> dict:
  d = {k: (None if isinstance(v, float) and math.isinf(v) else v)
       for k, v in dataclasses.asdict(schedule).items()}
  d["kind"] = kind
  return d


def _from_dict(cls, d: dict):
  d = {k: v for k, v in d.items() if k != "kind"}
  if d.get("best") is None:
    d["best"] = math.inf
  return cls(**d)


def from_config(optim) -> Plateau | StepDecay:
  """The schedule `config.optim.schedule` names ('plateau' when the config predates the key)."""
  kind = optim.schedule if "schedule" in optim else "plateau"
  if kind == "plateau":
    return Plateau(learning_rate=optim.learning_rate, factor=optim.lr_factor, lr_patience=optim.lr_patience,
                   stop_patience=optim.stop_patience)
  if kind == "step":
    return StepDecay(learning_rate=optim.learning_rate, every_epochs=optim.decay_every_epochs,
                     factor=optim.decay_factor)
  raise ValueError(f"config.optim.schedule={kind!r}; expected one of {sorted(SCHEDULES)}")


def from_dict(d: dict) -> Plateau | StepDecay:
  """Restores a schedule saved by `to_dict` (checkpoints without 'kind' hold a Plateau)."""
  return SCHEDULES[d.get("kind", "plateau")].from_dict(d)
