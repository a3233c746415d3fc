"""Initialisers, RMSNorm, RoPE convention and logical axis metadata of attractor_jax.nn."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax.nn as ann


def test_trunc_orthogonal_init_matches_reference_scaling():
    std = ann.scaled_std(64)
    for shape in [(64, 256), (256, 64), (64, 64)]:
        w = ann.trunc_orthogonal_init(std)(jax.random.key(0), shape, jnp.float32)
        sv = np.linalg.svd(np.asarray(w), compute_uv=False)
        # all singular values equal std * sqrt(max(rows, cols)); entry RMS equals std
        np.testing.assert_allclose(sv, std * math.sqrt(max(shape)), rtol=1e-4)
        np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(w * w))), std, rtol=1e-4)
    assert not jnp.any(ann.trunc_orthogonal_init(0.0)(jax.random.key(0), (4, 8), jnp.float32))


def test_trunc_normal_init_is_truncated_at_three_sigma():
    w = ann.trunc_normal_init(0.1)(jax.random.key(1), (200, 200), jnp.float32)
    assert float(jnp.max(jnp.abs(w))) <= 0.3 + 1e-6
    np.testing.assert_allclose(float(jnp.std(w)), 0.1 * 0.9866, rtol=0.02)  # std of N(0,1) cut at ±3


def test_rms_norm_and_parameter_free_qk_norm():
    x = jax.random.normal(jax.random.key(0), (3, 5, 16)) * 7.0
    n = ann.RMSNorm(16, eps=1e-5)
    y = n(x)
    np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(y) ** 2, -1)), 1.0, rtol=1e-4)
    xb = x.astype(jnp.bfloat16)
    assert n(xb).dtype == jnp.bfloat16 and ann.rms_normalize(xb).dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ann.rms_normalize(x)), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_rope_uses_interleaved_pairs_like_complex_multiplication():
    b, t, n, h, base = 1, 6, 2, 8, 50_000.0
    x = jax.random.normal(jax.random.key(0), (b, t, n, h))
    pos = jnp.arange(t)[None]
    cos, sin = ann.rope_angles(pos, h, base)
    out = ann.apply_rope(x, cos, sin)
    xc = np.asarray(x[..., 0::2]) + 1j * np.asarray(x[..., 1::2])
    theta = base ** (-np.arange(0, h, 2) / h)
    rot = xc * np.exp(1j * np.arange(t)[None, :, None, None] * theta)
    expect = np.stack([rot.real, rot.imag], -1).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(out), expect, rtol=1e-5, atol=1e-5)
    # relative-position property: <R(p)q, R(p')k> depends on p - p' only
    q, k = x[:, :1, :1], x[:, 1:2, :1]

    def dot(pq, pk):
        cq, sq = ann.rope_angles(jnp.array([[pq]]), h, base)
        ck, sk = ann.rope_angles(jnp.array([[pk]]), h, base)
        return float(jnp.sum(ann.apply_rope(q, cq, sq) * ann.apply_rope(k, ck, sk)))

    assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-4)


def test_every_parameter_has_logical_axis_names():
    cfg = ann.BlockConfig(d_model=32, n_heads=4, n_kv_heads=2, mlp_type="swiglu")
    blk = ann.Block(cfg, value_embed=True, layer_scale_init=0.5, rngs=nnx.Rngs(0))
    flat = nnx.to_flat_state(nnx.state(blk, nnx.Param))
    assert len(flat) == 12  # 2 norms, q k v o, ve_gate, fc gate proj, 2 gates
    for path, var in flat:
        axes = var.get_metadata()["out_sharding"]
        assert len(axes) == var.get_value().ndim and set(axes) <= set(ann.LOGICAL_AXES), (path, axes)
    rules = (("embed", "fsdp"), ("heads", "tp"), ("kv", "tp"), ("mlp", "tp"))
    with nnx.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(nnx.state(blk, nnx.Param))
    assert tuple(specs["attn"]["q"]["kernel"].get_value()) == ("fsdp", "tp")
    assert tuple(specs["mlp"]["proj"]["kernel"].get_value()) == ("tp", "fsdp")


def test_block_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ann.BlockConfig(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="attention_impl"):
        ann.BlockConfig(d_model=32, n_heads=4, attention_impl="flash")
