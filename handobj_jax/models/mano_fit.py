"""Fit the MANO layer to 3D hand joints (batched, jitted): pose, shape and translation from 21 joints.

Semi-Hand-Object evaluates on FPHA with hand meshes obtained, following Hasson et al. (CVPR 2019/2020), by
fitting MANO to the dataset's 21 annotated joints; `fit_mano_to_joints` does that for a whole batch at once.

Frames, units and layouts:
  * Targets `joints` [B, 21, 3] in metres, in any right-handed frame (e.g. the OpenCV camera frame), in
    HO-3D order (`mano.JOINT21_NAMES`: MANO's 16 joints, then the 5 fingertips thumb, index, middle, ring,
    little, which the model reads from the vertices `tip_ids`).
  * Results follow `mano.mano_forward(model, pose, betas, trans, tip_ids=..., flat_hand_mean=...)` exactly:
    `pose` [B, 48] axis-angle (global rotation in the targets' frame, then 15 articulated joints, radians;
    relative to `hands_mean` unless `flat_hand_mean`), `betas` [B, 10], `trans` [B, 3] metres, and `verts`
    [B, 778, 3] / `joints` [B, 21, 3] are that call's output (float32 NumPy).
  * `joint_error_m` [B]: mean over the 21 joints of the Euclidean distance between the fitted and target
    joints, metres (unweighted, whatever `joint_weights` is).

Method:
  1. Initialisation (closed form, per example): the rest hand (zero pose and shape) is aligned to the targets
     by the least-squares rigid motion (Kabsch/Horn, proper rotation) of its 6 palm joints: wrist, the 4
     finger MCPs and the thumb CMC. Horn's quaternion is the dominant eigenvector of a 4x4 symmetric matrix,
     found by repeated squaring (no LAPACK call: safe inside sharded CPU programs, see
     `geometry.small_linalg`), so the optimisation starts with the palm in place.
  2. Adam (optax), `steps` iterations inside one jitted `lax.scan` over the whole batch (examples do not
     interact: Adam is elementwise and the loss is a sum of per-example terms), learning rate cosine-decayed
     to 1 %. Parameters: a rotation update `d` applied on the right of the initial rotation,
     R = R0 exp([d]x), the 45 articulated values, the 10 betas, and the translation (stepped in 0.1 m units,
     so that one Adam step moves it by about 0.1 x learning_rate metres). Loss per example:
       sum_j w_j |joint_j - target_j|^2 / sum_j w_j     in mm^2
       + pose_prior_weight * |articulated pose|^2 (rad^2) + shape_prior_weight * |betas|^2.
     The priors are small L2 terms that pick a solution where the joints leave the pose undetermined
     (e.g. twist about a finger's axis) and keep degenerate fits bounded.
  3. The global rotation is converted to axis-angle and the final mesh computed with `mano_forward`.

Degenerate targets (all joints equal, collinear joints) give finite results (the palm fit falls back to any
valid rotation); non-finite targets are a ValueError.

jit: the model is closed over (it carries a Python string and a static kinematic tree); one compiled program
is kept per (model, tip_ids, flat_hand_mean, steps, batch size). Pass `chunk_size` to fit batches of varying
size with one compilation (the last chunk is padded by repeating its last example).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from handobj_jax.geometry import rotation
from handobj_jax.models import mano as mano_lib

# HO-3D-order indices of the palm joints used for the rigid initialisation: wrist, index / middle / little /
# ring MCP, thumb CMC.
PALM_JOINTS = (0, 1, 4, 7, 10, 13)
TRANS_STEP_M = 0.1  # The translation parameter's unit (module docstring).
_HIGHEST = jax.lax.Precision.HIGHEST
_SQUARINGS = 40  # Repeated squarings of Horn's matrix: its power 2**40 isolates the dominant eigenvector.
_CACHE_SIZE = 8


def _dominant_eigenvector_4(n: jax.Array) -> jax.Array:
  """Unit eigenvector [..., 4] of the largest eigenvalue of a symmetric [..., 4, 4] matrix.

  A = N + (|N|_F + eps) I is positive semi-definite with the same eigenvectors; A^(2^k), renormalised after
  each squaring, tends to a multiple of the projector onto the dominant eigenspace, any non-zero column of
  which is a dominant eigenvector (the one of largest norm is taken). N = 0 gives (1, 0, 0, 0).
  """
  fro = jnp.sqrt(jnp.sum(n * n, axis=(-2, -1)))
  eye = jnp.eye(4, dtype=n.dtype)
  a = n + (fro + 1e-20)[..., None, None] * eye
  a = a / jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))[..., None, None]

  def square(_, a):
    a = jnp.matmul(a, a, precision=_HIGHEST)
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    return a / jnp.maximum(norm, 1e-30)[..., None, None]

  a = jax.lax.fori_loop(0, _SQUARINGS, square, a)
  col_norm = jnp.sqrt(jnp.sum(a * a, axis=-2))  # [..., 4]
  best = jnp.argmax(col_norm, axis=-1)
  v = jnp.take_along_axis(a, best[..., None, None], axis=-1)[..., 0]
  norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
  ok = norm > 1e-12
  unit = jnp.where(ok, v / jnp.where(ok, norm, 1.0), jnp.asarray([1.0, 0.0, 0.0, 0.0], n.dtype))
  return unit


def _quaternion_to_matrix(q: jax.Array) -> jax.Array:
  """Unit quaternion (w, x, y, z) [..., 4] -> rotation matrix [..., 3, 3] (column vectors)."""
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  rows = [
      jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ]
  return jnp.stack(rows, axis=-2)


def rigid_align(src: jax.Array, dst: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Least-squares proper rigid motion (R, t) with dst ~ R src + t (Horn's quaternion method).

  Args:
    src, dst: [..., K, 3] corresponding points (K >= 1).

  Returns:
    R [..., 3, 3] (det +1) and t [..., 3]; finite for degenerate input (coincident or collinear points
    leave the rotation partly free: one valid minimiser is returned).
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  src_c = jnp.mean(src, axis=-2)
  dst_c = jnp.mean(dst, axis=-2)
  p = src - src_c[..., None, :]
  q = dst - dst_c[..., None, :]
  s = jnp.einsum("...ka,...kb->...ab", p, q, precision=_HIGHEST)  # s[a, b] = sum_k p_a q_b
  sxx, sxy, sxz = s[..., 0, 0], s[..., 0, 1], s[..., 0, 2]
  syx, syy, syz = s[..., 1, 0], s[..., 1, 1], s[..., 1, 2]
  szx, szy, szz = s[..., 2, 0], s[..., 2, 1], s[..., 2, 2]
  n = jnp.stack([
      jnp.stack([sxx + syy + szz, syz - szy, szx - sxz, sxy - syx], -1),
      jnp.stack([syz - szy, sxx - syy - szz, sxy + syx, szx + sxz], -1),
      jnp.stack([szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy], -1),
      jnp.stack([sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz], -1),
  ], axis=-2)
  r = _quaternion_to_matrix(_dominant_eigenvector_4(n))
  t = dst_c - jnp.einsum("...ij,...j->...i", r, src_c, precision=_HIGHEST)
  return r, t


def _make_fit(model: mano_lib.ManoModel, tip_ids: tuple[int, ...], flat_hand_mean: bool, steps: int):
  """The jitted fit for one model / tip set / convention / step count (see `fit_mano_to_joints`)."""
  forward = functools.partial(mano_lib.mano_forward, model, tip_ids=tip_ids, flat_hand_mean=flat_hand_mean)

  def local_joints(pose45, betas):
    """Joints [B, 21, 3] with zero global rotation and translation (wrist at the shaped rest wrist)."""
    full = jnp.concatenate([jnp.zeros(pose45.shape[:-1] + (3,), jnp.float32), pose45], axis=-1)
    return forward(full, betas)[1]

  def placed(params, r0, t0):
    """mano_forward's joints for global rotation R0 exp([d]x) and translation t0 + step * dtrans."""
    r = jnp.matmul(r0, rotation.axis_angle_to_matrix(params["rot"]), precision=_HIGHEST)
    local = local_joints(params["pose"], params["betas"])
    wrist = local[:, :1]
    rotated = jnp.einsum("bij,bkj->bki", r, local - wrist, precision=_HIGHEST)
    trans = t0 + TRANS_STEP_M * params["dtrans"]
    return rotated + wrist + trans[:, None], r, trans

  def fit(targets, weights, learning_rate, pose_prior_weight, shape_prior_weight):
    batch = targets.shape[0]
    rest = local_joints(jnp.zeros((1, 45), jnp.float32), jnp.zeros((1, mano_lib.NUM_BETAS), jnp.float32))
    palm = np.asarray(PALM_JOINTS)
    src = jnp.broadcast_to(rest[:, palm], (batch, len(PALM_JOINTS), 3))
    r0, t = rigid_align(src, targets[:, palm])
    wrist0 = rest[0, 0]
    # mano_forward pivots the global rotation about the rest wrist: R x + t = R (x - j0) + j0 + trans.
    t0 = t + jnp.einsum("bij,j->bi", r0, wrist0, precision=_HIGHEST) - wrist0
    params = {"rot": jnp.zeros((batch, 3), jnp.float32), "pose": jnp.zeros((batch, 45), jnp.float32),
              "betas": jnp.zeros((batch, mano_lib.NUM_BETAS), jnp.float32),
              "dtrans": jnp.zeros((batch, 3), jnp.float32)}
    wsum = jnp.maximum(jnp.sum(weights, axis=-1), 1e-12)

    def loss_fn(params):
      pred, _, _ = placed(params, r0, t0)
      sq = jnp.sum((pred - targets) ** 2, axis=-1) * 1e6  # mm^2
      data = jnp.sum(weights * sq, axis=-1) / wsum
      prior = (pose_prior_weight * jnp.sum(params["pose"] ** 2, axis=-1)
               + shape_prior_weight * jnp.sum(params["betas"] ** 2, axis=-1))
      return jnp.sum(data + prior)

    schedule = optax.cosine_decay_schedule(1.0, max(steps, 1), alpha=0.01)
    opt = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule),
                      optax.scale(-1.0))
    state = opt.init(params)

    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss_fn)(params)
      updates, state = opt.update(grads, state, params)
      updates = jax.tree.map(lambda u: learning_rate * u, updates)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
    _, r, trans = placed(params, r0, t0)
    pose = jnp.concatenate([rotation.matrix_to_axis_angle(r), params["pose"]], axis=-1)
    verts, joints = forward(pose, params["betas"], trans)
    error = jnp.mean(jnp.sqrt(jnp.sum((joints - targets) ** 2, axis=-1)), axis=-1)
    return {"pose": pose, "betas": params["betas"], "trans": trans, "verts": verts, "joints": joints,
            "joint_error_m": error}

  return jax.jit(fit)


