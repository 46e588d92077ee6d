"""Port ImageNet ResNet / SE-ResNeXt weights from PyTorch (timm) state dicts to Flax.

Name mapping (PyTorch state dict key -> Flax variable path), s = stage from 1,
b = block from 0:
  conv1.weight                          params/conv1/kernel
  bn1.{weight,bias}                     params/bn1/{scale,bias}
  bn1.{running_mean,running_var}        batch_stats/bn1/{mean,var}
  layer{s}.{b}.conv{1,2,3}.weight       params/layer{s}_{b}/conv{1,2,3}/kernel
  layer{s}.{b}.bn{1,2,3}.*              params|batch_stats/layer{s}_{b}/bn{1,2,3}/*
  layer{s}.{b}.se.fc{1,2}.{weight,bias} params/layer{s}_{b}/se/fc{1,2}/{kernel,bias}
  layer{s}.{b}.downsample.0.weight      params/layer{s}_{b}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*           .../layer{s}_{b}/downsample_bn/*
  *.num_batches_tracked                 dropped (Flax does not count steps)
  fc.{weight,bias}                      ImageNet classifier: dropped; with
                                        classifier='require' it must be present.
Conv kernels go from PyTorch OIHW (O, I/groups, kh, kw) to Flax HWIO
(kh, kw, I/groups, O); grouped convolutions need nothing else because both
frameworks order output channels group by group.

Every key that matches no rule, every Flax variable left unfilled and every
shape mismatch is collected and reported together in one ValueError.

Files: `.pth`/`.pt` (needs torch), `.safetensors` (needs safetensors) or `.npz`
holding the PyTorch state dict under its PyTorch names; make the npz once with
`scripts/convert_timm_weights.py` so that JAX users need no torch.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from handobj_jax import errors
from handobj_jax.models import encoders as encoders_lib

_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_CONV_LEAVES = {"weight": ("params", "kernel"), "bias": ("params", "bias")}


def _module_path(torch_module: str) -> tuple[str, ...] | None:
  """PyTorch module name -> Flax module path, or None if not an encoder module."""
  if torch_module in ("conv1", "bn1"):
    return (torch_module,)
  m = _BLOCK_RE.match(torch_module)
  if not m:
    return None
  block = f"layer{m.group(1)}_{m.group(2)}"
  rest = m.group(3)
  if re.fullmatch(r"conv[123]|bn[123]", rest):
    return (block, rest)
  if re.fullmatch(r"se\.fc[12]", rest):
    return (block, "se", rest.split(".")[1])
  if rest == "downsample.0":
    return (block, "downsample_conv")
  if rest == "downsample.1":
    return (block, "downsample_bn")
  return None


def _is_bn(path: tuple[str, ...]) -> bool:
  return path[-1].startswith("bn") or path[-1] == "downsample_bn"


def torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...]] | None:
  """Maps a PyTorch state-dict key to (collection, Flax path); None if unknown.

  `num_batches_tracked` keys map to ('ignore', ()). The classifier is not
  handled here (see `convert_torch_state_dict`).
  """
  if "." not in key:
    return None
  module, leaf = key.rsplit(".", 1)
  path = _module_path(module)
  if path is None:
    return None
  if _is_bn(path):
    if leaf == "num_batches_tracked":
      return ("ignore", ())
    if leaf not in _BN_LEAVES:
      return None
    collection, name = _BN_LEAVES[leaf]
  else:
    if leaf not in _CONV_LEAVES:
      return None
    collection, name = _CONV_LEAVES[leaf]
  return collection, path + (name,)


def _as_encoder(arch: str | encoders_lib.ResNetEncoder) -> encoders_lib.ResNetEncoder:
  if isinstance(arch, encoders_lib.ResNetEncoder):
    return arch
  return encoders_lib.create_encoder(arch)


def expected_variable_shapes(
    arch: str | encoders_lib.ResNetEncoder) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {(collection, *path): shape} of an encoder's variables (no compute)."""
  if isinstance(arch, str):
    return dict(_expected_shapes_by_name(arch))
  return _trace_variable_shapes(arch)


@functools.lru_cache(maxsize=None)
def _expected_shapes_by_name(arch: str):
  return _trace_variable_shapes(_as_encoder(arch))


