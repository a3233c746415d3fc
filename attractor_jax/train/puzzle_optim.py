"""The puzzle reasoners' train state and steps: an EMA of the weights and pure train/eval steps. (TRM's
optimiser — sparse SignSGD for the puzzle embeddings, AdamW for the rest — is ``OptimConfig(optimizer="trm")``
in `attractor_jax.train.optim`; `reference_optim_config(model_config)` gives its settings.)

* ``ema_update``: ``ema ← decay·ema + (1 − decay)·params`` (TRM's ``EMAHelper``, decay 0.999). The puzzle
  embedding is a buffer in TRM, so its EMA copy follows the live weights; evaluate with the EMA tree.
* ``make_reasoner_train_step``/``make_reasoner_eval_step``: pure, jittable steps over a
  ``PuzzleTrainState`` (params, buffers, optimizer state, EMA, the persistent ACT carry, step, rng). The carry
  lives in the state: each step loads the new batch's rows only where the previous step halted (TRM's deep
  supervision), and checkpointing the state resumes exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attractor_jax.models.reasoner_losses import act_loss, puzzle_accuracy, solver_metrics
from attractor_jax.train.optim import PUZZLE_EMB, optimizer_metrics, path_names


def is_puzzle_embedding(path) -> bool:
    """True for the puzzle-embedding table (a ``puzzle_emb`` component in the key path)."""
    return PUZZLE_EMB in path_names(path)


# ----------------------------------------------------------------------------------------------------------
# EMA


def ema_init(params: Any) -> Any:
    """A copy of ``params`` to hold the exponential moving average."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """``decay·ema + (1 − decay)·params`` for every leaf except the puzzle embedding, which follows
    ``params`` (a buffer in TRM, so its EMA model uses the live table)."""
    def one(path, e, p):
        return p if is_puzzle_embedding(path) else (decay * e + (1.0 - decay) * p).astype(e.dtype)

    return jax.tree_util.tree_map_with_path(one, ema, params)


# ----------------------------------------------------------------------------------------------------------
# Reference steps


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PuzzleTrainState:
    """Everything a resumed run needs: ``params`` (``nnx.Param``), ``buffers`` (H_init/L_init), optimizer
    state, ``ema`` (None without EMA), the ACT ``carry``, ``step`` (int32) and the base ``rng`` key data (the
    step's key is ``fold_in(rng, step)``)."""

    params: Any
    buffers: Any
    opt_state: Any
    ema: Any
    carry: Any
    step: jax.Array
    rng: jax.Array

    @property
    def eval_params(self) -> Any:
        """The weights evaluation uses: the EMA when kept, else the live parameters."""
        return self.ema if self.ema is not None else self.params


def init_train_state(model: nnx.Module, optimizer: optax.GradientTransformation, batch: dict, *,
                     seed: int = 0, ema: bool = True) -> tuple[Any, PuzzleTrainState]:
    """``(graphdef, state)`` for ``make_reasoner_train_step``; ``batch`` fixes the carry's shapes."""
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    return graphdef, PuzzleTrainState(
        params=params, buffers=buffers, opt_state=optimizer.init(params),
        ema=ema_init(params) if ema else None, carry=model.initial_carry(batch),
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)),
    )


