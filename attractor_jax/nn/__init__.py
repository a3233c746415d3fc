"""Flax NNX building blocks: RMSNorm, RoPE, attention (QK-norm, GQA, causal/bidirectional, KV cache), MLPs,
the pre-norm block with optional LayerScale gates, and the reference's scaled-zero initialisers.

No solver code lives here (see ``attractor_jax.implicit``); ``attractor_jax.models`` composes these blocks.
Parameters are float32 and carry logical axis names (see ``attractor_jax.nn.init`` for the list).
"""

from attractor_jax.nn.attention import Attention, KVCache, dot_product_attention
from attractor_jax.nn.block import Block, gate_logit
from attractor_jax.nn.config import BlockConfig
from attractor_jax.nn.init import (
    LOGICAL_AXES,
    matrix_init,
    normal_init,
    param,
    scaled_std,
    torch_linear_init,
    trunc_normal_init,
    trunc_orthogonal_init,
)
from attractor_jax.nn.layers import Embed, Linear, RMSNorm, rms_normalize
from attractor_jax.nn.mlp import MLP, relu2
from attractor_jax.nn.rope import apply_rope, rope_angles
from attractor_jax.nn.sharding import shard_batch

__all__ = [
    "LOGICAL_AXES",
    "MLP",
    "Attention",
    "Block",
    "BlockConfig",
    "Embed",
    "KVCache",
    "Linear",
    "RMSNorm",
    "apply_rope",
    "dot_product_attention",
    "gate_logit",
    "matrix_init",
    "normal_init",
    "param",
    "relu2",
    "rms_normalize",
    "rope_angles",
    "scaled_std",
    "shard_batch",
    "torch_linear_init",
    "trunc_normal_init",
    "trunc_orthogonal_init",
]
