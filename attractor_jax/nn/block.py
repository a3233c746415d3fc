"""The pre-norm transformer block, optionally with per-channel LayerScale gates (the attractor head's block).

``x ← x + g_attn ⊙ attn(norm_1(x));  x ← x + g_mlp ⊙ mlp(norm_2(x))`` with ``g = σ(r) · γ_max`` when gated
(``r`` a learnable vector of size d, initialised to ``logit(clip(γ_init / γ_max, 1e-6, 1 - 1e-6))`` so the
gate starts at γ_init). Without gates it is the reference's ``TransformerPreNormBlock``. The residual stream
keeps its own dtype (float32); branches run in the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn.attention import Attention, KVCache
from attractor_jax.nn.config import BlockConfig
from attractor_jax.nn.init import constant_init, param
from attractor_jax.nn.layers import RMSNorm
from attractor_jax.nn.mlp import MLP
from attractor_jax.nn.sharding import shard_batch


def gate_logit(layer_scale_init: float, gamma_max: float) -> float:
    p = min(max(layer_scale_init / gamma_max, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


class Block(nnx.Module):
    """Pre-norm block. ``value_embed`` adds the value-embedding gate; ``layer_scale_init`` adds LayerScale
    gates."""

    def __init__(
        self,
        cfg: BlockConfig,
        *,
        value_embed: bool = False,
        layer_scale_init: float | None = None,
        gamma_max: float = 1.0,
        rngs: nnx.Rngs,
    ):
        d = cfg.d_model
        self.norm_1 = RMSNorm(d, eps=cfg.norm_eps)
        self.attn = Attention(cfg, value_embed_gate=value_embed, rngs=rngs)
        self.norm_2 = RMSNorm(d, eps=cfg.norm_eps)
        self.mlp = MLP(cfg, rngs=rngs)
        if layer_scale_init is not None:
            raw = gate_logit(float(layer_scale_init), float(gamma_max))
            self.gate_attn = param(None, constant_init(raw), (d,), ("norm",))
            self.gate_mlp = param(None, constant_init(raw), (d,), ("norm",))
            self.gamma_max = float(gamma_max)
        else:
            self.gate_attn = None
            self.gate_mlp = None
            self.gamma_max = 1.0

    def gates(self) -> tuple[jax.Array, jax.Array] | None:
        """Effective gates ``σ(r) · γ_max`` (float32, size d each), or None for an ungated block."""
        if self.gate_attn is None:
            return None
        return (
            jax.nn.sigmoid(self.gate_attn[...]) * self.gamma_max,
            jax.nn.sigmoid(self.gate_mlp[...]) * self.gamma_max,
        )

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        ve_BTF: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        """Returns the new residual stream, or ``(stream, new_cache)`` when ``cache`` is given. Input and output
        are batch-sharded under a training mesh (`attractor_jax.nn.sharding.shard_batch`)."""
        x_BTD = shard_batch(x_BTD)
        g = self.gates()
        h = self.attn(self.norm_1(x_BTD), positions_BT=positions_BT, ve_BTF=ve_BTF, cache=cache)
        if cache is not None:
            h, cache = h
        if g is not None:
            h = h.astype(jnp.float32) * g[0]
        x = x_BTD + h.astype(x_BTD.dtype)
        m = self.mlp(self.norm_2(x))
        if g is not None:
            m = m.astype(jnp.float32) * g[1]
        x = shard_batch(x + m.astype(x.dtype))
        return x if cache is None else (x, cache)