def _trace_variable_shapes(encoder: encoders_lib.ResNetEncoder):
  shapes = jax.eval_shape(
      lambda: encoder.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, 64, 64, 3), jnp.float32), train=False))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  return {k: tuple(v.shape) for k, v in flat.items()}


def convert_torch_state_dict(
    state_dict: Mapping[str, Any],
    arch: str | encoders_lib.ResNetEncoder,
    classifier: str = "ignore",
) -> dict[str, Any]:
  """Converts a timm ResNet / SE-ResNeXt state dict to Flax encoder variables.

  Args:
    state_dict: PyTorch key -> array (numpy or anything `np.asarray` accepts).
    arch: 'seresnext50_32x4d', 'resnet50', 'tiny', or an encoder module.
    classifier: 'ignore' drops `fc.*` if present; 'require' also demands that
      both `fc.weight` and `fc.bias` are present (a full ImageNet checkpoint).

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 jnp arrays,
    usable as `encoder.apply(variables, x, train=False)`.

  Raises:
    ValueError: listing every unexpected key, missing variable and shape
      mismatch (with shapes) at once.
  """
  if classifier not in ("ignore", "require"):
    raise ValueError(f"classifier must be 'ignore' or 'require', got {classifier!r}")
  expected = expected_variable_shapes(arch)
  out: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, mismatched = [], []
  mismatched_paths = set()
  for key, value in state_dict.items():
    array = np.asarray(value)
    if key in _CLASSIFIER_KEYS:
      continue
    target = torch_key_to_flax(key)
    if target is None:
      unexpected.append(f"{key} {tuple(array.shape)}")
      continue
    collection, path = target
    if collection == "ignore":
      continue
    if path[-1] == "kernel":
      if array.ndim != 4:
        mismatched.append(f"{key}: expected a 4-D OIHW conv weight, got "
                          f"{tuple(array.shape)}")
        mismatched_paths.add((collection,) + path)
        continue
      array = array.transpose(2, 3, 1, 0)
    full = (collection,) + path
    if full not in expected:
      unexpected.append(f"{key} {tuple(np.shape(value))} -> {'/'.join(full)} "
                        "(no such Flax variable)")
      continue
    if tuple(array.shape) != expected[full]:
      mismatched.append(f"{key}: torch {tuple(np.shape(value))} -> flax "
                        f"{tuple(array.shape)}, expected {expected[full]} "
                        f"at {'/'.join(full)}")
      mismatched_paths.add(full)
      continue
    out[full] = array.astype(np.float32)
  missing = [f"{'/'.join(k)} {v}" for k, v in expected.items()
             if k not in out and k not in mismatched_paths]
  if classifier == "require":
    for key in _CLASSIFIER_KEYS:
      if key not in state_dict:
        missing.append(f"{key} (classifier='require')")
  if unexpected or mismatched or missing:
    lines = []
    for title, items in (("unexpected keys", unexpected),
                         ("shape mismatches", mismatched),
                         ("missing variables", missing)):
      if items:
        lines.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
    name = arch if isinstance(arch, str) else type(arch).__name__
    raise ValueError(f"cannot convert state dict to {name} encoder:\n" +
                     "\n".join(lines))
  nested = flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in out.items()})
  return {"params": nested["params"], "batch_stats": nested["batch_stats"]}


