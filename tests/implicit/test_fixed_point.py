"""Implicit gradients: agreement with jaxopt and with long unrolls, truncations, transformations, host syncs."""

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import pytest

import attractor_jax as aj


def problem(batch=3, dim=12, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "w": jax.random.normal(k1, (dim, dim)) * 0.8 / np.sqrt(dim),
        "u": jax.random.normal(k2, (dim, dim)) / np.sqrt(dim),
    }
    x = jax.random.normal(k3, (batch, dim))
    return params, x


def layer(y, params, x):
    return jnp.tanh(y @ params["w"] + x @ params["u"])


def make_loss(backward, solver=None):
    solver = solver or aj.Anderson(tol=1e-12, max_iter=200)

    def loss(params, x):
        sol = aj.fixed_point(layer, jnp.zeros_like(x), params, x, solver=solver, backward=backward)
        return jnp.sum(jnp.sin(sol.value) * jnp.arange(sol.value.shape[-1]))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def rel_err(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.linalg.norm(p - q) / jnp.linalg.norm(q)) for p, q in zip(la, lb))


@pytest.fixture
def grads64(x64):
    """Reference gradients in float64: autodiff through a long unroll, and jaxopt's implicit differentiation."""
    params, x = problem()
    unrolled = make_loss(aj.Unrolled(), aj.Picard(tol=0.0, max_iter=300))(params, x)

    solve = lambda matvec, b: jaxopt.linear_solve.solve_gmres(matvec, b, tol=1e-13)  # noqa: E731

    @jaxopt.implicit_diff.custom_fixed_point(lambda y, params, x: layer(y, params, x), solve=solve)
    def jaxopt_solve(init, params, x):
        y = init
        for _ in range(300):
            y = layer(y, params, x)
        return y

    def jaxopt_loss(params, x):
        y = jaxopt_solve(jnp.zeros_like(x), params, x)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1]))

    oracle = jax.grad(jaxopt_loss, argnums=(0, 1))(params, x)
    assert rel_err(unrolled, oracle) < 1e-9
    return params, x, oracle


@pytest.mark.parametrize(
    "backward",
    [
        aj.IFT(),
        aj.IFT(solver="picard", tol=1e-12, max_iter=300),
        aj.IFT(solver="broyden", tol=1e-12),
        aj.IFT(solver="gmres", tol=1e-12),
    ],
    ids=["anderson", "picard", "broyden", "gmres"],
)
def test_ift_gradient_matches_jaxopt_and_unroll(grads64, backward):
    params, x, oracle = grads64
    assert rel_err(make_loss(backward)(params, x), oracle) < 1e-5


def test_truncated_gradients_approach_ift_as_k_grows(grads64):
    params, x, oracle = grads64
    neumann = [rel_err(make_loss(aj.Neumann(k=k))(params, x), oracle) for k in (0, 1, 4, 16)]
    phantom = [rel_err(make_loss(aj.Phantom(k=k))(params, x), oracle) for k in (1, 4, 16)]
    assert all(a > b for a, b in zip(neumann, neumann[1:])), neumann
    assert all(a > b for a, b in zip(phantom, phantom[1:])), phantom
    assert neumann[-1] < 1e-3 and phantom[-1] < 1e-3
    # Phantom with one undamped step and Neumann-0 are both the JFB gradient u = v.
    assert rel_err(make_loss(aj.Phantom(k=1))(params, x), make_loss(aj.Neumann(k=0))(params, x)) < 1e-10


def test_neumann_clip_matches_the_reference_formula(x64):
    # u = v + c * J^T v with c = min(1, clip * ||v|| / ||J^T v||) per sample (the reference's adjoint clip).
    params, x = problem(batch=2)
    params = {"w": params["w"] * 3.0, "u": params["u"]}
    y_star = aj.fixed_point(layer, jnp.zeros_like(x), params, x, solver=aj.Anderson(tol=1e-12, max_iter=300)).value
    v = jnp.cos(y_star) * jnp.arange(y_star.shape[-1])
    _, vjp = jax.vjp(layer, y_star, params, x)
    jtv = vjp(v)[0]
    scale = jnp.minimum(1.0, 0.1 * jnp.linalg.norm(v, axis=-1) / jnp.linalg.norm(jtv, axis=-1))
    assert float(scale.max()) < 1.0  # the clip is active
    want = vjp(v + scale[:, None] * jtv)[1:]
    got = make_loss(aj.Neumann(k=1, clip=0.1), aj.Anderson(tol=1e-12, max_iter=300))(params, x)
    assert rel_err(got, want) < 1e-8


