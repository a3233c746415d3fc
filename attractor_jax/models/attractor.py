"""Attractor LM: tied embedding → backbone → c → solve the attractor head's fixed point → RMSNorm → tied
logits.

With H the stack of ``n_fp_blocks`` gated pre-norm blocks (weight-tied across solver iterations) and
H(h) = h + Δ(h), the fixed-point map is

    f(y, c) = H(y + c) − y = c + Δ(y + c),        y₀ = stop_gradient(c),        y* = f(y*, c),

solved by ``attractor_jax.fixed_point`` with ``batch_axis=0, causal_axis=1`` (``solve_mixing="token"``): every
token has its own Anderson coefficients and statistics, and a token freezes only once it and every earlier token
of its sequence pass the exit test, so the returned state is one consistent iterate (no token is frozen against a
moving prefix) and the solve is exactly causal at any tolerance: a token's result depends only on its prefix.
``solve_mixing="sequence"`` is the reference's per-sequence mixing. Gradients reach c (hence backbone and
embedding) and the head parameters through the configured backward mode.

``max_iter=0`` decodes c directly (the identity, so c keeps its gradient); ``max_iter`` 1 or 2 takes that many
plain steps y ← f(y, c) (differentiated through the steps, plus one evaluation that measures the residual of the
result); larger values use the configured solver with early exit at the tolerance in force (``solver.tol``, or
``bf16_tol`` when the model computes in bfloat16/float16).

Ablation variants (``AttractorConfig.injection`` / ``solve_init``; paper Tables 4 and 6), all per token:

    additive   f(y, c) = H(y + c) − y            (default)
    init_only  f(y, c) = H(y)                     c enters only through y₀ (Ouro-style)
    concat     f(y, c) = H([y; c] W) − y          W ∈ R^{2d×d} learned, initialised to [I; I]

    y₀ = stop_gradient(c) (``proposal``, default) | 0 (``zero``) | N(0, sqrt(2/(5d))²) (``noise``)

``max_iter=0`` decodes c for every variant (the T = 0 readout of the backbone).

Generation uses an *equilibrium KV cache* (``init_cache`` / ``extend``): because the solve is exactly causal, the
head's keys/values at a past token's converged state stay valid when tokens are appended, so each new token
solves only its own fixed point against the cached prefix.

Parameter paths: ``embed``, ``backbone[i]``, ``head.blocks[i]`` (with ``gate_attn``/``gate_mlp``),
``final_norm``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import implicit
from attractor_jax.models.common import (
    embed_tokens,
    init_block_caches,
    make_embed,
    run_blocks_cached,
    tied_logits,
)
from attractor_jax.models.config import AttractorConfig
from attractor_jax.nn import Block, Linear, RMSNorm


def solver_and_backward(cfg, max_iter: int | None = None, tol: float | None = None):
    """The solver and backward mode of one solve of an Attractor model (``AttractorConfig`` or
    ``AttractorReasonerConfig``) with optional max_iter/tol overrides.

    ``max_iter`` 1 or 2: that many plain steps y ← f(y) and one more evaluation that measures the returned state,
    differentiated through (the T = 1, 2 readouts; the configured backward is for a solved fixed point). Otherwise
    ``cfg.solver`` with min_iter capped at max_iter and, without a tol override, the tolerance in force for the
    compute dtype (``cfg.bf16_tol`` for bfloat16/float16, unless None), and ``cfg.backward``.
    """
    s = cfg.solver
    mi = s.max_iter if max_iter is None else int(max_iter)
    if mi < 0:
        raise ValueError(f"{type(cfg).__name__}: max_iter={max_iter!r} must be >= 0")
    if 0 < mi <= 2:
        return implicit.Picard(tol=0.0, max_iter=mi + 1, min_iter=mi + 1, keep_best=False), implicit.Unrolled()
    low = cfg.dtype in ("bfloat16", "float16") and cfg.bf16_tol is not None
    t = float(tol) if tol is not None else cfg.bf16_tol if low else s.tol
    return dataclasses.replace(s, tol=t, max_iter=mi, min_iter=min(s.min_iter, mi)), cfg.backward


def _stacked_identity(key, shape, dtype):
    """[I; I] of shape [2d, d]: the concatenation injection's W, under which [y; c] W = y + c."""
    d = shape[1]
    return jnp.concatenate([jnp.eye(d, dtype=dtype), jnp.eye(d, dtype=dtype)], axis=0)