def group_grad_norms(grads: Any) -> dict[str, jax.Array]:
    """``grad_norm/<top-level module>`` (embed_tokens, puzzle_emb, L_level, lm_head, q_head, ...)."""
    sq: dict[str, jax.Array] = {}
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        top = str(path_names(path)[0])
        sq[top] = sq.get(top, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
    return {f"grad_norm/{k}": jnp.sqrt(v) for k, v in sq.items()}


def make_reasoner_train_step(graphdef, optimizer: optax.GradientTransformation, *,
                             loss_type: str = "stablemax", ema_decay: float | None = 0.999):
    """Pure ``train_step(state, batch) -> (state, metrics)``: one ACT supervision step on the carry, the ACT
    loss, one optimiser update, the EMA. Metrics: ``loss``, ``act_loss``'s (halted-row sums with ``count``),
    ``solver_metrics``, ``optimizer_metrics`` and ``group_grad_norms``."""

    def loss_fn(params, buffers, carry, batch, key):
        model = nnx.merge(graphdef, params, buffers)
        carry, out = model(carry, batch, train=True, key=key)
        loss, metrics = act_loss(out, loss_type=loss_type)
        return loss, (carry, {**metrics, **solver_metrics(out)})

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: PuzzleTrainState, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, (carry, metrics)), grads = grad_fn(state.params, state.buffers, state.carry, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(group_grad_norms(grads))
        ema = state.ema
        if ema is not None and ema_decay is not None:
            ema = ema_update(ema, params, ema_decay)
        new = dataclasses.replace(state, params=params, opt_state=opt_state, ema=ema, carry=carry,
                                  step=state.step + 1)
        return new, {"loss": loss, **metrics, **optimizer_metrics(opt_state)}

    return train_step


def make_reasoner_eval_step(graphdef):
    """Pure ``eval_step(params, buffers, batch, max_iter=None) -> metrics`` over ``model.predict`` (all
    ``halt_max_steps`` steps in eval mode, no halting or exploration). Every metric is a sum over the batch's
    real rows (``batch["mask"]``; all rows when absent) — add them over batches and divide by ``count``:

    ``count`` (rows), ``exact`` (whole grid right at the last step), ``cell`` (per-row fraction of supervised
    cells right), ``exact_by_step``/``cell_by_step`` [S] (the same after each supervision step), ``copy_cell``
    (cell accuracy of copying the input grid: the givens-only baseline), ``nfe`` (L_level applications per
    row), ``nfe_by_step`` [S] (the same up to and including each supervision step), and for the Attractor
    ``solver_iters``/``solver_residual``/``solver_converged``/``solver_diverged``
    (each summed over the S·H_cycles solves of a row; divide by ``count·S·H``) and ``solver_residual_max``
    (a max). Pass the EMA params to evaluate the EMA model; ``max_iter`` must be static
    (``jax.jit(..., static_argnums=3)``).
    """

    def eval_step(params, buffers, batch, max_iter=None):
        model = nnx.merge(graphdef, params, buffers)
        out = model.predict(batch, max_iter=max_iter)
        labels = jnp.asarray(batch["labels"])
        b = labels.shape[0]
        f32 = jnp.float32
        mask = jnp.asarray(batch["mask"], bool) if "mask" in batch else jnp.ones((b,), bool)
        w = mask.astype(f32)
        acc = puzzle_accuracy(out["preds"], labels)
        steps = jax.vmap(lambda p: puzzle_accuracy(p, labels))(out["step_preds"])
        copy = puzzle_accuracy(jnp.asarray(batch["inputs"]), labels)
        metrics = {
            "count": jnp.sum(w),
            "exact": jnp.sum(acc["exact"] * w),
            "cell": jnp.sum(acc["cell"] * w),
            "exact_by_step": jnp.sum(steps["exact"] * w, axis=-1),
            "cell_by_step": jnp.sum(steps["cell"] * w, axis=-1),
            "copy_cell": jnp.sum(copy["cell"] * w),
            "nfe": jnp.sum(out["nfe"].astype(f32) * w),
            "nfe_by_step": jnp.sum(out["nfe_by_step"].astype(f32) * w, axis=-1),
        }
        if "solver_iterations" in out:  # [S, H, B]
            res = out["solver_residual"]
            res = jnp.where(jnp.isfinite(res), res, jnp.inf)
            metrics.update(
                solver_iters=jnp.sum(out["solver_iterations"].astype(f32) * w),
                solver_residual=jnp.sum(jnp.where(jnp.isfinite(res), res, 0.0) * w),
                solver_residual_max=jnp.max(jnp.where(mask, res, 0.0)),
                solver_converged=jnp.sum(out["solver_converged"].astype(f32) * w),
                solver_diverged=jnp.sum(out["solver_diverged"].astype(f32) * w),
            )
        return metrics

    return eval_step


def summarize_eval(rows: list[dict], solves_per_row: int = 1) -> dict:
    """Combine ``make_reasoner_eval_step`` sums over batches into means (``exact``, ``cell``, ``copy_cell``,
    ``nfe`` per puzzle, ``exact_by_step``/``cell_by_step``/``nfe_by_step`` lists, solver means per solve;
    ``solves_per_row`` = halt_max_steps · H_cycles) and ``count``."""
    import numpy as np

    tot: dict = {}
    for r in rows:
        for k, v in r.items():
            v = np.asarray(v, np.float64)
            tot[k] = np.maximum(tot.get(k, 0.0), v) if k == "solver_residual_max" else tot.get(k, 0.0) + v
    n = max(float(tot.get("count", 0.0)), 1.0)
    out: dict = {"count": int(tot.get("count", 0))}
    for k, v in tot.items():
        if k == "solver_residual_max":
            out[k] = float(v)
        elif k == "count":
            continue
        elif k.startswith("solver_"):
            out[k] = float(v / (n * solves_per_row))
        elif np.ndim(v):
            out[k] = [float(x) for x in v / n]
        else:
            out[k] = float(v / n)
    return out


__all__ = [
    "PuzzleTrainState",
    "ema_init",
    "ema_update",
    "group_grad_norms",
    "init_train_state",
    "is_puzzle_embedding",
    "make_reasoner_eval_step",
    "make_reasoner_train_step",
    "summarize_eval",
]
