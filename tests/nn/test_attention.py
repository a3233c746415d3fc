"""Attention and block behaviour: causality, GQA, QK-norm, KV-cache decoding, gates, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax.nn as ann


def _cfg(**kw):
    base = dict(d_model=32, n_heads=4, mlp_dim=64, out_init="matrix", rope_base=10_000.0)
    base.update(kw)
    return ann.BlockConfig(**base)


def _x(b=2, t=8, d=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, t, d))


def test_causal_attention_ignores_the_future_and_bidirectional_does_not():
    x = _x()
    x2 = x.at[:, 5].add(1.0)
    xs = jnp.stack([x, x2])
    causal = nnx.jit(lambda m, xs: jax.vmap(m)(xs))(ann.Attention(_cfg(), rngs=nnx.Rngs(0)), xs)
    np.testing.assert_array_equal(np.asarray(causal[0, :, :5]), np.asarray(causal[1, :, :5]))
    assert float(jnp.abs(causal[0, :, 5:] - causal[1, :, 5:]).max()) > 1e-3
    bidir = nnx.jit(lambda m, xs: jax.vmap(m)(xs))(ann.Attention(_cfg(causal=False), rngs=nnx.Rngs(0)), xs)
    assert float(jnp.abs(bidir[0, :, :5] - bidir[1, :, :5]).max()) > 1e-3


def test_attention_matches_a_plain_reference_implementation():
    cfg = _cfg(n_kv_heads=2)
    att = ann.Attention(cfg, rngs=nnx.Rngs(1))
    x = _x(1, 6)
    got = nnx.jit(lambda m, x: m(x))(att, x)
    b, t, n, kv, h = 1, 6, 4, 2, 8
    q = (x @ att.q.kernel[...]).reshape(b, t, n, h)
    k = (x @ att.k.kernel[...]).reshape(b, t, kv, h)
    v = (x @ att.v.kernel[...]).reshape(b, t, kv, h)
    cos, sin = ann.rope_angles(jnp.arange(t)[None], h, cfg.rope_base)
    q, k = ann.apply_rope(q, cos, sin), ann.apply_rope(k, cos, sin)
    q = q / jnp.sqrt(jnp.mean(q * q, -1, keepdims=True) + jnp.finfo(jnp.float32).eps)  # QK-norm after RoPE
    k = k / jnp.sqrt(jnp.mean(k * k, -1, keepdims=True) + jnp.finfo(jnp.float32).eps)
    k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)  # GQA: query head i uses kv head i // 2
    s = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(h)
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    y = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, -1), v).reshape(b, t, n * h) @ att.o.kernel[...]
    np.testing.assert_allclose(np.asarray(got), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_matches_the_full_forward():
    blk = ann.Block(_cfg(n_kv_heads=2), value_embed=True, rngs=nnx.Rngs(2))
    gd, st = nnx.split(blk)
    run = jax.jit(lambda x, ve, cache: nnx.merge(gd, st)(x, ve_BTF=ve, cache=cache))
    x = _x(2, 8)
    ve = jax.random.normal(jax.random.key(3), (2, 8, 16))
    full = run(x, ve, None)
    cache = ann.KVCache.init(2, 10, 2, 8)
    y0, cache = run(x[:, :5], ve[:, :5], cache)  # chunked prefill
    outs = [y0]
    for t in range(5, 8):  # then one token at a time (one compiled step)
        y, cache = run(x[:, t : t + 1], ve[:, t : t + 1], cache)
        outs.append(y)
    assert int(cache.index) == 8
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), rtol=1e-5, atol=1e-5)


def test_scaled_zero_block_is_identity_and_gates_start_at_init_value():
    blk = ann.Block(_cfg(out_init="zero"), rngs=nnx.Rngs(0))
    x = _x()
    np.testing.assert_array_equal(np.asarray(blk(x)), np.asarray(x))
    gated = ann.Block(_cfg(), layer_scale_init=0.75, gamma_max=0.75, rngs=nnx.Rngs(0))
    ga, gm = gated.gates()
    np.testing.assert_allclose(np.asarray(ga), 0.75, rtol=1e-5)
    assert float(gated.gate_attn[0]) == pytest.approx(
        np.log((1 - 1e-6) / 1e-6), rel=1e-3
    )  # saturated, ≈ 13.8
    half = ann.Block(_cfg(), layer_scale_init=0.25, gamma_max=1.0, rngs=nnx.Rngs(0))
    plain = ann.Block(_cfg(), rngs=nnx.Rngs(0))  # same draws, no gates
    # gated branch outputs are the ungated ones times 0.25 (checked on the attention branch)
    d_gated = half.attn(half.norm_1(x)) * 0.25
    np.testing.assert_allclose(np.asarray(d_gated), np.asarray(plain.attn(plain.norm_1(x)) * 0.25), rtol=1e-6)
    assert float(jnp.abs(half(x) - x).max()) < float(jnp.abs(plain(x) - x).max())


def test_bfloat16_compute_path_keeps_float32_params_and_stream():
    cfg = _cfg(dtype="bfloat16", mlp_type="swiglu")
    blk = ann.Block(cfg, rngs=nnx.Rngs(0))
    x = _x()
    y = blk(x)
    assert y.dtype == jnp.float32
    assert all(v.get_value().dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(blk, nnx.Param)))
    ref = ann.Block(_cfg(mlp_type="swiglu"), rngs=nnx.Rngs(0))(x)
    assert float(jnp.abs(y - ref).max()) < 0.1 * float(jnp.abs(ref).max())


def test_splash_switch_fails_clearly_with_a_mask():
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="splash"):
        ann.dot_product_attention(
            q, q, q, causal=True, implementation="splash", mask=jnp.ones((1, 1, 4, 4), bool)
        )


def test_splash_kernel_matches_xla_in_interpret_mode():
    from attractor_jax.nn.attention import splash_attention_interpret

    q = jax.random.normal(jax.random.key(0), (1, 128, 2, 128))
    k = jax.random.normal(jax.random.key(1), (1, 128, 1, 128))  # grouped KV head
    v = jax.random.normal(jax.random.key(2), (1, 128, 1, 128))
    out = splash_attention_interpret(q, k, v, causal=True)
    ref = ann.dot_product_attention(q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