class AttractorHead(nnx.Module):
    """H(h): ``n_fp_blocks`` pre-norm blocks with LayerScale gates. Output projections start as truncated
    normals (std sqrt(2/(5d)), ±3σ) instead of scaled-zero's zeros, so that f is not the constant c at
    initialisation. With ``injection="concat"`` the head also owns ``inject`` (W ∈ R^{2d×d}, [I; I] at
    initialisation, applied in float32 so the solver's state keeps full precision)."""

    def __init__(self, config: AttractorConfig, *, rngs: nnx.Rngs):
        bc = config.block_config(out_init="trunc_normal")
        self.blocks = nnx.List(
            [
                Block(bc, layer_scale_init=config.layer_scale_init, gamma_max=config.gamma_max, rngs=rngs)
                for _ in range(config.n_fp_blocks)
            ]
        )
        if config.injection == "concat":
            d = config.d_model
            self.inject = Linear(2 * d, d, kernel_init=_stacked_identity, axes=(None, "embed"), rngs=rngs)

    def __call__(self, h_BTD: jax.Array, positions_BT: jax.Array | None = None) -> jax.Array:
        for blk in self.blocks:
            h_BTD = blk(h_BTD, positions_BT=positions_BT)
        return h_BTD

    def extend(self, h_BTD: jax.Array, caches: list) -> tuple[jax.Array, list]:
        """H over new tokens whose attention reads the cached keys/values of earlier tokens (and their own)."""
        return run_blocks_cached(self.blocks, h_BTD, caches)

    def input(self, y: jax.Array, c: jax.Array, injection: str) -> jax.Array:
        """What H is applied to: y + c (additive), y (init_only) or [y; c] W (concat)."""
        if injection == "init_only":
            return y
        if injection == "concat":
            return self.inject(jnp.concatenate([y, c], axis=-1))
        return y + c


def _head_map(graphdef, y, c, head_state, positions, injection: str = "additive"):
    """f(y, c) with the head rebuilt from its (traced) state: H(y + c) − y (additive), H(y) (init_only) or
    H([y; c] W) − y (concat)."""
    head = nnx.merge(graphdef, head_state)
    out = head(head.input(y, c, injection), positions)
    return out if injection == "init_only" else out - y


def _head_map_cached(graphdef, y, c, head_state, caches, injection: str = "additive"):
    """f(y, c) for new tokens against cached prefix keys/values; the caches are read, never extended here."""
    head = nnx.merge(graphdef, head_state)
    out, _ = head.extend(head.input(y, c, injection), caches)
    return out if injection == "init_only" else out - y