def test_vmap_pytree_args_and_closures():
    params, x = problem(batch=2, dim=6)
    scales = jnp.array([0.5, 1.0, 1.5])

    def loss(params, s, x):
        # f closes over `s` (a traced value): the closure is converted, so `s` gets its gradient too.
        f = lambda y, p: layer(y, {"w": s * p["w"], "u": p["u"]}, x)  # noqa: E731
        sol = aj.fixed_point(f, jnp.zeros_like(x), params, solver=aj.Anderson(tol=1e-6, max_iter=100))
        return jnp.sum(sol.value ** 2)

    g_batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0, None)))(params, scales, x)
    for i, s in enumerate(scales):
        g_one = jax.grad(loss, argnums=(0, 1))(params, s, x)
        assert rel_err(jax.tree_util.tree_map(lambda a: a[i], g_batched), g_one) < 1e-4
    assert float(jnp.abs(g_batched[1]).min()) > 0.0


def test_adjoint_statistics_reach_the_probe():
    params, x = problem()

    def loss(params, probe):
        sol = aj.fixed_point(layer, jnp.zeros_like(x), params, x, solver=aj.Anderson(tol=1e-6, max_iter=100),
                             backward=aj.IFT(tol=1e-6), probe=probe)
        return jnp.sum(sol.value)

    _, probe_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, aj.adjoint_probe(x.shape[0]))
    stats = aj.adjoint_stats(probe_grad)
    assert stats.iterations.shape == (3,)
    assert bool(stats.converged.all()) and float(stats.residual.max()) <= 1e-6
    assert int(stats.iterations.min()) >= 2


def test_non_contractive_map_gives_finite_gradients():
    # w with spectral norm ~3: the fixed-point iteration does not converge; nothing may turn NaN.
    params, x = problem()
    params = {"w": params["w"] * 6.0, "u": params["u"]}
    for backward in (aj.IFT(), aj.Neumann(k=3), aj.Phantom(k=3), aj.Unrolled()):
        def loss(params):
            sol = aj.fixed_point(layer, jnp.zeros_like(x), params, x,
                                 solver=aj.Picard(tol=1e-8, max_iter=30), backward=backward)
            return jnp.sum(sol.value ** 2), sol

        (value, sol), grads = jax.value_and_grad(loss, has_aux=True)(params)
        assert not bool(sol.stats.converged.all()), backward
        assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(sol.value)))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads)), backward


def test_jitted_gradient_step_makes_no_host_transfers():
    params, x = problem()

    @jax.jit
    def step(params, x):
        def loss(params):
            sol = aj.fixed_point(layer, jnp.zeros_like(x), params, x, backward=aj.IFT())
            return jnp.mean(sol.value ** 2), sol.stats

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        return params, value, stats

    params, x = jax.device_put((params, x))
    step(params, x)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        new_params, value, stats = step(params, x)
    assert bool(jnp.isfinite(value)) and stats.iterations.shape == (3,)


def test_gradient_to_y0_only_where_the_math_says_so():
    params, x = problem(batch=2, dim=4)

    def g0(backward, solver=aj.Picard(tol=1e-9, max_iter=40)):
        f = lambda y0: jnp.sum(aj.fixed_point(layer, y0, params, x, solver=solver, backward=backward).value)  # noqa
        return jax.grad(f)(0.3 * x)

    assert float(jnp.abs(g0(aj.IFT())).max()) == 0.0
    assert float(jnp.abs(g0(aj.Neumann(k=2))).max()) == 0.0
    assert float(jnp.abs(g0(aj.Phantom(k=2))).max()) == 0.0
    assert float(jnp.abs(g0(aj.Unrolled(), aj.Picard(tol=0.0, max_iter=3))).max()) > 0.0
    # max_iter = 0 returns y0 itself: the identity map, whose gradient is one.
    np.testing.assert_array_equal(np.asarray(g0(aj.IFT(), aj.Picard(max_iter=0))), np.ones_like(x))


