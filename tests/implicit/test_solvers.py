"""Forward solvers: convergence, exact per-sample statistics, freezing, divergence handling, pytrees, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attractor_jax as aj

SOLVERS = [aj.Picard, aj.Anderson, aj.Broyden]


def tanh_problem(batch=3, dim=16, scale=0.9, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, (dim, dim)) * scale / np.sqrt(dim)
    b = jax.random.normal(k2, (batch, dim))
    return (lambda y, w, b: jnp.tanh(y @ w + b)), w, b


@pytest.mark.parametrize("cls", SOLVERS)
def test_converges_to_a_fixed_point(cls):
    f, w, b = tanh_problem()
    sol = jax.jit(lambda w, b: aj.fixed_point(f, jnp.zeros_like(b), w, b, solver=cls(tol=1e-5, max_iter=100)))(w, b)
    assert sol.value.shape == b.shape
    assert sol.stats.iterations.shape == (3,) and sol.stats.iterations.dtype == jnp.int32
    assert bool(jnp.all(sol.stats.converged)) and not bool(jnp.any(sol.stats.diverged))
    assert float(jnp.max(sol.stats.residual)) <= 1e-5
    true_res = jnp.linalg.norm(f(sol.value, w, b) - sol.value, axis=-1) / jnp.linalg.norm(sol.value, axis=-1)
    assert float(jnp.max(true_res)) < 1e-4


def test_picard_statistics_are_exact_on_a_mixed_batch(x64):
    # Scalar affine maps y -> a y + 1 from y0 = 0: x_k = (1 - a^k)/(1 - a) and the relative residual at x_k is
    # a^k (1 - a) / (1 - a^k). The k-th evaluation (k = 1, 2, ...) measures x_{k-1}; x_0 = 0 has an infinite
    # relative residual. So a sample converges at the first evaluation k >= 2 with a^(k-1)(1-a)/(1-a^(k-1)) <= tol.
    a = jnp.array([0.05, 0.5, 0.9, 0.97])
    tol = 1e-6

    def expected(ai):
        k = 2
        while ai ** (k - 1) * (1 - ai) / (1 - ai ** (k - 1)) > tol:
            k += 1
        return k

    f = lambda y, a: a[:, None] * y + 1.0  # noqa: E731
    sol = aj.fixed_point(f, jnp.zeros((4, 1)), a, solver=aj.Picard(tol=tol, max_iter=1000))
    want = [expected(float(ai)) for ai in a]
    np.testing.assert_array_equal(np.asarray(sol.stats.iterations), want)
    assert want[0] < want[1] < want[2] < want[3]
    assert bool(jnp.all(sol.stats.converged))
    np.testing.assert_allclose(np.asarray(sol.value[:, 0]), 1.0 / (1.0 - np.asarray(a)), rtol=tol / (1 - 0.97))
    # The returned value is the measured point x_{k-1} of the converging evaluation k, and the reported residual
    # is exactly its closed-form residual.
    for i, ai in enumerate(np.asarray(a)):
        k = want[i]
        assert float(sol.value[i, 0]) == pytest.approx((1 - ai ** (k - 1)) / (1 - ai), rel=1e-12)
        want_res = ai ** (k - 1) * (1 - ai) / (1 - ai ** (k - 1))
        assert float(sol.stats.residual[i]) == pytest.approx(want_res, rel=1e-6)


@pytest.mark.parametrize("cls", SOLVERS)
def test_a_sample_does_not_depend_on_its_batch_mates(cls):
    # An easy sample solved alone or next to a hard one gives the same value and iteration count (it freezes).
    f = lambda y, a, b: jnp.tanh(a[:, None] * y + b)  # noqa: E731
    b = jnp.array([[0.3, -0.2], [0.5, 0.1]])
    a = jnp.array([0.2, 0.98])
    solver = cls(tol=1e-5, max_iter=200)
    both = aj.fixed_point(f, jnp.zeros_like(b), a, b, solver=solver)
    alone = aj.fixed_point(f, jnp.zeros_like(b[:1]), a[:1], b[:1], solver=solver)
    assert int(both.stats.iterations[0]) == int(alone.stats.iterations[0])
    assert int(both.stats.iterations[0]) < int(both.stats.iterations[1])
    np.testing.assert_array_equal(np.asarray(both.value[0]), np.asarray(alone.value[0]))


@pytest.mark.parametrize("cls", SOLVERS)
def test_max_iter_zero_one_and_min_iter(cls):
    f, w, b = tanh_problem()
    y0 = 0.1 * b
    sol0 = aj.fixed_point(f, y0, w, b, solver=cls(max_iter=0))
    np.testing.assert_array_equal(np.asarray(sol0.value), np.asarray(y0))
    assert int(sol0.stats.iterations.max()) == 0 and not bool(sol0.stats.converged.any())
    # One evaluation measures y0: y0 is returned with its exact residual.
    sol1 = aj.fixed_point(f, y0, w, b, solver=cls(max_iter=1, tol=0.0))
    np.testing.assert_array_equal(np.asarray(sol1.value), np.asarray(y0))
    want = np.linalg.norm(f(y0, w, b) - y0, axis=-1) / np.linalg.norm(y0, axis=-1)
    np.testing.assert_allclose(np.asarray(sol1.stats.residual), want, rtol=1e-6)
    # Two evaluations: the first step of every solver is the plain step, so f(y0) is returned.
    sol2 = aj.fixed_point(f, y0, w, b, solver=cls(max_iter=2, tol=0.0))
    np.testing.assert_allclose(np.asarray(sol2.value), np.asarray(f(y0, w, b)), rtol=1e-6)
    sol_min = aj.fixed_point(f, y0, w, b, solver=cls(tol=10.0, min_iter=7, max_iter=20))
    np.testing.assert_array_equal(np.asarray(sol_min.stats.iterations), [7, 7, 7])


def test_two_picard_steps_with_tol_zero():
    # Three evaluations, last point kept: f(f(b)), with the residual measured there by the third evaluation.
    f, w, b = tanh_problem()
    sol = aj.fixed_point(f, b, w, b, solver=aj.Picard(max_iter=3, tol=0.0, keep_best=False))
    y2 = f(f(b, w, b), w, b)
    np.testing.assert_allclose(np.asarray(sol.value), np.asarray(y2), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sol.stats.iterations), [3, 3, 3])
    want = np.linalg.norm(f(y2, w, b) - y2, axis=-1) / np.linalg.norm(y2, axis=-1)
    np.testing.assert_allclose(np.asarray(sol.stats.residual), want, rtol=1e-5)


def test_anderson_beats_picard_on_a_slow_contraction():
    # Nearly linear map, symmetric Jacobian with spectrum in [0, 0.95]: Picard needs ~100 steps, Anderson few.
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (32, 32)))
    w = (q * jnp.linspace(0.0, 0.95, 32)) @ q.T
    b = 0.01 * jax.random.normal(k2, (2, 32))
    f = lambda y, w, b: jnp.tanh(y @ w + b)  # noqa: E731
    pic = aj.fixed_point(f, jnp.zeros_like(b), w, b, solver=aj.Picard(tol=1e-4, max_iter=500))
    aa = aj.fixed_point(f, jnp.zeros_like(b), w, b, solver=aj.Anderson(m=5, tol=1e-4, max_iter=500))
    assert bool(pic.stats.converged.all()) and bool(aa.stats.converged.all())
    assert int(aa.stats.iterations.max()) * 2 < int(pic.stats.iterations.min())


@pytest.mark.parametrize("cls", SOLVERS)
def test_non_contractive_and_nan_maps_are_reported_not_propagated(cls):
    # Non-contractive and without any fixed point: a quarter turn onto the circle of radius 2. Its relative
    # residual is >= 1 everywhere, so no solver may claim convergence (unbounded drifts could fool a relative test).
    rot = jnp.array([[0.0, -1.0], [1.0, 0.0]])
    turn = lambda y, r: 2.0 * (y @ r.T) / jnp.linalg.norm(y, axis=-1, keepdims=True)  # noqa: E731
    y0 = jnp.array([[1.0, 0.0], [0.3, -2.0], [5.0, 5.0]])
    spin = aj.fixed_point(turn, y0, rot, solver=cls(tol=1e-6, max_iter=40))
    assert not bool(spin.stats.converged.any())
    assert bool(jnp.all(jnp.isfinite(spin.value))) and bool(jnp.all(spin.stats.residual >= 0.99))
    # A map that turns non-finite after a few steps: flagged as diverged, value = best finite iterate.
    nan_late = lambda y: jnp.where(y < 2.5, y + 1.0, jnp.nan)  # noqa: E731
    blow = aj.fixed_point(nan_late, jnp.zeros((3, 4)), solver=cls(tol=1e-6, max_iter=40))
    assert bool(blow.stats.diverged.all()) and not bool(blow.stats.converged.any())
    assert bool(jnp.all(jnp.isfinite(blow.value))) and bool(jnp.all(jnp.isfinite(blow.stats.residual)))
    assert int(blow.stats.iterations.max()) < 40


def test_anderson_singular_history_falls_back_to_a_plain_step():
    # Constant residual (y -> y + 1): every history column is identical, the Gram matrix is rank one and with
    # ridge=0 the mixing weights are not finite; the solver must keep producing finite iterates.
    sol = aj.fixed_point(lambda y: y + 1.0, jnp.zeros((2, 3)), solver=aj.Anderson(ridge=0.0, tol=1e-8, max_iter=10))
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    assert not bool(sol.stats.converged.any()) and not bool(sol.stats.diverged.any())


@pytest.mark.parametrize("cls", SOLVERS)
def test_pytree_state_and_batch_axis_layouts(cls):
    b = jnp.linspace(-1.0, 1.0, 2 * 3 * 4).reshape(2, 3, 4)

    def f(y, b):
        s = jnp.mean(y["v"], axis=-1, keepdims=True)
        return {"v": jnp.tanh(0.5 * y["v"] + 0.3 * y["s"] + b), "s": 0.5 * jnp.tanh(s)}

    y0 = {"v": jnp.zeros((2, 3, 4)), "s": jnp.zeros((2, 3, 1))}
    solver = cls(tol=1e-5, max_iter=100)
    per_token = aj.fixed_point(f, y0, b, solver=solver, batch_axis=(0, 1))
    assert per_token.stats.iterations.shape == (2, 3)
    assert set(per_token.value) == {"v", "s"} and per_token.value["s"].shape == (2, 3, 1)
    assert bool(per_token.stats.converged.all())
    fy = f(per_token.value, b)
    np.testing.assert_allclose(np.asarray(fy["v"]), np.asarray(per_token.value["v"]), atol=1e-4)
    whole = aj.fixed_point(f, y0, b, solver=solver, batch_axis=None)
    assert whole.stats.iterations.shape == () and bool(whole.stats.converged)
    last = aj.fixed_point(f, y0, b, solver=solver, batch_axis=-2)  # axis 1 of each leaf
    assert last.stats.iterations.shape == (3,)


def test_bfloat16_state_uses_float32_statistics():
    f, w, b = tanh_problem(batch=2, dim=32)
    sol = aj.fixed_point(
        lambda y, w, b: f(y.astype(jnp.float32), w, b).astype(jnp.bfloat16),
        jnp.zeros(b.shape, jnp.bfloat16), w, b, solver=aj.Anderson(tol=2e-2, max_iter=30),
    )
    assert sol.value.dtype == jnp.bfloat16
    assert sol.stats.residual.dtype == jnp.float32
    assert bool(sol.stats.converged.all())


def test_solve_is_one_device_loop_without_host_callbacks():
    f, w, b = tanh_problem()
    jaxpr = str(jax.make_jaxpr(lambda w, b: aj.fixed_point(f, jnp.zeros_like(b), w, b).value)(w, b))
    assert "while" in jaxpr
    assert "callback" not in jaxpr


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: aj.Anderson(m=0), "m=0"),
        (lambda: aj.Anderson(beta=1.5), "beta=1.5"),
        (lambda: aj.Picard(damping=0.0), "damping=0.0"),
        (lambda: aj.Broyden(max_iter=-1), "max_iter=-1"),
        (lambda: aj.Picard(tol=-1.0), "tol=-1.0"),
        (lambda: aj.Neumann(k=-1), "k=-1"),
        (lambda: aj.Phantom(k=0), "k=0"),
        (lambda: aj.IFT(solver="cg"), "solver='cg'"),
    ],
)
def test_bad_settings_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ValueError, match="batch_axis=3"):
        aj.fixed_point(lambda y: y, jnp.zeros((2, 3)), batch_axis=3)
    with pytest.raises(ValueError, match="floating point"):
        aj.fixed_point(lambda y: y, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="disagree"):
        aj.fixed_point(lambda y: y, (jnp.zeros((2, 3)), jnp.zeros((3, 3))))


# ---- coupled (causal) layouts, exact statistics, tolerances, dtypes --------------------------------------------


def causal_chain(y):
    """A two-position causal linear map on [B, T=2, 1]: y0 <- 0.95 y0 + 1, y1 <- y0. Fixed point (20, 20)."""
    return jnp.concatenate([0.95 * y[:, :1] + 1.0, y[:, :1]], axis=1)


def true_residual(f, y, *args, axes=(-1,)):
    fy = f(y, *args)
    return np.asarray(jnp.linalg.norm(fy - y, axis=axes) / jnp.maximum(jnp.linalg.norm(y, axis=axes), 1e-12))


@pytest.mark.parametrize("cls", SOLVERS)
def test_causal_freezing_returns_the_fixed_point_of_a_coupled_chain(cls):
    # Per-position solving with independent freezing would freeze y1 at its first value; causal freezing may not
    # freeze y1 before y0, so the returned state is the true fixed point and its residual is what it reports.
    sol = aj.fixed_point(causal_chain, jnp.zeros((3, 2, 1)), solver=cls(tol=1e-6, max_iter=1000), batch_axis=0,
                         causal_axis=1)
    np.testing.assert_allclose(np.asarray(sol.value), 20.0, rtol=1e-4)
    assert sol.stats.iterations.shape == (3, 2) and bool(sol.stats.converged.all())
    np.testing.assert_allclose(np.asarray(sol.stats.residual), true_residual(causal_chain, sol.value), rtol=1e-6,
                               atol=1e-9)
    assert bool(jnp.all(sol.stats.iterations[:, 1] >= sol.stats.iterations[:, 0]))  # y1 waits for its prefix


def causal_attention_problem(seed=0, b=2, t=7, d=6, scale=0.8):
    """A nonlinear causal map like an attention head: position t mixes the states of positions <= t."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = jax.random.normal(k1, (d, d)) * scale / np.sqrt(d)
    x = jax.random.normal(k2, (b, t, d))
    q = jax.random.normal(k3, (d, d)) / np.sqrt(d)
    mask = np.tril(np.ones((t, t), bool))

    def f(y, w, q, x):
        scores = jnp.einsum("btd,bsd->bts", y @ q, y)
        att = jax.nn.softmax(jnp.where(mask, scores, -1e9), axis=-1)
        return jnp.tanh(jnp.einsum("bts,bsd->btd", att, y) @ w + x)

    return f, (w, q, x)


