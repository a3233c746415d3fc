"""Losses and metrics of the puzzle reasoners (TRM's ``ACTLossHead``).

Stablemax (Prieto et al. 2025, used by HRM/TRM) replaces exp by

    s(x) = 1 / (1 − x)  for x < 0,      s(x) = x + 1  for x ≥ 0,       log p_i = log s(x_i) − log Σ_j s(x_j),

which grows linearly instead of exponentially and avoids the softmax collapse that tiny reasoners hit late
in training. TRM evaluates it in float64; here it runs in float32 (float64 when x64 is enabled) through
``log1p`` on clamped arguments, which agrees with a float64 reference to ~1e-6 relative and has finite
gradients everywhere.

The ACT loss of one supervision step (``act_loss``) is, per row b with n_b supervised cells,

    lm_b = Σ_t CE(logits_bt, label_bt) / n_b,     halt_b = BCE(q_halt_b, [row b entirely right]),
    loss = mean_b (lm_b + ½ · (halt_b + continue_b)) + aux_loss,

i.e. TRM's batch sum divided by the global batch size (``(1 / global_batch_size) · loss`` in its trainer);
``continue_b`` is the bootstrapped Q-continue BCE when ``no_ACT_continue=False``; ``aux_loss`` is the
Attractor's λ·Jacobian penalty (a batch mean, added once: the reference divided it by the batch size too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from attractor_jax.implicit import SolverStats
from attractor_jax.models.reasoner import IGNORE_LABEL_ID

LOSS_TYPES = ("stablemax", "softmax")

# Metrics that are sums over the rows halted at this step; divide by ``count`` (``summarize_act_metrics``).
SUMMED_METRICS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")


def _acc_dtype(x: jax.Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def log_stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """log s(x) − log Σ s(x) along ``axis``, in at least float32."""
    x = logits.astype(_acc_dtype(logits))
    neg = jnp.minimum(x, 0.0)
    pos = jnp.maximum(x, 0.0)
    log_s = jnp.where(x < 0, -jnp.log1p(-neg), jnp.log1p(pos))
    s = jnp.where(x < 0, 1.0 / (1.0 - neg), pos + 1.0)
    return log_s - jnp.log(jnp.sum(s, axis=axis, keepdims=True))


def _per_token(logp: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(logp, safe[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.where(valid, -picked, 0.0)


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_LABEL_ID):
    """Per-token stablemax cross-entropy ``[...]`` (0 where ``labels == ignore_index``)."""
    return _per_token(log_stablemax(logits), labels, ignore_index)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_LABEL_ID):
    """Per-token softmax cross-entropy in float32 (0 where ``labels == ignore_index``)."""
    x = logits.astype(_acc_dtype(logits))
    return _per_token(jax.nn.log_softmax(x, axis=-1), labels, ignore_index)


def puzzle_accuracy(preds: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_LABEL_ID) -> dict:
    """Per row: ``cell`` (fraction of supervised cells right, float32 [B]), ``exact`` (every supervised cell
    right, bool [B]) and ``count`` (supervised cells, int32 [B])."""
    mask = labels != ignore_index
    n = jnp.sum(mask, axis=-1)
    right = jnp.sum(mask & (preds == labels), axis=-1)
    return {"cell": right / jnp.maximum(n, 1).astype(jnp.float32), "exact": right == n, "count": n}


def act_loss(outputs: dict, *, loss_type: str = "stablemax") -> tuple[jax.Array, dict]:
    """TRM's ACT loss for one supervision step, from a reasoner's ``outputs`` (see ``TRM.__call__``).

    The labels are ``outputs["labels"]``: the carry's current puzzles, which differ from the incoming batch
    for rows that did not halt. Returns ``(loss, metrics)``; ``loss`` is the batch mean (module docstring).

    metrics: ``lm_loss``, ``q_halt_loss``, ``q_continue_loss`` (batch means), ``aux_loss``; and, over the rows
    halted at this step (with at least one supervised cell), ``count`` and the sums ``accuracy`` (per-row
    cell accuracy), ``exact_accuracy``, ``q_halt_accuracy`` ((q_halt ≥ 0) == row right), ``steps``. Add the
    sums and counts over steps (or devices) and divide with ``summarize_act_metrics``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"act_loss: loss_type={loss_type!r} is not valid; expected one of {LOSS_TYPES}")
    logits, labels = outputs["logits"], outputs["labels"]
    ce = stablemax_cross_entropy if loss_type == "stablemax" else softmax_cross_entropy
    mask = labels != IGNORE_LABEL_ID
    counts = jnp.sum(mask, axis=-1)
    divisor = jnp.maximum(counts, 1).astype(jnp.float32)

    preds = jnp.argmax(logits, axis=-1)
    is_correct = mask & (preds == labels)
    seq_correct = jnp.sum(is_correct, axis=-1) == counts
    b = labels.shape[0]

    lm = jnp.sum(jnp.sum(ce(logits, labels), axis=-1) / divisor)
    q_halt = outputs["q_halt_logits"]
    halt_bce = jnp.sum(optax.sigmoid_binary_cross_entropy(q_halt, seq_correct.astype(q_halt.dtype)))
    cont_bce = jnp.zeros((), jnp.float32)
    if "target_q_continue" in outputs:
        cont_bce = jnp.sum(
            optax.sigmoid_binary_cross_entropy(outputs["q_continue_logits"], outputs["target_q_continue"])
        )
    aux = outputs.get("aux_loss", jnp.zeros((), jnp.float32))
    loss = (lm + 0.5 * (halt_bce + cont_bce)) / b + aux

    sg = jax.lax.stop_gradient
    valid = outputs["halted"] & (counts > 0)
    f32 = jnp.float32
    metrics = {
        "count": jnp.sum(valid).astype(f32),
        "accuracy": jnp.sum(jnp.where(valid, jnp.sum(is_correct, -1) / divisor, 0.0)),
        "exact_accuracy": jnp.sum(valid & seq_correct).astype(f32),
        "q_halt_accuracy": jnp.sum(valid & ((q_halt >= 0) == seq_correct)).astype(f32),
        "steps": jnp.sum(jnp.where(valid, outputs["steps"], 0)).astype(f32),
        "lm_loss": sg(lm) / b,
        "q_halt_loss": sg(halt_bce) / b,
        "q_continue_loss": sg(cont_bce) / b,
        "aux_loss": sg(aux),
    }
    return loss, metrics


