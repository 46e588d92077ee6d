"""All of the performance issue's measurements in one command, each ratio measured in this one run.

  python benchmarks/bench_all.py [--preset smoke|full] [--only SECTION[,SECTION...]]

Prints one table per section (markdown), each with the load average before -> after its measurements:
  peaks          this machine's float32 peaks: a large `jnp.dot` and a dense 3x3 `lax.conv_general_dilated`
                 (GFLOP/s = XLA's flop count / best time), the reference for the GFLOP/s table.
  responsibility clip responsibility frames/s: jitted JAX vs the NumPy + OpenCV loop
                 (benchmarks/bench_responsibility.py's workload and reference).
  train          COHESIV train step examples/s: JAX (the shared trainer's jitted step) vs the same network in
                 PyTorch eager (benchmarks/bench_train_step.py, run as its own per-framework subprocesses).
  inference      COHESIV inference examples/s: the evaluate/predict jobs' jitted forward (Z, attention,
                 centre at the batch's query points) vs the PyTorch network of bench_train_step in eval mode
                 under `torch.no_grad()`, same architectures and sizes as `train`.
  latency        the same inference at one large image (batch 1): milliseconds per call.
  pose           the Semi-Hand-Object pose network's train step (benchmarks/bench_pose_step.py).
  tfdata         examples/s of the COHESIV training input (the `train` job's tf.data pipeline over the
                 pseudo-labelled synthetic build, made in a temporary directory: its build time is shown) vs
                 the examples/s the JAX train step consumes at that image size and batch; > 1 = the input
                 keeps up. Both are measured alone: on a CPU, training runs them on the same cores.
Then two tables derived from the rows above (always printed):
  gflops         each JAX step's achieved GFLOP/s (XLA's cost analysis of the compiled step / its median
                 time) as a fraction of the measured matmul and convolution peaks; PyTorch rows use the JAX
                 step's flop count for the same network.
  memory         compile time (lower + compile, ahead of time) and peak RSS of every JAX row, with PyTorch's
                 peak RSS for the same workload.

Every measurement runs in its own subprocess (`--worker`), so peak RSS is per row and the frameworks do not
share thread pools. Ratios are JAX over the other column, oriented so that > 1 means JAX is faster (for
latency: PyTorch ms / JAX ms).

Presets:
  smoke  tiny sizes, to run the command end to end (tests/test_bench_all.py): ResNet-50 only at 64^2, batch
         2, one timed step; latency at 64^2; pose `smoke`; the `tiny` synthetic build. The numbers are not
         meaningful. Expected time: not measured on an idle machine yet; most of it is XLA compiling ResNet-50
         and the pose network.
  full   the issue's sizes: SE-ResNeXt-50 and ResNet-50 at 128^2 and 256^2 (batch 10), latency at 512^2
         batch 1, pose `cpu` and `default` (batch 2 on a CPU), the `small` build (128^2, batch 10).
         Expected time on a 2-core CPU: 315 s for `--only peaks,responsibility,inference,latency,tfdata`
         (benchmarks/RESULTS.md); the train and pose sections add several minutes per row (not timed yet).
Other processes slow every column alike only if they run throughout; compare ratios, and the load averages.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, _ROOT)
sys.path.insert(0, _HERE)  # The other benchmark scripts, also when this file is not run as a script.

import bench_train_step as bts  # pylint: disable=g-import-not-at-top,wrong-import-position

SECTIONS = ("peaks", "responsibility", "train", "inference", "latency", "pose", "tfdata")

PRESETS = {
    "smoke": dict(
        matmul_n=1024, conv_shape=(2, 32, 32, 128), peak_repeats=3,
        resp_sizes=(64,), resp_batch=2, resp_repeats=3,
        encoders=("resnet50",), sizes=(64,), batch=2, steps=1, warmup=1,
        infer_steps=3, latency_size=64, latency_steps=3,
        pose_variants=("smoke",), pose_steps=2, pose_cpu_batch={},
        data_variant="smoke", data_batches=8),
    "full": dict(
        matmul_n=4096, conv_shape=(8, 64, 64, 256), peak_repeats=5,
        resp_sizes=(128, 256), resp_batch=8, resp_repeats=20,
        encoders=("seresnext50", "resnet50"), sizes=(128, 256), batch=10, steps=3, warmup=1,
        infer_steps=5, latency_size=512, latency_steps=5,
        # bench_pose_step's rule: the paper-sized model at a small batch on a CPU.
        pose_variants=("cpu", "default"), pose_steps=5, pose_cpu_batch={"default": 2},
        data_variant="cpu", data_batches=64),
}


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------------
# Workers: each prints one JSON line.


def _worker_peaks(spec: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def best(compiled, *args):
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(spec["repeats"]):
      t = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t)
    return min(times)

  rng = np.random.default_rng(0)
  n = spec["matmul_n"]
  a = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
  b = jnp.asarray(rng.normal(size=(n, n)).astype(np.float32))
  mm, _, mm_flops = bts.compile_with_flops(jax.jit(jnp.dot), a, b)
  mm_s = best(mm, a, b)
  bsz, size, _, c = spec["conv_shape"]
  x = jnp.asarray(rng.normal(size=(bsz, size, size, c)).astype(np.float32))
  k = jnp.asarray(rng.normal(size=(3, 3, c, c)).astype(np.float32))
  conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
  cv, _, cv_flops = bts.compile_with_flops(conv, x, k)
  cv_s = best(cv, x, k)
  return {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
          "matmul": {"flops": mm_flops, "s": mm_s}, "conv": {"flops": cv_flops, "s": cv_s}}


def _worker_responsibility(spec: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import bench_responsibility as br  # pylint: disable=import-outside-toplevel

  batch, size, repeats = spec["batch"], spec["size"], spec["repeats"]
  flow, flow_valid, verts, hand_valid = br.make_inputs(np.random.default_rng(0), batch, size)
  dev = [jnp.asarray(x) for x in (flow, flow_valid, verts, hand_valid)]
  fn, compile_s, flops = bts.compile_with_flops(br.jax_responsibility_fn(), *dev)
  r_jax = np.asarray(jax.block_until_ready(fn(*dev)))
  jax_min, jax_med = br.time_fn(lambda: jax.block_until_ready(fn(*dev)), repeats)
  rss_jax = _peak_rss_mib()
  r_np = br.numpy_clip_responsibility(flow, flow_valid, verts, hand_valid)
  np_min, np_med = br.time_fn(lambda: br.numpy_clip_responsibility(flow, flow_valid, verts, hand_valid),
                              max(2, repeats // 3))
  return {"jax_fps_best": batch / jax_min, "jax_fps_median": batch / jax_med, "np_fps_best": batch / np_min,
          "np_fps_median": batch / np_med, "max_abs_diff": float(np.abs(r_jax - r_np).max()),
          "step_s_median": jax_med, "compile_s": compile_s, "flops": flops, "peak_rss_mib": rss_jax}


def _time_calls(call, warmup: int, steps: int) -> tuple[list[float], int]:
  for _ in range(warmup):
    call()
  times = []
  with bts._RssSampler() as sampler:  # pylint: disable=protected-access
    for _ in range(steps):
      t = time.perf_counter()
      call()
      times.append(time.perf_counter() - t)
  return times, sampler.peak


def _worker_infer_jax(spec: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from handobj_jax.jobs import evaluate  # pylint: disable=import-outside-toplevel

  args = types.SimpleNamespace(**spec)
  task = bts.jax_task(args)
  inputs = bts._inputs(args.batch, args.size)  # pylint: disable=protected-access
  images, points = jax.device_put(inputs["image"]), jax.device_put(inputs["query_point"])
  variables = jax.jit(task.init_variables)(jax.random.PRNGKey(0), {"image": images})
  # The evaluate / predict jobs' forward (LoadedModel.forward without its copy to NumPy).
  model = evaluate.LoadedModel(config=task.config, net=task.net, variables=variables, step=0, task=task,
                               state=None, mesh=None)
  fwd, compile_s, flops = bts.compile_with_flops(model.jitted_forward, variables, images, points)
  times, sampled = _time_calls(lambda: jax.block_until_ready(fwd(variables, images, points)), args.warmup,
                               args.steps)
  step = float(np.median(times))
  return {"step_s_median": step, "examples_per_s": args.batch / step, "compile_s": compile_s, "flops": flops,
          "peak_rss_mib": _peak_rss_mib(), "train_peak_rss_mib": sampled / 2**20}


def _worker_infer_torch(spec: dict) -> dict:
  args = types.SimpleNamespace(**spec)
  torch, _, model, b, x, mean, std = bts.torch_setup(args, train=False)
  f = torch.nn.functional

  def infer():
    with torch.no_grad():
      _, q, k, center = model((x - mean) / std)
      h, w = q.shape[2:]
      pts = b["query_point"]
      grid = torch.stack([pts[..., 0] / (w - 1) * 2 - 1, pts[..., 1] / (h - 1) * 2 - 1], -1)[:, :, None]
      q_at = f.grid_sample(q, grid, mode="bilinear", align_corners=True)[..., 0]  # [B, A, N]
      attention = torch.einsum("ban,bahw->bnhw", q_at, k).clamp(0, 1)
      if attention.is_cuda:
        torch.cuda.synchronize()
    return attention, center

  times, sampled = _time_calls(infer, args.warmup, args.steps)
  step = float(np.median(times))
  return {"step_s_median": step, "examples_per_s": args.batch / step, "peak_rss_mib": _peak_rss_mib(),
          "train_peak_rss_mib": sampled / 2**20}


def _worker_pose(spec: dict) -> dict:
  import bench_pose_step  # pylint: disable=import-outside-toplevel
  return bench_pose_step.run_variant(spec["variant"], spec["steps"], spec["batch"])


def _worker_tfdata(spec: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from configs import cohesiv as cohesiv_configs  # pylint: disable=import-outside-toplevel
  from handobj_jax.jobs import train as train_job  # pylint: disable=import-outside-toplevel
  from input_pipeline import pipeline  # pylint: disable=import-outside-toplevel

  config = cohesiv_configs.get_config(spec["variant"])
  config.unlock()
  config.batch_size = spec["batch"]
  with tempfile.TemporaryDirectory() as data_dir:
    config.data.data_dir = data_dir
    t0 = time.perf_counter()
    builder = train_job.open_pseudolabelled(config)
    build_s = time.perf_counter() - t0
    mesh = pipeline.make_data_mesh()
    host_bs = pipeline.host_batch_size(config.batch_size, mesh)
    # As the train job's `train_batches(0)`.
    ds = pipeline.load_split(builder, "train", seed=config.seed)
    ds = pipeline.train_dataset(ds, batch_size=host_bs, seed=config.seed, preprocess=train_job.train_preprocess,
                                shuffle_buffer=config.data.shuffle_buffer, cache=config.data.cache)
    batches = pipeline.global_batches(ds, mesh, source=train_job.data_source(builder, "train"))
    jax.block_until_ready(next(batches))  # Opens the files, starts the prefetch threads.
    t0 = time.perf_counter()
    for _ in range(spec["batches"]):
      jax.block_until_ready(next(batches))
    elapsed = time.perf_counter() - t0
    num_train = builder.info.splits["train"].num_examples
    size = int(builder.info.features["image"].shape[0])
  return {"build": config.data.builder_config, "size": size, "num_train": num_train, "build_s": build_s,
          "cache": bool(config.data.cache), "examples_per_s": spec["batches"] * config.batch_size / elapsed,
          "peak_rss_mib": _peak_rss_mib()}


_WORKERS = {"peaks": _worker_peaks, "responsibility": _worker_responsibility, "infer_jax": _worker_infer_jax,
            "infer_torch": _worker_infer_torch, "pose": _worker_pose, "tfdata": _worker_tfdata}


def _run(worker: str, spec: dict) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--spec", json.dumps(spec)]
  return _json_of(subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT, check=False), worker)


def _run_train(framework: str, encoder: str, size: int, p: dict) -> dict:
  args = argparse.Namespace(size=size, batch=p["batch"], steps=p["steps"], warmup=p["warmup"], encoder=encoder)
  return bts._run_worker(framework, args)  # pylint: disable=protected-access


def _json_of(proc: subprocess.CompletedProcess, name: str) -> dict:
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------------
# Tables.


def _table(title: str, load: tuple[float, float] | None, header: list[str], rows: list[list]) -> None:
  """Prints a markdown table under `title` and the 1-min load average: before -> after its measurements,
  or now (load None: tables derived from earlier sections)."""
  when = f"{load[0]:.2f} -> {load[1]:.2f}" if load else f"{os.getloadavg()[0]:.2f} now"
  print(f"\n### {title}\nload average {when}, {os.cpu_count()} CPUs\n")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
  sys.stdout.flush()


class _Load:
  """Load average (1 min) before and after a section."""

  def __enter__(self):
    self.before = os.getloadavg()[0]
    return self

  def __exit__(self, *exc):
    self.after = os.getloadavg()[0]

  @property
  def pair(self) -> tuple[float, float]:
    return self.before, self.after


def _f(x: float, digits: int = 2) -> str:
  return f"{x:.{digits}f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(PRESETS), default="full")
  parser.add_argument("--only", default=",".join(SECTIONS),
                      help="comma list of sections (peaks always runs: the GFLOP/s table needs it)")
  parser.add_argument("--worker", choices=tuple(_WORKERS), default=None, help=argparse.SUPPRESS)
  parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_WORKERS[args.worker](json.loads(args.spec))))
    return
  p = PRESETS[args.preset]
  only = set(args.only.split(",")) | {"peaks"}
  unknown = only - set(SECTIONS)
  if unknown:
    parser.error(f"unknown section(s) {sorted(unknown)}; expected {SECTIONS}")
  start = time.perf_counter()
  print(f"bench_all --preset {args.preset}: sections {', '.join(s for s in SECTIONS if s in only)}")
  gflops_rows, memory_rows = [], []  # (name, flops, seconds) / (name, compile s, JAX MiB, PyTorch MiB|None)

  with _Load() as load:
    peaks = _run("peaks", {"matmul_n": p["matmul_n"], "conv_shape": p["conv_shape"],
                           "repeats": p["peak_repeats"]})
  peak = {k: peaks[k]["flops"] / peaks[k]["s"] / 1e9 for k in ("matmul", "conv")}
  n, (cb, cs, _, cc) = p["matmul_n"], p["conv_shape"]
  _table(f"Machine peaks, float32, {peaks['device']} (best of {p['peak_repeats']})", load.pair,
         ["kernel", "shape", "GFLOP (XLA)", "best ms", "GFLOP/s"],
         [["matmul jnp.dot", f"{n}x{n} @ {n}x{n}", _f(peaks["matmul"]["flops"] / 1e9), _f(peaks["matmul"]["s"] * 1e3, 1),
           _f(peak["matmul"], 1)],
          ["conv 3x3 dense", f"NHWC {cb}x{cs}x{cs}x{cc} -> {cc}", _f(peaks["conv"]["flops"] / 1e9),
           _f(peaks["conv"]["s"] * 1e3, 1), _f(peak["conv"], 1)]])

  if "responsibility" in only:
    rows = []
    with _Load() as load:
      for size in p["resp_sizes"]:
        r = _run("responsibility", {"size": size, "batch": p["resp_batch"], "repeats": p["resp_repeats"]})
        rows.append([f"{size}^2", _f(r["jax_fps_best"], 1), _f(r["jax_fps_median"], 1), _f(r["np_fps_best"], 1),
                     _f(r["np_fps_median"], 1), _f(r["jax_fps_best"] / r["np_fps_best"]), f"{r['max_abs_diff']:.1e}"])
        name = f"responsibility {size}^2 b{p['resp_batch']}"
        gflops_rows.append((name, r["flops"], r["step_s_median"]))
        memory_rows.append((name, r["compile_s"], r["peak_rss_mib"], None))
    _table(f"Responsibility frames/s, JAX vs NumPy + OpenCV loop (batch {p['resp_batch']}, 2 hands, 6 offsets)",
           load.pair, ["size", "JAX fps (best)", "JAX fps (median)", "NumPy fps (best)", "NumPy fps (median)",
                       "JAX / NumPy", "max abs diff"], rows)

  train = {}
  if "train" in only:
    rows = []
    with _Load() as load:
      for enc in p["encoders"]:
        for size in p["sizes"]:
          j, t = (_run_train(fw, enc, size, p) for fw in ("jax", "torch"))
          train[(enc, size)] = j
          rows.append([enc, f"{size}^2", _f(j["examples_per_s"]), _f(t["examples_per_s"]),
                       _f(j["examples_per_s"] / t["examples_per_s"]), _f(j["step_s_median"], 3),
                       _f(t["step_s_median"], 3)])
          name = f"train {enc} {size}^2 b{p['batch']}"
          gflops_rows += [(name, j["flops"], j["step_s_median"]),
                          (name + " (PyTorch)", j["flops"], t["step_s_median"])]
          memory_rows.append((name, j["compile_s"], j["peak_rss_mib"], t["peak_rss_mib"]))
    _table(f"COHESIV train step examples/s, JAX vs PyTorch eager (batch {p['batch']}, median of {p['steps']} "
           f"steps, AdamW)", load.pair, ["encoder", "size", "JAX ex/s", "PyTorch ex/s", "JAX / PyTorch",
                                         "JAX step s", "PyTorch step s"], rows)

  def inference(batch: int, sizes, steps: int, kind: str) -> tuple[list, tuple[float, float]]:
    rows = []
    with _Load() as load:
      for enc in p["encoders"]:
        for size in sizes:
          spec = {"encoder": enc, "size": size, "batch": batch, "steps": steps, "warmup": 1}
          j, t = _run("infer_jax", spec), _run("infer_torch", spec)
          rows.append([enc, f"{size}^2", _f(j["examples_per_s"]), _f(t["examples_per_s"]),
                       _f(j["examples_per_s"] / t["examples_per_s"]), _f(j["step_s_median"] * 1e3, 1),
                       _f(t["step_s_median"] * 1e3, 1)])
          name = f"{kind} {enc} {size}^2 b{batch}"
          gflops_rows.extend([(name, j["flops"], j["step_s_median"]),
                              (name + " (PyTorch)", j["flops"], t["step_s_median"])])
          memory_rows.append((name, j["compile_s"], j["peak_rss_mib"], t["peak_rss_mib"]))
    return rows, load.pair

  if "inference" in only:
    rows, load_pair = inference(p["batch"], p["sizes"], p["infer_steps"], "inference")
    _table(f"COHESIV inference examples/s, JAX jit vs PyTorch eager no_grad (batch {p['batch']}, median of "
           f"{p['infer_steps']} calls; Z, attention at 2 queries, centre)", load_pair,
           ["encoder", "size", "JAX ex/s", "PyTorch ex/s", "JAX / PyTorch", "JAX ms/call", "PyTorch ms/call"],
           rows)

  if "latency" in only:
    rows, load_pair = inference(1, (p["latency_size"],), p["latency_steps"], "latency")
    _table(f"COHESIV inference latency at {p['latency_size']}^2, batch 1 (median of {p['latency_steps']} calls)",
           load_pair, ["encoder", "size", "JAX ex/s", "PyTorch ex/s", "JAX / PyTorch (= PyTorch ms / JAX ms)",
                       "JAX ms", "PyTorch ms"], rows)

  if "pose" in only:
    rows = []
    with _Load() as load:
      for variant in p["pose_variants"]:
        r = _run("pose", {"variant": variant, "steps": p["pose_steps"],
                          "batch": p["pose_cpu_batch"].get(variant) if _is_cpu(peaks) else None})
        gf = r["flops"] / r["step_s"] / 1e9
        rows.append([variant, f"{r['image']}^2", r["batch"], f"{r['params']:,}", _f(r["step_s"], 3),
                     _f(r["examples_per_s"]), _f(gf, 1), f"{gf / peak['conv']:.3g}"])
        name = f"pose {variant} {r['image']}^2 b{r['batch']}"
        gflops_rows.append((name, r["flops"], r["step_s"]))
        memory_rows.append((name, r["lower_compile_s"], r["peak_rss_mib"], None))
    _table(f"Pose network train step (configs/handobj_pose.py; median of {p['pose_steps']} steps)", load.pair,
           ["variant", "crop", "batch", "params", "step s", "examples/s", "GFLOP/s", "/ conv peak"], rows)

  if "tfdata" in only:
    with _Load() as load:
      r = _run("tfdata", {"variant": p["data_variant"], "batch": p["batch"], "batches": p["data_batches"]})
    consumers = {k: v for k, v in train.items() if k[1] == r["size"]}
    rows = [[f"{r['build']} ({r['num_train']} train ex.)", f"{r['size']}^2", p["batch"], _f(r["build_s"], 1),
             _f(r["examples_per_s"], 1), f"train {enc}", _f(j["examples_per_s"]),
             _f(r["examples_per_s"] / j["examples_per_s"])] for (enc, _), j in consumers.items()]
    if not rows:
      rows = [[r["build"], f"{r['size']}^2", p["batch"], _f(r["build_s"], 1), _f(r["examples_per_s"], 1),
               "(no train row at this size)", "n/a", "n/a"]]
    _table(f"tf.data input examples/s vs the JAX train step's consumption (the train job's pipeline, "
           f"cache={r['cache']}, {p['data_batches']} batches after the first)", load.pair,
           ["build", "size", "batch", "build s", "tf.data ex/s", "consumer", "step ex/s", "tf.data / step"], rows)
    memory_rows.append((f"tfdata {r['build']} (build + pipeline)", float("nan"), r["peak_rss_mib"], None))

  _table("Achieved GFLOP/s (XLA's flop count of the compiled step / median time) vs this machine's peaks",
         None,
         ["step", "GFLOP per call", "s per call", "GFLOP/s", "/ matmul peak", "/ conv peak"],
         [[name, _f(fl / 1e9, 3), _f(s, 4), _f(fl / s / 1e9, 1), f"{fl / s / 1e9 / peak['matmul']:.3g}",
           f"{fl / s / 1e9 / peak['conv']:.3g}"] for name, fl, s in gflops_rows])
  _table("Compile time (lower + compile) and peak RSS (whole worker process, MiB)",
         None,
         ["JAX row", "compile s", "JAX peak RSS", "PyTorch peak RSS", "JAX / PyTorch RSS"],
         [[name, "n/a" if np.isnan(c) else _f(c, 1), _f(jm, 0), "n/a" if tm is None else _f(tm, 0),
           "n/a" if tm is None else _f(jm / tm)] for name, c, jm, tm in memory_rows])
  print(f"\nbench_all --preset {args.preset}: {time.perf_counter() - start:.0f} s in all")


def _is_cpu(peaks: dict) -> bool:
  return peaks["device"].endswith("(cpu)")


if __name__ == "__main__":
  main()
