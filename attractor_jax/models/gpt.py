"""GPT baseline: tied embedding → ``n_layers`` pre-norm blocks (value embeddings on alternating layers) →
RMSNorm → tied unembedding. Parameter paths: ``embed``, ``blocks[i]``, ``value_embeds['i']``,
``final_norm``."""

from __future__ import annotations

import jax
from flax import nnx

from attractor_jax.models.common import (
    embed_tokens,
    has_ve,
    lookup_value_embeds,
    make_embed,
    make_value_embeds,
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
