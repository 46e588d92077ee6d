"""Tests for handobj_jax.geometry.rotation against SciPy (float64) references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handobj_jax.geometry import rotation

TOL = 1e-5


def _random_rotvecs(rng, n, max_angle=np.pi - 1e-2):
  axis = rng.normal(size=(n, 3))
  axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
  angle = rng.uniform(0.0, max_angle, size=(n, 1))
  return axis * angle


def _modes(fn, x):
  """Runs fn eagerly, under jit and under vmap over axis 0; returns all three."""
  eager = np.asarray(fn(x))
  jitted = np.asarray(jax.jit(fn)(x))
  vmapped = np.asarray(jax.vmap(fn)(x))
  return eager, jitted, vmapped


def _assert_modes_agree(fn, x, ref, atol):
  outs = _modes(fn, jnp.asarray(x, jnp.float32))
  for name, out in zip(("eager", "jit", "vmap"), outs):
    assert out.dtype == np.float32, name
    np.testing.assert_allclose(out, ref, atol=atol, err_msg=name)


def test_axis_angle_to_matrix_matches_scipy():
  rng = np.random.default_rng(0)
  aa = np.concatenate([
      _random_rotvecs(rng, 200),
      np.zeros((1, 3)),
      1e-7 * rng.normal(size=(5, 3)),
      1e-3 * rng.normal(size=(5, 3)),
      # Exactly at the Taylor threshold and just around it.
      np.array([[1e-2, 0, 0], [0, 0.99e-2, 0], [0, 0, 1.01e-2]]),
  ])
  ref = Rotation.from_rotvec(aa).as_matrix()
  _assert_modes_agree(rotation.axis_angle_to_matrix, aa, ref, TOL)


def test_axis_angle_to_matrix_any_leading_shape():
  rng = np.random.default_rng(1)
  aa = _random_rotvecs(rng, 24).reshape(2, 3, 4, 3)
  out = rotation.axis_angle_to_matrix(aa)
  assert out.shape == (2, 3, 4, 3, 3)
  ref = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(2, 3, 4, 3, 3)
  np.testing.assert_allclose(out, ref, atol=TOL)


def test_matrix_to_axis_angle_matches_scipy():
  rng = np.random.default_rng(2)
  aa = np.concatenate([
      _random_rotvecs(rng, 200, max_angle=np.pi - 1e-3),
      np.zeros((1, 3)),
      1e-6 * rng.normal(size=(5, 3)),
  ])
  mats = Rotation.from_rotvec(aa).as_matrix()
  ref = Rotation.from_matrix(mats).as_rotvec()
  _assert_modes_agree(rotation.matrix_to_axis_angle, mats, ref, TOL)


def test_matrix_to_axis_angle_near_pi_gives_same_rotation():
  rng = np.random.default_rng(3)
  aa = _random_rotvecs(rng, 50, max_angle=np.pi)
  aa *= (np.pi - rng.uniform(0, 1e-4, size=(50, 1))) / np.linalg.norm(
      aa, axis=-1, keepdims=True)
  mats = Rotation.from_rotvec(aa).as_matrix()
  out = np.asarray(rotation.matrix_to_axis_angle(mats), np.float64)
  # At pi, +a and -a are the same rotation: compare as matrices.
  np.testing.assert_allclose(
      Rotation.from_rotvec(out).as_matrix(), mats, atol=1e-5)
  assert np.all(np.linalg.norm(out, axis=-1) <= np.pi + 1e-5)


def _numeric_jacobian(aa):
  """Central differences of SciPy's float64 Rodrigues: [9, 3]."""
  h = 1e-6
  jac = np.zeros((9, 3))
  for k in range(3):
    d = np.zeros(3)
    d[k] = h
    plus = Rotation.from_rotvec(aa + d).as_matrix().reshape(9)
    minus = Rotation.from_rotvec(aa - d).as_matrix().reshape(9)
    jac[:, k] = (plus - minus) / (2 * h)
  return jac


