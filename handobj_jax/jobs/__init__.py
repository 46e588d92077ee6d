"""Jobs: thin glue between configs and the library. A config's `job` field picks one.

Jobs are registered by import path and imported only when run, so `main` stays light and a job's
heavy dependencies are loaded only by the job that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from handobj_jax import errors

JobFn = Callable[[Any, str], Any]

# name -> "module:function". Every function takes (config, workdir).
JOBS: dict[str, str] = {
    "check_data": "handobj_jax.jobs.check_data:run",
    "preview_data": "handobj_jax.jobs.preview_data:run",
    "pseudolabel": "handobj_jax.jobs.pseudolabel:run",
    "responsibility_baseline": "handobj_jax.jobs.pseudolabel:run_baseline",
    "train": "handobj_jax.jobs.train:run",
    "eval": "handobj_jax.jobs.evaluate:run",
    "pose_train": "handobj_jax.jobs.pose:train",
    "pose_eval": "handobj_jax.jobs.pose:evaluate",
    "pose_pseudolabel": "handobj_jax.jobs.pose_semi:pseudolabel",
    "pose_semi_ablation": "handobj_jax.jobs.pose_semi:ablation",
}


class UnknownJobError(ValueError):
  pass


class JobInputError(errors.InputError):
  """A job's input is unusable (missing data dir, unreadable file...): reported as one line."""


def check_name(name: str) -> None:
  if name not in JOBS:
    raise UnknownJobError(f"unknown job {name!r} in config.job; known jobs: {', '.join(sorted(JOBS))}")


def get_job(name: str) -> JobFn:
  check_name(name)
  module_name, fn_name = JOBS[name].split(":")
  return getattr(importlib.import_module(module_name), fn_name)
