"""Training-step throughput and peak memory of COHESIV: this JAX model vs the same network in PyTorch.

Workload (one optimiser step, batch B = 10 at S x S, default S = 256, the paper's batch size):
  SE-ResNeXt-50 (32x4d) encoder -> 5-stage U-Net decoder (256, 128, 64, 32, 16) -> Z (F = 64)
  -> Q, K heads (conv3x3 -> ReLU -> conv3x3, A = 64) and the hand-centre head on stop-gradient(Z);
  loss = 10 x Smooth-L1(clip(Q(p)^T K, 0, 1), R) + 1 x contrastive embedding loss (Eq. 3) + centre MSE,
  N = 2 queries per image; AdamW (lr 1e-2, wd 1e-2). BatchNorm in training mode.
  (a) JAX: `tasks.cohesiv_task.CohesivTask` driven by the shared trainer's jitted step
      (`trainer.make_train_step`, state donated), on every local device of the default backend.
  (b) PyTorch: timm `seresnext50_32x4d` (features_only, random init) + a U-Net decoder and heads written
      here with the same layout, the same losses, `torch.optim.AdamW`; eager mode.
Inputs are random (images, responsibilities, masks, points): the cost does not depend on the values.

Each framework runs in its own subprocess so peak memories do not mix. Timing: `--warmup` steps (JAX:
includes compilation, done ahead of time with `jit(step).lower(...).compile()`; the worker's JSON also
reports that compile time and XLA's flop count of the step, which benchmarks/bench_all.py uses), then `--steps` timed steps, each blocked on (JAX: block_until_ready on the loss;
PyTorch is synchronous on CPU). Memory: peak resident set size of the worker process
(`resource.getrusage` ru_maxrss, whole process incl. the framework itself) and the peak RSS sampled every
5 ms by a thread during the timed steps.

Usage: python benchmarks/bench_train_step.py [--size 256|128] [--batch 10] [--steps 3] [--warmup 1]
                                            [--encoder seresnext50|resnet50] [--only jax|torch]
Other processes on the machine slow both columns alike; the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import types

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_HANDS = 2


class _RssSampler:
  """Peak RSS (bytes) of this process, sampled in a thread."""

  def __init__(self, interval_s: float = 0.005):
    import psutil  # pylint: disable=import-outside-toplevel
    self._proc = psutil.Process()
    self._interval = interval_s
    self.peak = self._proc.memory_info().rss
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._proc.memory_info().rss)
      time.sleep(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _inputs(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  person = rng.uniform(size=(batch, size, size)) < 0.2
  obj = (rng.uniform(size=(batch, size, size)) < 0.2) & ~person
  return {
      "image": rng.uniform(size=(batch, size, size, 3)).astype(np.float32),
      "responsibility": rng.uniform(size=(batch, NUM_HANDS, size, size)).astype(np.float32),
      "query_point": rng.uniform(0, size - 1, (batch, NUM_HANDS, 2)).astype(np.float32),
      "query_valid": np.ones((batch, NUM_HANDS), bool),
      "hand_box": np.tile(np.array([10, 10, 60, 70], np.float32), (batch, NUM_HANDS, 1)),
      "person_mask": person, "object_mask": obj, "background_mask": ~(person | obj),
  }


def _report(times: list[float], batch: int, sampled_peak: int, extra: dict) -> None:
  step = float(np.median(times))
  print(json.dumps({"step_s_median": step, "step_s_min": float(np.min(times)),
                    "examples_per_s": batch / step, "peak_rss_mib": resource.getrusage(
                        resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                    "train_peak_rss_mib": sampled_peak / 2**20, **extra}))


def compile_with_flops(jitted, *example_args) -> tuple[object, float, float]:
  """(the compiled executable, seconds to lower and compile it, XLA's flop count of one call).

  The flops are XLA's cost analysis of the optimised program (`compiled.cost_analysis()["flops"]`); it
  counts elementwise ops too, so it slightly exceeds the multiply-adds of the convolutions and matmuls."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*example_args).compile()
  seconds = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  return compiled, seconds, float((cost or {}).get("flops", float("nan")))


def jax_task(args):
  """`CohesivTask` of the `default` COHESIV config with `args.encoder` and batch `args.batch`, no flips."""
  from configs import cohesiv as cohesiv_configs  # pylint: disable=import-outside-toplevel
  from handobj_jax.tasks import cohesiv_task  # pylint: disable=import-outside-toplevel
  config = cohesiv_configs.get_config("default")
  config.unlock()
  config.model.encoder = args.encoder
  config.augment.flip_prob = 0.0
  config.batch_size = args.batch
  return cohesiv_task.CohesivTask(config)


def jax_setup(args):
  """(task, mesh, global batch, train state) of the `default` COHESIV config with `args.encoder`, batch
  `args.batch` of random `args.size`^2 inputs; the shared trainer's state. Needs tensorflow, clu and
  ml_collections (ImportError otherwise)."""
  from handobj_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from input_pipeline import pipeline  # pylint: disable=import-outside-toplevel

  task = jax_task(args)
  config = task.config
  mesh = pipeline.make_data_mesh()
  batch = next(pipeline.global_batches([_inputs(args.batch, args.size)], mesh))
  make, _ = trainer.init_state(task, config, mesh, batch)
  return task, mesh, batch, make()


def _worker_jax(args) -> None:
  sys.path.insert(0, _ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  from handobj_jax.tasks import cohesiv_task  # pylint: disable=import-outside-toplevel
  try:
    from handobj_jax.train import trainer  # pylint: disable=import-outside-toplevel
    task, mesh, batch, state = jax_setup(args)
  except ImportError as e:  # A machine without tensorflow / clu / ml_collections: same step, inline.
    print(f"note: {e}; using the inline train step", file=sys.stderr)
    return _worker_jax_inline(args, jax, cohesiv_task)
  step = trainer.make_train_step(task, mesh)
  _time_jax(args, jax, step, state, batch)


def _default_config_namespace():
  """configs/cohesiv.py's default model/loss as plain namespaces (for machines without ml_collections)."""
  ns = types.SimpleNamespace
  return ns(model=ns(encoder="seresnext50", decoder_channels=(256, 128, 64, 32, 16), embed_dim=64,
                     attn_dim=64, center_head=True, pretrained="", tiny_stem_width=8,
                     tiny_stage_planes=(4, 8, 16, 32)),
            loss=ns(attention_weight=10.0, embedding_weight=1.0, beta=0.5, eps=1e-3,
                    stop_gradient_means=False, center_weight=1.0, center_sigma=8.0,
                    attention_gradient="straight_through"),
            augment=ns(flip_prob=0.0), viz=ns(num_examples=2, tile=256))


def _worker_jax_inline(args, jax, cohesiv_task) -> None:
  """The trainer's step (value_and_grad of the task loss, AdamW, state donated) without its imports."""
  import optax  # pylint: disable=import-outside-toplevel
  config = _default_config_namespace()
  config.model.encoder = args.encoder
  task = cohesiv_task.CohesivTask(config)
  batch = jax.device_put(_inputs(args.batch, args.size))
  variables = jax.jit(task.init_variables)(jax.random.PRNGKey(0), batch)
  tx = optax.adamw(1e-2, weight_decay=1e-2)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  def step(state, batch):
    params, stats, opt_state = state
    (loss, (metrics, stats)), grads = jax.value_and_grad(
        lambda p: task.loss_fn(p, stats, batch, jax.random.PRNGKey(0), True), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), {**metrics, "loss": loss}

  _time_jax(args, jax, jax.jit(step, donate_argnums=0), state, batch, params_of=lambda s: s[0])


def _time_jax(args, jax, step, state, batch, params_of=lambda s: s.params) -> None:
  t0 = time.perf_counter()
  step, compile_s, flops = compile_with_flops(step, state, batch)
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
  warm = time.perf_counter() - t0
  times = []
  with _RssSampler() as sampler:
    for _ in range(args.steps):
      t = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - t)
  assert np.isfinite(float(metrics["loss"]))
  extra = {}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    extra["gpu_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  _report(times, args.batch, sampler.peak, {
      **extra, "warmup_s": warm, "compile_s": compile_s, "flops": flops,
      "device": f"{jax.devices()[0].platform} x{jax.device_count()}",
      "params": int(sum(x.size for x in jax.tree.leaves(params_of(state))))})


