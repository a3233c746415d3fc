"""Optimiser grouping, schedules, clipping, non-finite skipping, and a jitted train step on attractor-tiny."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attractor_jax.models as M
from attractor_jax.train.optim import (
    OptimConfig,
    describe_groups,
    label_table,
    make_optimizer,
    make_schedule,
    optimizer_metrics,
    param_labels,
    skipped_steps,
)


def abstract_params(name):
    cfg = M.get_config(name)
    return cfg, nnx.state(M.abstract_model(cfg), nnx.Param)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value",
    [
        ("optimizer", "sgd"),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("muon_lr", -1.0),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("eps", -1e-8),
        ("schedule", "linear"),
        ("warmup_fraction", 1.5),
        ("cooldown_fraction", -0.1),
        ("min_lr_ratio", 2.0),
        ("grad_clip", 0.0),
        ("muon_ns_steps", 0),
        ("muon_ns_coeffs", "cubic"),
        ("muon_momentum", 1.0),
        ("fp_wd", -0.1),
        ("skip_nonfinite", "yes"),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"OptimConfig.{field}="):
        OptimConfig(**{field: value})


def test_config_fraction_sum_and_list_betas():
    with pytest.raises(ValueError, match="warmup_fraction \\+ cooldown_fraction <= 1"):
        OptimConfig(warmup_fraction=0.6, cooldown_fraction=0.5)
    assert OptimConfig(betas=[0.9, 0.99]).betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="total_steps=0"):
        make_schedule(OptimConfig(), 0)


# ---------------------------------------------------------------------------------------------- grouping


def test_labels_attractor_tiny():
    cfg, params = abstract_params("attractor-tiny")
    t = label_table(params, OptimConfig(), cfg)
    for path, label in t.items():
        if path.startswith("backbone/") and path.endswith("kernel"):
            assert label == "muon", path
        if path.startswith("head/"):
            assert label == ("head" if path.endswith("kernel") else "head_no_wd"), path
    assert t["embed/embedding"] == "adamw"
    assert t["final_norm/scale"] == "adamw_no_wd"
    assert t["backbone/0/norm_1/scale"] == "adamw_no_wd"
    assert t["head/blocks/0/gate_attn"] == t["head/blocks/0/gate_mlp"] == "head_no_wd"
    assert t["head/blocks/0/norm_2/scale"] == "head_no_wd"
    # AdamW everywhere: backbone matrices move to the decayed AdamW group, the head keeps its groups.
    ta = label_table(params, OptimConfig(optimizer="adamw"), cfg)
    assert ta["backbone/1/mlp/fc/kernel"] == "adamw"
    assert "muon" not in ta.values()
    assert {k: v for k, v in ta.items() if k.startswith("head/")} == {
        k: v for k, v in t.items() if k.startswith("head/")
    }

    groups = describe_groups(params, OptimConfig(), cfg)
    assert sum(g["params"] for g in groups.values()) == M.param_counts(cfg)["total"]
    assert groups["muon"]["tensors"] == 6 * cfg.n_backbone_layers
    assert groups["head"]["lr"] == pytest.approx(OptimConfig().lr * cfg.fp_lr_scale)
    assert groups["head"]["weight_decay"] == cfg.fp_wd
    assert groups["head_no_wd"]["weight_decay"] == 0.0
    assert groups["head_no_wd"]["lr"] == pytest.approx(OptimConfig().lr * cfg.fp_lr_scale)


def test_labels_gpt_tiny():
    cfg, params = abstract_params("gpt-tiny")
    t = label_table(params, OptimConfig(), cfg)
    for path, label in t.items():
        if path.startswith("blocks/") and path.endswith("kernel"):
            assert label == "muon", path  # q, k, v, o, fc, proj and the value-embedding gates
        if path.startswith("value_embeds/"):
            assert label == "adamw", path
        if path.endswith("scale"):
            assert label == "adamw_no_wd", path
    assert t["blocks/1/attn/ve_gate/kernel"] == "muon"
    assert t["embed/embedding"] == "adamw"
    assert not {"head", "head_no_wd"} & set(t.values())


def test_labels_parcae_tiny():
    cfg, params = abstract_params("parcae-tiny")
    t = label_table(params, OptimConfig(), cfg)
    for path, label in t.items():
        if path.split("/")[0] in ("prelude", "coda") and path.endswith("kernel"):
            assert label == "muon", path
        if path.startswith("core/blocks/") and path.endswith("kernel"):
            assert label == "muon", path
    for path in ("core/injection/A_log", "core/injection/dt_bias", "core/injection/B", "C/kernel"):
        assert t[path] == "adamw_no_wd", path
    assert t["value_embeds/1/embedding"] == "adamw"
    assert t["prelude_norm/scale"] == "adamw_no_wd"
    assert describe_groups(params, OptimConfig(), cfg)["adamw_no_wd"]["weight_decay"] == 0.0


def test_labels_follow_the_tree_structure():
    model = M.create_model("attractor-tiny")
    params = nnx.state(model, nnx.Param)
    labels = param_labels(params, OptimConfig(), model.config)
    assert jax.tree.structure(labels) == jax.tree.structure(params)
    assert label_table(nnx.to_pure_dict(params), OptimConfig(), model.config) == label_table(
        params, OptimConfig(), model.config
    )
    # A head without fp settings is an error; OptimConfig overrides the model config.
    with pytest.raises(ValueError, match="fp_lr_scale"):
        make_optimizer(OptimConfig(), params, None, total_steps=10)
    g = describe_groups(params, OptimConfig(fp_lr_scale=0.25, fp_wd=0.0), model.config)
    assert g["head"]["lr"] == pytest.approx(OptimConfig().lr * 0.25) and g["head"]["weight_decay"] == 0.0


def test_single_update_group_rates_and_decay():
    """One update with a constant gradient of ones: AdamW's first step is −lr·g/|g| exactly, so the head's
    lr × fp_lr_scale and fp_wd (matrices only) can be read off; Muon's rank-one step is uniform with norm
    ≈ 0.9·muon_lr·sqrt(max(1, out/in)) after cautious decay."""
    model = M.create_model("attractor-tiny")
    mc = model.config
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    oc = OptimConfig(grad_clip=None, muon_lr=0.02, lr=0.01)
    tx = make_optimizer(oc, params, mc, total_steps=100)
    state = jax.jit(tx.init)(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    u, p = jax.device_get((updates, params))
    head_lr = oc.lr * mc.fp_lr_scale

    np.testing.assert_allclose(u["embed"]["embedding"], -oc.lr, rtol=1e-6)
    np.testing.assert_allclose(u["final_norm"]["scale"], -oc.lr, rtol=1e-6)
    np.testing.assert_allclose(u["backbone"][0]["norm_1"]["scale"], -oc.lr, rtol=1e-6)
    hb = u["head"]["blocks"][0]
    np.testing.assert_allclose(hb["gate_attn"], -head_lr, rtol=1e-6)
    np.testing.assert_allclose(hb["norm_1"]["scale"], -head_lr, rtol=1e-6)
    for a, b in (("attn", "q"), ("mlp", "fc"), ("mlp", "proj")):
        w = p["head"]["blocks"][0][a][b]["kernel"]
        np.testing.assert_allclose(hb[a][b]["kernel"], -head_lr * (1.0 + mc.fp_wd * w), rtol=1e-5, atol=1e-9)

    for a, b in (("attn", "q"), ("attn", "o"), ("mlp", "fc"), ("mlp", "proj")):
        w = p["backbone"][0][a][b]["kernel"]
        width = math.sqrt(max(1.0, w.shape[1] / w.shape[0]))
        decay = oc.muon_wd * w * (w >= 0)  # cautious: the update is negative, so only p >= 0 decays
        step = -u["backbone"][0][a][b]["kernel"] / (oc.muon_lr * width) - decay
        assert np.std(step) < 1e-4 * np.mean(step)  # uniform (rank-one, orthogonalised)
        assert 0.8 < np.linalg.norm(step) < 1.0
    m = optimizer_metrics(state)
    assert int(m["opt_step"]) == 1 and int(m["skipped_steps"]) == 0
    assert float(m["lr/head"]) == pytest.approx(head_lr) and float(m["lr/muon"]) == pytest.approx(0.02)
    assert float(m["grad_norm"]) == pytest.approx(math.sqrt(M.param_counts(mc)["total"]), rel=1e-5)


def test_normuon_keeps_the_norm_and_evens_out_the_columns():
    params = {"w": jnp.zeros((8, 16))}
    g = {"w": jax.random.normal(jax.random.key(1), (8, 16)) * jnp.linspace(0.1, 3.0, 16)[None, :]}
    out = {}
    for normuon in (False, True):
        tx = make_optimizer(OptimConfig(muon_wd=0.0, muon_normuon=normuon), params, total_steps=10)
        out[normuon] = np.asarray(tx.update(g, tx.init(params), params)[0]["w"])
    assert np.linalg.norm(out[True]) == pytest.approx(np.linalg.norm(out[False]), rel=1e-5)
    col_rms = {k: np.sqrt(np.mean(v**2, axis=0)) for k, v in out.items()}  # kept axis: the larger (out)
    assert np.std(col_rms[True]) < 0.1 * np.std(col_rms[False])


# --------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "kw, points",
    [
        (dict(), {0: 1.0, 50: 1.0, 75: 0.5, 99: 0.02, 100: 0.0, 150: 0.0}),
        (dict(min_lr_ratio=0.1), {49: 1.0, 75: 0.55, 100: 0.1}),
        (dict(warmup_fraction=0.1), {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 75: 0.5}),
        (dict(schedule="warmup_cosine", warmup_fraction=0.1), {0: 0.1, 9: 1.0, 10: 1.0, 55: 0.5, 100: 0.0}),
        (dict(schedule="warmup_cosine", min_lr_ratio=0.1), {0: 1.0, 50: 0.55, 100: 0.1, 200: 0.1}),
        (
            dict(schedule="wsd", warmup_fraction=0.1, cooldown_fraction=0.2),
            {0: 0.1, 9: 1.0, 80: 1.0, 90: 1 - math.sqrt(0.5), 100: 0.0},
        ),
        (
            dict(schedule="wsd", cooldown_fraction=0.2, wsd_decay="cosine"),
            {80: 1.0, 90: 0.5, 95: 0.5 * (1 + math.cos(0.75 * math.pi))},
        ),
        (dict(schedule="wsd", cooldown_fraction=0.2, wsd_decay="linear"), {80: 1.0, 90: 0.5}),
        (dict(cooldown_fraction=0.0), {0: 1.0, 99: 1.0, 100: 1.0}),
    ],
)
def test_schedule_values(kw, points):
    sched = make_schedule(OptimConfig(**kw), 100)
    jitted = jax.jit(sched)
    for step, want in points.items():
        assert float(sched(step)) == pytest.approx(want, abs=1e-6), (kw, step)
        assert float(jitted(jnp.int32(step))) == pytest.approx(want, abs=1e-6)


def test_update_follows_schedule():
    params = {"w": jnp.zeros(3)}
    tx = make_optimizer(OptimConfig(cooldown_fraction=0.5), params, total_steps=4)
    state = tx.init(params)
    step = jax.jit(tx.update)
    sizes = []
    for _ in range(4):
        u, state = step({"w": jnp.ones(3)}, state, params)
        sizes.append(float(-u["w"][0]))
        assert float(optimizer_metrics(state)["lr/adamw_no_wd"]) == pytest.approx(sizes[-1], rel=1e-5)
    np.testing.assert_allclose(sizes, [8e-3, 8e-3, 8e-3, 4e-3], rtol=1e-5)


# --------------------------------------------------------------------------------- clipping and skipping


def _adam_mu(state):
    return optax.tree_utils.tree_get(state, "mu")


def test_global_norm_clipping():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([0.0, 4.0])}  # global norm 5
    b1 = OptimConfig().betas[0]
    for clip, scale in ((1.0, 0.2), (10.0, 1.0), (None, 1.0)):
        tx = make_optimizer(OptimConfig(grad_clip=clip), params, total_steps=10)
        u, state = tx.update(grads, tx.init(params), params)
        mu = _adam_mu(state)
        np.testing.assert_allclose(mu["a"], (1 - b1) * scale * grads["a"], rtol=1e-6)
        np.testing.assert_allclose(mu["b"], (1 - b1) * scale * grads["b"], rtol=1e-6)
        assert float(optimizer_metrics(state)["grad_norm"]) == pytest.approx(5.0)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_gradient_skips_update(bad):
    params = {"w": jax.random.normal(jax.random.key(0), (8, 16)), "s": jnp.ones(16)}
    tx = make_optimizer(OptimConfig(), params, total_steps=10)
    assert set(label_table(params).values()) == {"muon", "adamw_no_wd"}
    step = jax.jit(lambda g, s, p: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
    good = jax.tree.map(jnp.ones_like, params)
    params1, state1 = step(good, tx.init(params), params)

    poisoned = {"w": good["w"].at[3, 5].set(bad), "s": good["s"]}
    params2, state2 = step(poisoned, state1, params1)
    for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state1.inner), jax.tree.leaves(state2.inner)):
        np.testing.assert_array_equal(a, b)
    assert int(skipped_steps(state2)) == 1 and int(state2.count) == 1
    assert not math.isfinite(float(optimizer_metrics(state2)["grad_norm"]))

    params3, state3 = step(good, state2, params2)
    assert int(skipped_steps(state3)) == 1 and int(state3.count) == 2
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params3, state3)))
    assert not np.allclose(params3["w"], params2["w"])
    # The counter is also found through a wrapper (gradient accumulation).
    ms = optax.MultiSteps(tx, every_k_schedule=2)
    assert int(skipped_steps(ms.init(params))) == 0


# ------------------------------------------------------------------------------------ jitted train step


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_decreases_attractor_tiny(optimizer):
    model = M.create_model("attractor-tiny")
    graphdef, params = nnx.split(model, nnx.Param)
    steps = 20
    tx = make_optimizer(OptimConfig(optimizer=optimizer), params, model.config, total_steps=steps)
    opt_state = jax.jit(tx.init)(params)
    b, t = 4, 32
    tokens = (jnp.arange(t + 1)[None, :] * 3 + jnp.arange(b)[:, None] * 17) % model.config.vocab_size

    def loss_fn(p, tok):
        logits, _ = nnx.merge(graphdef, p)(tok[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()

    @jax.jit
    def train_step(p, s, tok):
        loss, grads = jax.value_and_grad(loss_fn)(p, tok)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = train_step(params, opt_state, tokens)
        losses.append(float(loss))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.25 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    m = optimizer_metrics(opt_state)
    assert int(m["opt_step"]) == steps and int(m["skipped_steps"]) == 0
    assert isinstance(params, nnx.State)
