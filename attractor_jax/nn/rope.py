"""Rotary position embeddings in the reference's interleaved-pair convention, computed in float32.

Pairs are ``(x[2i], x[2i+1])``, rotated like the complex product ``(x[2i] + i x[2i+1]) · e^{i θ_i p}`` with
``θ_i = base^{-2i / head_dim}`` (NOT the rotate-half convention). The result is cast back to the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of ``positions[..., None] * θ``, shape ``positions.shape + (head_dim // 2,)``, float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BTNH: jax.Array, cos_BTF: jax.Array, sin_BTF: jax.Array) -> jax.Array:
    """Rotate ``x [B, T, N, H]`` by angles ``[B or 1, T, H/2]`` (interleaved pairs), in float32.

    Computed as ``x·cos + swap(x)·(±sin)`` with the pair members swapped by a reversal inside each pair and the
    tables widened to H: two elementwise products and no gather/stack of the pair members, which is what XLA
    lays out best (on the CPU 1.7x faster than splitting and re-stacking the pairs, forward and backward).
    """
    xf = x_BTNH.astype(jnp.float32)
    h = xf.shape[-1]
    swapped = xf.reshape(*xf.shape[:-1], h // 2, 2)[..., ::-1].reshape(xf.shape)
    sign = jnp.tile(jnp.array([-1.0, 1.0], jnp.float32), h // 2)
    c = jnp.repeat(cos_BTF, 2, axis=-1)[:, :, None, :]
    s = (jnp.repeat(sin_BTF, 2, axis=-1) * sign)[:, :, None, :]
    return (xf * c + swapped * s).astype(x_BTNH.dtype)
