"""The shared trainer on a toy task: one step, overfitting, resume parity, NaN stop, SIGTERM, schedule."""

import math
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from handobj_jax.train import checkpoint as ckpt_lib
from handobj_jax.train import schedule
from handobj_jax.train import trainer
from input_pipeline import pipeline


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))[..., 0]


class ToyTask:
  """Regression of a fixed nonlinear target; optionally poisons the loss at one step."""

  def __init__(self, nan_at_step=None):
    self.net = _Net()
    self.nan_at_step = nan_at_step

  def init_variables(self, rng, batch):
    return dict(self.net.init(rng, batch["x"], False))

  def loss_fn(self, params, batch_stats, batch, rng, train):
    pred, updates = self.net.apply({"params": params, "batch_stats": batch_stats}, batch["x"], train,
                                   mutable=["batch_stats"])
    err = (pred - batch["y"]) ** 2
    w = batch.get("_mask", jnp.ones_like(batch["y"], bool)).astype(jnp.float32)
    loss = jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
    if self.nan_at_step is not None:
      loss = jnp.where(batch["step"][0] == self.nan_at_step, jnp.nan, loss)
    return loss, ({"mse": loss}, updates["batch_stats"] if train else batch_stats)

  def load_pretrained(self, variables):
    return variables

  def visualize(self, variables, batch):
    return {"toy": np.full((8, 8, 3), 128, np.uint8)}


def _batch(step, n=8):
  rng = np.random.default_rng(1000 + step)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
  return {"x": x, "y": y.astype(np.float32), "step": np.full((n,), step, np.int32)}


def _config(**overrides):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 8
  c.num_epochs = 3
  c.num_steps = 0
  c.log_every_steps = 5
  c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-2, weight_decay=1e-4, grad_clip_norm=0.0,
                                           lr_factor=0.5, lr_patience=5, stop_patience=10))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=4, keep=2))
  c.update(overrides)
  return c


def _fit(task, config, workdir, steps_per_epoch=10, fixed_batch=False):
  mesh = pipeline.make_data_mesh()

  def to_global(b):
    return next(pipeline.global_batches([b], mesh))

  def train_batches(start):
    step = start
    while True:
      yield to_global(_batch(0 if fixed_batch else step))
      step += 1

  def eval_batches():
    b = _batch(99999)
    b["_mask"] = np.array([True] * 6 + [False] * 2)
    yield to_global(b)

  return trainer.fit(task, config, workdir, mesh=mesh, train_batches=train_batches,
                     eval_batches=eval_batches, steps_per_epoch=steps_per_epoch,
                     example_batch=to_global(_batch(0)))


def _params(workdir, step=None):
  c = ckpt_lib.Checkpointer(workdir)
  step = c.latest_step() if step is None else step
  meta = c.restore_meta(step)
  state_dir = os.path.join(c.directory, str(step), "state")
  c.close()
  import orbax.checkpoint as ocp
  restored = ocp.StandardCheckpointer().restore(state_dir)
  return restored["params"], meta


def test_one_step_writes_checkpoint_and_summaries(tmp_path):
  result = _fit(ToyTask(), _config(num_steps=1), str(tmp_path))
  assert result.step == 1
  params, meta = _params(str(tmp_path))
  assert meta["step"] == 1
  assert os.listdir(tmp_path / "tensorboard")


def test_overfits_one_batch(tmp_path):
  task = ToyTask()
  config = _config(num_steps=60, log_every_steps=60)
  config.optim.learning_rate = 3e-2
  mesh = pipeline.make_data_mesh()
  b = next(pipeline.global_batches([_batch(0)], mesh))
  make, _ = trainer.init_state(task, config, mesh, b)
  state = make()
  step = trainer.make_train_step(task, mesh)
  first = None
  for _ in range(60):
    state, m = step(state, b)
    loss = float(m["loss"])  # blocks: see conftest.py on queued collectives
    first = loss if first is None else first
  assert float(m["loss"]) < 0.1 * first


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
  full = str(tmp_path / "full")
  _fit(ToyTask(), _config(num_steps=23), full)
  interrupted = str(tmp_path / "interrupted")
  _fit(ToyTask(), _config(num_steps=12), interrupted)   # "killed" after step 12's checkpoint
  result = _fit(ToyTask(), _config(num_steps=23), interrupted)
  assert result.step == 23
  a, _ = _params(full)
  b, _ = _params(interrupted)
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
  assert max(diffs) <= 1e-6