def flax_to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse mapping: Flax encoder variables -> PyTorch-named numpy state dict.

  Produces no `num_batches_tracked` and no classifier. Used by tests and for
  exporting; round-trips exactly with `convert_torch_state_dict`.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(variables)))
  out = {}
  for (collection, *path), value in flat.items():
    module_path, leaf = path[:-1], path[-1]
    if module_path[0] in ("conv1", "bn1"):
      torch_module = module_path[0]
    else:
      stage, block = re.fullmatch(r"layer(\d+)_(\d+)", module_path[0]).groups()
      rest = ".".join(module_path[1:])
      rest = {"downsample_conv": "downsample.0",
              "downsample_bn": "downsample.1"}.get(rest, rest)
      torch_module = f"layer{stage}.{block}.{rest}"
    table = _BN_LEAVES if _is_bn(tuple(module_path)) else _CONV_LEAVES
    torch_leaf = next(t for t, (c, n) in table.items()
                      if c == collection and n == leaf)
    array = np.asarray(value)
    if leaf == "kernel":
      array = array.transpose(3, 2, 0, 1)
    out[f"{torch_module}.{torch_leaf}"] = array
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict from .pth/.pt, .safetensors or .npz as numpy."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"pretrained weights file not found: {path}")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  if suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(f"reading {path} needs the `safetensors` package; or "
                       "convert it to .npz with scripts/convert_timm_weights.py"
                       ) from e
    return dict(load_file(path))
  if suffix in (".pth", ".pt", ".bin"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(f"reading {path} needs torch; convert it once to .npz "
                       "with scripts/convert_timm_weights.py on a machine "
                       "with torch") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
      if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
    if not isinstance(obj, dict):
      raise ValueError(f"{path} does not hold a state dict (got {type(obj)})")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()
            if hasattr(v, "detach")}
  raise ValueError(f"unsupported weights file {path!r}: expected .pth, .pt, "
                   ".bin, .safetensors or .npz")


def check_finite(state: Mapping[str, np.ndarray], path: str) -> None:
  """Raises ValueError naming the first tensor of `state` with a NaN or inf."""
  for key, value in state.items():
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
      bad = int(np.size(arr) - np.isfinite(arr).sum())
      raise ValueError(f"{path}: tensor {key!r} holds {bad} NaN/inf value(s)")


def load_pretrained(path: str | os.PathLike,
                    arch: str | encoders_lib.ResNetEncoder,
                    classifier: str = "ignore") -> dict[str, Any]:
  """Reads a weights file, checks that it is finite and converts it (see `convert_torch_state_dict`).

  Any problem (missing, unreadable or truncated file, NaN/inf values, names or shapes that do not fit the
  encoder) is an `errors.InputError` naming the file.
  """
  path = os.fspath(path)
  try:
    state = read_state_dict(path)
    check_finite(state, path)
    return convert_torch_state_dict(state, arch, classifier=classifier)
  except Exception as e:  # pylint: disable=broad-except  (torch/numpy/zip errors of damaged files too)
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    where = "" if path in first else f"{path}: "
    raise errors.InputError(f"pretrained weights (config.model.pretrained): {where}{first}") from None


def merge_into(variables: Mapping[str, Any], encoder_vars: Mapping[str, Any],
               prefix: Sequence[str] = ("encoder",)) -> dict[str, Any]:
  """Returns `variables` with the subtree at `prefix` replaced by `encoder_vars`.

  Each collection of `encoder_vars` ('params', 'batch_stats') must match the
  existing subtree exactly in names and shapes; otherwise a ValueError lists
  all differences. The input is not modified.
  """
  prefix = tuple(prefix)
  result = jax.tree_util.tree_map(lambda x: x, flax.core.unfreeze(dict(variables)))
  problems = []
  for collection, new_tree in encoder_vars.items():
    if collection not in result:
      problems.append(f"collection {collection!r} not in target variables")
      continue
    node = result[collection]
    for name in prefix[:-1]:
      node = node.get(name, {}) if isinstance(node, dict) else {}
    if not isinstance(node, dict) or prefix[-1] not in node:
      problems.append(f"{collection}/{'/'.join(prefix)} not in target variables")
      continue
    old = flax.traverse_util.flatten_dict(flax.core.unfreeze(node[prefix[-1]]))
    new = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(new_tree)))
    for k in sorted(set(old) | set(new)):
      where = "/".join((collection,) + prefix + k)
      if k not in new:
        problems.append(f"{where} {tuple(old[k].shape)} missing from encoder_vars")
      elif k not in old:
        problems.append(f"{where} {tuple(np.shape(new[k]))} not in target")
      elif tuple(np.shape(new[k])) != tuple(old[k].shape):
        problems.append(f"{where}: encoder_vars {tuple(np.shape(new[k]))} vs "
                        f"target {tuple(old[k].shape)}")
    if not problems:
      node[prefix[-1]] = flax.traverse_util.unflatten_dict(
          {k: jnp.asarray(v, dtype=old[k].dtype) for k, v in new.items()})
  if problems:
    raise ValueError("cannot merge encoder variables:\n  " + "\n  ".join(problems))
  return result
