"""Bad input and damaged files: one `error:` line naming the file, field or value, the right exit status,
and nothing already written is lost.

Config values, damaged datasets (truncated, missing or bit-flipped shards, corrupt metadata), a data dir that
is a file, a resume with another model config, SIGTERM / Ctrl-C at any point, the converter scripts and the
predict CLI. Damaged checkpoints and a NaN learning rate are tested with the trainer (tests/test_trainer.py),
MANO files in tests/test_mano.py, pretrained weights in tests/test_encoders.py.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cohesiv as cohesiv_configs
from handobj_jax import config_lib
from handobj_jax import predict
from handobj_jax.geometry import responsibility as resp_lib
from handobj_jax.jobs import pseudolabel as pseudolabel_job
from handobj_jax.jobs import train as train_job
from input_pipeline import cohesiv_examples
from input_pipeline import pipeline
from input_pipeline import tfds_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSEUDO = os.path.join("cohesiv_pseudo", "synthetic_handobj_tiny", "1.0.0")
SOURCE = os.path.join("synthetic_handobj", "tiny", "1.1.0")


def _env(data_dir=None):
  env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)  # One CPU device, as a user's laptop.
  if data_dir is not None:
    env[pipeline.DEFAULT_DATA_DIR_ENV] = str(data_dir)
  return env


def _main(*args, data_dir=None, timeout=300):
  proc = subprocess.run([sys.executable, "-m", "handobj_jax.main", *args], cwd=ROOT, env=_env(data_dir),
                        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
  return proc.returncode, proc.stdout, proc.stderr


def _one_error_line(rc, stderr, *needles, code=2):
  assert rc == code, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _copy(smoke_data_dir, tmp_path):
  dst = tmp_path / "data"
  shutil.copytree(smoke_data_dir, dst)
  return str(dst)


def _shard(data_dir, split="train", index=0, root=PSEUDO, name="cohesiv_pseudo"):
  directory = os.path.join(data_dir, root)
  files = sorted(f for f in os.listdir(directory) if f.startswith(f"{name}-{split}.tfrecord-"))
  return os.path.join(directory, files[index])


def _smoke(data_dir):
  config = cohesiv_configs.get_config("smoke")
  config.data.data_dir = str(data_dir)
  return config


# ---- Config values: checked before any work -----------------------------------------------------

CONFIG_CASES = [
    ("batch_size", 0), ("batch_size", -3), ("checkpoint.every_steps", 0), ("log_every_steps", 0),
    ("model.encoder", "vgg"), ("model.decoder_channels", ("abc",)), ("num_steps", -5),
    ("optim.learning_rate", -0.1), ("optim.learning_rate", float("nan")), ("optim.lr_factor", 1.5),
    ("loss.attention_gradient", "both"), ("augment.flip_prob", 2.0), ("pseudo.shard_clips", 0),
    ("model.tiny_stage_planes", (4, 8)),
]


@pytest.mark.parametrize("key,value", CONFIG_CASES)
def test_every_bad_config_value_is_named(key, value):
  config = cohesiv_configs.get_config("smoke")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config)
  assert str(info.value).startswith(f"config.{key}=") and "expected" in str(info.value)


def test_default_configs_are_valid():
  from configs import handobj_pose, handobj_pose_semi  # pylint: disable=g-import-not-at-top
  for module in (cohesiv_configs, handobj_pose, handobj_pose_semi):
    for variant in module.VARIANTS:
      config_lib.validate(module.get_config(variant))
  semi = handobj_pose_semi.get_config("smoke")
  semi.filters.min_iou = 1.5
  with pytest.raises(config_lib.ConfigError, match=r"config.filters.min_iou=1.5: expected"):
    config_lib.validate(semi)


@pytest.mark.parametrize("override,needle", [("--config.batch_size=0", "config.batch_size=0"),
                                             ("--config.optim.learning_rate=nan", "learning_rate=nan")])
def test_bad_config_value_stops_before_any_work(tmp_path, override, needle):
  workdir = tmp_path / "work"
  rc, _, err = _main("--config=configs/cohesiv.py:smoke", override, f"--workdir={workdir}", timeout=120)
  _one_error_line(rc, err, needle)
  assert not workdir.exists()  # Nothing was created, built or compiled.


def test_unknown_variant_names_the_choices(tmp_path):
  rc, _, err = _main("--config=configs/cohesiv.py:nope", f"--workdir={tmp_path}", timeout=120)
  _one_error_line(rc, err, "unknown config variant 'nope'", "smoke", "cpu")


# ---- Data dirs and damaged datasets --------------------------------------------------------------


def test_data_dir_env_pointing_at_a_file(tmp_path, monkeypatch):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("x")
  monkeypatch.setenv(pipeline.DEFAULT_DATA_DIR_ENV, str(blocker))
  with pytest.raises(pipeline.DataError, match=r"\$HANDOBJ_DATA_DIR=.*not_a_dir.* is a file"):
    pipeline.resolve_data_dir("")


def test_truncated_shard_is_named_and_the_advice_rebuilds_it(smoke_data_dir, tmp_path):
  data = _copy(smoke_data_dir, tmp_path)
  shard = _shard(data, "train", 1)
  original = open(shard, "rb").read()
  open(shard, "wb").write(original[: len(original) // 2])
  with pytest.raises(pipeline.DataError) as info:
    pseudolabel_job.ensure_pseudolabelled(_smoke(data), data)
  message = str(info.value)
  assert message.startswith(f"{shard} is damaged") and "rebuild" in message
  # Follow the advice: delete the shard, its progress marker and dataset_info.json; only that shard is
  # rebuilt, byte for byte.
  directory = os.path.dirname(shard)
  os.remove(shard)
  os.remove(os.path.join(directory, cohesiv_examples.PROGRESS_DIR, os.path.basename(shard) + ".json"))
  os.remove(os.path.join(directory, "dataset_info.json"))
  other = _shard(data, "train", 0)
  other_mtime = os.path.getmtime(other)
  pseudolabel_job.ensure_pseudolabelled(_smoke(data), data)
  assert open(shard, "rb").read() == original
  assert os.path.getmtime(other) == other_mtime


def test_missing_shard_is_named(smoke_data_dir, tmp_path):
  data = _copy(smoke_data_dir, tmp_path)
  shard = _shard(data, "validation")
  os.remove(shard)
  with pytest.raises(pipeline.DataError, match=rf"^{shard} is missing"):
    pseudolabel_job.ensure_pseudolabelled(_smoke(data), data)


def test_flipped_bytes_are_found_while_reading_and_named(smoke_data_dir, tmp_path):
  data = _copy(smoke_data_dir, tmp_path)
  shard = _shard(data, "train", 0)
  raw = bytearray(open(shard, "rb").read())
  for i in range(len(raw) // 2, len(raw) // 2 + 16):
    raw[i] ^= 0xFF
  open(shard, "wb").write(bytes(raw))
  builder = pseudolabel_job.ensure_pseudolabelled(_smoke(data), data)  # Sizes still match.
  ds = pipeline.load_split(builder, "train")
  with pytest.raises(pipeline.DataError) as info:
    for _ in pipeline.numpy_batches(ds, train_job.data_source(builder, "train")):
      pass
  assert str(info.value).startswith(f"{shard} is damaged") and "rebuild" in str(info.value)


@pytest.mark.parametrize("which", ["pseudo_labels", "source"])
def test_corrupt_dataset_info_is_named(smoke_data_dir, tmp_path, which):
  data = _copy(smoke_data_dir, tmp_path)
  info = os.path.join(data, PSEUDO if which == "pseudo_labels" else SOURCE, "dataset_info.json")
  open(info, "w").write('{"name": "cohesiv_pseudo", "splits": [')
  with pytest.raises(pipeline.DataError, match=rf"^{info} is unreadable .*delete"):
    if which == "pseudo_labels":
      pseudolabel_job.ensure_pseudolabelled(_smoke(data), data)
    else:
      tfds_synthetic.build(data, "tiny")


def test_truncated_source_shard_is_named(smoke_data_dir, tmp_path):
  data = _copy(smoke_data_dir, tmp_path)
  shard = _shard(data, "test", root=SOURCE, name="synthetic_handobj")
  open(shard, "r+b").truncate(1000)
  with pytest.raises(pipeline.DataError, match=rf"^{shard} is damaged .*delete .*{SOURCE}"):
    tfds_synthetic.build(data, "tiny")


def test_train_job_on_a_damaged_shard_is_one_line(smoke_data_dir, tmp_path):
  data = _copy(smoke_data_dir, tmp_path)
  shard = _shard(data, "train", 0)
  open(shard, "r+b").truncate(500)
  rc, _, err = _main("--config=configs/cohesiv.py:smoke", f"--workdir={tmp_path / 'work'}", data_dir=data)
  _one_error_line(rc, err, shard, "damaged", "rebuild")


# ---- A trained workdir: resume checks and stop signals -------------------------------------------


@pytest.fixture(scope="module")
def trained(smoke_data_dir, tmp_path_factory):
  """A `:smoke` workdir trained through the CLI (2 steps, checkpoints at 1 and 2)."""
  workdir = tmp_path_factory.mktemp("bad_inputs_trained") / "work"
  rc, out, err = _main("--config=configs/cohesiv.py:smoke", f"--workdir={workdir}", data_dir=smoke_data_dir)
  assert rc == 0, err[-3000:]
  return str(workdir), out, err


def test_clean_console(trained):
  """What the terminal shows: what runs, progress lines, results, where outputs are; no library logs."""
  workdir, out, err = trained
  assert err.strip() == "", err
  lines = out.strip().splitlines()
  assert lines[0].startswith("train: workdir") and "log.txt" in lines[0]
  assert any(l.startswith("train 2/2 steps") for l in lines)
  assert any(l.startswith("final validation losses") for l in lines)
  assert lines[-1].startswith(f"outputs in {workdir}")
  assert len(lines) < 15, out
  log = open(os.path.join(workdir, "log.txt")).read()
  assert "oneDNN" in log or "absl" in log or "orbax" in log.lower()  # The library logs went here.


def test_resume_with_another_model_config_changes_nothing(trained, smoke_data_dir, tmp_path):
  workdir = str(tmp_path / "work")
  shutil.copytree(trained[0], workdir)
  config_before = open(os.path.join(workdir, "config.json"), "rb").read()
  ckpts_before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  rc, _, err = _main("--config=configs/cohesiv.py:smoke", "--config.model.embed_dim=8",
                     f"--workdir={workdir}", data_dir=smoke_data_dir)
  _one_error_line(rc, err, "config.model.embed_dim: 16 there, 8 now", "another --workdir")
  assert open(os.path.join(workdir, "config.json"), "rb").read() == config_before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ckpts_before


def _start(args, data_dir):
  return subprocess.Popen([sys.executable, "-m", "handobj_jax.main", *args], cwd=ROOT, env=_env(data_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)


def _wait_for_line(proc, prefix, timeout=240):
  deadline = time.time() + timeout
  seen = []
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    seen.append(line)
    if line.startswith(prefix):
      return seen
  proc.kill()
  raise AssertionError(f"no line starting with {prefix!r} in {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_saves_exits_nonzero_and_resumes(smoke_data_dir, tmp_path, sig, code):
  workdir = tmp_path / "work"
  args = ["--config=configs/cohesiv.py:smoke", "--config.num_steps=100000",
          "--config.checkpoint.every_steps=100000", f"--workdir={workdir}"]
  proc = _start(args, smoke_data_dir)
  _wait_for_line(proc, "train 3/")
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == code, err[-3000:]
  assert "Traceback" not in err
  stop_line = [l for l in err.splitlines() if "stopped at step" in l]
  assert len(stop_line) == 1 and "rerun the same command to resume" in stop_line[0], err
  step = int(stop_line[0].split("stopped at step ")[1].split()[0])
  assert str(step) in os.listdir(workdir / "checkpoints")  # Saved before leaving.
  if sig == signal.SIGTERM:
    # Resuming goes on from there (run to a near step so the test stays short).
    rc, out, err = _main(*args[:1], f"--config.num_steps={step + 1}", f"--workdir={workdir}",
                         data_dir=smoke_data_dir)
    assert rc == 0, err[-3000:]
    assert f"at step {step}" in out and "resumed from" in out


@pytest.mark.parametrize("when", ["flags", "imports"])
def test_ctrl_c_during_startup_is_quiet(tmp_path, when):
  workdir = tmp_path / "work"
  proc = _start(["--config=configs/cohesiv.py:smoke", f"--workdir={workdir}"], None)
  if when == "flags":
    time.sleep(1.0)  # absl and the config are still loading.
  else:
    # log.txt exists: the job's libraries are being imported, with file descriptor 2 sent to the log.
    deadline = time.time() + 60
    while not (workdir / "log.txt").exists() and time.time() < deadline and proc.poll() is None:
      time.sleep(0.02)
    assert (workdir / "log.txt").exists()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "interrupted" in err


def test_native_stderr_goes_to_the_log_and_python_stderr_to_the_terminal(tmp_path):
  """What native libraries write to file descriptor 2 (e.g. a CPU-dependent oneDNN notice) stays off the
  terminal during a job, while the job's own warnings still reach it."""
  code = (
      "import os, sys\n"
      "from handobj_jax import console\n"
      "from absl import logging\n"
      "from absl import flags\n"
      "flags.FLAGS(['prog'])\n"
      "logging.use_absl_handler()  # As app.run does.\n"
      "console.buffer_early_logs()\n"
      f"console.setup_logging({str(tmp_path)!r})\n"
      "with console.native_stderr_to_log():\n"
      "  os.write(2, b'E0000 native notice\\n')\n"
      "  console.warn('python warning')\n"
      "os.write(2, b'after the block\\n')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=_env(None))
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.splitlines() == ["warning: python warning", "after the block"], proc.stderr
  log = (tmp_path / "log.txt").read_text()
  assert "E0000 native notice" in log and "python warning" in log


# ---- Scripts and the predict CLI ------------------------------------------------------------------


@pytest.mark.parametrize("script,args", [
    ("convert_mano.py", ["{missing}", "{out}"]),
    ("convert_mano.py", ["{junk}", "{out}"]),
    ("convert_timm_weights.py", ["--arch", "resnet50", "--in", "{missing}", "--out", "{out}"]),
    ("convert_timm_weights.py", ["--arch", "resnet50", "--in", "{junk_npz}", "--out", "{out}"]),
])
def test_converter_scripts_bad_input(tmp_path, script, args):
  junk = tmp_path / "MANO_RIGHT.pkl"
  junk.write_bytes(b"\x80\x02garbage")
  junk_npz = tmp_path / "weights.npz"
  junk_npz.write_bytes(b"PK\x03\x04 truncated zip")
  names = {"missing": str(tmp_path / "nope.pkl"), "out": str(tmp_path / "out.npz"), "junk": str(junk),
           "junk_npz": str(junk_npz)}
  argv = [a.format(**names) for a in args]
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *argv], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=120)
  named = next(a for a in argv if a in (names["missing"], names["junk"], names["junk_npz"]))
  _one_error_line(proc.returncode, proc.stderr, named)
  assert not os.path.exists(names["out"])