@pytest.mark.parametrize("backward", [aj.Unrolled(), aj.Phantom(k=2), aj.IFT(max_iter=60), aj.IFT(solver="picard", max_iter=60)],
                         ids=["unrolled", "phantom", "ift-anderson", "ift-picard"])
def test_no_nan_gradient_when_anderson_falls_back(backward):
    # y -> y/2 + 1 from y0 = 2 (its fixed point): every residual is 0, the Gram matrix is 0 and with ridge 0 the
    # Cholesky fails at every step, so every step takes the fallback. No NaN may leak into any gradient.
    solver = aj.Anderson(ridge=0.0, tol=0.0, max_iter=6)

    def loss(a):
        sol = aj.fixed_point(lambda y, a: a * y + 1.0, jnp.full((2, 3), 2.0), a, solver=solver, backward=backward)
        return jnp.sum(sol.value)

    g = jax.grad(loss)(jnp.asarray(0.5))
    # d/da of y* = 1/(1 - a) is 1/(1 - a)^2 = 4 per entry; Unrolled from y0 = y* gives the same, Phantom k = 2
    # gives (1 + a) y* = 3 per entry.
    want = {"phantom": 6 * 3.0}.get(type(backward).__name__.lower(), 6 * 4.0)
    assert bool(jnp.isfinite(g))
    if isinstance(backward, aj.IFT) or isinstance(backward, aj.Phantom):
        np.testing.assert_allclose(float(g), want, rtol=1e-4)


@pytest.mark.parametrize("backward", [aj.Unrolled(), aj.Phantom(k=2)], ids=["unrolled", "phantom"])
def test_no_nan_gradient_through_a_failed_factorisation(backward):
    # y -> y + a: a constant residual, so the Gram matrix is rank one; with ridge 0 the Cholesky pivot vanishes at
    # every step and Anderson falls back to the plain step. Backprop through the steps must stay finite:
    # y_k = y0 + k a, so d(sum y)/da is the number of entries times the steps taken to the returned point.
    solver = aj.Anderson(ridge=0.0, tol=0.0, max_iter=5)

    def loss(a):
        return jnp.sum(aj.fixed_point(lambda y, a: y + a, jnp.zeros((2, 3)), a, solver=solver,
                                      backward=backward).value)

    g = float(jax.grad(loss)(jnp.asarray(1.0)))
    want = 6 * 4.0 if isinstance(backward, aj.Unrolled) else 6 * 2.0  # returned y_4; phantom: 2 steps of +a
    assert g == pytest.approx(want, rel=1e-5)


# ---- forward mode: the implicit derivative as a tangent map (custom_jvp + custom_linear_solve) ------------------


