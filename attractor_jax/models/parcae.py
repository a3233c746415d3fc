"""Parcae baseline (looped LM): prelude → e = RMSNorm(prelude(E(x))) → r × [x ← inject(x, e); x ← core(x)] →
C → coda → RMSNorm → tied unembedding.

The injection is the reference's diagonal ZOH step ``x ← exp(−dt·A) ⊙ x + dt ⊙ (e B)`` with ``A = exp(A_log)``
(> 0) and ``dt = softplus(dt_bias)`` (> 0), so the linear part is a contraction (decay in (0, 1)); at
initialisation A = 1, dt = −ln(ssm_decay) ≈ 0.805, B = I, i.e. ``x ← 0.447 x + 0.805 e``.

Depth: with a ``key`` (training) each sequence draws total = max(Poisson(mean_recurrence), 1) steps, runs
total − k of them without gradient and the last k = min(total, mean_backprop_depth) with gradient (truncated
backprop); samples with fewer steps are masked (the batch runs max n no-grad steps, then mean_backprop_depth
masked grad steps). Without a key (evaluation) the depth is fixed: ``max_iter`` or ``mean_recurrence``, the
initial state drawn from a fixed key, so evaluation is deterministic.

Cached generation (``init_cache`` / ``extend``): the prelude and coda blocks have one key/value cache each, and
every core block one per recurrence step (its keys differ from step to step), stacked ``[depth, ...]`` and
scanned with the recurrence. The evaluation initial state is drawn once for the whole cache, ``[B, max_len, d]``,
from the same fixed key; with batch 1 that equals the uncached forward's draw at any length (counter-based
draws are prefix-consistent along the flattened array), so cached logits match it exactly; with a larger batch
they match the uncached forward only for ``state_init="zero"``.

Parameter paths: ``embed``, ``prelude[i]``, ``prelude_norm``, ``core.injection.{A_log, dt_bias, B}``,
``core.blocks[i]``, ``C``, ``coda[i]``, ``value_embeds['i']``, ``final_norm``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models.common import (
    embed_tokens,
    lookup_value_embeds,
    make_embed,
    init_block_caches,
    make_value_embeds,
    run_blocks_cached,
    tied_logits,
)
from attractor_jax.models.config import ParcaeConfig
from attractor_jax.nn import Block, Linear, RMSNorm, matrix_init, param, trunc_normal_init

EVAL_STATE_SEED = 0


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class DiagonalInjection(nnx.Module):
    """``x ← exp(−softplus(dt_bias)·exp(A_log)) ⊙ x + softplus(dt_bias) ⊙ (e B)``; B is ``[d_in,
    d_state]``."""

    def __init__(self, d_state: int, d_in: int, *, ssm_decay: float, dtype=jnp.float32):
        self.dtype = dtype
        dt0 = -math.log(ssm_decay)
        self.A_log = param(None, lambda k, s, d: jnp.zeros(s, d), (d_state,), ("state",))
        self.dt_bias = param(
            None, lambda k, s, d: jnp.full(s, _softplus_inverse(dt0), d), (d_state,), ("state",)
        )
        if d_state != d_in:
            raise ValueError(f"DiagonalInjection: d_state={d_state} must equal d_in={d_in} (identity B)")
        self.B = param(
            None, lambda k, s, d: jnp.eye(s[0], s[1], dtype=d), (d_in, d_state), ("embed", "state")
        )

    def decay(self) -> jax.Array:
        dt = jax.nn.softplus(self.dt_bias[...])
        return jnp.exp(-dt * jnp.exp(self.A_log[...]))

    def __call__(self, x_BTD: jax.Array, e_BTD: jax.Array) -> jax.Array:
        dt = jax.nn.softplus(self.dt_bias[...])
        decay = jnp.exp(-dt * jnp.exp(self.A_log[...]))
        inj = jnp.dot(e_BTD.astype(self.dtype), self.B[...].astype(self.dtype)).astype(jnp.float32)
        return x_BTD * decay + dt * inj


class ParcaeCore(nnx.Module):
    """One recurrence step: injection, then the core blocks (value embeddings re-added every step)."""

    def __init__(self, config: ParcaeConfig, *, rngs: nnx.Rngs):
        bc = config.block_config()
        self.injection = DiagonalInjection(
            config.d_model, config.d_model, ssm_decay=config.ssm_decay, dtype=jnp.dtype(config.dtype)
        )
        self.blocks = nnx.List(
            [
                Block(bc, value_embed=config.mixes_value_embed(config.n_prelude + i), rngs=rngs)
                for i in range(config.n_core)
            ]
        )

    def __call__(self, x_BTD, e_BTD, ves, positions_BT=None):
        x = self.injection(x_BTD, e_BTD)
        for blk, ve in zip(self.blocks, ves):
            x = blk(x, positions_BT=positions_BT, ve_BTF=ve)
        return x

    def extend(self, x_BTD, e_BTD, ves, caches):
        """One recurrence step over new tokens, reading and extending this step's caches."""
        return run_blocks_cached(self.blocks, self.injection(x_BTD, e_BTD), caches, ves)


