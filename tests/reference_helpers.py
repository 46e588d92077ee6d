"""Imports of the PyTorch reference libraries used by parity tests.

The one place for the torchvision import workaround: see `import_timm`.
"""
from __future__ import annotations

import contextlib
import types

import pytest


@contextlib.contextmanager
def _no_fake_kernel_registration(torch):
  """Temporarily turns `torch.library.register_fake` into a no-op decorator.

  Why: the only torchvision build installed here is linked against CUDA, and
  importing it registers "fake" (meta) kernels for its compiled operators
  (torchvision::nms, roi_align, ...). The CPU-only torch here does not have
  those operators, so the registration raises RuntimeError and
  `import torchvision` fails -- and timm imports torchvision at import time.
  timm only needs torchvision's pure-Python parts (transforms, FX feature
  extraction), never those operators, so skipping the registrations is safe.
  The original function is restored on exit, even on error.
  """
  original = torch.library.register_fake

  def register_fake_noop(*args, **kwargs):
    del args, kwargs

    def decorator(fn=None):
      return fn

    return decorator

  torch.library.register_fake = register_fake_noop
  try:
    yield
  finally:
    torch.library.register_fake = original


def import_torch() -> types.ModuleType:
  """Returns torch or skips the calling test."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"torch not importable: {e!r}")
  return torch


def import_timm() -> types.ModuleType:
  """Returns the timm module (see the workaround above) or skips the test."""
  torch = import_torch()
  try:
    with _no_fake_kernel_registration(torch):
      import timm  # pylint: disable=import-outside-toplevel
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"timm not importable: {e!r}")
  return timm
