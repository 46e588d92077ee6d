"""The command line: each bad input ends with one clear line and exit status 2, not a traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120, cwd=ROOT):
  env = {**os.environ, "PYTHONPATH": ROOT}
  args = [a.replace("=configs/", f"={ROOT}/configs/") if cwd != ROOT else a for a in args]
  proc = subprocess.run([sys.executable, "-m", "handobj_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
  return proc.returncode, proc.stdout, proc.stderr


def _assert_one_line_error(rc, stderr, *needles):
  assert rc == 2, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-2000:]
  errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, stderr[-2000:]
  for n in needles:
    assert n in errors[0], errors[0]


def test_missing_config_file(tmp_path):
  rc, _, err = _run("--config=configs/does_not_exist.py", f"--workdir={tmp_path}")
  _assert_one_line_error(rc, err, "does_not_exist.py", "No such file")


def test_unknown_config_key(tmp_path):
  rc, _, err = _run("--config=configs/synthetic_data.py", "--config.no_such_key=3", f"--workdir={tmp_path}")
  _assert_one_line_error(rc, err, "no_such_key")


def test_bad_config_value_type(tmp_path):
  rc, _, err = _run("--config=configs/synthetic_data.py", "--config.batch_size=abc", f"--workdir={tmp_path}")
  _assert_one_line_error(rc, err, "batch_size")


def test_unknown_variant(tmp_path):
  rc, _, err = _run("--config=configs/synthetic_data.py:nope", f"--workdir={tmp_path}")
  _assert_one_line_error(rc, err, "nope")


def test_unknown_job(tmp_path):
  rc, _, err = _run("--config=configs/synthetic_data.py", "--config.job=fly", f"--workdir={tmp_path}")
  _assert_one_line_error(rc, err, "unknown job 'fly'", "preview_data")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  rc, _, err = _run("--config=configs/synthetic_data.py", f"--workdir={blocker}/sub")
  _assert_one_line_error(rc, err, "not writable", str(blocker))


@pytest.mark.parametrize("flag,what", [("--workdir=gs://bucket/runs", "--workdir"),
                                       ("--config.data.data_dir=gs://bucket/data", "config.data.data_dir")])
def test_cloud_urls_are_refused_with_one_line(tmp_path, flag, what):
  """Before: main.py made `gs://bucket/runs` the local directory ./gs:/bucket/runs and wrote the run there."""
  args = [flag] + ([] if flag.startswith("--workdir") else [f"--workdir={tmp_path}/w"])
  rc, _, err = _run("--config=configs/synthetic_data.py:tiny", *args, cwd=str(tmp_path))
  _assert_one_line_error(rc, err, what, "is a URL", "gcsfuse")
  assert not (tmp_path / "gs:").exists()


def test_missing_workdir_flag():
  rc, _, err = _run("--config=configs/synthetic_data.py")
  _assert_one_line_error(rc, err, "--workdir")


def test_missing_data_dir(tmp_path):
  rc, _, err = _run("--config=configs/synthetic_data.py:tiny", f"--config.data.data_dir={tmp_path}/nowhere",
                    f"--workdir={tmp_path}/w")
  _assert_one_line_error(rc, err, "nowhere", "config.data.data_dir", "does not exist")


@pytest.mark.slow
def test_preview_job_end_to_end(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  rc, out, err = _run("--config=configs/synthetic_data.py:tiny", f"--config.data.data_dir={data_dir}",
                      f"--workdir={tmp_path}/w", timeout=300)
  assert rc == 0, err[-3000:]
  assert "one global batch of 2 clips" in out
  assert (tmp_path / "w" / "preview" / "contact_sheet.png").stat().st_size > 10_000