_TIMM_NAMES = {"seresnext50": "seresnext50_32x4d", "resnet50": "resnet50"}


def _torch_model(torch, timm, encoder: str):
  nn = torch.nn

  def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))

  def head(cin, hidden, out):
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out, 3, padding=1))

  class UNetCohesiv(nn.Module):
    """timm SE-ResNeXt-50 features -> U-Net decoder -> Z; Q/K heads; centre head on detached Z."""

    def __init__(self, decoder=(256, 128, 64, 32, 16), embed=64, attn=64):
      super().__init__()
      self.encoder = timm.create_model(_TIMM_NAMES[encoder], pretrained=False, features_only=True)
      skips = list(self.encoder.feature_info.channels())  # (64, 256, 512, 1024, 2048)
      blocks, cin = [], skips[4]
      for j, d in enumerate(decoder):
        skip = skips[3 - j] if j < 4 else 0
        blocks.append(nn.Sequential(conv_bn_relu(cin + skip, d), conv_bn_relu(d, d)))
        cin = d
      self.blocks = nn.ModuleList(blocks)
      self.final = nn.Conv2d(cin, embed, 3, padding=1)
      self.q, self.k, self.center = head(embed, attn, attn), head(embed, attn, attn), head(embed, attn, 1)

    def forward(self, x):
      feats = self.encoder(x)
      y = feats[4]
      for j, block in enumerate(self.blocks):
        y = nn.functional.interpolate(y, scale_factor=2, mode="nearest")
        if j < 4:
          y = torch.cat([y, feats[3 - j]], dim=1)
        y = block(y)
      z = self.final(y)
      return z, self.q(z), self.k(z), self.center(z.detach())[:, 0]

  return UNetCohesiv()