@pytest.mark.parametrize("flag,value", [("--max-side", "-5"), ("--max-side", "7"), ("--every", "0"),
                                        ("--max-frames", "-1")])
def test_predict_rejects_bad_numbers(tmp_path, capsys, flag, value):
  image = tmp_path / "x.png"
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
  rc = predict.main(["--checkpoint", str(tmp_path), "--image", str(image), flag, value])
  err = capsys.readouterr().err
  _one_error_line(rc, err, f"{flag} {value}")


# ---- Degenerate numbers stay finite ----------------------------------------------------------------


def test_responsibility_is_finite_for_infinite_and_huge_flow():
  rng = np.random.default_rng(0)
  k, h, w, n, v = 6, 24, 24, 2, 30
  flow = rng.normal(size=(k, h, w, 2)).astype(np.float32)
  flow[0, 3, 3, 0] = np.inf
  flow[1, 4, 4, 1] = -np.inf
  flow[2] = 3e38
  flow[3, 5:9, 5:9] = np.nan
  verts = rng.uniform(4, 20, size=(n, v, 2)).astype(np.float32)
  resp, ok = jax.jit(resp_lib.clip_responsibility)(flow, np.ones(k, bool), verts, None, np.ones(n, bool))
  resp = np.asarray(resp)
  assert np.isfinite(resp).all() and np.allclose(resp.sum(-1), 1.0, atol=1e-5)
  assert np.asarray(ok).shape == (k, n)
  identity = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
  single = np.asarray(jax.jit(resp_lib.responsibility)(flow[0], identity, np.ones(n, bool)))
  assert np.isfinite(single).all()


def test_pseudo_labels_flag_non_finite_responsibility():
  resp = np.full((8, 8, 3), 0.3, np.float32)
  resp[2, 3, 1] = np.nan
  resp[5, 5, 2] = np.inf
  out = resp_lib.pseudo_labels(jnp.asarray(resp), np.zeros((8, 8), bool))
  assert np.isfinite(np.asarray(out["hand_resp"])).all()
  finite = np.asarray(out["finite"])
  assert finite.sum() == 62 and not finite[2, 3] and not finite[5, 5]
