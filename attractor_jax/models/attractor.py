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

Parameter paths: ``embed``, ``backbone[i]``, ``head.blocks[i]`` (with ``gate_attn``/``gate_mlp``),
``final_norm``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import implicit
from attractor_jax.models.common import embed_tokens, make_embed, tied_logits
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


def _head_map(graphdef, y, c, head_state, positions, injection: str = "additive"):
    """f(y, c) with the head rebuilt from its (traced) state: H(y + c) − y (additive), H(y) (init_only) or
    H([y; c] W) − y (concat)."""
    head = nnx.merge(graphdef, head_state)
    if injection == "init_only":
        return head(y, positions)
    if injection == "concat":
        return head(head.inject(jnp.concatenate([y, c], axis=-1)), positions) - y
    return head(y + c, positions) - y


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
        cfg = self.config
        solver, backward = solver_and_backward(cfg, max_iter, tol)
        graphdef, head_state = nnx.split(self.head)
        pos = None if positions_BT is None else positions_BT.astype(jnp.float32)

        injection = cfg.injection

        def f(y, c, state, pos):
            return _head_map(graphdef, y, c, state, pos, injection)

        # As in the reference, the iteration starts from a detached c; with max_iter=0 the solution *is* y0, the
        # identity of c, which must keep its gradient.
        if solver.max_iter == 0:
            y0 = c_BTD
        elif cfg.solve_init == "zero":
            y0 = jnp.zeros_like(c_BTD)
        elif cfg.solve_init == "noise":
            k = jax.random.key(0) if key is None else key
            y0 = cfg.std * jax.random.normal(k, c_BTD.shape, c_BTD.dtype)
        else:
            y0 = jax.lax.stop_gradient(c_BTD)
        if cfg.solve_mixing == "sequence":
            sol = implicit.fixed_point(f, y0, c_BTD, head_state, pos, solver=solver, backward=backward, batch_axis=0)
            t = c_BTD.shape[1]  # one statistic per sequence, reported on each of its tokens
            return implicit.Solution(sol.value, jax.tree_util.tree_map(
                lambda a: jnp.broadcast_to(a[:, None], a.shape + (t,)), sol.stats))
        return implicit.fixed_point(
            f, y0, c_BTD, head_state, pos, solver=solver, backward=backward, batch_axis=0, causal_axis=1
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
