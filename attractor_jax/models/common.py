"""Pieces shared by the language models: embedding, value-embedding tables, tied logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models.config import LMConfig, has_ve
from attractor_jax.nn import Embed, matrix_init, normal_init
from attractor_jax.nn.attention import KVCache


def make_embed(cfg: LMConfig, rngs: nnx.Rngs) -> Embed:
    """Tied token embedding ``[vocab, d]`` with the scaled-zero std (orthogonal when ``init_orthogonal``)."""
    return Embed(
        cfg.vocab_size,
        cfg.d_model,
        embedding_init=matrix_init(cfg.std, cfg.init_orthogonal),
        dtype=jnp.dtype(cfg.dtype),
        rngs=rngs,
    )


def make_value_embeds(cfg: LMConfig, n_layers: int, rngs: nnx.Rngs, where=None) -> nnx.Dict:
    """One ``[vocab, K·H]`` table per value-embedding layer (``where(i)``; default ``has_ve``), N(0, 1)
    (PyTorch's default embedding init), keyed by the layer index as a string."""
    bc = cfg.block_config()
    width = bc.num_kv_heads * bc.dim_head
    return nnx.Dict(
        {
            str(i): Embed(
                cfg.vocab_size, width, embedding_init=normal_init(1.0), axes=("vocab", "embed"), rngs=rngs
            )
            for i in range(n_layers)
            if (has_ve(i, n_layers) if where is None else where(i))
        }
    )


def lookup_value_embeds(tables: nnx.Dict, tokens_BT: jax.Array, n_layers: int) -> list[jax.Array | None]:
    return [tables[str(i)](tokens_BT) if str(i) in tables else None for i in range(n_layers)]


def tied_logits(cfg: LMConfig, embed: Embed, h_BTD: jax.Array) -> jax.Array:
    """``logit_scale · (h @ Eᵀ)`` in float32, with an optional tanh soft-cap."""
    logits = embed.attend(h_BTD)
    if cfg.logit_scale != 1.0:
        logits = logits * cfg.logit_scale
    if cfg.logit_softcap is not None:
        logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
    return logits


def embed_tokens(cfg: LMConfig, embed: Embed, tokens_BT: jax.Array) -> jax.Array:
    x = embed(tokens_BT)
    return x * cfg.embed_scale if cfg.embed_scale != 1.0 else x


def init_block_caches(cfg: LMConfig, n_blocks: int, batch: int, max_len: int) -> list[KVCache]:
    """Empty key/value caches ``[batch, max_len, K, H]`` (compute dtype) for ``n_blocks`` attention blocks."""
    bc = cfg.block_config()
    return [
        KVCache.init(batch, max_len, bc.num_kv_heads, bc.dim_head, bc.compute_dtype) for _ in range(n_blocks)
    ]


def run_blocks_cached(
    blocks, x_BTD: jax.Array, caches: list[KVCache], ves: list[jax.Array | None] | None = None
) -> tuple[jax.Array, list[KVCache]]:
    """Apply ``blocks`` in order to new tokens, each reading and extending its own cache (RoPE positions and
    the causal mask come from the cache's fill index). Returns the stream and the extended caches."""
    new = []
    for i, (blk, kv) in enumerate(zip(blocks, caches)):
        x_BTD, kv = blk(x_BTD, ve_BTF=None if ves is None else ves[i], cache=kv)
        new.append(kv)
    return x_BTD, new
