"""Puzzle reasoners: TRM-Att and the Attractor reasoner (shapes, ACT halting, train steps, the solver, losses,
presets) and their optimiser pieces (sparse SignSGD, EMA)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax.models as M
from attractor_jax.models import reasoner as R
from attractor_jax.train import puzzle_optim as P
from attractor_jax.train import optim as O
from attractor_jax.train.optim import optimizer_metrics

# XLA's CPU backend spends most of these tests' time optimising code that runs for milliseconds; the lowest
# backend optimisation level halves compile times.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# ACT semantics run on the tiny presets with 3 supervision steps (non-parameter overrides: the jitted
# initialiser is shared with the presets' own).
SHORT = dict(halt_max_steps=3)


def _batch(b=4, seed=0, vocab=11, seq=81):
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, vocab, (b, seq))
    labels[:, :3] = -100  # a few unsupervised cells
    return {
        "inputs": jnp.asarray(rng.integers(1, vocab, (b, seq)), jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
        "puzzle_identifiers": jnp.zeros((b,), jnp.int32),
    }


def _split(model):
    gd, st = nnx.split(model)
    return gd, st


# ----------------------------------------------------------------------------------------------------------
# Losses and layers


def test_stablemax_cross_entropy_matches_float64_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (3, 7, 11)).astype(np.float32)
    logits[0, 0, :3] = [0.0, -1e3, 1e3]
    labels = rng.integers(0, 11, (3, 7))
    labels[1, 2] = -100

    x = logits.astype(np.float64)
    s = np.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)
    logp = np.log(s / s.sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, np.where(labels < 0, 0, labels)[..., None], -1)[..., 0]
    want = np.where(labels == -100, 0.0, want)
    got = np.asarray(jit(M.stablemax_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels)))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    # softmax variant and finite gradients on both sides of 0 (no where-NaN)
    mx = x.max(-1, keepdims=True)
    logsm = x - mx - np.log(np.exp(x - mx).sum(-1, keepdims=True))
    want_sm = -np.take_along_axis(logsm, np.where(labels < 0, 0, labels)[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        np.asarray(jit(M.softmax_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))),
        np.where(labels == -100, 0.0, want_sm), rtol=1e-5, atol=1e-5,
    )
    g = jit(jax.grad(lambda z: M.stablemax_cross_entropy(z, jnp.asarray(labels)).sum()))(jnp.asarray(logits))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_rotate_half_rope_and_trunc_normal_match_trm():
    t, h = 5, 8
    cos, sin = R.rope_half_angles(t, h, 1e4)
    x = np.random.default_rng(0).normal(size=(2, t, 3, h)).astype(np.float32)
    inv = 1.0 / (1e4 ** (np.arange(0, h, 2) / h))
    emb = np.concatenate([np.outer(np.arange(t), inv)] * 2, -1)
    rot = np.concatenate([-x[..., h // 2:], x[..., : h // 2]], -1)
    want = x * np.cos(emb)[None, :, None] + rot * np.sin(emb)[None, :, None]
    np.testing.assert_allclose(np.asarray(R.apply_rope_half(jnp.asarray(x), cos, sin)), want, atol=1e-5)
    w = R.trunc_normal_init(0.3)(jax.random.key(0), (200_000,))
    assert abs(float(jnp.std(w)) - 0.3) < 3e-3 and float(jnp.max(jnp.abs(w))) <= 0.6 / 0.8796 + 1e-6
    assert R.swiglu_width(512, 4.0) == 1536 and R.swiglu_width(97, 4.0) == 512


# ----------------------------------------------------------------------------------------------------------
# Presets


def test_preset_parameter_counts_match_the_reference():
    expected = {
        "trm-sudoku-7m": 6_828_034, "attractor-sudoku-27m": 27_275_266, "attractor-maze-27m": 27_270_146
    }
    for name, n in expected.items():
        c = M.param_counts(M.get_config(name))
        assert c["total_without_puzzle_embedding"] == n == M.REFERENCE_PARAMS[name]
        assert c["split"]["puzzle_embedding"] == 512 and c["total"] == n + 512
    assert M.param_counts(M.get_config("trm-maze-7m"))["split"]["blocks"] == 2 * 3_407_872
    for name in ("trm-sudoku-tiny", "attractor-sudoku-tiny", "trm-maze-tiny", "attractor-maze-tiny"):
        assert 4e5 < M.param_counts(M.get_config(name))["total"] < 6e5
    text = M.describe_preset("attractor-sudoku-27m")
    assert "27,275,266" in text and "anderson" in text and "phantom k=2" in text
    assert "L_cycles=6" in M.describe_preset("trm-sudoku-7m")
    s = M.preset_summary("attractor-maze-27m")
    json.dumps(s)
    assert M.config_from_dict(s["config"]) == M.get_config("attractor-maze-27m")
    cfg = M.get_config("attractor-sudoku-tiny", **{"solver.tol": 1e-5, "H_cycles": 2})
    assert cfg.solver.tol == 1e-5 and cfg.H_cycles == 2 and isinstance(cfg, M.AttractorReasonerConfig)
    with pytest.raises(ValueError, match="hidden_size"):
        M.TRMConfig(hidden_size=30, num_heads=4)


# ----------------------------------------------------------------------------------------------------------
# Shapes and ACT halting (micro model, forward only)


@pytest.fixture(scope="module")
def micro_trm():
    """The tiny TRM with 3 ACT steps and exploration 0.5, its state, the state with a Q head that says "halt"
    everywhere, and its jitted ACT step."""
    model = M.create_model("trm-sudoku-tiny", seed=0, **SHORT, halt_exploration_prob=0.5)
    gd, st = _split(model)
    step = jit(lambda st, c, b, k, train: nnx.merge(gd, st)(c, b, train=train, key=k), static_argnums=4)
    halting = jax.tree.map(lambda x: x, st)
    halting["q_head"]["bias"].set_value(jnp.array([5.0, -5.0]))
    return model, st, halting, step


def test_shapes_and_initial_outputs(micro_trm):
    model, st, _, step = micro_trm
    batch = _batch(b=4)
    carry0 = model.initial_carry(batch)
    carry, out = step(st, carry0, batch, jax.random.key(0), False)
    cfg = model.config
    t = 81 + cfg.puzzle_emb_len
    assert carry["z_H"].shape == carry["z_L"].shape == (4, t, 128) and carry["z_H"].dtype == jnp.float32
    assert out["logits"].shape == (4, 81, 11) and out["logits"].dtype == jnp.float32
    assert out["q_halt_logits"].shape == (4,) and out["labels"].shape == (4, 81)
    np.testing.assert_array_equal(np.asarray(out["q_halt_logits"]), -5.0)  # q_head: weight 0, bias -5
    np.testing.assert_array_equal(np.asarray(out["steps"]), 1)
    np.testing.assert_array_equal(np.asarray(out["nfe"]), cfg.H_cycles * (cfg.L_cycles + 1))
    assert not bool(jnp.any(out["halted"]))
    # the first call resets every row to H_init / L_init, whatever the carry held
    junk = jax.tree.map(lambda a: a + 7 if a.dtype == jnp.float32 else a, carry0)
    _, out2 = step(st, junk, batch, jax.random.key(0), False)
    np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(out2["logits"]))
    # one more step continues from the carry: different logits
    _, out3 = step(st, carry, batch, jax.random.key(0), False)
    assert float(jnp.abs(out3["logits"] - out["logits"]).max()) > 1e-4
    with pytest.raises(ValueError, match="PRNG key"):
        model(carry0, batch, train=True)
    with pytest.raises(ValueError, match="inputs have shape"):
        model.initial_carry({"inputs": jnp.zeros((2, 80), jnp.int32)})


def test_act_halting_train_vs_eval(micro_trm):
    model, _, st, step = micro_trm  # q_halt = +5 for every row
    b1, b2 = _batch(b=16, seed=1), _batch(b=16, seed=2)
    key = jax.random.key(0)
    hmax = model.config.halt_max_steps

    # eval: no Q-halting, no exploration; every row halts exactly at halt_max_steps
    c = model.initial_carry(b1)
    for s in range(1, hmax + 1):
        c, out = step(st, c, b1, key, False)
        assert bool(jnp.all(out["halted"])) == (s == hmax) and bool(jnp.any(out["halted"])) == (s == hmax)
        assert bool(jnp.all(out["steps"] == s))

    # train: q_halt > 0 halts a row after one step unless exploration drew a minimum depth in [2, hmax]
    c, out = step(st, model.initial_carry(b1), b1, key, True)
    halted = np.asarray(out["halted"])
    assert 0 < halted.sum() < 16  # p = 0.5 of the 16 rows explore
    # the next call loads the new batch into halted rows only (fresh start), the others keep their puzzle
    c, out = step(st, c, b2, jax.random.key(1), True)
    inputs = np.asarray(c["current_data"]["inputs"])
    np.testing.assert_array_equal(inputs[halted], np.asarray(b2["inputs"])[halted])
    np.testing.assert_array_equal(inputs[~halted], np.asarray(b1["inputs"])[~halted])
    np.testing.assert_array_equal(np.asarray(out["steps"]), np.where(halted, 1, 2))
    np.testing.assert_array_equal(np.asarray(out["labels"]), np.asarray(c["current_data"]["labels"]))
    # nobody passes halt_max_steps
    c, out = step(st, c, b2, key, True)
    assert int(out["steps"].max()) <= hmax and bool(jnp.all(out["halted"][out["steps"] == hmax]))


def test_act_loss_uses_the_carry_labels_and_counts_halted_rows():
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 5, (3, 4)), jnp.int32).at[2].set(-100)
    logits = jax.nn.one_hot(labels, 5) * 10.0
    logits = logits.at[1, 0].set(jnp.roll(logits[1, 0], 1))  # row 1 has one wrong cell
    out = {"logits": logits, "labels": labels, "q_halt_logits": jnp.array([1.0, 1.0, -1.0]),
           "q_continue_logits": jnp.zeros(3), "halted": jnp.array([True, True, True]),
           "steps": jnp.array([2, 3, 4])}
    loss, m = jit(M.act_loss)(out)
    assert float(m["count"]) == 2  # row 2 has no supervised cell
    assert float(m["exact_accuracy"]) == 1 and float(m["accuracy"]) == pytest.approx(1 + 3 / 4)
    assert float(m["q_halt_accuracy"]) == 1 and float(m["steps"]) == 5
    ce = M.stablemax_cross_entropy(logits, labels).sum(-1) / jnp.array([4, 4, 1])
    bce = np.log1p(np.exp(-1.0)) + 2 * np.log1p(np.exp(1.0))  # targets 1, 0, 1 (no cell: "right")
    assert float(loss) == pytest.approx(float(ce.sum() + 0.5 * bce) / 3, rel=1e-5)
    s = M.summarize_act_metrics(m)
    assert float(s["exact_accuracy"]) == 0.5 and float(s["steps"]) == 2.5


# ----------------------------------------------------------------------------------------------------------
# The Attractor reasoner: the solver converges (unlike the reference's collapsed Anderson), max_iter


@pytest.fixture(scope="module")
def tiny_attractor():
    return M.create_model("attractor-sudoku-tiny", seed=0)


def test_attractor_solver_reaches_a_true_fixed_point(tiny_attractor):
    batch = _batch(b=2)
    gd, st = _split(tiny_attractor)

    @jit
    def run(st):
        m = nnx.merge(gd, st)
        x = m.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        ctx = m.H_init[...] + x
        z0 = jnp.broadcast_to(m.L_init[...], x.shape)
        sol = m.solve(z0, ctx, max_iter=60, tol=1e-5)
        z = sol.value
        fz = m.l_map(z, ctx)
        res = jnp.linalg.norm((fz - z).reshape(2, -1), axis=1) / jnp.linalg.norm(z.reshape(2, -1), axis=1)
        picard = jax.lax.fori_loop(0, 120, lambda i, y: m.l_map(y, ctx), z0)
        return sol.stats, res, jnp.sqrt(jnp.mean(z**2)), jnp.max(jnp.abs(picard - z))

    stats, res, rms, gap = run(st)
    assert bool(jnp.all(stats.converged)) and float(stats.residual.max()) <= 1e-5
    assert int(stats.iterations.min()) > 2  # the reference's solver returns after ~2 steps from ~0
    assert float(res.max()) < 1e-4  # f(z*) = z*
    assert abs(float(rms) - 1.0) < 1e-2  # on the post-norm sphere, not collapsed to 0
    assert float(gap) < 1e-3  # the same point as 120 plain iterations (a contraction here)


def test_max_iter_semantics_and_predict(micro_trm):
    model = M.create_model("attractor-sudoku-tiny", seed=0, **SHORT)
    cfg = model.config
    gd, st = _split(model)
    step = jit(lambda st, c, b, mi: nnx.merge(gd, st)(c, b, train=False, max_iter=mi), static_argnums=3)
    b1, b2 = _batch(seed=1), _batch(seed=2)
    h = cfg.H_cycles
    # solver removed: z_L stays at L_init, so the input never enters and the outputs ignore it
    (_, p1), (_, p2) = (step(st, model.initial_carry(b), b, 0) for b in (b1, b2))
    np.testing.assert_array_equal(np.asarray(p1["logits"]), np.asarray(p2["logits"]))
    np.testing.assert_array_equal(np.asarray(p1["nfe"]), h)  # only the z_H updates
    np.testing.assert_array_equal(np.asarray(p1["solver_iterations"]), 0)
    # one plain step per solve (TRM with L_cycles=1) depends on the input; it costs 2 evaluations (the step and
    # the one that measures its residual) + the z_H update per cycle
    (_, q1), (_, q2) = (step(st, model.initial_carry(b), b, 1) for b in (b1, b2))
    np.testing.assert_array_equal(np.asarray(q1["nfe"]), 3 * h)
    assert float(jnp.abs(q1["logits"] - q2["logits"]).max()) > 1e-4
    # evaluation: all halt_max_steps steps, solver statistics per step, cycle and row
    full = jit(lambda st, b: nnx.merge(gd, st).predict(b))(st, b1)
    s = cfg.halt_max_steps
    assert full["step_preds"].shape == (s, 4, 81) and full["q_halt_logits"].shape == (s, 4)
    assert full["solver_iterations"].shape == (s, h, 4) and bool(jnp.all(full["solver_converged"]))
    np.testing.assert_array_equal(np.asarray(full["preds"]), np.asarray(full["step_preds"][-1]))
    want_nfe = jnp.sum(full["solver_iterations"] + 1, axis=(0, 1))
    np.testing.assert_array_equal(np.asarray(full["nfe"]), np.asarray(want_nfe))
    # counted per supervision step: the solver's iterations + the z_H update of each cycle, up to that step
    want_by_step = jnp.cumsum(jnp.sum(full["solver_iterations"] + 1, axis=1), axis=0)
    np.testing.assert_array_equal(np.asarray(full["nfe_by_step"]), np.asarray(want_by_step))
    with pytest.raises(ValueError, match="Attractor reasoner only"):
        micro_trm[0].predict(b1, max_iter=3)


# ----------------------------------------------------------------------------------------------------------
# Train steps (the tiny presets)


def _train(model, steps, b=8):
    batch = _batch(b=b)
    cfg = O.reference_optim_config(model.config, lr=1e-3, warmup_steps=0, puzzle_emb_lr=1e-2)
    tx = O.make_optimizer(cfg, nnx.split(model, nnx.Param, ...)[1], model.config, total_steps=100)
    gd, state = P.init_train_state(model, tx, batch)
    p0 = state.params
    step = jit(P.make_reasoner_train_step(gd, tx, ema_decay=0.9))
    hist = []
    for _ in range(steps):
        state, m = step(state, batch)
        hist.append(jax.device_get(m))
    return p0, state, hist


def _check_train(model, p0, state, hist):
    losses = [float(h["loss"]) for h in hist]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    for group in ("embed_tokens", "puzzle_emb", "L_level", "lm_head", "q_head"):
        assert float(hist[0][f"grad_norm/{group}"]) > 0, group
    n = len(hist)
    assert int(hist[-1]["opt_step"]) == n and int(state.step) == n
    # SignSGD moves every entry of the (single, present) puzzle row by lr per step: at most n·lr in n steps
    live_pe = np.asarray(state.params["puzzle_emb"]["embedding"][...])
    assert 0 < np.abs(live_pe).min() and np.abs(live_pe).max() <= n * 1e-2 + 1e-6
    # EMA lags the live weights; its puzzle table follows them (a buffer in TRM)
    k_live, k_ema, k_0 = (np.asarray(t["lm_head"]["kernel"][...]) for t in (state.params, state.ema, p0))
    assert 0 < np.abs(k_ema - k_0).max() < np.abs(k_live - k_0).max()
    np.testing.assert_array_equal(np.asarray(state.ema["puzzle_emb"]["embedding"][...]), live_pe)
    assert not bool(jnp.any(state.carry["halted"]))  # q_halt starts at -5: no row halted yet


def test_trm_tiny_train_step():
    model = M.create_model("trm-sudoku-tiny", seed=0)
    p0, state, hist = _train(model, 4)
    _check_train(model, p0, state, hist)
    assert "solver_iters" not in hist[0] and float(hist[0]["nfe"]) == 3 * 5


def test_attractor_tiny_train_step_with_a_converging_solver(tiny_attractor):
    p0, state, hist = _train(tiny_attractor, 4)
    _check_train(tiny_attractor, p0, state, hist)
    tol = tiny_attractor.config.solver.tol
    assert all(float(h["solver_converged"]) == 1.0 for h in hist)
    assert all(float(h["solver_residual_max"]) <= tol for h in hist)
    assert float(hist[-1]["solver_iters"]) < float(hist[0]["solver_iters"])  # warm start from the carry
    assert float(hist[0]["nfe"]) > 2 * tiny_attractor.config.H_cycles  # more than the collapsed 2 steps


# ----------------------------------------------------------------------------------------------------------
# Optimiser pieces


def test_sparse_sign_sgd_moves_only_present_rows():
    tx = O.sparse_sign_sgd(0.1, weight_decay=0.5)
    p = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]])
    g = jnp.array([[0.3, -0.0], [0.0, 0.0], [-2.0, 1e-9]])
    u, _ = tx.update(g, tx.init(p), p)
    want = np.array(
        [[-0.1 * (0.5 * 1.0 + 1), -0.1 * (0.5 * -2.0)], [0.0, 0.0], [-0.1 * (2.5 - 1), -0.1 * (3 + 1)]]
    )
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6)


def test_puzzle_optimizer_schedule_groups_and_ema():
    params = {"puzzle_emb": {"embedding": jnp.ones((3, 2))}, "lm_head": {"kernel": jnp.ones((2, 2))}}
    cfg = O.reference_optim_config(M.get_config("trm-sudoku-tiny"), lr=1e-3, puzzle_emb_lr=1e-2,
                                   warmup_steps=4)
    assert O.param_labels(params, cfg) == {"puzzle_emb": {"embedding": "puzzle_emb"},
                                           "lm_head": {"kernel": "adamw"}}
    tx = O.make_optimizer(cfg, params, total_steps=10)
    st = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, st = tx.update(grads, st, params)
    m = optimizer_metrics(st)
    assert float(m["lr/adamw"]) == pytest.approx(1e-3 / 4)
    assert float(m["lr/puzzle_emb"]) == pytest.approx(1e-2 / 4)
    want_pe = -(1e-2 / 4) * (1.0 + 1.0)  # lr·mult·(sign(g) + wd·p)
    np.testing.assert_allclose(np.asarray(upd["puzzle_emb"]["embedding"]), want_pe, rtol=1e-6)
    sched = O.make_schedule(cfg, 10)
    assert [float(sched(t)) for t in (0, 3, 9)] == [0.25, 1.0, 1.0]
    bad = jax.tree.map(lambda x: x * jnp.nan, grads)
    upd, st2 = tx.update(bad, st, params)
    assert int(st2.skipped) == 1 and int(st2.count) == 1
    assert float(jnp.abs(upd["lm_head"]["kernel"]).max()) == 0
    assert O.reference_optim_config(M.get_config("attractor-sudoku-27m")).puzzle_emb_lr == 1e-2
    ema = P.ema_update(P.ema_init(params), jax.tree.map(lambda x: x * 3, params), 0.9)
    np.testing.assert_allclose(np.asarray(ema["lm_head"]["kernel"]), 1.2)
    np.testing.assert_allclose(np.asarray(ema["puzzle_emb"]["embedding"]), 3.0)


def test_a_run_directory_of_the_former_puzzle_optimizer_reads_as_the_trm_recipe():
    from attractor_jax.train.config import RunConfig
    from attractor_jax.train.tasks.lm import setup

    old = {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "puzzle_emb_lr": 1e-2,
           "puzzle_emb_weight_decay": 0.1, "warmup_steps": 10, "min_lr_ratio": 1.0, "grad_clip": None,
           "skip_nonfinite": True, "ema_decay": 0.9}  # the optim section a PuzzleOptimConfig wrote
    d = RunConfig.for_model(M.get_config("trm-sudoku-tiny")).to_dict()
    run = RunConfig.from_dict({**d, "optim": old})
    assert run.optim.optimizer == "trm" and run.optim.betas == (0.9, 0.95) and run.optim.grad_clip is None
    assert run.optim == O.reference_optim_config(run.model, lr=3e-3, weight_decay=0.1, puzzle_emb_lr=1e-2,
                                                 puzzle_emb_weight_decay=0.1,
                                                 warmup_steps=10, ema_decay=0.9)
    assert RunConfig.from_dict(run.to_dict()) == run
    lm = RunConfig.for_model(M.get_config("gpt-tiny"), optim=O.OptimConfig(ema_decay=0.9))
    with pytest.raises(ValueError, match="ema_decay=0.9"):
        setup(lm)
