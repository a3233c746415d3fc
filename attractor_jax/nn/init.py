"""Initialisers of the reference code and a helper that creates a parameter with its logical axis names.

The reference's "scaled-zero" strategy (its ``utils/init.py``) draws every matrix with std ``sqrt(2 / (5 d))``
(embedding, q, k, v, MLP in-projection, the tied head, Parcae's C) and sets the attention and MLP output
projections to zero, so every pre-norm block is the identity at initialisation. With ``init_orthogonal`` the
matrix is a sign-fixed QR factor of a truncated normal (±2), scaled by ``std * sqrt(max(rows, cols))``:
entry RMS ``std`` and all singular values equal. Norm scales are one.

Every parameter carries logical axis names in its ``out_sharding`` metadata (eager sharding off, so creating a
model needs no mesh); a trainer turns them into a ``PartitionSpec`` with logical-axis rules
(``nnx.get_partition_spec(state)`` inside ``with nnx.logical_axis_rules(rules):``). The names used in this
package:

============== ==========================================================
``vocab``      vocabulary rows of the (tied) embedding and value embeddings
``embed``      model width d (residual stream)
``heads``      fused query heads × head_dim (q kernel columns, out-proj rows)
``kv``         fused key/value heads × head_dim (k, v kernel columns; value-embedding columns)
``kv_heads``   key/value heads (value-embedding gate outputs)
``ve_in``      the 32 input channels of the value-embedding gate
``mlp``        MLP hidden width
``norm``       RMSNorm scales and LayerScale gates (per channel of d; usually replicated)
``state``      Parcae recurrent-state width (injection A, dt, B columns, C rows)
============== ==========================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

LOGICAL_AXES = ("vocab", "embed", "heads", "kv", "kv_heads", "ve_in", "mlp", "norm", "state")


def scaled_std(d_model: int) -> float:
    """The reference's base std ``sqrt(2 / (5 d))`` (Le Scao et al., "small" init)."""
    return math.sqrt(2.0 / (5.0 * d_model))


def zeros_init() -> Initializer:
    return lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)


def ones_init() -> Initializer:
    return lambda key, shape, dtype=jnp.float32: jnp.ones(shape, dtype)


def constant_init(value: float) -> Initializer:
    return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


def trunc_normal_init(std: float, cutoff: float = 3.0) -> Initializer:
    """Normal(0, std) truncated at ±cutoff·std (torch ``trunc_normal_(std, a=-3σ, b=3σ)``)."""

    def init(key, shape, dtype=jnp.float32):
        if std == 0.0:
            return jnp.zeros(shape, dtype)
        return (std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, jnp.float32)).astype(dtype)

    return init


def trunc_orthogonal_init(std: float) -> Initializer:
    """The reference's ``wrapped_trunc_ortho``: semi-orthogonal, entry RMS ``std``, singular values equal.

    A 2-D ``[rows, cols]`` matrix (higher rank flattens the trailing axes) is drawn as a truncated normal
    (±2), QR-factorised along its long side with the signs of diag(R) folded in, and scaled by
    ``std * sqrt(max(rows, cols))``.
    """

    def init(key, shape, dtype=jnp.float32):
        if std == 0.0:
            return jnp.zeros(shape, dtype)
        rows = shape[0]
        cols = math.prod(shape[1:])
        a = jax.random.truncated_normal(key, -2.0, 2.0, (rows, cols), jnp.float32)
        if rows < cols:
            a = a.T
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        if rows < cols:
            q = q.T
        gain = std * math.sqrt(max(rows, cols))
        return (gain * q).reshape(shape).astype(dtype)

    return init


def matrix_init(std: float, orthogonal: bool) -> Initializer:
    """A matrix initialiser of the scaled-zero family: zeros for std 0, else (orthogonal) truncated normal."""
    return trunc_orthogonal_init(std) if orthogonal else trunc_normal_init(std)


def torch_linear_init(fan_in: int) -> Initializer:
    """PyTorch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (used by the value-embedding
    gate)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


def normal_init(std: float = 1.0) -> Initializer:
    """Plain N(0, std²) (PyTorch's default ``nn.Embedding`` init, used by the value embeddings)."""
    return lambda key, shape, dtype=jnp.float32: (std * jax.random.normal(key, shape, jnp.float32)).astype(
        dtype
    )


def param(
    rngs: nnx.Rngs | None,
    init: Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype=jnp.float32,
) -> nnx.Param:
    """Create an ``nnx.Param`` of ``shape`` with logical axis names ``axes`` (stored as ``out_sharding``)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match parameter shape {tuple(shape)}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)
