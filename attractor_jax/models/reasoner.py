"""Tiny recursive puzzle reasoners: the TRM-Att baseline and the Attractor reasoner.

Both models share one tiny network ``L_level`` (post-norm blocks: non-causal attention with rotate-half RoPE,
SwiGLU, parameter-free RMSNorm) and TRM's outer loop. One call is one ACT (deep-supervision) step on a
persistent carry::

    x   = sqrt(H) · [puzzle-embedding prefix; token embeddings]                     [B, P + L, H]
    repeat H_cycles (all but the last under stop_gradient):
        TRM:        z_L ← L(z_L + z_H + x), L_cycles times
        Attractor:  z_L ← z_L*  with  z_L* = L(z_L* + z_H + x)   (aj.fixed_point from the carried z_L)
        z_H ← L(z_H + z_L)
    logits = lm_head(z_H)[:, P:],   (q_halt, q_continue) = q_head(z_H[:, 0])

The carry (z_H, z_L) is detached between steps; rows that halted at the previous step restart from the fixed
random ``H_init``/``L_init`` on the row of the new batch (their ``current_data`` is replaced), the others keep
their puzzle. Training halts a row when ``q_halt > 0`` or at ``halt_max_steps`` (with random minimum depths
for exploration); evaluation (``train=False``) halts every row exactly at ``halt_max_steps``.

Driving it from a pure training step (see ``attractor_jax.train.puzzle_optim.make_reasoner_train_step``)::

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)     # rest: H_init/L_init (never trained)
    carry = model.initial_carry(batch)                             # all rows "halted": reset at first call
    # each step, with the next batch (rows only enter where the carry halted):
    carry, out = nnx.merge(graphdef, params, rest)(carry, batch, train=True, key=key)
    loss, metrics = act_loss(out)                                  # labels come from out (the carry's data)

``model.predict(batch)`` runs the whole evaluation (``halt_max_steps`` steps, no exploration, every row
counted) and returns the final logits, per-step predictions, halting logits, f-evaluations and solver
statistics.

The Attractor's last solve of a training step is differentiated by the configured backward (phantom: k more
applications from the detached z_L*, and f^k(z_L*) is what the z_H update sees); the no-gradient cycles and
every solve in evaluation run the forward solver only (z_L = z_L*). Solves are per sample (the whole grid:
its tokens interact through attention), so a row's statistics do not depend on its batch. ``nfe`` counts
L_level applications per row and step: TRM H_cycles·(L_cycles + 1); Attractor Σ_cycles (solver evaluations
+ phantom steps + 1).

Attractor ``max_iter`` overrides (evaluation): ``0`` removes the solver, i.e. z_L stays at its carried value
and the map is not applied (``aj.fixed_point``'s own max_iter=0 semantics: the solution is y0; the input then
reaches the model only through z_L, so this measures how much the equilibrium carries — there is no separate
backbone, as in the paper); ``1``/``2`` take that many plain steps z_L ← L(z_L + z_H + x) (1 is TRM with
L_cycles = 1); larger values run the configured solver with that budget.

Parameter paths: ``embed_tokens``, ``puzzle_emb`` (trained by sparse SignSGD), ``embed_pos`` (learned
positions only), ``L_level.layers[i].{attn,mlp_t,mlp}``, ``lm_head``, ``q_head``; buffers ``H_init``,
``L_init`` are ``InitState`` variables, not ``nnx.Param``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import implicit
from attractor_jax.models.attractor import solver_and_backward
from attractor_jax.models.config import TRMConfig
from attractor_jax.nn import Embed, Linear, shard_batch
from attractor_jax.nn.attention import dot_product_attention
from attractor_jax.nn.init import constant_init, param, zeros_init

IGNORE_LABEL_ID = -100


# ----------------------------------------------------------------------------------------------------------
# Initialisers and small layers (TRM's conventions, which differ from the LM's: rotate-half RoPE, post-norm,
# fused qkv and gate/up projections, LeCun truncated-normal init)


def _trunc_std(lower: float, upper: float) -> float:
    """Standard deviation of N(0, 1) truncated to [lower, upper]."""
    z = 0.5 * (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2)))
    c = (2 * math.pi) ** -0.5
    pdf_l, pdf_u = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
    return math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)


def trunc_normal_init(std: float, lower: float = -2.0, upper: float = 2.0):
    """TRM's ``trunc_normal_init_`` (JAX-style): N(0, 1) truncated to [lower, upper] and rescaled so that the
    result's standard deviation is ``std`` (PyTorch's ``trunc_normal_`` is not)."""
    comp = std / _trunc_std(lower, upper) if std else 0.0

    def init(key, shape, dtype=jnp.float32):
        if std == 0.0:
            return jnp.zeros(shape, dtype)
        return (comp * jax.random.truncated_normal(key, lower, upper, shape, jnp.float32)).astype(dtype)

    return init


def lecun_init(fan_in: int):
    """``CastedLinear``'s truncated LeCun normal, std 1/sqrt(fan_in)."""
    return trunc_normal_init(1.0 / math.sqrt(fan_in))


