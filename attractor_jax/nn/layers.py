"""Linear, embedding and RMSNorm layers: float32 parameters, a configurable compute dtype.

Mixed precision follows the reference's bf16 autocast: matrix products run in the compute dtype, norms in
float32, and the residual stream stays float32 (adding a bf16 branch output to a float32 stream promotes to
float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn.init import Initializer, ones_init, param
from attractor_jax.nn.sharding import platform


class Linear(nnx.Module):
    """``y = x @ kernel`` without bias; ``kernel`` is ``[in, out]`` with logical axes ``axes``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_init: Initializer,
        axes: Sequence[str | None],
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...].astype(self.dtype)
        if x.ndim > 2 and platform() == "cpu":
            # A 2-D product over the flattened leading axes: on XLA:CPU autodiff's transpose of a batched
            # [B, T, in] product is slow (an MLP's forward+backward took 1.8x as long). Elsewhere the batch axis is
            # kept, so that sharding propagation keeps the batch split.
            y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), w)
            return y.reshape(*x.shape[:-1], y.shape[-1])
        return jnp.dot(x.astype(self.dtype), w)


class Embed(nnx.Module):
    """Token embedding ``[vocab, d]``; ``attend`` is the tied unembedding ``x @ embeddingᵀ``."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        embedding_init: Initializer,
        axes: Sequence[str | None] = ("vocab", "embed"),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.embedding = param(rngs, embedding_init, (num_embeddings, features), axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Look up rows in float32 (the residual stream's dtype)."""
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied unembedding: inputs in the compute dtype, float32 accumulation and float32 logits."""
        w = self.embedding[...].astype(self.dtype)
        return jnp.dot(x.astype(self.dtype), w.T, preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x²) + eps) * scale`` computed in float32, returned in the input dtype."""

    def __init__(self, features: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(None, ones_init(), (features,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def rms_normalize(x: jax.Array, eps: float | None = None) -> jax.Array:
    """Parameter-free RMS normalisation over the last axis, in float32, returned in the input dtype.

    ``eps=None`` uses the machine epsilon of the input dtype, as ``torch.nn.functional.rms_norm`` does (the
    reference's QK-norm).
    """
    if eps is None:
        eps = float(jnp.finfo(x.dtype).eps)
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)
