"""The launchers in launch/: their dry runs print exactly the commands they run, usage errors exit 2, and
launch/local_gpus.sh --processes=N really starts N processes with their environment, returns the first
failure and passes SIGTERM on. Stand-ins replace python, srun and gcloud, so each test takes well under a
second and needs no GPU, SLURM or Google Cloud."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = ["-m", "handobj_jax.main"]

# Records its argv and the launch environment to $STANDIN_OUT/<name>.<process id>.json, then acts as
# $STANDIN_MODE says: 'ok' exits $STANDIN_EXIT (default 0); 'fail1' makes process 1 exit 3 and every
# other process wait for SIGTERM; 'wait' writes a ready file and waits for SIGTERM. On SIGTERM it records
# it and exits 143, as main.py does after saving a checkpoint.
_STANDIN = r'''
import json, os, signal, sys, time
out = os.environ["STANDIN_OUT"]
pid = os.environ.get("JAX_PROCESS_ID", "single")
name = f"{os.path.basename(sys.argv[0])}.{pid}"
def on_term(signum, frame):
  open(os.path.join(out, name + ".term"), "w").close()
  sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
keys = ("CUDA_VISIBLE_DEVICES", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
        "HANDOBJ_DATA_DIR")
with open(os.path.join(out, name + ".json"), "w") as f:
  json.dump({"argv": sys.argv[1:], "env": {k: os.environ[k] for k in keys if k in os.environ}}, f)
print(f"stand-in {name}", flush=True)
mode = os.environ.get("STANDIN_MODE", "ok")
if mode == "fail1" and pid == "1":
  sys.exit(3)
if mode in ("fail1", "wait"):
  open(os.path.join(out, name + ".ready"), "w").close()
  time.sleep(30)  # Until SIGTERM; a launcher that does not pass it on fails the test on its timeout.
  sys.exit(0)
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
'''


def _env(**extra):
  """The test's environment without anything that would change the launchers' output."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_", "TPU_", "HANDOBJ_")) and k != "CUDA_VISIBLE_DEVICES"}
  env["HANDOBJ_DATA_DIR"] = "/data/tfds"
  env.update(extra)
  return env


def _run(script, *args, timeout=30, **env):
  proc = subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, env=_env(**env), capture_output=True,
                        text=True, timeout=timeout, stdin=subprocess.DEVNULL)
  return proc.returncode, proc.stdout, proc.stderr


def _dry_run(script, *args, **env):
  rc, out, err = _run(script, "--dry-run", *args, **env)
  assert rc == 0, err
  assert err == ""
  return out.splitlines()


def _standin(tmp_path, name="python"):
  """An executable stand-in called `name` in tmp_path/bin; returns (its path, the folder it records to)."""
  bindir, out = tmp_path / "bin", tmp_path / "out"
  bindir.mkdir(exist_ok=True)
  out.mkdir(exist_ok=True)
  path = bindir / name
  path.write_text(f"#!{sys.executable}\n{_STANDIN}")
  path.chmod(0o755)
  return str(path), out


def _record(out, name):
  return json.loads((out / f"{name}.json").read_text())


# --- Dry runs: the exact lines. ---


def test_slurm_dry_run_prints_the_srun_line_outside_an_allocation():
  assert _dry_run("slurm.sh", "configs/cohesiv.py:smoke", "/runs/a", "--config.batch_size=8",
                  "--config.seed=3") == [
      "HANDOBJ_DATA_DIR=/data/tfds srun --kill-on-bad-exit=1 python -m handobj_jax.main "
      "--config=configs/cohesiv.py:smoke --workdir=/runs/a --distributed=auto --config.batch_size=8 "
      "--config.seed=3"]