def test_nan_loss_stops_with_step_and_no_nan_checkpoint(tmp_path):
  with pytest.raises(trainer.TrainingStopped, match="step 7"):
    _fit(ToyTask(nan_at_step=6), _config(num_steps=20), str(tmp_path))
  c = ckpt_lib.Checkpointer(str(tmp_path))
  steps = c.all_steps()
  c.close()
  assert steps and max(steps) <= 6
  for s in steps:
    params, _ = _params(str(tmp_path), s)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_checkpointer_refuses_nan_state(tmp_path):
  c = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(ckpt_lib.NonFiniteCheckpointError, match="step 3"):
    c.save(3, {"w": np.array([1.0, np.nan], np.float32)}, {"epoch": 0})
  assert c.all_steps() == []
  c.close()


def test_sigterm_saves_and_exits(tmp_path):
  task = ToyTask()
  fired = {"done": False}
  calls = {"n": 0}
  mesh = pipeline.make_data_mesh()

  def train_batches(start):
    step = start
    while True:
      calls["n"] += 1
      if calls["n"] == 5 and not fired["done"]:
        fired["done"] = True
        os.kill(os.getpid(), signal.SIGTERM)
      yield next(pipeline.global_batches([_batch(step)], mesh))
      step += 1

  def eval_batches():
    yield next(pipeline.global_batches([_batch(99999)], mesh))

  result = trainer.fit(task, _config(num_steps=1000), str(tmp_path), mesh=mesh,
                       train_batches=train_batches, eval_batches=eval_batches, steps_per_epoch=100,
                       example_batch=next(pipeline.global_batches([_batch(0)], mesh)))
  assert result.preempted and result.step == 5
  _, meta = _params(str(tmp_path))
  assert meta["step"] == 5


def test_epoch_end_eval_keeps_best_and_latest(tmp_path):
  result = _fit(ToyTask(), _config(num_epochs=3), str(tmp_path), steps_per_epoch=10)
  assert result.step == 30 and result.val_loss is not None and math.isfinite(result.val_loss)
  c = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  steps = c.all_steps()
  best = c.best_step()
  c.close()
  assert best in steps and 30 in steps
  assert len(steps) <= 3
  assert list((tmp_path / "images").glob("toy_*.png"))


def test_plateau_schedule_halves_then_stops():
  p = schedule.Plateau(learning_rate=1e-2)
  assert p.update(1.0) == "improved"
  actions = [p.update(1.0) for _ in range(10)]
  assert actions[:4] == ["same"] * 4 and actions[4] == "lr_cut" and actions[9] == "stop"
  assert p.learning_rate == pytest.approx(5e-3)
  assert p.stopped
  q = schedule.Plateau.from_dict(p.to_dict())
  assert q == p
  with pytest.raises(FloatingPointError):
    schedule.Plateau(learning_rate=1.0).update(float("nan"))


# ---- Damaged checkpoints, other models, NaN state ------------------------------------------------


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def _damage(step_dir, how):
  if how == "truncated_array_file":
    path = _largest_file(os.path.join(step_dir, "state"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
  elif how == "deleted_metadata":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  elif how == "flipped_bytes":
    path = _largest_file(os.path.join(step_dir, "state"))
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 64):
      data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated_array_file", "deleted_metadata", "flipped_bytes"])
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, how, capsys):
  """Resume skips a damaged checkpoint (moved aside, never deleted), warns, and training goes on."""
  workdir = str(tmp_path)
  _fit(ToyTask(), _config(num_steps=8), workdir, steps_per_epoch=100)
  _damage(os.path.join(workdir, "checkpoints", "8"), how)
  capsys.readouterr()
  result = _fit(ToyTask(), _config(num_steps=12), workdir, steps_per_epoch=100)
  err = capsys.readouterr().err
  assert result.step == 12
  assert "warning:" in err and os.path.join("checkpoints", "8") in err and "damaged" in err, err
  moved = os.listdir(os.path.join(workdir, ckpt_lib.DAMAGED_DIR))
  assert len(moved) == 1 and moved[0].startswith("8-")
  # The resumed run restarted from step 4: steps 5..12 were trained again (and 8 rewritten intact).
  _, meta = _params(workdir, 8)
  assert meta["step"] == 8 and ckpt_lib.DIGEST in meta


def test_no_intact_checkpoint_is_one_error_naming_the_directory(tmp_path):
  workdir = str(tmp_path)
  _fit(ToyTask(), _config(num_steps=8), workdir, steps_per_epoch=100)
  for step in ("4", "8"):
    _damage(os.path.join(workdir, "checkpoints", step), "deleted_metadata")
  with pytest.raises(ckpt_lib.NoIntactCheckpoint, match=r"no intact checkpoint in .*checkpoints"):
    _fit(ToyTask(), _config(num_steps=12), workdir, steps_per_epoch=100)