class AttractorLM(nnx.Module):
    def __init__(self, config: AttractorConfig, *, rngs: nnx.Rngs):
        self.config = config
        bc = config.block_config()
        self.embed = make_embed(config, rngs)
        self.backbone = nnx.List([Block(bc, rngs=rngs) for _ in range(config.n_backbone_layers)])
        self.head = AttractorHead(config, rngs=rngs)
        self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)

    def encode(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None) -> jax.Array:
        """The backbone's proposal c = backbone(E(x)), float32 ``[B, T, d]``."""
        x = embed_tokens(self.config, self.embed, tokens_BT)
        for blk in self.backbone:
            x = blk(x, positions_BT=positions_BT)
        return x

    def decode(self, y_BTD: jax.Array) -> jax.Array:
        """Tied logits of an embedding-space state (y* or c)."""
        return tied_logits(self.config, self.embed, self.final_norm(y_BTD))

    def solve(
        self,
        c_BTD: jax.Array,
        max_iter: int | None = None,
        tol: float | None = None,
        positions_BT: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> implicit.Solution:
        """Find y* = f(y*, c). Statistics are per token, ``[B, T]``. ``key`` draws the ``noise`` initial
        iterate (a fixed key when None); the other variants ignore it."""
        graphdef, head_state = nnx.split(self.head)
        pos = None if positions_BT is None else positions_BT.astype(jnp.float32)
        injection = self.config.injection

        def f(y, c, state, pos):
            return _head_map(graphdef, y, c, state, pos, injection)

        return self._solve(f, c_BTD, (head_state, pos), max_iter, tol, key=key)

    def _solve(self, f, c_BTD, args, max_iter, tol, *, key=None, noise_BTD=None) -> implicit.Solution:
        """Run ``fixed_point(f, y0, c, *args)`` with the configured solver, initial iterate and mixing."""
        cfg = self.config
        solver, backward = solver_and_backward(cfg, max_iter, tol)
        # As in the reference, the iteration starts from a detached c; with max_iter=0 the solution *is* y0, the
        # identity of c, which must keep its gradient.
        if solver.max_iter == 0:
            y0 = c_BTD
        elif cfg.solve_init == "zero":
            y0 = jnp.zeros_like(c_BTD)
        elif cfg.solve_init == "noise":
            if noise_BTD is None:
                k = jax.random.key(0) if key is None else key
                noise_BTD = jax.random.normal(k, c_BTD.shape, c_BTD.dtype)
            y0 = cfg.std * noise_BTD
        else:
            y0 = jax.lax.stop_gradient(c_BTD)
        if cfg.solve_mixing == "sequence":
            sol = implicit.fixed_point(f, y0, c_BTD, *args, solver=solver, backward=backward, batch_axis=0)
            t = c_BTD.shape[1]  # one statistic per sequence, reported on each of its tokens
            return implicit.Solution(sol.value, jax.tree_util.tree_map(
                lambda a: jnp.broadcast_to(a[:, None], a.shape + (t,)), sol.stats))
        return implicit.fixed_point(
            f, y0, c_BTD, *args, solver=solver, backward=backward, batch_axis=0, causal_axis=1
        )

    def gates(self) -> dict[str, jax.Array]:
        """Effective LayerScale gates per head block: mean and max over channels, float32
        ``[n_fp_blocks]``."""
        gs = [blk.gates() for blk in self.head.blocks]
        if gs[0] is None:
            return {}
        attn = jnp.stack([g[0] for g in gs])
        mlp = jnp.stack([g[1] for g in gs])
        return {
            "gate_attn_mean": attn.mean(-1),
            "gate_attn_max": attn.max(-1),
            "gate_mlp_mean": mlp.mean(-1),
            "gate_mlp_max": mlp.max(-1),
        }

    def __call__(
        self,
        tokens_BT: jax.Array,
        max_iter: int | None = None,
        tol: float | None = None,
        *,
        key: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
    ) -> tuple[jax.Array, dict]:
        """Returns ``(logits [B, T, V] float32, aux)``. ``key`` is accepted for a uniform model interface; only
        ``solve_init="noise"`` uses it (to draw y₀), otherwise the solve is deterministic.

        aux: ``iterations`` (int32 [B, T], f-evaluations per token), ``residual`` (float32 [B, T],
        ||f(y)−y||/||y|| of the returned y, per token; per sequence with ``solve_mixing="sequence"``),
        ``converged``/``diverged`` (bool [B, T]), ``head_contribution`` (float32 [B],
        ||y*−c||/||c|| per sequence), ``state_norm``/``context_norm`` (mean token norms of y* and c), and the
        head's gate statistics ``gate_{attn,mlp}_{mean,max}`` ([n_fp_blocks]).
        """
        if max_iter is not None and int(max_iter) < 0:
            raise ValueError(f"AttractorLM: max_iter={max_iter!r} must be >= 0")
        c = self.encode(tokens_BT, positions_BT)
        sol = self.solve(c, max_iter=max_iter, tol=tol, positions_BT=positions_BT, key=key)
        y = sol.value
        logits = self.decode(y)
        st = sol.stats
        diff = jnp.sqrt(jnp.sum(jnp.square(y - c), axis=(1, 2)))
        cn = jnp.sqrt(jnp.sum(jnp.square(c), axis=(1, 2)))
        aux = {
            "iterations": st.iterations,
            "residual": st.residual,
            "converged": st.converged,
            "diverged": st.diverged,
            "head_contribution": diff / jnp.maximum(cn, 1e-12),
            "state_norm": jnp.mean(jnp.linalg.norm(y, axis=-1)),
            "context_norm": jnp.mean(jnp.linalg.norm(c, axis=-1)),
            **self.gates(),
        }
        return logits, aux

    def init_cache(self, batch: int, max_len: int, max_iter: int | None = None) -> dict:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens: keys/values of every backbone
        block and of every head block (``max_iter`` is ignored: the head cache holds converged states)."""
        cfg = self.config
        cache = {
            "index": jnp.zeros((), jnp.int32),
            "backbone": init_block_caches(cfg, cfg.n_backbone_layers, batch, max_len),
            "head": init_block_caches(cfg, cfg.n_fp_blocks, batch, max_len),
        }
        if cfg.solve_init == "noise":  # drawn once, as the uncached forward draws it (same key, prefix-consistent)
            cache["noise"] = jax.random.normal(jax.random.key(0), (batch, max_len, cfg.d_model), jnp.float32)
        return cache

    def extend(
        self,
        tokens_BT: jax.Array,
        cache: dict,
        max_iter: int | None = None,
        tol: float | None = None,
        *,
        last_only: bool = False,
    ) -> tuple[jax.Array, dict, dict]:
        """Append tokens with the equilibrium KV cache: ``(logits [B, T, V] (or [B, 1, V]), new cache, aux)``.

        The backbone runs incrementally. The head's fixed point is solved for the new tokens only, their
        attention reading the cached keys/values of every earlier token *at its converged state*: the solve is
        exactly causal, so an earlier token's y* does not change when tokens are appended. Same solver,
        tolerance, mixing and per-token statistics as the uncached forward; then one more head pass at y*
        appends the new tokens' converged keys/values. aux: ``iterations``, ``residual``, ``converged``,
        ``diverged`` (per new token, ``[B, T]``).
        """
        cfg = self.config
        t = tokens_BT.shape[1]
        x = embed_tokens(cfg, self.embed, tokens_BT)
        c, backbone = run_blocks_cached(self.backbone, x, cache["backbone"])
        graphdef, head_state = nnx.split(self.head)
        injection = cfg.injection

        def f(y, c, state, caches):
            return _head_map_cached(graphdef, y, c, state, caches, injection)

        noise = cache.get("noise")
        if noise is not None:
            noise = jax.lax.dynamic_slice_in_dim(noise, cache["index"], t, axis=1)
        sol = self._solve(f, c, (head_state, cache["head"]), max_iter, tol, noise_BTD=noise)
        y = sol.value
        _, head = self.head.extend(self.head.input(y, c, injection), cache["head"])
        new = {**cache, "index": cache["index"] + t, "backbone": backbone, "head": head}
        st = sol.stats
        aux = {"iterations": st.iterations, "residual": st.residual, "converged": st.converged,
               "diverged": st.diverged}
        return self.decode(y[:, -1:] if last_only else y), new, aux
