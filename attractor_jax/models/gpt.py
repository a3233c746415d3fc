"""GPT baseline: tied embedding → ``n_layers`` pre-norm blocks (value embeddings on alternating layers) →
RMSNorm → tied unembedding. Parameter paths: ``embed``, ``blocks[i]``, ``value_embeds['i']``,
``final_norm``.

``init_cache`` / ``extend`` are the incremental forward used by generation: one key/value cache per block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models.common import (
    embed_tokens,
    has_ve,
    lookup_value_embeds,
    make_embed,
    init_block_caches,
    make_value_embeds,
    run_blocks_cached,
    tied_logits,
)
from attractor_jax.models.config import GPTConfig
from attractor_jax.nn import Block, RMSNorm


class GPT(nnx.Module):
    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        bc = config.block_config()
        n = config.n_layers
        self.embed = make_embed(config, rngs)
        self.blocks = nnx.List(
            [Block(bc, value_embed=config.value_embeds and has_ve(i, n), rngs=rngs) for i in range(n)]
        )
        self.value_embeds = make_value_embeds(config, n, rngs) if config.value_embeds else nnx.Dict({})
        self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)

    def __call__(
        self,
        tokens_BT: jax.Array,
        max_iter: int | None = None,
        tol: float | None = None,
        *,
        key: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
    ) -> tuple[jax.Array, dict]:
        """Returns ``(logits [B, T, V] float32, {})``. ``max_iter``/``tol``/``key`` are accepted for a uniform
        model interface (depth sweeps, training randomness) and ignored: a GPT has no recurrence."""
        cfg = self.config
        x = embed_tokens(cfg, self.embed, tokens_BT)
        ves = lookup_value_embeds(self.value_embeds, tokens_BT, cfg.n_layers)
        for blk, ve in zip(self.blocks, ves):
            x = blk(x, positions_BT=positions_BT, ve_BTF=ve)
        return tied_logits(cfg, self.embed, self.final_norm(x)), {}

    def init_cache(self, batch: int, max_len: int, max_iter: int | None = None) -> dict:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (``max_iter`` is ignored)."""
        return {
            "index": jnp.zeros((), jnp.int32),
            "blocks": init_block_caches(self.config, self.config.n_layers, batch, max_len),
        }

    def extend(
        self,
        tokens_BT: jax.Array,
        cache: dict,
        max_iter: int | None = None,
        tol: float | None = None,
        *,
        last_only: bool = False,
    ) -> tuple[jax.Array, dict, dict]:
        """Append tokens to the cache: ``(logits [B, T, V] (or [B, 1, V] with last_only), new cache, {})``.
        The logits equal the uncached forward's at the same positions."""
        cfg = self.config
        x = embed_tokens(cfg, self.embed, tokens_BT)
        ves = lookup_value_embeds(self.value_embeds, tokens_BT, cfg.n_layers)
        x, blocks = run_blocks_cached(self.blocks, x, cache["blocks"], ves)
        if last_only:
            x = x[:, -1:]
        new = {"index": cache["index"] + tokens_BT.shape[1], "blocks": blocks}
        return tied_logits(cfg, self.embed, self.final_norm(x)), new, {}