class _WideNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(32)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))[..., 0]


def test_checkpoint_of_another_model_is_refused_and_left_in_place(tmp_path):
  workdir = str(tmp_path)
  _fit(ToyTask(), _config(num_steps=4), workdir, steps_per_epoch=100)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  wide = ToyTask()
  wide.net = _WideNet()
  with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"different model \(.*\(16,\) float32 there and \(32,\) float32"):
    _fit(wide, _config(num_steps=8), workdir, steps_per_epoch=100)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, ckpt_lib.DAMAGED_DIR))


def test_nan_learning_rate_stops_before_any_nan_is_saved(tmp_path):
  """Loss and gradients stay finite with a NaN learning rate; the updated state does not. The guard sees
  it at the first step, and nothing non-finite reaches a checkpoint."""
  with pytest.raises(trainer.TrainingStopped, match="updated state at step 1"):
    _fit(ToyTask(), _config(num_steps=4, optim=ml_collections.ConfigDict(dict(
        learning_rate=float("nan"), weight_decay=1e-4, grad_clip_norm=0.0, lr_factor=0.5, lr_patience=5,
        stop_patience=10))), str(tmp_path), steps_per_epoch=100)
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints")) or not os.listdir(
      os.path.join(str(tmp_path), "checkpoints"))


def test_step_decay_with_adam_and_resume(tmp_path):
  """Semi-Hand-Object's setup (Adam, lr x decay_factor every decay_every_epochs) through the same trainer,
  continued exactly after a resume."""
  optim = ml_collections.ConfigDict(dict(name="adam", schedule="step", learning_rate=1e-2, weight_decay=0.0,
                                         grad_clip_norm=0.0, decay_every_epochs=2, decay_factor=0.7))
  workdir = str(tmp_path)
  _fit(ToyTask(), _config(num_epochs=3, optim=optim), workdir, steps_per_epoch=5)
  _, meta = _params(workdir, 15)
  assert meta["schedule"]["kind"] == "step" and meta["schedule"]["epochs"] == 3
  assert meta["schedule"]["learning_rate"] == pytest.approx(1e-2 * 0.7)
  _fit(ToyTask(), _config(num_epochs=4, optim=optim), workdir, steps_per_epoch=5)
  _, meta = _params(workdir, 20)
  assert meta["schedule"]["epochs"] == 4
  assert meta["schedule"]["learning_rate"] == pytest.approx(1e-2 * 0.7 ** 2)
  s = schedule.StepDecay(learning_rate=1.0, every_epochs=10, factor=0.7)
  actions = [s.update(1.0 / (i + 1)) for i in range(20)]
  assert actions[9] == actions[19] == "lr_cut" and actions.count("lr_cut") == 2
  assert s.learning_rate == pytest.approx(0.49) and not s.stopped
  assert schedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("model", ["toy", pytest.param("cohesiv", marks=pytest.mark.slow)])
def test_train_step_runs_without_host_transfers(model):
  """GPU/TPU path: once compiled, the jitted train step moves nothing between host and device (the state is
  donated and stays on device, batches arrive as global device arrays, the metrics stay on device until the
  loop reads them). `jax.transfer_guard('disallow')` fails on any implicit transfer; the guard is first shown
  to fire on a host batch."""
  mesh = pipeline.make_data_mesh()
  if model == "toy":
    task, config, host_batch = ToyTask(), _config(), _batch(0)
  else:
    from tests import test_cohesiv_train as helpers  # pylint: disable=g-import-not-at-top
    from handobj_jax.tasks import cohesiv_task  # pylint: disable=g-import-not-at-top
    config, host_batch = helpers._smoke_config(), helpers._batch(2)  # pylint: disable=protected-access
    task = cohesiv_task.CohesivTask(config)
  batch = next(pipeline.global_batches([host_batch], mesh))
  make_state, _ = trainer.init_state(task, config, mesh, batch)
  state = make_state()
  step = trainer.make_train_step(task, mesh)
  state, metrics = step(state, batch)  # Compiles.
  jax.block_until_ready(metrics)
  with jax.transfer_guard("disallow"):
    with pytest.raises(Exception, match="[Dd]isallowed"):
      step(state, host_batch)  # A NumPy batch is an implicit host-to-device transfer: the guard fires.
    for _ in range(2):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
  assert bool(jax.device_get(metrics["finite"]))
