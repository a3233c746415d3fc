"""``BlockConfig``: everything a pre-norm transformer block needs, as one frozen (hashable, static)
dataclass."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from attractor_jax.nn.init import scaled_std

ATTENTION_IMPLS = (None, "einsum", "xla", "cudnn", "splash")
MLP_TYPES = ("relu2", "swiglu")
OUT_INITS = ("zero", "trunc_normal", "matrix")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Shape, numerics and initialisation of one block.

    out_init: how the attention and MLP output projections start. ``"zero"`` is the reference's scaled-zero
      (block = identity at init); ``"trunc_normal"`` is the attractor head's re-init (truncated normal ±3σ
      with the base std, not orthogonal); ``"matrix"`` uses the same initialiser as the input projections.
    attention_impl: ``None`` picks per platform (``"einsum"`` on CPUs, ``jax.nn``'s choice elsewhere);
      ``"einsum"`` is our XLA attention (`attractor_jax.nn.attention.einsum_attention`); ``"xla"``/``"cudnn"``
      go to ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPUs); ``"splash"`` uses the Pallas TPU
      splash-attention kernel (TPU only; per device, so wrap it in ``shard_map`` under a mesh).
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int | None = None
    mlp_type: str = "relu2"
    norm_eps: float = 1e-5
    rope_base: float = 50_000.0
    qk_norm: bool = True
    causal: bool = True
    dtype: str = "float32"
    attention_impl: str | None = None
    init_std: float | None = None
    init_orthogonal: bool = True
    out_init: str = "zero"
    ve_gate_channels: int = 32

    def __post_init__(self):
        if self.n_heads <= 0 or self.d_model <= 0:
            raise ValueError(
                f"d_model and n_heads must be positive, got d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.dim_head % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.dim_head}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type={self.mlp_type!r}; expected one of {MLP_TYPES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        if self.out_init not in OUT_INITS:
            raise ValueError(f"out_init={self.out_init!r}; expected one of {OUT_INITS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; expected one of {DTYPES}")

    @property
    def num_heads(self) -> int:
        return self.n_heads

    @property
    def num_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.d_model

    @property
    def std(self) -> float:
        return scaled_std(self.d_model) if self.init_std is None else self.init_std

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)