def summarize_act_metrics(metrics: dict) -> dict:
    """Divide the halted-row sums of ``act_loss`` metrics by ``count`` (0 where nothing halted); other
    entries pass through."""
    count = metrics["count"]
    out = dict(metrics)
    for k in SUMMED_METRICS:
        if k in metrics:
            out[k] = jnp.where(count > 0, metrics[k] / jnp.maximum(count, 1), 0.0)
    return out


def solver_metrics(outputs: dict) -> dict:
    """Scalar solver summaries of an Attractor reasoner's outputs (empty for TRM): mean/max f-evaluations per
    solve, mean/max residual, converged and diverged fractions, over all H cycles and rows; plus ``nfe``, the
    mean L_level applications per row in the step."""
    out = {"nfe": jnp.mean(outputs["nfe"].astype(jnp.float32))} if "nfe" in outputs else {}
    if "solver_iterations" not in outputs:
        return out
    keys = ("solver_iterations", "solver_residual", "solver_converged", "solver_diverged")
    return {**out, **SolverStats(*(outputs[k] for k in keys)).summary()}


__all__ = [
    "LOSS_TYPES",
    "act_loss",
    "log_stablemax",
    "puzzle_accuracy",
    "softmax_cross_entropy",
    "solver_metrics",
    "stablemax_cross_entropy",
    "summarize_act_metrics",
]
