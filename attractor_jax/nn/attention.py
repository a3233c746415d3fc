"""Multi-head self-attention: RoPE, parameter-free QK-norm after RoPE, optional GQA and value embeddings.

Order of operations (reference ``CausalSelfAttention``): q, k, v projections → value-embedding mix into v
(``v += 2σ(W_g x[..., :32]) · ve``, GPT/Parcae only) → RoPE on q, k (float32) → RMS-normalise q, k over
head_dim (no parameters, eps = machine eps of the compute dtype) → softmax attention with scale
1/sqrt(head_dim) → output projection.

Attention runs through `einsum_attention` (the default on CPUs), ``jax.nn.dot_product_attention``
(``implementation`` "xla"/"cudnn", the default elsewhere) or the Pallas TPU splash kernel. A ``KVCache`` argument
turns a call into an incremental step: the new keys/values are written at ``cache.index`` and the queries attend to
every filled position up to their own (decode / chunked prefill).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn.config import BlockConfig
from attractor_jax.nn.init import matrix_init, torch_linear_init, trunc_normal_init, zeros_init
from attractor_jax.nn.layers import Linear, rms_normalize
from attractor_jax.nn.rope import apply_rope, rope_angles
from attractor_jax.nn.sharding import platform


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of one attention layer, ``[B, S_max, K, H]``, filled up to ``index`` (int32 scalar)."""

    k: jax.Array
    v: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, batch: int, max_len: int, n_kv_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
        z = jnp.zeros((batch, max_len, n_kv_heads, head_dim), dtype)
        return cls(k=z, v=z, index=jnp.zeros((), jnp.int32))

    def update(self, k_BTKH: jax.Array, v_BTKH: jax.Array) -> "KVCache":
        k = jax.lax.dynamic_update_slice_in_dim(self.k, k_BTKH.astype(self.k.dtype), self.index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(self.v, v_BTKH.astype(self.v.dtype), self.index, axis=1)
        return KVCache(k=k, v=v, index=self.index + k_BTKH.shape[1])


def out_proj_init(cfg: BlockConfig):
    if cfg.out_init == "zero":
        return zeros_init()
    if cfg.out_init == "trunc_normal":
        return trunc_normal_init(cfg.std)
    return matrix_init(cfg.std, cfg.init_orthogonal)


def dot_product_attention(
    q_BTNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    *,
    causal: bool,
    implementation: str | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention with scale 1/sqrt(H); K may divide N (grouped KV heads). Returns ``[B, T, N, H]``.

    ``implementation``: ``"einsum"`` is `einsum_attention`; ``"xla"``/``"cudnn"`` go to
    ``jax.nn.dot_product_attention``; ``"splash"`` to the Pallas TPU kernel; ``None`` picks ``"einsum"`` on a
    CPU and lets ``jax.nn.dot_product_attention`` choose on GPUs and TPUs (cuDNN where it applies). The platform
    is the ambient mesh's (so ahead-of-time compilation for a TPU from a CPU host traces the TPU path), else the
    default backend's.
    """
    if implementation == "splash":
        if mask is not None:
            raise ValueError(
                "attention_impl='splash' does not support an explicit mask (KV-cache steps); use 'xla'"
            )
        return _splash_attention(q_BTNH, k_BSKH, v_BSKH, causal=causal)
    if implementation == "einsum" or (implementation is None and platform() == "cpu"):
        return einsum_attention(q_BTNH, k_BSKH, v_BSKH, causal=causal, mask=mask)
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mask=mask,
        is_causal=causal and mask is None,
        implementation=implementation,
    )


def einsum_attention(q_BTNH, k_BSKH, v_BSKH, *, causal: bool, mask: jax.Array | None = None) -> jax.Array:
    """Attention as two einsums around an unnormalised softmax, laid out for XLA's CPU emitter.

    Scores in float32, heads-major (grouped heads read their shared K/V without repeating it), the mask added as a
    0/−1e30 bias, ``e = exp(s − max s)``, and the division by ``Σ e`` applied to the ``[.., T, H]`` output instead
    of the ``[.., T, S]`` probabilities. On a 2-core CPU ([8, 256, 4, 64], causal) this is 2.8x faster forward and 2.3x
    forward+backward than ``jax.nn.dot_product_attention``'s XLA path (measured in isolation). ``mask``:
    boolean, broadcastable to ``[B, 1, T, S]`` (True = attend); each query must see at least one key.

    Causal self-attention without a mask skips the key blocks that the causal mask hides: the queries are split
    into up to 4 blocks of at least 64 rows (`causal_query_blocks`), and block i attends to the first (i + 1)/nb of
    the keys only, which saves 1/4 (2 blocks) to 3/8 (4 blocks) of the score work. Same numbers as one product
    (each row's keys and sums are the same). Measured in one process on 2 cores: at [8, 256, 4, 64] forward 7.6 →
    6.9 ms and forward+backward 27.9 → 20.7 ms; at [8, 128, 4, 32] forward+backward 4.6 → 3.6 ms, forward 1.2 → 1.4.
    """
    b, t, n, h = q_BTNH.shape
    s_len, kv = k_BSKH.shape[1], k_BSKH.shape[2]
    g = n // kv
    # Heads-major layout once ([B, K, G, T, H] queries against [B, K, S, H] keys/values), so that every product
    # here and in the backward pass is a plain batched matrix product.
    q = (q_BTNH.astype(jnp.float32) * h**-0.5).astype(q_BTNH.dtype)
    q = q.reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4)
    k, v = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    nb = causal_query_blocks(t) if causal and mask is None and s_len == t else 1
    c = t // nb
    outs = []
    for i in range(nb):  # query rows [i·c, (i+1)·c) see keys [0, keys) at most
        keys = s_len if nb == 1 else (i + 1) * c
        block_mask = mask
        if block_mask is None and causal:
            rows = jnp.arange(i * c, (i + 1) * c)[:, None] + (s_len - t)
            block_mask = (jnp.arange(keys)[None, :] <= rows)[None, None]
        outs.append(_attend(q[:, :, :, i * c:(i + 1) * c], k[:, :, :keys], v[:, :, :keys], block_mask))
    o = outs[0] if nb == 1 else jnp.concatenate(outs, axis=3)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q_BTNH.dtype)


def causal_query_blocks(t: int) -> int:
    """How many query blocks `einsum_attention` splits causal self-attention over ``t`` tokens into: 4, 2 or 1,
    the most that keeps every block at least 64 rows and divides ``t``."""
    for nb in (4, 2):
        if t % nb == 0 and t // nb >= 64:
            return nb
    return 1


def _attend(q_BKGCH, k_BKSH, v_BKSH, mask):
    """Softmax attention of heads-major queries ``[B, K, G, C, H]`` (already scaled) on ``[B, K, S, H]`` keys and
    values; ``mask`` broadcastable to ``[B, 1, C, S]`` or None. Returns ``[B, K, G, C, H]`` in float32."""
    b, kv, g, c, h = q_BKGCH.shape
    s_len = k_BKSH.shape[2]
    s = jnp.einsum("bkqh,bksh->bkqs", q_BKGCH.reshape(b, kv, g * c, h), k_BKSH,
                   preferred_element_type=jnp.float32).reshape(b, kv, g, c, s_len)
    if mask is not None:
        s = s + jnp.where(mask, 0.0, -1e30)[:, :, None]  # [B|1, 1, 1, C, S]
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    o = jnp.einsum("bkqs,bksh->bkqh", e.astype(v_BKSH.dtype).reshape(b, kv, g * c, s_len), v_BKSH,
                   preferred_element_type=jnp.float32).reshape(b, kv, g, c, h)
    return o / jnp.sum(e, axis=-1)[..., None]


def _splash_attention(q, k, v, *, causal: bool, interpret: bool = False):
    """Pallas TPU splash attention, vmapped over the batch (per-device; wrap in shard_map for a mesh)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    _, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    if kv != n:
        k = jnp.repeat(k, n // kv, axis=2)
        v = jnp.repeat(v, n // kv, axis=2)
    base = sa.CausalMask((t, s)) if causal else sa.FullMask((t, s))
    kernel = sa.make_splash_mha_single_device(sa.MultiHeadMask([base] * n), interpret=interpret)
    q = q * (h**-0.5)
    out = jax.vmap(kernel)(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    return out.transpose(0, 2, 1, 3)


class Attention(nnx.Module):
    """Self-attention with parameters ``q [d, N·H]``, ``k, v [d, K·H]``, ``o [N·H, d]`` (and ``ve_gate [32,
    K]``)."""

    def __init__(self, cfg: BlockConfig, *, value_embed_gate: bool = False, rngs: nnx.Rngs):
        self.cfg = cfg
        d, n, kv, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.dim_head
        dt = cfg.compute_dtype
        w_in = matrix_init(cfg.std, cfg.init_orthogonal)
        self.q = Linear(d, n * h, kernel_init=w_in, axes=("embed", "heads"), dtype=dt, rngs=rngs)
        self.k = Linear(d, kv * h, kernel_init=w_in, axes=("embed", "kv"), dtype=dt, rngs=rngs)
        self.v = Linear(d, kv * h, kernel_init=w_in, axes=("embed", "kv"), dtype=dt, rngs=rngs)
        self.o = Linear(
            n * h, d, kernel_init=out_proj_init(cfg), axes=("heads", "embed"), dtype=dt, rngs=rngs
        )
        if value_embed_gate:
            c = cfg.ve_gate_channels
            self.ve_gate = Linear(
                c, kv, kernel_init=torch_linear_init(c), axes=("ve_in", "kv_heads"), dtype=dt, rngs=rngs
            )
        else:
            self.ve_gate = None

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        ve_BTF: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        """Returns the output ``[B, T, d]`` (compute dtype), or ``(output, new_cache)`` when ``cache`` is
        given.

        positions_BT: token positions for RoPE (default ``arange(T)``, offset by ``cache.index`` with a
        cache). ve_BTF: value embedding ``[B, T, K·H]`` mixed into v (only where the layer has a ``ve_gate``).
        """
        cfg = self.cfg
        b, t, _ = x_BTD.shape
        n, kv, h = cfg.num_heads, cfg.num_kv_heads, cfg.dim_head
        q = self.q(x_BTD).reshape(b, t, n, h)
        k = self.k(x_BTD).reshape(b, t, kv, h)
        v = self.v(x_BTD).reshape(b, t, kv, h)
        if ve_BTF is not None and self.ve_gate is not None:
            gate = 2.0 * jax.nn.sigmoid(self.ve_gate(x_BTD[..., : cfg.ve_gate_channels]))
            v = v + gate[..., None] * ve_BTF.reshape(b, t, kv, h).astype(v.dtype)
        if positions_BT is None:
            start = cache.index if cache is not None else 0
            positions_BT = (start + jnp.arange(t, dtype=jnp.int32))[None, :]
        cos, sin = rope_angles(positions_BT, h, cfg.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cfg.qk_norm:
            q, k = rms_normalize(q), rms_normalize(k)

        if cache is None:
            y = dot_product_attention(q, k, v, causal=cfg.causal, implementation=cfg.attention_impl)
            return self.o(y.reshape(b, t, n * h))

        cache = cache.update(k, v)
        s = cache.k.shape[1]
        key_pos = jnp.arange(s, dtype=jnp.int32)
        valid = key_pos[None, :] < cache.index  # [1, S]
        if cfg.causal:
            valid = valid & (key_pos[None, None, :] <= positions_BT[..., None])  # [B|1, T, S]
        else:
            valid = jnp.broadcast_to(valid[:, None, :], (1, t, s))
        mask = valid[:, None, :, :]  # [B|1, 1, T, S]
        impl = cfg.attention_impl if cfg.attention_impl != "splash" else None
        y = dot_product_attention(
            q, cache.k.astype(q.dtype), cache.v.astype(q.dtype), causal=False, implementation=impl, mask=mask
        )
        return self.o(y.reshape(b, t, n * h)), cache


splash_attention_interpret = functools.partial(_splash_attention, interpret=True)