def _torch_loss(torch, z, q, k, center, b):
  f = torch.nn.functional
  bsz, _, h, w = q.shape
  pts = b["query_point"]
  grid = torch.stack([pts[..., 0] / (w - 1) * 2 - 1, pts[..., 1] / (h - 1) * 2 - 1], -1)[:, :, None]
  q_at = f.grid_sample(q, grid, mode="bilinear", align_corners=True)[..., 0]  # [B, A, N]
  raw = torch.einsum("ban,bahw->bnhw", q_at, k)
  l_att = f.smooth_l1_loss(raw.clamp(0, 1), b["responsibility"], beta=0.5)
  masks = torch.stack([b["person_mask"], b["object_mask"], b["background_mask"]], 1).float()
  counts = masks.sum((2, 3))
  means = torch.einsum("bkhw,bfhw->bkf", masks, z) / counts.clamp(min=1)[..., None]
  logits = torch.einsum("bkf,bfhw->bkhw", means, z)
  log_eps = torch.full_like(logits[:, :1], float(np.log(1e-3)))
  log_den = torch.logsumexp(torch.cat([logits, log_eps], 1), 1, keepdim=True)
  log_num = torch.logaddexp(logits, log_eps)
  per_image = ((log_den - log_num) * masks).sum((2, 3)) / counts.clamp(min=1)
  l_emb = per_image.mean(0).sum()
  ys = torch.arange(h, dtype=torch.float32, device=z.device)[:, None]
  xs = torch.arange(w, dtype=torch.float32, device=z.device)[None]
  box = b["hand_box"]
  cx, cy = (box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2
  g = torch.exp(-((xs - cx[..., None, None]) ** 2 + (ys - cy[..., None, None]) ** 2) / (2 * 8.0**2))
  l_center = ((center - g.amax(1)) ** 2).mean()
  return 10 * l_att + l_emb + l_center


def torch_setup(args, train: bool = True):
  """(torch, device, the PyTorch COHESIV of `args.encoder` in train or eval mode, the random batch of
  `_inputs` as tensors, the NCHW image, ImageNet mean, std)."""
  sys.path.insert(0, _ROOT)
  try:
    from tests import reference_helpers  # pylint: disable=import-outside-toplevel
    timm = reference_helpers.import_timm()  # Holds this machine's torchvision import workaround.
  except ImportError:  # No pytest here: a machine whose torchvision imports cleanly.
    import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model = _torch_model(torch, timm, args.encoder).train(train).to(dev)
  b = {k: torch.from_numpy(v).to(dev) for k, v in _inputs(args.batch, args.size).items()}
  x = b["image"].permute(0, 3, 1, 2).contiguous()
  mean = torch.tensor([0.485, 0.456, 0.406], device=dev)[None, :, None, None]
  std = torch.tensor([0.229, 0.224, 0.225], device=dev)[None, :, None, None]
  return torch, dev, model, b, x, mean, std


def _worker_torch(args) -> None:
  torch, dev, model, b, x, mean, std = torch_setup(args)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)

  def step():
    opt.zero_grad(set_to_none=True)
    z, q, k, center = model((x - mean) / std)
    loss = _torch_loss(torch, z, q, k, center, b)
    loss.backward()
    opt.step()
    return float(loss)

  t0 = time.perf_counter()
  for _ in range(args.warmup):
    step()
  warm = time.perf_counter() - t0
  times = []
  with _RssSampler() as sampler:
    for _ in range(args.steps):
      t = time.perf_counter()
      loss = step()
      times.append(time.perf_counter() - t)
  assert np.isfinite(loss)
  extra = {}
  if dev.type == "cuda":
    extra["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
  _report(times, args.batch, sampler.peak, {
      **extra, "warmup_s": warm,
      "device": "cuda" if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
      "params": int(sum(p.numel() for p in model.parameters()))})


def _run_worker(framework: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--size", str(args.size),
         "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--encoder", args.encoder]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{framework} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=10)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--encoder", choices=tuple(_TIMM_NAMES), default="seresnext50",
                      help="seresnext50 (paper) or resnet50 (Table 4 ablation; no grouped convolutions)")
  parser.add_argument("--worker", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
  parser.add_argument("--only", choices=("jax", "torch"), default=None, help="run one framework")
  args = parser.parse_args()
  if args.worker == "jax":
    return _worker_jax(args)
  if args.worker == "torch":
    return _worker_torch(args)
  load0 = os.getloadavg()
  results = {fw: _run_worker(fw, args) for fw in ("jax", "torch") if args.only in (None, fw)}
  load1 = os.getloadavg()
  print(f"COHESIV train step ({_TIMM_NAMES[args.encoder]} U-Net + Q/K/centre heads, AdamW), batch {args.batch}, "
        f"{args.size}x{args.size}, median of {args.steps} steps after {args.warmup} warm-up; "
        f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} -> {load1[0]:.1f}")
  header = f"| {'':<28} | " + " | ".join(f"{fw:>16}" for fw in results)
  print(header + (" | JAX / PyTorch |" if len(results) == 2 else " |"))
  print("|" + "-" * 30 + "|" + "|".join("-" * 18 for _ in results) + ("|---------------|" if len(results) == 2
                                                                      else "|"))
  rows = [("device", "device", "{}"), ("parameters", "params", "{:,}"),
          ("warm-up (compile) s", "warmup_s", "{:.1f}"), ("step s (median)", "step_s_median", "{:.2f}"),
          ("examples/s", "examples_per_s", "{:.2f}"), ("peak RSS MiB (process)", "peak_rss_mib", "{:.0f}"),
          ("peak RSS MiB (timed steps)", "train_peak_rss_mib", "{:.0f}")]
  if all("gpu_peak_mib" in r for r in results.values()):
    rows.append(("peak accelerator MiB", "gpu_peak_mib", "{:.0f}"))
  for title, key, fmt in rows:
    cells = [fmt.format(results[fw][key]) for fw in results]
    ratio = ""
    if len(results) == 2 and isinstance(results["jax"][key], float):
      ratio = f"{results['jax'][key] / results['torch'][key]:.2f}"
    print(f"| {title:<28} | " + " | ".join(f"{c:>16}" for c in cells) +
          (f" | {ratio:>13} |" if len(results) == 2 else " |"))


if __name__ == "__main__":
  main()
