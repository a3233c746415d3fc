"""AttractorLM ablation variants (paper Tables 4 and 6): proposal injection (additive / init-only /
concatenation) and the solver's initial iterate (proposal / zero / noise)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax.models as M

SMALL = dict(d_model=32, n_heads=2, mlp_dim=64, n_backbone_layers=1, layer_scale_init=0.5)
T = 10
VARIANTS = [
    dict(injection="additive"),
    dict(injection="init_only"),
    dict(injection="concat"),
    dict(solve_init="zero"),
    dict(solve_init="noise"),
]


def _tokens(b=2, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, T), 0, 256)


def _model(**kw):
    return M.create_model("attractor-tiny", **SMALL, **kw)


def test_default_model_decodes_the_fixed_point_of_the_additive_map():
    # Oracle independent of the solver: plain iteration y <- H(y + c) - y from c in float64, run long past
    # convergence, decoded by hand. The default model (additive injection, proposal start, Anderson, causal
    # per-token freezing) must give the same logits to its tolerance; init_only must not (a different map).
    cfg = M.get_config("attractor-tiny")
    assert (cfg.injection, cfg.solve_init) == ("additive", "proposal")
    kw = {**SMALL, "layer_scale_init": 0.25, "solver.tol": 1e-6, "solver.max_iter": 60}
    model = M.create_model("attractor-tiny", **kw)
    other = M.create_model("attractor-tiny", **kw, injection="init_only")
    nnx.update(other, nnx.state(model))
    gd, st = nnx.split(model)
    t = _tokens()
    logits, aux = jax.jit(lambda st, t: nnx.merge(gd, st)(t))(st, t)
    assert bool(aux["converged"].all())
    with jax.enable_x64(True):
        m = nnx.merge(gd, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), st))
        c = m.encode(t).astype(jnp.float64)
        y = c
        for _ in range(300):
            y = m.head(y + c) - y
        assert float(jnp.max(jnp.abs(m.head(y + c) - y - y))) < 1e-6  # converged (the head computes in float32)
        want = np.asarray(m.decode(y))
    # A relative residual r leaves |y - y*| <= r |y| / (1 - rho); logits move by at most that times |E|/|y|.
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4)
    assert float(np.abs(np.asarray(other(t)[0]) - want).max()) > 1e-2


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_each_variant_runs_forward_and_grad(variant):
    model = _model(**variant, **{"solver.max_iter": 8})
    gd, st = nnx.split(model)
    toks = _tokens()

    @jax.jit
    def loss_and_grad(st):
        def loss(st):
            logits, aux = nnx.merge(gd, st)(toks[:, :-1], key=jax.random.key(1))
            lp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(lp, toks[:, 1:, None], axis=-1).mean(), aux

        return jax.value_and_grad(loss, has_aux=True)(st)

    (value, aux), grads = loss_and_grad(st)
    assert np.isfinite(float(value))
    assert aux["iterations"].shape == (2, T - 1)
    flat = {"/".join(map(str, p)): np.asarray(g) for p, g in nnx.to_flat_state(grads)}
    assert all(np.isfinite(g).all() for g in flat.values())
    head = [g for p, g in flat.items() if p.startswith("head/")]
    backbone = [g for p, g in flat.items() if p.startswith("backbone/")]
    assert max(np.abs(g).max() for g in head) > 0
    if variant.get("injection") == "init_only":
        # f does not read c: the implicit gradient reaches neither c nor the backbone
        assert max(np.abs(g).max() for g in backbone) == 0
    else:
        assert max(np.abs(g).max() for g in backbone) > 0
    if variant.get("injection") == "concat":
        assert np.abs(flat["head/inject/kernel"]).max() > 0


def test_concat_adds_a_2d_by_d_matrix_and_equals_additive_at_init():
    base = M.param_counts(M.get_config("attractor-tiny", **SMALL))
    cat = M.param_counts(M.get_config("attractor-tiny", **SMALL, injection="concat"))
    d = SMALL["d_model"]
    assert cat["total"] - base["total"] == 2 * d * d
    assert cat["split"]["head"] - base["split"]["head"] == 2 * d * d
    full = M.param_counts(M.get_config("attractor-tiny", injection="concat"))
    assert full["total"] == M.param_counts(M.get_config("attractor-tiny"))["total"] + 2 * 128 * 128

    add, cat_m = _model(), _model(injection="concat")
    np.testing.assert_array_equal(np.asarray(cat_m.head.inject.kernel[...]),
                                  np.concatenate([np.eye(d), np.eye(d)], axis=0))
    t = _tokens()
    for k in (1, None):
        np.testing.assert_allclose(np.asarray(cat_m(t, max_iter=k)[0]), np.asarray(add(t, max_iter=k)[0]),
                                   rtol=1e-5, atol=1e-5)


def test_initial_iterates_and_init_only_map():
    t = _tokens()
    add = _model()
    c = add.encode(t)
    f_add = lambda y: add.head(y + c) - y  # noqa: E731
    # zero: one plain step from y0 = 0
    zero = _model(solve_init="zero")
    np.testing.assert_allclose(np.asarray(zero(t, max_iter=1)[0]), np.asarray(add.decode(f_add(jnp.zeros_like(c)))),
                               rtol=1e-5, atol=1e-5)
    # noise: one plain step from std * N(0, 1) drawn from the key; another key gives another start
    noise = _model(solve_init="noise")
    key = jax.random.key(7)
    y0 = noise.config.std * jax.random.normal(key, c.shape)
    np.testing.assert_allclose(np.asarray(noise(t, max_iter=1, key=key)[0]), np.asarray(add.decode(f_add(y0))),
                               rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(noise(t, max_iter=1, key=key)[0] - noise(t, max_iter=1, key=jax.random.key(8))[0]).max()) > 0
    # init-only: y1 = H(c), y2 = H(H(c))
    io = _model(injection="init_only")
    np.testing.assert_allclose(np.asarray(io(t, max_iter=2)[0]), np.asarray(add.decode(add.head(add.head(c)))),
                               rtol=1e-5, atol=1e-5)
    # T = 0 decodes the proposal for every variant
    for m in (zero, noise, io):
        np.testing.assert_array_equal(np.asarray(m(t, max_iter=0)[0]), np.asarray(add.decode(c)))


@pytest.mark.parametrize("variant", VARIANTS[1:], ids=lambda v: "-".join(v.values()))
def test_variants_keep_the_solve_causal(variant):
    model = _model(**variant, **{"solver.tol": 1e-2, "solver.min_iter": 0})
    a = _tokens(1)[0]
    b = a.at[6].set((a[6] + 1) % 256)
    gd, st = nnx.split(model)
    run = jax.jit(lambda st, t: nnx.merge(gd, st)(t, key=jax.random.key(0))[0])
    # one sequence per call, so that the noise variant draws the same y0 for both
    la, lb = run(st, a[None]), run(st, b[None])
    np.testing.assert_array_equal(np.asarray(la[0, :6]), np.asarray(lb[0, :6]))
    assert float(jnp.abs(la[0, 6:] - lb[0, 6:]).max()) > 1e-4


@pytest.mark.parametrize("field,value", [("injection", "multiply"), ("injection", None),
                                         ("solve_init", "random"), ("solve_init", "")])
def test_bad_values_raise(field, value):
    with pytest.raises(ValueError, match=field):
        M.get_config("attractor-tiny", **{field: value})
    with pytest.raises(ValueError, match=field):
        M.AttractorConfig(**{field: value})


def test_variants_round_trip_through_dicts():
    cfg = M.get_config("attractor-tiny", injection="concat", solve_init="noise")
    back = M.config_from_dict(M.config_to_dict(cfg))
    assert back == cfg and back.injection == "concat" and back.solve_init == "noise"