def _tree_vdot(a, b):
    return sum(jnp.vdot(p, q) for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _dense_tangent(y, params, x, dp, dx, k=None):
    """Per sample: t = (I - J)^-1 b (or the Neumann sum of J^i b for i <= k), from dense Jacobians."""
    out = []
    for i in range(x.shape[0]):
        jac = jax.jacobian(layer)(y[i], params, x[i])
        b = jax.jvp(lambda p, xi: layer(y[i], p, xi), (params, x[i]), (dp, dx[i]))[1]
        if k is None:
            out.append(jnp.linalg.solve(jnp.eye(jac.shape[0]) - jac, b))
        else:
            out.append(sum(jnp.linalg.matrix_power(jac, j) @ b for j in range(k + 1)))
    return jnp.stack(out)


@pytest.mark.parametrize(
    "backward,k",
    [(aj.IFT(), None), (aj.IFT(solver="gmres", tol=1e-12), None), (aj.Neumann(k=3), 3)],
    ids=["anderson", "gmres", "neumann3"],
)
def test_forward_mode_matches_a_dense_oracle_and_transposes_to_the_gradient(x64, backward, k):
    params, x = problem(batch=3, dim=8)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    dp = {"w": jax.random.normal(keys[0], params["w"].shape), "u": jax.random.normal(keys[1], params["u"].shape)}
    dx = jax.random.normal(keys[2], x.shape)
    ct = jax.random.normal(keys[3], x.shape)

    def solve(params, x, probe=None):
        return aj.fixed_point(layer, jnp.zeros_like(x), params, x, solver=aj.Anderson(tol=1e-13, max_iter=300),
                              backward=backward, probe=probe).value

    y, t = jax.jit(lambda p, x, dp, dx: jax.jvp(solve, (p, x), (dp, dx)))(params, x, dp, dx)
    want = _dense_tangent(y, params, x, dp, dx, k)
    assert float(jnp.abs(t - want).max()) < 1e-9 * float(jnp.abs(want).max())
    # Reverse mode is the transpose of the tangent map: <ct, t> = <vjp(ct), (dp, dx)>.
    g = jax.jit(lambda p, x, ct: jax.vjp(solve, p, x)[1](ct))(params, x, ct)
    lhs, rhs = float(jnp.vdot(ct, t)), float(_tree_vdot(g, (dp, dx)))
    assert abs(lhs - rhs) < 1e-9 * abs(lhs)
    # The reverse-only path (taken when an adjoint probe is requested) gives the same gradient.
    g_probe = jax.jit(lambda p, x, ct: jax.vjp(lambda p, x: solve(p, x, aj.adjoint_probe(3)), p, x)[1](ct))
    assert rel_err(g_probe(params, x, ct), g) < 1e-9


def test_jacfwd_jacrev_and_forward_over_reverse_hvp_agree(x64):
    params, x = problem(batch=2, dim=3)

    def loss(w):
        sol = aj.fixed_point(layer, jnp.zeros_like(x), {"w": w, "u": params["u"]}, x,
                             solver=aj.Anderson(tol=1e-13, max_iter=300))
        return jnp.sum(jnp.sin(sol.value) * jnp.arange(3.0))

    w = params["w"]
    grad = jax.jit(jax.grad(loss))
    assert rel_err(jax.jit(jax.jacfwd(loss))(w), grad(w)) < 1e-9
    # Hessian-vector product (forward over reverse) against central differences of the gradient.
    v = jax.random.normal(jax.random.PRNGKey(3), w.shape)
    hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(loss), (w,), (v,))[1])(w, v)
    eps = 1e-5
    fd = (grad(w + eps * v) - grad(w - eps * v)) / (2 * eps)
    assert rel_err(hvp, fd) < 1e-6
    assert float(jnp.abs(hvp).max()) > 1e-3


def test_forward_mode_through_a_causal_solve(x64):
    # The tangent of a causally coupled solve is solved with the forward causal rule; it must equal the dense
    # (whole-sequence) implicit derivative, and stay exactly causal: a later input's tangent moves no earlier state.
    from tests.implicit.test_solvers import causal_attention_problem

    f, (w, q, x) = causal_attention_problem(b=2, t=5, d=4, seed=1)

    def solve(x):
        return aj.fixed_point(f, jnp.zeros_like(x), w, q, x, solver=aj.Anderson(tol=1e-13, max_iter=400),
                              batch_axis=0, causal_axis=1).value

    dx = jnp.zeros_like(x).at[:, 3].set(jax.random.normal(jax.random.PRNGKey(5), (2, 4)))
    y, t = jax.jit(lambda x, dx: jax.jvp(solve, (x,), (dx,)))(x, dx)
    for i in range(2):
        fi = lambda yi, xi: f(yi[None], w, q, xi[None])[0]  # noqa: E731
        jac = jax.jacobian(fi)(y[i], x[i]).reshape(20, 20)
        b = jax.jvp(lambda xi: fi(y[i], xi), (x[i],), (dx[i],))[1].reshape(20)
        want = jnp.linalg.solve(jnp.eye(20) - jac, b).reshape(5, 4)
        assert float(jnp.abs(t[i] - want).max()) < 1e-9 * float(jnp.abs(want).max())
    assert float(jnp.abs(t[:, :3]).max()) == 0.0