@pytest.mark.parametrize("aa", [
    [0.0, 0.0, 0.0],
    [1e-8, -2e-8, 0.0],
    [3e-3, -1e-3, 2e-3],
    [0.0099, 0.0, 0.0],
    [0.0101, 0.0, 0.0],
    [0.3, -0.7, 1.1],
    [2.0, 1.0, -0.5],
])
def test_axis_angle_jacobian_finite_and_correct(aa):
  aa = np.asarray(aa, np.float64)
  fn = lambda x: rotation.axis_angle_to_matrix(x).reshape(9)
  jac = np.asarray(jax.jacfwd(fn)(jnp.asarray(aa, jnp.float32)))
  jac_rev = np.asarray(jax.jacrev(fn)(jnp.asarray(aa, jnp.float32)))
  assert np.all(np.isfinite(jac)) and np.all(np.isfinite(jac_rev))
  ref = _numeric_jacobian(aa)
  np.testing.assert_allclose(jac, ref, atol=1e-5)
  np.testing.assert_allclose(jac_rev, ref, atol=1e-5)


def test_axis_angle_jacobian_at_zero_is_skew_generators():
  jac = np.asarray(jax.jacfwd(rotation.axis_angle_to_matrix)(jnp.zeros(3)))
  for k in range(3):
    e = np.zeros(3)
    e[k] = 1.0
    expected = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
    np.testing.assert_allclose(jac[..., k], expected, atol=1e-7)


def test_matrix_to_axis_angle_gradient_finite_at_identity():
  def loss(a):
    return jnp.sum(rotation.matrix_to_axis_angle(
        rotation.axis_angle_to_matrix(a)) ** 2)
  for a in (jnp.zeros(3), jnp.full(3, 1e-7)):
    g = jax.grad(loss)(a)
    assert np.all(np.isfinite(np.asarray(g)))
  # Round trip Jacobian is identity away from zero and at zero.
  for a in (jnp.zeros(3), jnp.array([0.2, -0.1, 0.4])):
    jac = jax.jacfwd(lambda x: rotation.matrix_to_axis_angle(
        rotation.axis_angle_to_matrix(x)))(a)
    np.testing.assert_allclose(jac, np.eye(3), atol=1e-4)


def test_rotation_6d_round_trip_and_gram_schmidt():
  rng = np.random.default_rng(4)
  aa = _random_rotvecs(rng, 100)
  mats = Rotation.from_rotvec(aa).as_matrix()
  d6 = np.asarray(rotation.matrix_to_rotation_6d(mats))
  _assert_modes_agree(rotation.rotation_6d_to_matrix, d6, mats, TOL)
  # Non-orthonormal input: compare with a float64 NumPy Gram-Schmidt.
  raw = rng.normal(size=(50, 6))
  a1, a2 = raw[:, :3], raw[:, 3:]
  b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
  b2 = a2 - np.sum(b1 * a2, -1, keepdims=True) * b1
  b2 /= np.linalg.norm(b2, axis=-1, keepdims=True)
  ref = np.stack([b1, b2, np.cross(b1, b2)], axis=-1)
  _assert_modes_agree(rotation.rotation_6d_to_matrix, raw, ref, TOL)
  np.testing.assert_allclose(np.linalg.det(ref), 1.0, atol=1e-9)


def test_degenerate_inputs_are_finite():
  out = rotation.rotation_6d_to_matrix(jnp.zeros((2, 6)))
  assert np.all(np.isfinite(np.asarray(out)))
  g = jax.grad(lambda x: jnp.sum(rotation.rotation_6d_to_matrix(x)))(
      jnp.zeros(6))
  assert np.all(np.isfinite(np.asarray(g)))
  g = jax.grad(lambda m: jnp.sum(rotation.matrix_to_axis_angle(m)))(
      jnp.eye(3))
  assert np.all(np.isfinite(np.asarray(g)))