def test_slurm_dry_run_shows_the_default_data_dir(tmp_path):
  env = _env(HOME=str(tmp_path))
  del env["HANDOBJ_DATA_DIR"]
  proc = subprocess.run(["bash", "launch/slurm.sh", "--dry-run", "c.py", "w"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert shlex.split(proc.stdout)[0] == f"HANDOBJ_DATA_DIR={tmp_path}/tensorflow_datasets"


def test_local_gpus_dry_run_one_process_sees_all_gpus():
  assert _dry_run("local_gpus.sh", "configs/cohesiv.py", "/runs/b", "--config.batch_size=16") == [
      "python -m handobj_jax.main --config=configs/cohesiv.py --workdir=/runs/b --distributed=off "
      "--config.batch_size=16"]


def test_local_gpus_dry_run_one_process_per_gpu():
  common = "python -m handobj_jax.main --config=configs/cohesiv.py --workdir=/runs/c --distributed=on --config.x=y"
  assert _dry_run("local_gpus.sh", "--processes=2", "configs/cohesiv.py", "/runs/c", "--config.x=y") == [
      "mkdir -p -- /runs/c",
      "CUDA_VISIBLE_DEVICES=0 JAX_COORDINATOR_ADDRESS=127.0.0.1:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 "
      + common,
      "CUDA_VISIBLE_DEVICES=1 JAX_COORDINATOR_ADDRESS=127.0.0.1:8476 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 "
      + common + " > /runs/c/stdout.process1.txt 2>&1"]


def test_local_gpus_dry_run_uses_the_visible_gpus_and_port():
  lines = _dry_run("local_gpus.sh", "--processes=3", "--port=9999", "c.py", "w", CUDA_VISIBLE_DEVICES="4,6,7")
  assert [shlex.split(l)[:4] for l in lines[1:]] == [
      [f"CUDA_VISIBLE_DEVICES={g}", "JAX_COORDINATOR_ADDRESS=127.0.0.1:9999", "JAX_NUM_PROCESSES=3",
       f"JAX_PROCESS_ID={i}"] for i, g in enumerate("467")]


def test_tpu_vm_dry_run_on_a_worker():
  assert _dry_run("tpu_vm.sh", "configs/cohesiv.py", "/mnt/shared/runs/d", "--config.batch_size=32") == [
      "python -m handobj_jax.main --config=configs/cohesiv.py --workdir=/mnt/shared/runs/d --distributed=on "
      "--config.batch_size=32"]


def test_tpu_vm_dry_run_from_your_machine_prints_the_gcloud_line():
  lines = _dry_run("tpu_vm.sh", "--tpu=my-v4", "--zone=us-central2-b", "configs/cohesiv.py", "/mnt/shared/e",
                   "--config.batch_size=32")
  assert lines == [
      r"gcloud compute tpus tpu-vm ssh my-v4 --zone=us-central2-b --worker=all --command=cd\ handobj_jax\ "
      r"\&\&\ bash\ launch/tpu_vm.sh\ configs/cohesiv.py\ /mnt/shared/e\ --config.batch_size=32"]
  *_, command = shlex.split(lines[0])
  assert shlex.split(command.removeprefix("--command=")) == [
      "cd", "handobj_jax", "&&", "bash", "launch/tpu_vm.sh", "configs/cohesiv.py", "/mnt/shared/e",
      "--config.batch_size=32"]


_AWKWARD = ["--config.name=a b", "--config.note=it's \"quoted\" $HOME; *"]


def test_dry_runs_quote_awkward_arguments():
  """Spaces, quotes, $ and globs survive: a shell reading the printed line gets the same words back."""
  expected = ["--config=my configs/c.py", "--workdir=/runs/with space"] + _AWKWARD
  for script, extra in [("slurm.sh", ()), ("local_gpus.sh", ()), ("tpu_vm.sh", ())]:
    (line,) = _dry_run(script, *extra, "my configs/c.py", "/runs/with space", *_AWKWARD)
    words = shlex.split(line)
    start = words.index("handobj_jax.main") + 1
    assert words[start:start + 2] + words[start + 3:] == expected, (script, line)
  (line,) = _dry_run("tpu_vm.sh", "--tpu=t", "--zone=z", "--remote_dir=src/my repo", "my configs/c.py",
                     "/runs/with space", *_AWKWARD)
  remote = shlex.split(shlex.split(line)[-1].removeprefix("--command="))
  assert remote == ["cd", "src/my repo", "&&", "bash", "launch/tpu_vm.sh", "my configs/c.py",
                    "/runs/with space"] + _AWKWARD


# --- Usage errors: one line, exit 2. ---


@pytest.mark.parametrize("script,args,first_word", [
    ("slurm.sh", [], "usage:"),
    ("slurm.sh", ["c.py"], "usage:"),
    ("slurm.sh", ["--dry-run", "c.py"], "usage:"),
    ("local_gpus.sh", ["c.py"], "usage:"),
    ("local_gpus.sh", ["--dry-run", "--processes=2"], "usage:"),
    ("local_gpus.sh", ["--processes=0", "c.py", "w"], "error:"),
    ("local_gpus.sh", ["--processes=two", "c.py", "w"], "error:"),
    ("local_gpus.sh", ["--processes=", "c.py", "w"], "error:"),
    ("local_gpus.sh", ["--processes=2", "--port=70000", "c.py", "w"], "error:"),
    ("local_gpus.sh", ["--gpus=2", "c.py", "w"], "error:"),
    ("tpu_vm.sh", [], "usage:"),
    ("tpu_vm.sh", ["--tpu=t", "--zone=z", "c.py"], "usage:"),
    ("tpu_vm.sh", ["--tpu=t", "c.py", "w"], "error:"),
    ("tpu_vm.sh", ["--zone=z", "c.py", "w"], "error:"),
])
def test_usage_errors_exit_2_with_one_line(script, args, first_word):
  rc, out, err = _run(script, *args)
  assert rc == 2, err
  assert out == ""
  assert len(err.splitlines()) == 1 and err.startswith(first_word), err


def test_local_gpus_more_processes_than_visible_gpus_is_an_error():
  rc, _, err = _run("local_gpus.sh", "--dry-run", "--processes=3", "c.py", "w", CUDA_VISIBLE_DEVICES="0,1")
  assert rc == 2 and err.startswith("error:") and "names 2 GPU(s)" in err, err


# --- Real runs with stand-ins: what runs is what the dry run printed. ---


def test_slurm_and_tpu_run_the_printed_commands(tmp_path):
  for fake in ("srun", "gcloud", "python"):
    _standin(tmp_path, fake)
  _, out = _standin(tmp_path, "python")
  env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "STANDIN_OUT": str(out)}
  for script, args, name in [
      ("slurm.sh", ["c.py", "w x", *_AWKWARD], "srun"),
      ("tpu_vm.sh", ["--tpu=t", "--zone=z", "c.py", "w x", *_AWKWARD], "gcloud"),
      ("tpu_vm.sh", ["c.py", "w x", *_AWKWARD], "python")]:
    (line,) = _dry_run(script, *args, **env)
    rc, _, err = _run(script, *args, **env)
    assert rc == 0, err
    words = [w for w in shlex.split(line) if not w.startswith("HANDOBJ_DATA_DIR=")]
    assert _record(out, f"{name}.single")["argv"] == words[1:], script
  assert _record(out, "srun.single")["env"] == {"HANDOBJ_DATA_DIR": "/data/tfds"}


def test_local_gpus_one_process_returns_its_status(tmp_path):
  python, out = _standin(tmp_path)
  rc, stdout, err = _run("local_gpus.sh", "c.py", str(tmp_path / "w"), "--config.x=1", HANDOBJ_PYTHON=python,
                         STANDIN_OUT=str(out), STANDIN_EXIT="5")
  assert rc == 5, err
  assert stdout == "stand-in python.single\n"
  assert _record(out, "python.single") == {
      "argv": [*MAIN, "--config=c.py", f"--workdir={tmp_path / 'w'}", "--distributed=off", "--config.x=1"],
      "env": {"HANDOBJ_DATA_DIR": "/data/tfds"}}


def test_local_gpus_two_processes_get_their_environment(tmp_path):
  python, out = _standin(tmp_path)
  workdir = tmp_path / "new" / "w"
  args = ["--processes=2", "--port=12345", "c.py", str(workdir), "--config.x=1"]
  lines = _dry_run("local_gpus.sh", *args, HANDOBJ_PYTHON=python)
  rc, stdout, err = _run("local_gpus.sh", *args, HANDOBJ_PYTHON=python, STANDIN_OUT=str(out))
  assert rc == 0, err
  assert stdout == "stand-in python.0\n"  # Process 0 on the terminal, process 1 in its file.
  assert (workdir / "stdout.process1.txt").read_text() == "stand-in python.1\n"
  for i in range(2):
    words = shlex.split(lines[1 + i])[:-3 if i else None]  # Without the output redirection.
    env = dict(w.split("=", 1) for w in words[:4])
    assert _record(out, f"python.{i}") == {
        "argv": words[5:], "env": {**env, "HANDOBJ_DATA_DIR": "/data/tfds"}}
    assert env == {"CUDA_VISIBLE_DEVICES": str(i), "JAX_COORDINATOR_ADDRESS": "127.0.0.1:12345",
                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
    assert words[5:] == [*MAIN, "--config=c.py", f"--workdir={workdir}", "--distributed=on", "--config.x=1"]


def test_local_gpus_returns_the_first_failure_and_stops_the_others(tmp_path):
  python, out = _standin(tmp_path)
  rc, _, err = _run("local_gpus.sh", "--processes=2", "c.py", str(tmp_path / "w"), HANDOBJ_PYTHON=python,
                    STANDIN_OUT=str(out), STANDIN_MODE="fail1", timeout=20)
  assert rc == 3, err  # Process 1's status, not process 0's 143 after the launcher stopped it.
  assert (out / "python.0.term").exists()
  assert not (out / "python.1.term").exists()


def test_local_gpus_passes_sigterm_on(tmp_path):
  python, out = _standin(tmp_path)
  proc = subprocess.Popen(["bash", "launch/local_gpus.sh", "--processes=2", "c.py", str(tmp_path / "w")],
                          cwd=ROOT, env=_env(HANDOBJ_PYTHON=python, STANDIN_OUT=str(out), STANDIN_MODE="wait"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
  try:
    deadline = time.time() + 15
    while not all((out / f"python.{i}.ready").exists() for i in range(2)):
      assert proc.poll() is None, proc.stderr.read()
      assert time.time() < deadline, "the processes did not start"
      time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 143
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stderr.close()
  assert all((out / f"python.{i}.term").exists() for i in range(2))
