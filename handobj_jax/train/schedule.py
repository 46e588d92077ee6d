"""Reduce-on-plateau learning rate and early stopping, driven by the validation loss once per epoch.

COHESIV (Sec. 4.1): halve the learning rate after 5 epochs without a validation-loss decrease; stop
after 10. The state is a plain dict so it can live in the checkpoint's JSON metadata.
"""

from __future__ import annotations

import dataclasses
import math


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
    if not math.isfinite(val_loss):
      raise FloatingPointError(f"validation loss is {val_loss}")
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
    return {k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict) -> "Plateau":
    d = dict(d)
    if d.get("best") is None:
      d["best"] = math.inf
    return cls(**d)
