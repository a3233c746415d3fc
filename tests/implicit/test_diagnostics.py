"""Jacobian penalty (Hutchinson) and spectral-radius monitor against exact linear-algebra answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attractor_jax as aj


def test_jacobian_penalty_is_an_unbiased_frobenius_estimate():
    a = jax.random.normal(jax.random.PRNGKey(0), (6, 6)) / 3.0
    y = jnp.ones((4, 6))
    f = lambda y, a: y @ a  # noqa: E731  J = a^T for every sample
    exact = float(jnp.sum(a ** 2)) / 6.0
    est = float(aj.jacobian_penalty(f, y, a, key=jax.random.PRNGKey(1), n_samples=400))
    assert est == pytest.approx(exact, rel=0.05)


def test_jacobian_penalty_is_differentiable_and_descends():
    a = jax.random.normal(jax.random.PRNGKey(0), (6, 6)) / 3.0
    y = jnp.ones((4, 6))
    f = lambda y, a: jnp.tanh(y @ a)  # noqa: E731
    key = jax.random.PRNGKey(2)
    pen = lambda a: aj.jacobian_penalty(f, y, a, key=key, n_samples=4)  # noqa: E731
    value, grad = jax.value_and_grad(pen)(a)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    assert float(pen(a - 0.1 * grad)) < float(value)
    # Through a solve: the penalty at y* also differentiates through the fixed point.
    def total(a):
        ys = aj.fixed_point(f, jnp.zeros_like(y), a, solver=aj.Anderson(tol=1e-6)).value
        return aj.jacobian_penalty(f, ys, a, key=key)
    assert bool(jnp.all(jnp.isfinite(jax.grad(total)(a))))


def test_spectral_radius_real_and_complex_dominant_eigenvalues():
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(3), (8, 8)))
    sym = (q * jnp.array([0.7, -0.5, 0.3, 0.2, 0.1, 0.0, -0.1, 0.05])) @ q.T
    theta = 0.9
    rot = jnp.zeros((8, 8)).at[:2, :2].set(0.8 * jnp.array([[np.cos(theta), -np.sin(theta)],
                                                             [np.sin(theta), np.cos(theta)]]))
    rot = rot.at[2:, 2:].set(0.3 * jnp.eye(6))
    y = jnp.zeros((2, 8))
    for mat, want in ((sym, 0.7), (rot, 0.8)):
        rho = aj.spectral_radius(lambda y, m: y @ m.T, y, mat, key=jax.random.PRNGKey(4), n_iter=80)
        assert rho.shape == (2,)
        np.testing.assert_allclose(np.asarray(rho), want, rtol=0.03)