_FITS: dict[tuple, tuple[Any, Any]] = {}  # key -> (model, jitted fit); the model is kept so its id stays unique.


def _cached_fit(model, tip_ids, flat_hand_mean, steps):
  key = (id(model), tip_ids, flat_hand_mean, steps)
  if key not in _FITS:
    if len(_FITS) >= _CACHE_SIZE:
      _FITS.pop(next(iter(_FITS)))
    _FITS[key] = (model, _make_fit(model, tip_ids, flat_hand_mean, steps))
  return _FITS[key][1]


def fit_mano_to_joints(model: mano_lib.ManoModel, joints: np.ndarray, *,
                       tip_ids: Sequence[int] = mano_lib.HO3D_TIP_IDS, flat_hand_mean: bool = True,
                       steps: int = 500, learning_rate: float = 0.05, pose_prior_weight: float = 1e-3,
                       shape_prior_weight: float = 1e-3, joint_weights: np.ndarray | None = None,
                       chunk_size: int | None = None) -> dict[str, np.ndarray]:
  """MANO parameters and mesh that best explain 21 target joints per example (module docstring).

  Args:
    model: a ManoModel (`mano.load_mano`; None there gives the synthetic model).
    joints: [B, 21, 3] targets, metres, HO-3D order.
    tip_ids: the 5 fingertip vertex ids (thumb, index, middle, ring, little) that define joints 16-20.
    flat_hand_mean: MANO's pose convention (`mano.mano_forward`); the pose prior pulls towards zero pose,
      i.e. the flat hand (True) or MANO's mean hand (False).
    steps: Adam iterations.
    learning_rate: peak Adam step (radians for rotations, shape units for betas, 0.1 m for translation).
    pose_prior_weight, shape_prior_weight: L2 prior weights, in mm^2 per rad^2 / per unit beta^2.
    joint_weights: optional [21] or [B, 21] non-negative weights of the joint terms (default all 1).
    chunk_size: fit in chunks of this many examples (one compilation for any B; the last is padded).

  Returns:
    dict of float32 NumPy arrays: pose [B, 48], betas [B, 10], trans [B, 3], verts [B, 778, 3],
    joints [B, 21, 3], joint_error_m [B].
  """
  targets = np.asarray(joints, np.float32)
  if targets.ndim != 3 or targets.shape[1:] != (21, 3):
    raise ValueError(f"joints must be [B, 21, 3], got {targets.shape}")
  if not np.all(np.isfinite(targets)):
    bad = int(np.argwhere(~np.isfinite(targets))[0, 0])
    raise ValueError(f"joints of example {bad} are not finite")
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps}")
  tips = tuple(int(i) for i in tip_ids)
  if len(tips) != 5:
    raise ValueError(f"tip_ids must hold 5 vertex ids, got {tip_ids}")
  b = targets.shape[0]
  if joint_weights is None:
    weights = np.ones((b, 21), np.float32)
  else:
    weights = np.broadcast_to(np.asarray(joint_weights, np.float32), (b, 21)).copy()
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
      raise ValueError("joint_weights must be finite and non-negative")
  if b == 0:
    return {"pose": np.zeros((0, 48), np.float32), "betas": np.zeros((0, 10), np.float32),
            "trans": np.zeros((0, 3), np.float32), "verts": np.zeros((0, mano_lib.NUM_VERTS, 3), np.float32),
            "joints": np.zeros((0, 21, 3), np.float32), "joint_error_m": np.zeros((0,), np.float32)}
  fit = _cached_fit(model, tips, bool(flat_hand_mean), int(steps))
  scalars = (np.float32(learning_rate), np.float32(pose_prior_weight), np.float32(shape_prior_weight))
  size = b if chunk_size is None else int(chunk_size)
  if size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  outs = []
  for start in range(0, b, size):
    stop = min(start + size, b)
    idx = np.minimum(np.arange(start, start + size), stop - 1)  # Pad by repeating the last example.
    out = fit(targets[idx], weights[idx], *scalars)
    outs.append({k: np.asarray(v, np.float32)[:stop - start] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}
