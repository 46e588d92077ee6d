"""COHESIV training: the task's loss wiring, masks, centre head, visualisation; the `train` job end to end
(one step, kill-and-resume parity through the real tf.data pipeline, inference statistics); configs.

Pseudo-labelled examples are made here in the format of `input_pipeline.cohesiv_examples` (FEATURES in its
docstring) from the synthetic world (`generate_clip` + `clip_responsibility` + `pseudo_labels`) and served
by a minimal in-memory builder, so these tests do not depend on the pseudo-labelling job;
`test_smoke_config_through_the_job` runs the real one.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import cohesiv as cohesiv_configs
from handobj_jax import jobs
from handobj_jax import viz
from handobj_jax.geometry import responsibility as resp_lib
from handobj_jax.jobs import train as train_job
from handobj_jax.tasks import cohesiv_task
from handobj_jax.train import trainer
from input_pipeline import pipeline
from input_pipeline import synthetic_world
from memory_builder import MemoryBuilder

SIZE = 64


# One compiled program instead of the op-by-op eager fits (minutes on 2 cores).
_clip_responsibility = jax.jit(resp_lib.clip_responsibility, static_argnames=("temperature",))


def _examples(num_clips: int, seed0: int) -> dict[str, np.ndarray]:
  """Pseudo-labelled middle frames of `num_clips` synthetic clips, in the stored format."""
  world = synthetic_world.WorldConfig(height=SIZE, width=SIZE)
  mid = list(synthetic_world.MIDDLE_FRAMES)
  fields = {k: [] for k in ("image", "responsibility", "query_point", "query_valid", "hand_box",
                            "person_mask", "object_mask", "background_mask", "clip_id", "frame")}
  for c in range(num_clips):
    clip = synthetic_world.generate_clip(world, seed0 + c)
    m = len(mid)
    r, ok = _clip_responsibility(
        clip["flow"], np.ones((m, len(synthetic_world.OFFSETS)), bool), clip["hand_vertices"][mid], None,
        np.broadcast_to(clip["hand_valid"], (m, world.max_hands)), temperature=2.0)
    labels = jax.device_get(resp_lib.pseudo_labels(r, clip["person_mask"][mid], 0.5))
    ok = np.asarray(ok).any(axis=1)
    for i, t in enumerate(mid):
      fields["image"].append(clip["frames"][t])
      fields["responsibility"].append(np.round(labels["hand_resp"][i] * 255).astype(np.uint8))
      fields["query_point"].append(clip["query_point"][t].astype(np.float32))
      fields["query_valid"].append(ok[i])
      fields["hand_box"].append(clip["hand_box"][t].astype(np.float32))
      for k in ("person_mask", "object_mask", "background_mask"):
        fields[k].append(labels[k][i])
      fields["clip_id"].append(np.int64(c))
      fields["frame"].append(np.int32(t))
  return {k: np.stack(v) for k, v in fields.items()}


_CACHE = {}


def _data():
  if "data" not in _CACHE:
    _CACHE["data"] = {"train": _examples(4, 0), "validation": _examples(1, 1000)}
  return _CACHE["data"]


def _smoke_config(**overrides):
  config = cohesiv_configs.get_config("smoke")
  config.unlock()
  for k, v in overrides.items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return config


def _global(batch):
  mesh = pipeline.make_data_mesh()
  return next(pipeline.global_batches([batch], mesh)), mesh


def _batch(n=2, split="train", start=0):
  d = _data()[split]
  b = {k: d[k][start:start + n] for k in train_job.TRAIN_FIELDS}
  b["image"] = b["image"].astype(np.float32) / 255.0
  b["responsibility"] = b["responsibility"].astype(np.float32) / 255.0
  return b


def _loss(task, variables, batch, train=False):
  """Jitted task loss (eager Flax is slow on the shared CPU)."""
  fn = jax.jit(task.loss_fn, static_argnums=(4,))
  return fn(variables["params"], variables["batch_stats"], batch, jax.random.PRNGKey(1), train)


def _init(task, batch):
  return jax.jit(task.init_variables)(jax.random.PRNGKey(0), batch)


# ---- Task ----------------------------------------------------------------------------------------


def test_responsibility_term_matches_numpy_reference():
  """The task's responsibility metric = NumPy float64 Smooth-L1(clip(Q(p)^T K, 0, 1) - R) over valid
  queries, with Q read at (x, y) = (column, row) of integer query points (anisotropic: x != y)."""
  task = cohesiv_task.CohesivTask(_smoke_config())
  b = _batch(2)
  b["query_point"] = np.array([[[40.0, 12.0], [7.0, 50.0]], [[21.0, 33.0], [60.0, 3.0]]], np.float32)
  b["query_valid"] = np.array([[True, False], [True, True]])
  variables = _init(task, b)
  loss, (metrics, _) = _loss(task, variables, b)
  forward = jax.jit(lambda v, x: task.net.apply(v, x, train=False))
  out = jax.device_get(forward(variables, jnp.asarray(b["image"])))
  q, k = out["q"].astype(np.float64), out["k"].astype(np.float64)
  num = den = 0.0
  for i in range(2):
    for n in range(2):
      if not b["query_valid"][i, n]:
        continue
      x, y = b["query_point"][i, n].astype(int)
      pred = np.clip(np.einsum("a,hwa->hw", q[i, y, x], k[i]), 0, 1)
      d = np.abs(pred - b["responsibility"][i, n])
      num += np.sum(np.where(d < 0.5, 0.5 * d * d / 0.5, d - 0.25))
      den += d.size
  np.testing.assert_allclose(float(metrics["responsibility_loss"]), num / den, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      float(loss), 10.0 * num / den + float(metrics["embedding_loss"]), rtol=1e-5)


def test_padding_mask_excludes_examples():
  task = cohesiv_task.CohesivTask(_smoke_config())
  real = _batch(2)
  variables = _init(task, real)
  junk = _batch(2, start=5)
  junk["image"] = np.random.default_rng(0).uniform(size=junk["image"].shape).astype(np.float32)
  padded = {k: np.concatenate([real[k], junk[k]]) for k in real}
  padded["_mask"] = np.array([True, True, False, False])
  _, (m_real, _) = _loss(task, variables, real)
  _, (m_pad, _) = _loss(task, variables, padded)
  for key in ("loss", "responsibility_loss", "embedding_loss", "center_loss"):
    np.testing.assert_allclose(float(m_pad[key]), float(m_real[key]), rtol=1e-5, atol=1e-7, err_msg=key)
  padded["_mask"] = np.array([True, True, True, False])
  _, (m_other, _) = _loss(task, variables, padded)
  assert abs(float(m_other["loss"]) - float(m_real["loss"])) > 1e-4  # The mask is what excluded them.


def _grads(task, variables, batch):
  def f(params):
    return task.loss_fn(params, variables["batch_stats"], batch, jax.random.PRNGKey(1), True)[0]
  return jax.jit(jax.value_and_grad(f))(variables["params"])


@pytest.mark.slow
def test_center_head_trains_only_itself_and_leaves_the_loss_value():
  b = _batch(2)
  with_center = cohesiv_task.CohesivTask(_smoke_config(**{"loss.center_weight": 1.0}))
  no_center = cohesiv_task.CohesivTask(_smoke_config(**{"loss.center_weight": 0.0}))
  variables = _init(with_center, b)
  loss1, g1 = _grads(with_center, variables, b)
  loss0, g0 = _grads(no_center, variables, b)
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
  for name in g1:
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(g1[name]),
                                                              jax.tree.leaves(g0[name])))
    if name == "center_head":
      assert diff > 1e-6 and all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(g0[name]))
    else:
      assert diff <= 1e-6 * max(1.0, max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0[name]))), name


@pytest.mark.parametrize("variant,zero_grad_head", [("attention_only", None), ("embeddings_only", "q_head")])
def test_ablation_weights(variant, zero_grad_head):
  config = cohesiv_configs.get_config(variant)
  smoke = _smoke_config()
  smoke.loss.attention_weight = config.loss.attention_weight
  smoke.loss.embedding_weight = config.loss.embedding_weight
  task = cohesiv_task.CohesivTask(smoke)
  b = _batch(2)
  variables = _init(task, b)
  loss, (m, _) = _loss(task, variables, b)
  expect = (10.0 * float(m["responsibility_loss"]) if variant == "attention_only"
            else float(m["embedding_loss"]))
  np.testing.assert_allclose(float(loss), expect, rtol=1e-6)
  if zero_grad_head:
    _, g = _grads(task, variables, b)
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(g[zero_grad_head]))


@pytest.mark.slow
def test_overfits_one_batch_on_two_devices():
  config = _smoke_config(**{"optim.learning_rate": 3e-3})
  task = cohesiv_task.CohesivTask(config)
  batch, mesh = _global(_batch(2))
  assert len(batch["image"].sharding.device_set) == 2 == jax.device_count()
  assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {1}
  make, _ = trainer.init_state(task, config, mesh, batch)
  state = make()
  step = trainer.make_train_step(task, mesh)
  losses = []
  for _ in range(40):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))  # Blocks each step (tests/conftest.py).
  assert np.all(np.isfinite(losses))
  assert min(losses[-5:]) < 0.5 * losses[0], losses


def test_visualize_panels():
  config = _smoke_config()
  task = cohesiv_task.CohesivTask(config)
  b = _batch(3)
  b["_mask"] = np.array([True, False, True])
  variables = _init(task, b)
  images = task.visualize(jax.device_get(variables), b)
  assert sorted(images) == ["cohesiv_0", "cohesiv_1"]
  for i, name in zip((0, 2), sorted(images)):
    img = images[name]
    rows = max(1, int(b["query_valid"][i].sum()))
    assert img.dtype == np.uint8 and img.shape == (rows * SIZE, 6 * SIZE, 3)
  # The attention tile is the viridis colouring (tests/test_viz.py) of the clamped attention.
  out = jax.device_get(task._forward(variables, jnp.asarray(b["image"][:1]), jnp.asarray(b["query_point"][:1])))
  att = np.clip(out["attention"][0, int(np.flatnonzero(b["query_valid"][0])[0])], 0, 1)
  np.testing.assert_array_equal(images["cohesiv_0"][20:SIZE, SIZE:2 * SIZE], viz.viridis(att)[20:])


# ---- Job -----------------------------------------------------------------------------------------


def _run_job(config, workdir):
  return train_job.train_and_evaluate(config, str(workdir), MemoryBuilder(_data()))


@pytest.mark.slow
def test_job_one_step_writes_checkpoint_images_and_stats(tmp_path):
  config = _smoke_config(**{"num_steps": 2})
  out = _run_job(config, tmp_path)
  assert out["fit"].step == 2 and out["steps_per_epoch"] == 16 // 2
  assert np.isfinite(out["val_metrics"]["loss"])
  assert os.listdir(tmp_path / "checkpoints")
  stats = train_job.load_inference_stats(str(tmp_path))
  f = config.model.embed_dim
  for name in ("person", "object", "background"):
    assert stats[f"{name}_embedding"].shape == (f,) and np.all(np.isfinite(stats[f"{name}_embedding"]))
  assert stats["num_images"] >= config.inference_stats.min_images
  assert stats["pixel_counts"][0] >= config.inference_stats.min_pixels
  assert stats["pixel_counts"][1] >= config.inference_stats.min_pixels
  # Independent check: float64 NumPy means of Z over the first `num_images` training images.
  task = cohesiv_task.CohesivTask(config)
  b, mesh = _global(_batch(2))
  state, step = train_job.restore_state(task, config, str(tmp_path), mesh, b)
  assert int(stats["checkpoint_step"]) == step
  n = int(stats["num_images"])
  d = _data()["train"]
  embed = jax.jit(lambda v, x: task.net.apply(v, x, train=False)["z"])
  z = jax.device_get(embed({"params": state.params, "batch_stats": state.batch_stats},
                           jnp.asarray(d["image"][:n], jnp.float32) / 255.0))
  for k, name in enumerate(train_job.STATS_ORDER):
    mask = d[f"{name}_mask"][:n]
    assert int(stats["pixel_counts"][k]) == int(mask.sum())
    np.testing.assert_allclose(stats[f"{name}_embedding"], z.astype(np.float64)[mask].mean(0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_job_kill_and_resume_matches_uninterrupted(tmp_path):
  """Through the job and the real tf.data pipeline (seeded shuffle, replay with start_step)."""
  full = tmp_path / "full"
  _run_job(_smoke_config(num_steps=6, **{"checkpoint.every_steps": 100}), full)
  part = tmp_path / "part"
  _run_job(_smoke_config(num_steps=3, **{"checkpoint.every_steps": 100}), part)  # "killed" after 3
  result = _run_job(_smoke_config(num_steps=6, **{"checkpoint.every_steps": 100}), part)
  assert result["fit"].step == 6
  config = _smoke_config()
  task = cohesiv_task.CohesivTask(config)
  b, mesh = _global(_batch(2))
  a, _ = train_job.restore_state(task, config, str(full), mesh, b, best=False)
  c, _ = train_job.restore_state(task, config, str(part), mesh, b, best=False)
  assert int(a.step) == int(c.step) == 6
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a.params, c.params))
  assert max(diffs) <= 1e-6
  # A resume that replayed the wrong batches would differ: check the runs really moved the weights.
  init = jax.jit(task.init_variables)(jax.random.split(jax.random.PRNGKey(config.seed))[0], b)
  moved = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a.params,
                                       init["params"]))
  assert max(moved) > 1e-3


def test_batch_size_must_divide_devices(tmp_path):
  with pytest.raises(jobs.JobInputError, match="not divisible by the 2 devices"):
    _run_job(_smoke_config(batch_size=3), tmp_path)


@pytest.mark.parametrize("variant", ["epic_kitchens", "doh100", "ho3d"])
def test_real_dataset_variants_ask_for_manual_dir(variant):
  config = cohesiv_configs.get_config(variant)
  assert config.data.name == variant
  with pytest.raises(jobs.JobInputError, match="manual_dir"):
    train_job.open_pseudolabelled(config)


def test_config_variants():
  for v in cohesiv_configs.VARIANTS:
    c = cohesiv_configs.get_config(v)
    assert c.job == "train" and c.batch_size % 2 == 0
  assert cohesiv_configs.get_config("resnet").model.encoder == "resnet50"
  d = cohesiv_configs.get_config()
  assert (d.model.encoder, d.batch_size, d.optim.learning_rate) == ("seresnext50", 10, 1e-2)
  assert (d.loss.attention_weight, d.loss.embedding_weight) == (10.0, 1.0)
  with pytest.raises(ValueError, match="unknown config variant"):
    cohesiv_configs.get_config("nope")
  assert jobs.get_job("train") is train_job.run


@pytest.mark.slow
def test_smoke_config_through_the_job(tmp_path):
  """`python -m handobj_jax.main --config=configs/cohesiv.py:smoke` minus flag parsing: builds the tiny
  synthetic source and its pseudo-labels under a fresh data dir, trains 2 steps, writes the stats."""
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  config = _smoke_config(**{"data.data_dir": str(data_dir)})
  out = jobs.get_job(config.job)(config, str(tmp_path / "work"))
  assert out["fit"].step == 2 and np.isfinite(out["val_metrics"]["loss"])
  assert (tmp_path / "work" / train_job.STATS_FILE).exists()
  assert list((data_dir / "cohesiv_pseudo").iterdir())


def test_flip_batch_matches_the_pseudo_label_modules_flip():
  """JAX in-step flip == `cohesiv_examples.flip_example` (tf) on every field, flipped and not."""
  from input_pipeline import cohesiv_examples  # pylint: disable=import-outside-toplevel
  b = _batch(4)
  b["hand_box"][1, 0] = 0.0
  b["query_point"][1, 0] = 0.0
  flips = np.array([True, False, True, True])
  got = jax.device_get(jax.jit(cohesiv_task.flip_batch)(b, jnp.asarray(flips)))
  for i in range(4):
    ex = {k: tf.constant(v[i]) for k, v in b.items()}
    ex["flow_next"] = tf.zeros((SIZE, SIZE, 2), tf.float16)
    ex["gt_hand_mask"] = ex["gt_object_mask"] = tf.zeros((2, SIZE, SIZE), tf.bool)
    ref = cohesiv_examples.flip_example(ex) if flips[i] else ex
    for k in b:
      np.testing.assert_allclose(np.asarray(got[k][i], np.float64), np.asarray(ref[k], np.float64),
                                 rtol=0, atol=1e-6, err_msg=f"{k} example {i}")


def test_straight_through_clamp_revives_all_negative_attention():
  """q^T K < 0 everywhere: the hard clamp has no gradient (dead attention), the straight-through one
  pulls pixels with a positive target up; both report the same loss value."""
  b = _batch(2)
  h = w = SIZE
  out = {"q": -jnp.ones((2, h, w, 4)), "z": jnp.asarray(np.random.default_rng(0).normal(size=(2, h, w, 3)),
                                                            jnp.float32)}

  def loss_of(k, mode):
    task = cohesiv_task.CohesivTask(_smoke_config(**{"loss.attention_gradient": mode,
                                                     "model.center_head": False}))
    return task._loss_and_metrics({**out, "k": k}, b)[0]

  k = jnp.ones((2, h, w, 4))
  values, grads = {}, {}
  for mode in ("clamp", "straight_through"):
    values[mode], grads[mode] = jax.jit(jax.value_and_grad(loss_of), static_argnums=1)(k, mode)
  np.testing.assert_allclose(float(values["clamp"]), float(values["straight_through"]), rtol=1e-6)
  assert float(jnp.max(jnp.abs(grads["clamp"]))) == 0.0
  g = np.asarray(grads["straight_through"])[..., 0]
  positive = (b["responsibility"] * b["query_valid"][:, :, None, None]).max(1) > 0.05
  assert np.all(g[positive] > 0)  # Descent lowers k there, raising q^T K = -sum(k) towards the target.
  assert np.all(g[b["responsibility"].max(1) == 0] == 0)  # Target 0 and q^T K < 0: no cost, no push.
