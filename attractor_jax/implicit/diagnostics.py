"""Regularisers and monitors for implicit layers: a Hutchinson Jacobian penalty and a spectral-radius estimate."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from attractor_jax.implicit.fixed_point import BatchLayout
from attractor_jax.implicit.solvers import sq_norm


def _normal_like(key: jax.Array, tree: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def jacobian_penalty(
    f: Callable[..., Any], y_star: Any, *args: Any, key: jax.Array, n_samples: int = 1
) -> jax.Array:
    """Hutchinson estimate of ||J||_F^2 / dim(y), J = df/dy at ``y_star`` (the DEQ Jacobian regulariser).

    E_eps ||eps^T J||^2 = ||J||_F^2 for eps ~ N(0, I); averaged over ``n_samples`` probes and divided by the number
    of entries of ``y_star`` (batch included), so its scale does not depend on the batch or width. Differentiable
    with respect to ``args`` and ``y_star`` (add ``lam * penalty`` to the loss).
    """
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"jacobian_penalty: n_samples={n_samples!r} must be an int >= 1")
    _, vjp = jax.vjp(lambda y: f(y, *args), y_star)
    size = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(y_star))
    total = jnp.zeros((), jnp.float32)
    for k in jax.random.split(key, n_samples):
        (ej,) = vjp(_normal_like(k, y_star))
        total = total + sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(ej))
    return total / (n_samples * size)


def spectral_radius(
    f: Callable[..., Any],
    y_star: Any,
    *args: Any,
    key: jax.Array,
    n_iter: int = 20,
    batch_axis: int | Sequence[int] | None = 0,
) -> jax.Array:
    """Power-iteration estimate of the spectral radius of J = df/dy at ``y_star``, per sample (monitoring only).

    Runs v <- J v / ||J v|| with Jacobian-vector products (one linearisation of f) and returns the geometric mean of
    the growth factors ||J v|| over the second half of the iterations, which is robust to the oscillation a
    complex dominant eigenvalue pair causes. Samples along ``batch_axis`` must not interact through f for the
    per-sample numbers to be exact; otherwise pass ``batch_axis=None``. Not differentiated (stop_gradient).
    """
    if not (isinstance(n_iter, int) and n_iter >= 2):
        raise ValueError(f"spectral_radius: n_iter={n_iter!r} must be an int >= 2")
    y_star = jax.lax.stop_gradient(y_star)
    args = jax.lax.stop_gradient(args)
    layout = BatchLayout(y_star, batch_axis)
    _, jvp = jax.linearize(lambda y: f(y, *args), y_star)
    v = layout.flatten(_normal_like(key, y_star)).astype(jnp.float32)
    v = v / jnp.sqrt(jnp.maximum(sq_norm(v), 1e-30))[:, None]
    burn_in = n_iter // 2

    def body(i, carry):
        v, log_growth = carry
        w = layout.flatten(jvp(layout.unflatten(v.astype(layout.dtype)))).astype(jnp.float32)
        norm = jnp.sqrt(jnp.maximum(sq_norm(w), 1e-30))
        log_growth = log_growth + jnp.where(i >= burn_in, jnp.log(norm), 0.0)
        return w / norm[:, None], log_growth

    _, log_growth = jax.lax.fori_loop(0, n_iter, body, (v, jnp.zeros(v.shape[:1], jnp.float32)))
    return layout.per_sample(jnp.exp(log_growth / (n_iter - burn_in)))