@pytest.mark.parametrize("cls", SOLVERS)
@pytest.mark.parametrize("max_iter", [6, 200])
def test_reported_residual_is_that_of_the_returned_state_on_a_coupled_map(cls, max_iter):
    # Converged (200) or cut short (6): recompute f on the returned state; every reported residual holds.
    f, args = causal_attention_problem()
    sol = aj.fixed_point(f, jnp.zeros_like(args[2]), *args, solver=cls(tol=1e-5, max_iter=max_iter),
                         batch_axis=0, causal_axis=1)
    np.testing.assert_allclose(np.asarray(sol.stats.residual), true_residual(f, sol.value, *args), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(np.asarray(sol.stats.converged),
                                  true_residual(f, sol.value, *args) <= 1e-5 * (1 + 1e-5))
    if max_iter == 200 and cls is aj.Anderson:
        assert bool(sol.stats.converged.all())


def test_causal_solve_is_exactly_causal():
    # Perturbing a later position changes nothing before it, bit for bit, although the later positions iterate
    # for a different number of steps.
    f, (w, q, x) = causal_attention_problem(t=8)
    x2 = x.at[:, 5].add(1.0)
    solve = jax.jit(lambda x: aj.fixed_point(f, jnp.zeros_like(x), w, q, x, solver=aj.Anderson(tol=1e-4,
                                                                                                max_iter=60),
                                             batch_axis=0, causal_axis=1))
    a, b = solve(x), solve(x2)
    np.testing.assert_array_equal(np.asarray(a.value[:, :5]), np.asarray(b.value[:, :5]))
    np.testing.assert_array_equal(np.asarray(a.stats.iterations[:, :5]), np.asarray(b.stats.iterations[:, :5]))
    assert float(jnp.abs(a.value[:, 5:] - b.value[:, 5:]).max()) > 1e-3


def test_causal_axis_layouts_and_errors():
    # The causal axis may precede the batch axis; statistics keep y0's axis order.
    f, (w, q, x) = causal_attention_problem()
    g = lambda y, w, q, x: jnp.swapaxes(f(jnp.swapaxes(y, 0, 1), w, q, jnp.swapaxes(x, 0, 1)), 0, 1)  # noqa: E731
    xt = jnp.swapaxes(x, 0, 1)
    solver = aj.Anderson(tol=1e-5, max_iter=100)
    a = aj.fixed_point(f, jnp.zeros_like(x), w, q, x, solver=solver, batch_axis=0, causal_axis=1)
    b = aj.fixed_point(g, jnp.zeros_like(xt), w, q, xt, solver=solver, batch_axis=1, causal_axis=0)
    assert b.stats.iterations.shape == (7, 2)
    np.testing.assert_array_equal(np.asarray(a.stats.iterations), np.asarray(b.stats.iterations).T)
    np.testing.assert_allclose(np.asarray(a.value), np.asarray(jnp.swapaxes(b.value, 0, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="causal_axis=0"):
        aj.fixed_point(f, jnp.zeros_like(x), w, q, x, batch_axis=0, causal_axis=0)


def test_absolute_tolerance_reaches_a_fixed_point_at_zero():
    # x -> 0.999 x: relative residual 1e-3 forever, so a relative test never exits; atol does.
    f = lambda y: 0.999 * y  # noqa: E731
    rel = aj.fixed_point(f, jnp.ones((1, 3)), solver=aj.Picard(tol=1e-4, max_iter=50))
    assert not bool(rel.stats.converged.any()) and int(rel.stats.iterations[0]) == 50
    ab = aj.fixed_point(f, jnp.ones((1, 3)), solver=aj.Picard(tol=0.0, atol=1e-3, max_iter=20000))
    assert bool(ab.stats.converged.all())
    # exit at the first point with ||f(y) - y|| = 1e-3 ||y|| <= 1e-3, i.e. ||y|| <= 1: y = 0.999^k sqrt(3)
    k = int(np.ceil(np.log(1 / np.sqrt(3)) / np.log(0.999)))
    np.testing.assert_allclose(np.asarray(ab.value), 0.999 ** k, rtol=1e-3)


def test_divergence_guard_is_well_defined_after_an_exact_zero_residual():
    # The first evaluation lands exactly on the fixed point of a map that then (non-smoothly) moves off it by a
    # rounding-sized amount: that is not a divergence.
    f = lambda y: jnp.where(jnp.abs(y - 1.0) < 1e-30, 1.0, 1.0 + 1e-7 * jnp.sign(y - 1.0))  # noqa: E731
    sol = aj.fixed_point(f, jnp.ones((2, 4)), solver=aj.Picard(tol=0.0, max_iter=5, min_iter=5))
    assert not bool(sol.stats.diverged.any())
    assert float(sol.stats.residual.max()) == 0.0


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("cls", SOLVERS)
def test_complex_states(dtype, cls):
    # y -> A y + b with complex A (spectral radius 0.8): the fixed point solves (I - A) y = b.
    with jax.enable_x64(dtype == "complex128"):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(5, 5)) + 1j * rng.normal(size=(5, 5))
        a = (0.8 * a / np.max(np.abs(np.linalg.eigvals(a)))).astype(dtype)
        b = (rng.normal(size=(2, 5)) + 1j * rng.normal(size=(2, 5))).astype(dtype)
        f = lambda y, a, b: y @ a.T + b  # noqa: E731
        sol = aj.fixed_point(f, jnp.zeros_like(b), jnp.asarray(a), jnp.asarray(b), solver=cls(tol=1e-5,
                                                                                                max_iter=300))
        want = np.linalg.solve(np.eye(5) - a, b.T).T
        assert sol.value.dtype == dtype and sol.stats.residual.dtype == jnp.float32
        assert bool(sol.stats.converged.all()) and float(sol.stats.residual.min()) >= 0
        np.testing.assert_allclose(np.asarray(sol.value), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(sol.stats.residual), true_residual(f, sol.value, a, b), rtol=1e-4)