def swiglu_width(hidden: int, expansion: float) -> int:
    """TRM's SwiGLU inner width: round(expansion · hidden · 2/3) rounded up to a multiple of 256."""
    return -(round(expansion * hidden * 2 / 3) // -256) * 256


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """Parameter-free RMS normalisation over the last axis in float32 (TRM's post-norm)."""
    xf = x.astype(jnp.float32)
    return xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rope_half_angles(length: int, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[length, head_dim]`` of the rotate-half convention (frequencies repeated twice)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope_half(x_BTNH: jax.Array, cos_TH: jax.Array, sin_TH: jax.Array) -> jax.Array:
    """``x·cos + rotate_half(x)·sin`` with rotate_half(x) = [−x₂, x₁] (TRM/Llama convention), in float32."""
    xf = x_BTNH.astype(jnp.float32)
    h = xf.shape[-1] // 2
    rot = jnp.concatenate([-xf[..., h:], xf[..., :h]], axis=-1)
    out = xf * cos_TH[None, :, None, :] + rot * sin_TH[None, :, None, :]
    return out.astype(x_BTNH.dtype)


class InitState(nnx.Variable):
    """Fixed random initial recurrent states (TRM's ``H_init``/``L_init`` buffers): saved, never trained."""


class LinearBias(nnx.Module):
    """``x @ kernel + bias`` (float32 output); used for the 2-way Q head."""

    def __init__(self, in_features: int, out_features: int, *, kernel_init, bias_init, rngs: nnx.Rngs):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), ("embed", None))
        self.bias = param(None, bias_init, (out_features,), (None,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(jnp.float32), self.kernel[...]) + self.bias[...]


class SwiGLU(nnx.Module):
    """``down(silu(gate) · up)`` with a fused ``gate_up`` projection ``[d, 2·inner]`` (gate first); ``down``
    starts at ``out_scale`` times the LeCun std."""

    def __init__(self, d: int, inner: int, *, dtype, rngs: nnx.Rngs, axes=("embed", "mlp"), out_scale=1.0):
        self.inner = inner
        self.gate_up = Linear(d, 2 * inner, kernel_init=lecun_init(d), axes=axes, dtype=dtype, rngs=rngs)
        down_init = trunc_normal_init(out_scale / math.sqrt(inner))
        self.down = Linear(inner, d, kernel_init=down_init, axes=axes[::-1], dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gu = self.gate_up(x)
        gate, up = gu[..., : self.inner], gu[..., self.inner :]
        return self.down(jax.nn.silu(gate) * up)


class TRMAttention(nnx.Module):
    """Non-causal multi-head attention with a fused ``qkv`` projection ``[d, 3·d]`` (q, k, v heads in that
    order), rotate-half RoPE on q and k, no QK-norm, scale 1/sqrt(head_dim). ``o`` starts at
    ``out_init_scale`` times the LeCun std."""

    def __init__(self, cfg: TRMConfig, *, rngs: nnx.Rngs):
        d, dt = cfg.hidden_size, jnp.dtype(cfg.dtype)
        self.num_heads, self.head_dim, self.impl = cfg.num_heads, cfg.head_dim, cfg.attention_impl
        self.qkv = Linear(d, 3 * d, kernel_init=lecun_init(d), axes=("embed", "heads"), dtype=dt, rngs=rngs)
        self.o = Linear(d, d, kernel_init=trunc_normal_init(cfg.out_init_scale / math.sqrt(d)),
                        axes=("heads", "embed"), dtype=dt, rngs=rngs)

    def __call__(self, x_BTD: jax.Array, cos_sin: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        b, t, _ = x_BTD.shape
        n, h = self.num_heads, self.head_dim
        qkv = self.qkv(x_BTD).reshape(b, t, 3 * n, h)
        q, k, v = qkv[:, :, :n], qkv[:, :, n : 2 * n], qkv[:, :, 2 * n :]
        if cos_sin is not None:
            q, k = apply_rope_half(q, *cos_sin), apply_rope_half(k, *cos_sin)
        y = dot_product_attention(q, k, v, causal=False, implementation=self.impl)
        return self.o(y.reshape(b, t, n * h))


class TRMBlock(nnx.Module):
    """Post-norm block: ``h ← norm(h + attn(h))`` (or TRM's ``mlp_t`` token mixer over the sequence axis),
    then ``h ← norm(h + SwiGLU(h))``. The stream is float32; projections run in the compute dtype."""

    def __init__(self, cfg: TRMConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.eps = cfg.rms_norm_eps
        if cfg.mlp_t:
            t = cfg.total_len
            self.attn = None
            self.mlp_t = SwiGLU(t, swiglu_width(t, cfg.expansion), dtype=dt, rngs=rngs, axes=(None, "mlp"),
                                out_scale=cfg.out_init_scale)
        else:
            self.attn = TRMAttention(cfg, rngs=rngs)
            self.mlp_t = None
        self.mlp = SwiGLU(cfg.hidden_size, swiglu_width(cfg.hidden_size, cfg.expansion), dtype=dt, rngs=rngs,
                          out_scale=cfg.out_init_scale)

    def __call__(self, h_BTD: jax.Array, cos_sin) -> jax.Array:
        h_BTD = shard_batch(h_BTD)  # batch-sharded under a training mesh (nn.shard_batch)
        if self.mlp_t is not None:
            h_BDT = jnp.swapaxes(h_BTD, 1, 2)
            h_BTD = jnp.swapaxes(rms_norm(h_BDT + self.mlp_t(h_BDT).astype(jnp.float32), self.eps), 1, 2)
        else:
            h_BTD = rms_norm(h_BTD + self.attn(h_BTD, cos_sin).astype(jnp.float32), self.eps)
        return shard_batch(rms_norm(h_BTD + self.mlp(h_BTD).astype(jnp.float32), self.eps))


class ReasoningModule(nnx.Module):
    """TRM's ``L_level``: ``L(h, injection) = blocks(h + injection)``."""

    def __init__(self, cfg: TRMConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([TRMBlock(cfg, rngs=rngs) for _ in range(cfg.L_layers)])

    def __call__(self, h_BTD: jax.Array, injection_BTD: jax.Array, cos_sin) -> jax.Array:
        h = h_BTD.astype(jnp.float32) + injection_BTD.astype(jnp.float32)
        for layer in self.layers:
            h = layer(h, cos_sin)
        return h


# ----------------------------------------------------------------------------------------------------------
# The models


class TRM(nnx.Module):
    """TRM-Att with ACT halting and deep supervision (``TRMConfig``); see the module docstring."""

    def __init__(self, config: TRMConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        d, dt = c.hidden_size, jnp.dtype(c.dtype)
        std = 1.0 / math.sqrt(d)
        self.embed_tokens = Embed(c.vocab_size, d, embedding_init=trunc_normal_init(std), dtype=dt, rngs=rngs)
        if c.puzzle_ndim > 0:
            self.puzzle_emb = Embed(
                c.num_puzzle_identifiers, c.puzzle_ndim, embedding_init=zeros_init(), axes=(None, "embed"),
                rngs=rngs,
            )
        else:
            self.puzzle_emb = None
        if c.pos_encodings == "learned":
            self.embed_pos = Embed(c.total_len, d, embedding_init=trunc_normal_init(std),
                                   axes=(None, "embed"), rngs=rngs)
        else:
            self.embed_pos = None
        self.L_level = ReasoningModule(c, rngs=rngs)
        self.lm_head = Linear(d, c.vocab_size, kernel_init=lecun_init(d), axes=("embed", "vocab"), dtype=dt,
                              rngs=rngs)
        # Q head starts at weight 0, bias −5: halting probability ≈ 0.7 % until it learns.
        self.q_head = LinearBias(d, 2, kernel_init=zeros_init(), bias_init=constant_init(-5.0), rngs=rngs)
        self.H_init = InitState(trunc_normal_init(1.0)(rngs.params(), (d,)), out_sharding=("norm",),
                                eager_sharding=False)
        self.L_init = InitState(trunc_normal_init(1.0)(rngs.params(), (d,)), out_sharding=("norm",),
                                eager_sharding=False)

    # -- data and carry ------------------------------------------------------------------------------------

    def _data(self, batch: dict) -> dict:
        """The batch's ``inputs``/``labels``/``puzzle_identifiers`` (labels default to ignored, identifiers to
        0), checked against the config."""
        c = self.config
        if "inputs" not in batch:
            raise ValueError(f"{type(self).__name__}: the batch needs 'inputs' (int32 [B, {c.seq_len}])")
        inputs = jnp.asarray(batch["inputs"])
        if inputs.ndim != 2 or inputs.shape[1] != c.seq_len:
            raise ValueError(
                f"{type(self).__name__}: inputs have shape {tuple(inputs.shape)}, expected [B, {c.seq_len}] "
                f"(config seq_len={c.seq_len})"
            )
        b = inputs.shape[0]
        labels = batch.get("labels")
        labels = jnp.full_like(inputs, IGNORE_LABEL_ID) if labels is None else jnp.asarray(labels)
        pid = batch.get("puzzle_identifiers")
        pid = jnp.zeros((b,), jnp.int32) if pid is None else jnp.asarray(pid).reshape(b)
        return {"inputs": inputs.astype(jnp.int32), "labels": labels.astype(jnp.int32),
                "puzzle_identifiers": pid.astype(jnp.int32)}

    def initial_carry(self, batch: dict) -> dict:
        """A carry whose rows are all halted, so the first call loads every row of its batch.

        ``{"z_H", "z_L": float32 [B, P + L, H], "steps": int32 [B], "halted": bool [B], "current_data":
        {inputs, labels, puzzle_identifiers}}`` — a pytree of arrays (keep it in the train state and
        checkpoint it for exact resumption).
        """
        c = self.config
        data = self._data(batch)
        b = data["inputs"].shape[0]
        shape = (b, c.total_len, c.hidden_size)
        return {  # distinct buffers, so that a train state holding the carry can be donated
            "z_H": jnp.zeros(shape, jnp.float32),
            "z_L": jnp.zeros(shape, jnp.float32),
            "steps": jnp.zeros((b,), jnp.int32),
            "halted": jnp.ones((b,), bool),
            "current_data": jax.tree.map(jnp.zeros_like, data),
        }

    def input_embeddings(self, inputs_BL: jax.Array, puzzle_ids_B: jax.Array) -> jax.Array:
        """x = sqrt(H) · [puzzle prefix; token embeddings] (float32 ``[B, P + L, H]``). The puzzle row (width
        ``puzzle_emb_ndim``) is zero-padded to P·H and split into P prefix tokens."""
        c = self.config
        e = self.embed_tokens(inputs_BL)
        if self.puzzle_emb is not None:
            b, p, d = e.shape[0], c.puzzle_len, c.hidden_size
            pe = self.puzzle_emb(puzzle_ids_B)
            pad = p * d - pe.shape[-1]
            if pad:
                pe = jnp.pad(pe, ((0, 0), (0, pad)))
            e = jnp.concatenate([pe.reshape(b, p, d), e], axis=1)
        if self.embed_pos is not None:
            e = 0.707106781 * (e + self.embed_pos.embedding[...][None])
        return math.sqrt(c.hidden_size) * e

    def _cos_sin(self):
        c = self.config
        if c.pos_encodings != "rope" or c.mlp_t:
            return None
        return rope_half_angles(c.total_len, c.head_dim, c.rope_theta)

    # -- one ACT step ----------------------------------------------------------------------------------------

    def _cycles(self, L, state, z_H, z_L, x, n_cycles: int, l_steps: int, unroll: bool = False):
        """``n_cycles`` TRM cycles (``l_steps`` z_L updates, then one z_H update) as one ``lax.scan`` over
        L_level applications: the input is z_H + z_L (+ x for a z_L update), so a single traced copy of the
        network serves both updates. ``unroll`` (used for the differentiated cycle) trades the loop for
        straight-line code, which XLA compiles faster once reverse-mode is involved."""
        n = l_steps + 1

        def body(carry, i):
            zh, zl = carry
            is_h = (i % n) == l_steps
            out = L(state, zh + zl, jnp.where(is_h, 0.0, x))
            return (jnp.where(is_h, out, zh), jnp.where(is_h, zl, out)), None

        (z_H, z_L), _ = jax.lax.scan(body, (z_H, z_L), jnp.arange(n_cycles * n), unroll=unroll)
        return z_H, z_L

    def _recursion(self, L, state, z_H, z_L, x, *, train, key, max_iter, tol):
        """TRM: H_cycles − 1 cycles without gradient, then one with. Returns ``(z_H, z_L, aux)``."""
        c = self.config
        if max_iter is not None or tol is not None:
            raise ValueError("TRM: max_iter/tol overrides apply to the Attractor reasoner only")
        sg = jax.lax.stop_gradient
        if c.H_cycles > 1:
            z_H, z_L = self._cycles(L, sg(state), z_H, z_L, sg(x), c.H_cycles - 1, c.L_cycles)
            z_H, z_L = sg(z_H), sg(z_L)
        z_H, z_L = self._cycles(L, state, z_H, z_L, x, 1, c.L_cycles, unroll=True)
        b = x.shape[0]
        return z_H, z_L, {"nfe": jnp.full((b,), c.H_cycles * (c.L_cycles + 1), jnp.int32)}

    def inner(self, z_H, z_L, data, *, train: bool, key=None, max_iter=None, tol=None):
        """One ACT step's recursion from (z_H, z_L) on ``data``. Returns ``(z_H, z_L, logits [B, L, V],
        q_halt [B], q_continue [B], aux)``; gradients flow through the last H cycle only."""
        c = self.config
        sg = jax.lax.stop_gradient
        x = self.input_embeddings(data["inputs"], data["puzzle_identifiers"])
        cos_sin = self._cos_sin()
        graphdef, state = nnx.split(self.L_level)

        def L(st, h, injection):
            return nnx.merge(graphdef, st)(h, injection, cos_sin)

        z_H, z_L, aux = self._recursion(L, state, sg(z_H), sg(z_L), x, train=train, key=key,
                                        max_iter=max_iter, tol=tol)
        p = c.puzzle_len
        logits = self.lm_head(z_H[:, p:]).astype(jnp.float32)
        q = self.q_head(z_H[:, 0])
        return z_H, z_L, logits, q[..., 0], q[..., 1], aux

    def __call__(self, carry: dict, batch: dict, *, train: bool, key: jax.Array | None = None,
                 max_iter: int | None = None, tol: float | None = None) -> tuple[dict, dict]:
        """One ACT step. Returns ``(new_carry, outputs)``.

        outputs: ``logits`` float32 [B, L, V]; ``q_halt_logits``/``q_continue_logits`` float32 [B];
        ``labels`` int32 [B, L] (the carry's current puzzle, which the loss must use), ``halted`` bool [B]
        (rows finished after this step), ``steps`` int32 [B]; ``nfe`` int32 [B] (applications of L_level in
        this step); ``target_q_continue`` (only with ``no_ACT_continue=False`` in training); Attractor only:
        ``solver_iterations``/``solver_residual``/``solver_converged``/``solver_diverged`` [H_cycles, B] and
        ``aux_loss`` (λ·Jacobian penalty, training with ``jacobian_weight > 0``).

        ``key`` drives halting exploration (and the Jacobian probes); it is required in training.
        """
        c = self.config
        if train and key is None:
            raise ValueError(f"{type(self).__name__}: train=True needs a PRNG key (halting exploration)")
        data = self._data(batch)
        halted = carry["halted"]
        z_H = jnp.where(halted[:, None, None], self.H_init[...][None, None, :], carry["z_H"])
        z_L = jnp.where(halted[:, None, None], self.L_init[...][None, None, :], carry["z_L"])
        steps = jnp.where(halted, 0, carry["steps"])
        cur = {
            k: jnp.where(halted.reshape((-1,) + (1,) * (v.ndim - 1)), data[k], carry["current_data"][k])
            for k, v in data.items()
        }
        k_explore, k_inner = jax.random.split(key) if key is not None else (None, None)
        z_H, z_L, logits, q_halt, q_cont, aux = self.inner(
            z_H, z_L, cur, train=train, key=k_inner, max_iter=max_iter, tol=tol
        )
        z_H, z_L = jax.lax.stop_gradient(z_H), jax.lax.stop_gradient(z_L)
        steps = steps + 1
        is_last = steps >= c.halt_max_steps
        new_halted = is_last
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_cont}
        if train and c.halt_max_steps > 1:
            qh, qc = jax.lax.stop_gradient(q_halt), jax.lax.stop_gradient(q_cont)
            new_halted = new_halted | ((qh > 0) if c.no_ACT_continue else (qh > qc))
            if c.halt_exploration_prob > 0:
                ku, kr = jax.random.split(k_explore)
                b = steps.shape[0]
                explore = jax.random.uniform(ku, (b,)) < c.halt_exploration_prob
                min_halt = jnp.where(explore, jax.random.randint(kr, (b,), 2, c.halt_max_steps + 1), 0)
                new_halted = new_halted & (steps >= min_halt)
            if not c.no_ACT_continue:
                # Bootstrapped continue target from one more recursion (no replay buffer, as in TRM/HRM).
                _, _, _, nqh, nqc, aux2 = self.inner(z_H, z_L, cur, train=False, max_iter=max_iter, tol=tol)
                nxt = jnp.where(is_last, nqh, jnp.maximum(nqh, nqc))
                outputs["target_q_continue"] = jax.lax.stop_gradient(jax.nn.sigmoid(nxt))
                aux["nfe"] = aux["nfe"] + aux2["nfe"]
        outputs.update(labels=cur["labels"], halted=new_halted, steps=steps, **aux)
        new_carry = {"z_H": z_H, "z_L": z_L, "steps": steps, "halted": new_halted, "current_data": cur}
        return new_carry, outputs

    # -- evaluation ------------------------------------------------------------------------------------------

    def predict(self, batch: dict, *, max_iter: int | None = None, tol: float | None = None) -> dict:
        """Evaluation: ``halt_max_steps`` ACT steps in eval mode (no Q-halting, no exploration) from a fresh
        carry, so every row is counted at the same depth.

        Returns ``logits`` float32 [B, L, V] and ``preds`` int32 [B, L] of the last step, ``step_preds`` int32
        [S, B, L] and ``q_halt_logits`` float32 [S, B] of every step (S = halt_max_steps; accuracy at the step
        the Q head would halt can be read from these), ``nfe`` int32 [B] (L_level applications over all
        steps), ``nfe_by_step`` int32 [S, B] (the same, counted up to and including each step), and for the
        Attractor ``solver_iterations``/``solver_residual``/``solver_converged``
        [S, H_cycles, B].
        """
        c = self.config
        carry0 = self.initial_carry(batch)
        graphdef, state = nnx.split(self)
        logits0 = jnp.zeros(carry0["current_data"]["inputs"].shape + (c.vocab_size,), jnp.float32)

        def body(loop, _):
            carry, _last = loop
            model = nnx.merge(graphdef, state)
            carry, out = model(carry, batch, train=False, max_iter=max_iter, tol=tol)
            ys = {"step_preds": jnp.argmax(out["logits"], axis=-1).astype(jnp.int32),
                  "q_halt_logits": out["q_halt_logits"], "nfe": out["nfe"]}
            ys.update({k: v for k, v in out.items() if k.startswith("solver_")})
            return (carry, out["logits"]), ys

        (_, logits), ys = jax.lax.scan(body, (carry0, logits0), None, length=c.halt_max_steps)
        ys["nfe_by_step"] = jnp.cumsum(ys["nfe"], axis=0)
        ys["nfe"] = ys["nfe_by_step"][-1]
        return {"logits": logits, "preds": jnp.argmax(logits, axis=-1).astype(jnp.int32), **ys}


class AttractorReasoner(TRM):
    """TRM's outer loop with each z_L recursion solved to its equilibrium (``AttractorReasonerConfig``).

    f(z) = L(z + z_H + x) is solved per sample (``batch_axis=0``: tokens of a puzzle interact through
    attention, so the whole grid is one sample) from the carried z_L. The first H_cycles − 1 solves and every
    solve in evaluation run the forward solver only (no extra evaluations); the last solve of a training step
    uses the configured backward (default: phantom gradient through k = 2 steps from the detached z_L*).
    """

    def l_map(self, z_BTD: jax.Array, ctx_BTD: jax.Array) -> jax.Array:
        """The fixed-point map f(z) = L(z + ctx) (ctx = z_H + x)."""
        return self.L_level(z_BTD, ctx_BTD, self._cos_sin())

    def solve(self, z_L: jax.Array, ctx: jax.Array, *, max_iter: int | None = None,
              tol: float | None = None) -> implicit.Solution:
        """Forward solve of z = L(z + ctx) from ``z_L`` with the configured solver (overrides as in
        ``__call__``); per-sample statistics ``[B]``. For diagnostics: no backward mode is attached."""
        solver, _ = solver_and_backward(self.config, max_iter, tol)
        return implicit.fixed_point(self.l_map, z_L, ctx, solver=solver, backward=implicit.IFT(),
                                    batch_axis=0)

    def _l_phase(self, L, state, z_L, ctx, *, grad: bool, train: bool, max_iter, tol):
        solver, backward = solver_and_backward(self.config, max_iter, tol)
        if not (grad and train):
            backward = implicit.IFT()  # forward only: its custom VJP is never called on detached inputs

        def f(z, ctx, st):
            return L(st, z, ctx)

        sol = implicit.fixed_point(f, z_L, ctx, state, solver=solver, backward=backward, batch_axis=0)
        st = sol.stats
        stats = {
            "solver_iterations": st.iterations,
            "solver_residual": st.residual,
            "solver_converged": st.converged,
            "solver_diverged": st.diverged,
            "nfe": st.iterations + backward.extra_evals() + 1,  # + the z_H update of the cycle
        }
        return sol.value, stats

    def _recursion(self, L, state, z_H, z_L, x, *, train, key, max_iter, tol):
        """H_cycles − 1 solves and z_H updates without gradient, then the differentiated cycle. Statistics
        are stacked per cycle, ``[H_cycles, B]``."""
        c = self.config
        sg = jax.lax.stop_gradient
        stats = []
        if c.H_cycles > 1:
            st_ng, x_ng = sg(state), sg(x)

            def no_grad_cycle(carry, _):
                zh, zl = carry
                zl, s = self._l_phase(L, st_ng, zl, zh + x_ng, grad=False, train=train, max_iter=max_iter,
                                      tol=tol)
                return (L(st_ng, zh, zl), zl), s

            (z_H, z_L), s_ng = jax.lax.scan(no_grad_cycle, (z_H, z_L), None, length=c.H_cycles - 1)
            z_H, z_L = sg(z_H), sg(z_L)
            stats.append(s_ng)
        ctx = z_H + x
        z_L, s_last = self._l_phase(L, state, z_L, ctx, grad=True, train=train, max_iter=max_iter, tol=tol)
        stats.append(jax.tree.map(lambda a: a[None], s_last))
        extra = self._extra_loss(L, state, z_L, ctx, key) if train else None
        z_H = L(state, z_H, z_L)
        aux = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *stats)
        aux["nfe"] = jnp.sum(aux["nfe"], axis=0)
        if extra is not None:
            aux["aux_loss"] = extra
        return z_H, z_L, aux

    def _extra_loss(self, L, state, z_L, ctx, key):
        c = self.config
        if c.jacobian_weight <= 0:
            return None
        if key is None:
            raise ValueError("AttractorReasoner: the Jacobian penalty needs a PRNG key")
        pen = implicit.jacobian_penalty(lambda z, ctx, st: L(st, z, ctx), z_L, ctx, state,
                                        key=jax.random.fold_in(key, 7), n_samples=c.jacobian_samples)
        return c.jacobian_weight * pen


__all__ = [
    "IGNORE_LABEL_ID",
    "TRM",
    "AttractorReasoner",
    "InitState",
    "ReasoningModule",
    "TRMAttention",
    "TRMBlock",
    "SwiGLU",
    "apply_rope_half",
    "rope_half_angles",
    "swiglu_width",
    "trunc_normal_init",
]