def sample_depths(key: jax.Array, batch: int, config: ParcaeConfig) -> tuple[jax.Array, jax.Array]:
    """Per-sequence (no-grad steps n, grad steps k), int32 ``[batch]`` each."""
    s = config.mean_backprop_depth
    t = max(config.mean_recurrence - s, 0)
    if config.sampling == "fixed":
        return jnp.full((batch,), t, jnp.int32), jnp.full((batch,), s, jnp.int32)
    total = jnp.maximum(jax.random.poisson(key, float(t + s), (batch,)), 1).astype(jnp.int32)
    k = jnp.minimum(total, s)
    return total - k, k


class Parcae(nnx.Module):
    def __init__(self, config: ParcaeConfig, *, rngs: nnx.Rngs):
        self.config = config
        bc = config.block_config()
        p, c, o = config.n_prelude, config.n_core, config.n_coda
        n_eff = p + c + o
        ve = config.mixes_value_embed
        self.embed = make_embed(config, rngs)
        self.prelude = nnx.List([Block(bc, value_embed=ve(i), rngs=rngs) for i in range(p)])
        self.prelude_norm = RMSNorm(config.d_model, eps=config.norm_eps) if config.prelude_norm else None
        self.core = ParcaeCore(config, rngs=rngs)
        self.C = Linear(
            config.d_model,
            config.d_model,
            kernel_init=matrix_init(config.std, config.init_orthogonal),
            axes=("state", "embed"),
            dtype=jnp.dtype(config.dtype),
            rngs=rngs,
        )
        self.coda = nnx.List(
            [Block(bc, value_embed=ve(p + c + i), rngs=rngs) for i in range(o)]
        )
        self.value_embeds = make_value_embeds(config, n_eff, rngs, where=ve)
        self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)

    def initial_state(self, key: jax.Array, shape) -> jax.Array:
        if self.config.state_init == "zero":
            return jnp.zeros(shape, jnp.float32)
        x = trunc_normal_init(self.config.std)(key, shape, jnp.float32)
        return x * self.config.embed_scale if self.config.embed_scale != 1.0 else x

    def __call__(
        self,
        tokens_BT: jax.Array,
        max_iter: int | None = None,
        tol: float | None = None,
        *,
        key: jax.Array | nnx.Rngs | None = None,
        positions_BT: jax.Array | None = None,
    ) -> tuple[jax.Array, dict]:
        """Returns ``(logits [B, T, V] float32, aux)`` with aux ``depth`` and ``backprop_depth`` (int32
        ``[B]``).

        key: a PRNG key (or an ``nnx.Rngs``, whose default stream is drawn) selects training mode: sampled
          per-sequence depth with truncated backprop and a random initial state. None: evaluation (fixed
          depth).
        max_iter: fixed recurrence depth (overrides sampling; all steps differentiable). ``tol`` is ignored.
        """
        cfg = self.config
        if isinstance(key, nnx.Rngs):
            key = key()
        b = tokens_BT.shape[0]
        p, c = cfg.n_prelude, cfg.n_core
        ves = lookup_value_embeds(self.value_embeds, tokens_BT, p + c + cfg.n_coda)
        e = embed_tokens(cfg, self.embed, tokens_BT)
        for blk, ve in zip(self.prelude, ves[:p]):
            e = blk(e, positions_BT=positions_BT, ve_BTF=ve)
        if self.prelude_norm is not None:
            e = self.prelude_norm(e)
        core_ves = ves[p : p + c]

        if key is None:
            state_key, depth_key = jax.random.key(EVAL_STATE_SEED), None
        else:
            state_key, depth_key = jax.random.split(key)
        x0 = self.initial_state(state_key, e.shape)
        graphdef, core_state = nnx.split(self.core)

        def step(x, state, e_, ves_):
            return nnx.merge(graphdef, state)(x, e_, ves_, positions_BT)

        if max_iter is not None or depth_key is None:
            depth = cfg.mean_recurrence if max_iter is None else int(max_iter)
            if depth < 0:
                raise ValueError(f"Parcae: max_iter={max_iter!r} must be >= 0")
            x = jax.lax.fori_loop(0, depth, lambda i, x: step(x, core_state, e, core_ves), x0)
            n_B = jnp.zeros((b,), jnp.int32)
            k_B = jnp.full((b,), depth, jnp.int32)
        else:
            n_B, k_B = sample_depths(depth_key, b, cfg)
            sg_state, sg_e, sg_ves = jax.lax.stop_gradient((core_state, e, core_ves))

            def no_grad_body(i, x):
                return jnp.where((i < n_B)[:, None, None], step(x, sg_state, sg_e, sg_ves), x)

            x = jax.lax.fori_loop(0, jnp.max(n_B), no_grad_body, jax.lax.stop_gradient(x0))

            def grad_body(x, i):
                return jnp.where((i < k_B)[:, None, None], step(x, core_state, e, core_ves), x), None

            x, _ = jax.lax.scan(grad_body, x, jnp.arange(cfg.mean_backprop_depth))

        x = self.C(x).astype(jnp.float32)
        for blk, ve in zip(self.coda, ves[p + c :]):
            x = blk(x, positions_BT=positions_BT, ve_BTF=ve)
        logits = tied_logits(cfg, self.embed, self.final_norm(x))
        return logits, {"depth": n_B + k_B, "backprop_depth": k_B}

    def init_cache(self, batch: int, max_len: int, max_iter: int | None = None) -> dict:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens at recurrence depth ``max_iter``
        (default ``mean_recurrence``); the depth is fixed by the cache's core entries."""
        cfg = self.config
        depth = cfg.mean_recurrence if max_iter is None else int(max_iter)
        if depth < 0:
            raise ValueError(f"Parcae: max_iter={max_iter!r} must be >= 0")

        def stacked(kv):
            return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (depth,) + a.shape), kv)

        return {
            "index": jnp.zeros((), jnp.int32),
            "prelude": init_block_caches(cfg, cfg.n_prelude, batch, max_len),
            "core": [stacked(kv) for kv in init_block_caches(cfg, cfg.n_core, batch, max_len)],
            "coda": init_block_caches(cfg, cfg.n_coda, batch, max_len),
            "state0": self.initial_state(jax.random.key(EVAL_STATE_SEED), (batch, max_len, cfg.d_model)),
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
        """Append tokens to the cache at the cache's recurrence depth (evaluation mode): ``(logits [B, T, V]
        (or [B, 1, V] with last_only), new cache, aux)``, aux ``depth`` (int32 [B]). ``max_iter``, if given,
        must equal that depth; ``tol`` is ignored."""
        cfg = self.config
        depth = cache["core"][0].index.shape[0]
        if max_iter is not None and int(max_iter) != depth:
            raise ValueError(f"Parcae.extend: max_iter={max_iter!r} differs from the cache's depth {depth}")
        b, t = tokens_BT.shape
        p, c = cfg.n_prelude, cfg.n_core
        ves = lookup_value_embeds(self.value_embeds, tokens_BT, p + c + cfg.n_coda)
        e = embed_tokens(cfg, self.embed, tokens_BT)
        e, prelude = run_blocks_cached(self.prelude, e, cache["prelude"], ves[:p])
        if self.prelude_norm is not None:
            e = self.prelude_norm(e)
        x0 = jax.lax.dynamic_slice_in_dim(cache["state0"], cache["index"], t, axis=1)
        graphdef, core_state = nnx.split(self.core)

        def step(x, kv):
            return nnx.merge(graphdef, core_state).extend(x, e, ves[p : p + c], kv)

        x, core = jax.lax.scan(step, x0, cache["core"])
        x = self.C(x).astype(jnp.float32)
        x, coda = run_blocks_cached(self.coda, x, cache["coda"], ves[p + c :])
        if last_only:
            x = x[:, -1:]
        logits = tied_logits(cfg, self.embed, self.final_norm(x))
        new = {"index": cache["index"] + t, "prelude": prelude, "core": core, "coda": coda,
               "state0": cache["state0"]}
        return logits, new, {"depth": jnp.full((b,), depth, jnp.int32)}
