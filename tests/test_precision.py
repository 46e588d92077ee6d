"""Mixed precision (`config.model.compute_dtype='bfloat16'`, handobj_jax/models/precision.py): every
convolution and matrix product of both networks runs in bfloat16 while parameters, optimiser state and
BatchNorm statistics stay float32, and a training step stays close to the float32 one on the smoke configs."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handobj_jax.models import precision
from handobj_jax.tasks import cohesiv_task
from handobj_jax.tasks import pose_task
from handobj_jax.train import trainer
from input_pipeline import pipeline
from input_pipeline import pose_data
from tests import test_cohesiv_train as cohesiv_helpers
from tests import test_pose_net as pose_helpers


def _matmul_dtypes(fn, *args) -> collections.Counter:
  """(primitive, output dtype) of every convolution and dot_general in the traced program, nested jaxprs too."""
  counts: collections.Counter = collections.Counter()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
        counts[(eqn.primitive.name, str(eqn.outvars[0].aval.dtype))] += 1
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            walk(inner if hasattr(inner, "eqns") else inner.jaxpr)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return counts


def _f32_leaves(tree) -> bool:
  return all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))


def _train_pair(make_task, config_of, batch, steps: int = 12):
  """`steps` train steps on one fixed batch (2-device mesh) for float32 and bfloat16 from the same initial
  state: {dtype: (task, initial state, final state, [metrics per step])}."""
  mesh = pipeline.make_data_mesh()
  gbatch = next(pipeline.global_batches([batch], mesh))
  out = {}
  for name in ("float32", "bfloat16"):
    config = config_of(name)
    task = make_task(config)
    make_state, _ = trainer.init_state(task, config, mesh, gbatch)
    state = make_state()
    before = jax.device_get(state)  # The step donates `state`.
    step = trainer.make_train_step(task, mesh)
    history = []
    for _ in range(steps):
      state, metrics = step(state, gbatch)
      history.append(jax.device_get(metrics))  # Blocks each step (see tests/conftest.py).
    out[name] = (task, before, jax.device_get(state), history)
  return out


def _check_close(runs, key: str = "loss") -> None:
  """bfloat16 keeps float32 master state and follows the float32 run: first loss within 2%, the mean of the
  last 3 within 6%, and both fall by > 20%. Measured on the COHESIV smoke net (12 steps, Adam 1e-3): 5.479 ->
  3.851 in float32, 5.497 -> 3.871 in bfloat16, single steps apart by up to 12%."""
  _, _, final16, h16 = runs["bfloat16"]
  _, _, _, h32 = runs["float32"]
  assert _f32_leaves(final16.params) and _f32_leaves(final16.opt_state) and _f32_leaves(final16.batch_stats)
  assert all(bool(h["finite"]) for h in h16 + h32)
  l16, l32 = (np.array([float(h[key]) for h in hist]) for hist in (h16, h32))
  assert abs(l16[0] - l32[0]) <= 0.02 * abs(l32[0]), (l16, l32)
  assert abs(l16[-3:].mean() - l32[-3:].mean()) <= 0.06 * abs(l32[-3:].mean()), (l16, l32)
  assert l16[-3:].mean() < 0.8 * l16[0] and l32[-3:].mean() < 0.8 * l32[0], (l16, l32)


def test_cohesiv_bf16_convs_and_training_close_to_float32():
  batch = cohesiv_helpers._batch(2)  # pylint: disable=protected-access
  runs = _train_pair(cohesiv_task.CohesivTask,
                     lambda d: cohesiv_helpers._smoke_config(  # pylint: disable=protected-access
                         **{"model.compute_dtype": d}),
                     batch)
  task16, state, _, _ = runs["bfloat16"]
  task32 = runs["float32"][0]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = jnp.asarray(batch["image"])
  bf16 = _matmul_dtypes(lambda v, x: precision.apply(task16.net, v, x, train=True, mutable=["batch_stats"],
                                                     dtype=jnp.bfloat16), variables, images)
  f32 = _matmul_dtypes(lambda v, x: task32.net.apply(v, x, train=True, mutable=["batch_stats"]), variables, images)
  assert sum(bf16.values()) == sum(f32.values()) > 10
  assert {d for (_, d) in bf16} == {"bfloat16"} and {d for (_, d) in f32} == {"float32"}
  _check_close(runs)


@pytest.mark.slow
def test_pose_bf16_network_and_training_close_to_float32():
  examples = pose_helpers._examples(2)  # pylint: disable=protected-access
  batch = {k: v for k, v in examples.items() if k in pose_data.TRAIN_FIELDS}
  runs = _train_pair(pose_task.HandObjectPoseTask,
                     lambda d: pose_helpers._smoke(  # pylint: disable=protected-access
                         **{"model.compute_dtype": d, "augment.enabled": False}),
                     batch)
  task16, state, _, _ = runs["bfloat16"]
  gbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  bf16 = _matmul_dtypes(lambda p, b: task16.loss_fn(p, state.batch_stats, b, jax.random.PRNGKey(1), False)[0],
                        state.params, gbatch)
  # The network's convolutions run in bfloat16; the float32 ones are the geometry after it (MANO, losses).
  assert bf16[("conv_general_dilated", "bfloat16")] > 10
  assert bf16[("conv_general_dilated", "float32")] == 0
  _check_close(runs)
