"""The two kinds of failure a user sees, shared by every layer (jobs, trainer, input pipeline, configs).

`main` prints either as one `error: ...` line without a traceback (the traceback goes to the log file):
  * `InputError` (exit status 2): bad input: a config value, a missing or damaged file, a dataset that
    cannot be read. The message names the file, field or value and, where it helps, how to fix it.
  * `RunFailed` (exit status 1): good input, but the run cannot continue (e.g. a NaN loss); the message
    says where it stopped and what was kept.
"""


class InputError(ValueError):
  """Bad input, reported in one line naming the file, field or value (exit status 2)."""


class RunFailed(RuntimeError):
  """A run that cannot continue, reported in one line (exit status 1)."""
