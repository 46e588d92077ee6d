"""Imports of the PyTorch reference libraries used by parity tests.

A reference test that cannot import its reference FAILS, it never skips: a
silently skipped parity test would let CI pass without the check. Every test
that imports torch, timm or smplx gets them through `import_torch`,
`import_timm` or `import_smplx` and carries `@pytest.mark.reference`. The
failure is one line naming the package and the fix:

  pip install -e ".[reference]"

Users without the `reference` extra deselect these tests instead:

  python -m pytest -m "not reference"

Also the one place for the torchvision import workaround: see
`_no_fake_kernel_registration`.
"""
from __future__ import annotations

import contextlib
import importlib
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


def _import(package: str) -> types.ModuleType:
  """Imports `package`, or fails the calling test with one line naming it and the fix."""
  try:
    return importlib.import_module(package)
  except Exception as e:  # pylint: disable=broad-except
    error = f"{type(e).__name__}: {e}"
  # Outside the except block: no chained traceback, only the line below.
  pytest.fail(f"reference test: cannot import {package} ({error}); install the reference extra with "
              f"`pip install -e \".[reference]\"` or deselect with -m \"not reference\"", pytrace=False)


def import_torch() -> types.ModuleType:
  """Returns torch; fails the calling test (one line) when it cannot be imported."""
  return _import("torch")


def import_timm() -> types.ModuleType:
  """Returns the timm module (with the torchvision workaround above); fails the test if it cannot."""
  torch = import_torch()
  with _no_fake_kernel_registration(torch):
    return _import("timm")


def import_smplx() -> types.ModuleType:
  """Returns the smplx module; fails the calling test when it (or torch) cannot be imported."""
  import_torch()
  return _import("smplx")


def timm_model_with_random_bn(arch: str):
  """Returns (a timm `arch` in eval mode, seeded, with random BatchNorm affine and statistics, torch).

  timm zero-initialises some BatchNorm weights (bn3 of each bottleneck); random non-trivial affine
  parameters and running statistics instead make a parity test exercise every layer.
  """
  timm = import_timm()
  torch = import_torch()
  torch.manual_seed(0)
  model = timm.create_model(arch, pretrained=False).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        c = mod.num_features
        mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
        mod.bias.copy_(0.2 * torch.randn(c, generator=gen))
        mod.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
  return model, torch
