"""Jacobian penalty (Hutchinson) and spectral-radius monitor against exact linear-algebra answers."""

import functools

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


# A small nonlinear map with a non-symmetric Jacobian that couples nothing across the batch:
# f(y) = tanh(y W + x U), y and x [B, D]. Contractive (||W|| ~ 0.5), so y* = f(y*) is unique.
B, D = 2, 6


def _f(y, w, u, x):
    return jnp.tanh(y @ w + x @ u)


@functools.cache  # float64 arrays, built once for the x64 tests below
def _params():
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    w = 0.5 * jax.random.normal(k[0], (D, D)) / np.sqrt(D)
    u = jax.random.normal(k[1], (D, D)) / np.sqrt(D)
    x = jax.random.normal(k[2], (B, D))
    return w, u, x


def _dense_jacobian(y, w, u, x):
    """J[i, j] = d vec(f)_i / d vec(y)_j, the full [B·D, B·D] matrix (zero off the per-sample blocks)."""
    return jax.jacobian(_f)(y, w, u, x).reshape(B * D, B * D)


@functools.cache
def _probe_moment(seed, n_samples):
    """M = sum_k vec(eps_k) vec(eps_k)^T over the penalty's own probes (they depend only on the key and on
    the shape of y), read off the penalty of the linear map vec(y) -> vec(y) A: there eps^T J = A eps, the
    penalty is tr(A M A^T) / (n·size), and its gradient at A = I is 2 M / (n·size)."""
    lin = lambda y, a: (y.reshape(-1) @ a).reshape(y.shape)  # noqa: E731
    key, y = jax.random.PRNGKey(seed), jnp.zeros((B, D))
    pen = lambda a: aj.jacobian_penalty(lin, y, a, key=key, n_samples=n_samples)  # noqa: E731
    g = jax.jit(jax.grad(pen))(jnp.eye(B * D))
    return g * (n_samples * B * D) / 2.0


def _dense_penalty(y, w, u, x, m, n_samples):
    """sum_k ||eps_k^T J||^2 / (n·size) = tr(J^T M J) / (n·size) with the dense Jacobian."""
    j = _dense_jacobian(y, w, u, x)
    return jnp.trace(j.T @ m @ j) / (n_samples * B * D)


def test_jacobian_penalty_equals_the_dense_contraction_for_fixed_probes(x64):
    w, u, x = _params()
    y = jax.random.normal(jax.random.PRNGKey(6), (B, D))
    key, n = jax.random.PRNGKey(2), 3
    m = _probe_moment(2, n)
    # M is a sum of n outer products of N(0, 1) vectors: symmetric, PSD, rank n, diagonal of order n.
    np.testing.assert_allclose(np.asarray(m), np.asarray(m.T), atol=1e-5)
    ev = np.linalg.eigvalsh(np.asarray(m))
    assert ev.min() > -1e-4 and int(np.sum(ev > 1e-3 * ev.max())) == n
    assert 0.2 * n < float(jnp.mean(jnp.diag(m))) < 3.0 * n
    pen = lambda y, w, u: aj.jacobian_penalty(_f, y, w, u, x, key=key, n_samples=n)  # noqa: E731
    dense = lambda y, w, u: _dense_penalty(y, w, u, x, m, n)  # noqa: E731
    np.testing.assert_allclose(float(pen(y, w, u)), float(dense(y, w, u)), rtol=1e-5)
    # eps^T J, not J eps: the transposed contraction tr(J M J^T) differs by far more than the tolerance.
    j = _dense_jacobian(y, w, u, x)
    assert abs(float(jnp.trace(j @ m @ j.T) - jnp.trace(j.T @ m @ j))) > 0.01 * float(jnp.trace(j.T @ m @ j))
    # The gradient with respect to the state and to every parameter is the dense one (same probes).
    got = jax.jit(jax.grad(pen, argnums=(0, 1, 2)))(y, w, u)
    want = jax.jit(jax.grad(dense, argnums=(0, 1, 2)))(y, w, u)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)


def test_jacobian_penalty_through_a_solve_matches_the_dense_implicit_gradient(x64):
    w, u, x = _params()
    key, n = jax.random.PRNGKey(2), 3
    m = _probe_moment(2, n)

    def total(w, u):  # penalty at y*(w, u); the gradient flows through the solve (IFT backward)
        solver = aj.Anderson(tol=1e-12, max_iter=100)
        ys = aj.fixed_point(_f, jnp.zeros((B, D)), w, u, x, solver=solver).value
        return aj.jacobian_penalty(_f, ys, w, u, x, key=key, n_samples=n)

    got_value, got = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(w, u)

    # Dense oracle: y* by 200 plain iterations (contraction ~0.5), then
    # d/dθ P(y*(θ), θ) = ∂P/∂θ + λ^T ∂f/∂θ with (I - J)^T λ = ∂P/∂y  (implicit function theorem).
    ys = jax.lax.fori_loop(0, 200, lambda _, y: _f(y, w, u, x), jnp.zeros((B, D)))
    assert float(jnp.abs(_f(ys, w, u, x) - ys).max()) < 1e-13
    dense = lambda y, w, u: _dense_penalty(y, w, u, x, m, n)  # noqa: E731
    np.testing.assert_allclose(float(got_value), float(dense(ys, w, u)), rtol=1e-5)
    p_y, p_w, p_u = jax.grad(dense, argnums=(0, 1, 2))(ys, w, u)
    j = _dense_jacobian(ys, w, u, x)
    lam = jnp.linalg.solve((jnp.eye(B * D) - j).T, p_y.reshape(-1))
    f_w, f_u = jax.jacobian(_f, argnums=(1, 2))(ys, w, u, x)
    want = tuple(p + (lam @ fp.reshape(B * D, D * D)).reshape(D, D) for p, fp in ((p_w, f_w), (p_u, f_u)))
    # The solve's contribution is not negligible: dropping it would fail the comparison below.
    assert float(jnp.linalg.norm(want[0] - p_w)) > 0.05 * float(jnp.linalg.norm(want[0]))
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)


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
