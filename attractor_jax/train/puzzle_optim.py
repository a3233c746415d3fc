"""TRM's training recipe for the puzzle reasoners: sparse SignSGD for the puzzle embeddings, AdamW for the
rest, warmup + cosine schedule, an EMA of the weights, and reference pure train/eval steps.

* ``sparse_sign_sgd``: TRM's ``CastedSparseEmbeddingSignSGD``. Only the rows present in the batch move:
  ``p ← p·(1 − lr·wd) − lr·sign(g)`` where g is the summed gradient of the row (duplicates within the batch
  and across devices are summed by autodiff and the data-parallel reduction, as TRM's all-gather +
  scatter-add does). A row counts as present when its gradient is non-zero; every other row is left exactly
  as it is.
* ``make_puzzle_optimizer``: ``optax.multi_transform`` of AdamW (decoupled weight decay on every dense
  parameter, biases included, as torch's AdamW over ``model.parameters()``) and ``sparse_sign_sgd`` for
  ``puzzle_emb``, both scaled by TRM's schedule (linear warmup from lr/W, then cosine to ``min_lr_ratio``;
  the reference runs keep the lr constant, ``min_lr_ratio=1``). Optional global-norm clipping (TRM: none);
  non-finite gradients skip the update. Its state is ``attractor_jax.train.optim.OptimState``, so
  ``optimizer_metrics`` reports ``lr/adamw``, ``lr/puzzle_emb``, ``grad_norm`` and ``skipped_steps``.
* ``ema_update``: ``ema ← decay·ema + (1 − decay)·params`` (TRM's ``EMAHelper``, decay 0.999). The puzzle
  embedding is a buffer in TRM, so its EMA copy follows the live weights; evaluate with the EMA tree.
* ``make_reasoner_train_step``/``make_reasoner_eval_step``: pure, jittable steps over a
  ``PuzzleTrainState`` (params, buffers, optimizer state, EMA, the persistent ACT carry, step, rng). The carry
  lives in the state: each step loads the new batch's rows only where the previous step halted (TRM's deep
  supervision), and checkpointing the state resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attractor_jax.models.reasoner_losses import act_loss, puzzle_accuracy, solver_metrics
from attractor_jax.train.optim import optimizer_metrics, scheduled

PUZZLE_EMB = "puzzle_emb"


def _names(path) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def is_puzzle_embedding(path) -> bool:
    """True for the puzzle-embedding table (a ``puzzle_emb`` component in the key path)."""
    return PUZZLE_EMB in _names(path)


def puzzle_param_labels(params: Any) -> Any:
    """``"puzzle_emb"`` for the puzzle-embedding table, ``"adamw"`` for every other parameter."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: PUZZLE_EMB if is_puzzle_embedding(p) else "adamw", params
    )


# ----------------------------------------------------------------------------------------------------------
# Sparse SignSGD


def sparse_sign_sgd(learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """SignSGD with decoupled weight decay on the rows (leading axis) that received a gradient.

    Update of a present row: ``−lr·(wd·p + sign(g))``; absent rows (all-zero gradient) get exactly 0. Needs
    ``params`` when ``weight_decay > 0``. Stateless.
    """
    if not (learning_rate >= 0 and weight_decay >= 0):
        raise ValueError(f"sparse_sign_sgd: learning_rate={learning_rate!r}, weight_decay={weight_decay!r} "
                         "must be >= 0")

    def update(updates, state, params=None):
        if weight_decay > 0 and params is None:
            raise ValueError("sparse_sign_sgd with weight decay needs params")

        def one(g, p):
            axes = tuple(range(1, g.ndim))
            present = jnp.any(g != 0, axis=axes, keepdims=True) if axes else g != 0
            step = jnp.sign(g)
            if weight_decay > 0:
                step = step + weight_decay * p
            return jnp.where(present, -learning_rate * step, 0.0).astype(g.dtype)

        ps = params if params is not None else updates
        return jax.tree.map(one, updates, ps), state

    return optax.GradientTransformation(optax.init_empty_state, update)


# ----------------------------------------------------------------------------------------------------------
# The optimiser


@dataclasses.dataclass(frozen=True)
class PuzzleOptimConfig:
    """TRM's optimiser settings (README and ``pretrain.py``: AdamW lr 1e-4, betas (0.9, 0.95), weight decay
    1.0; puzzle embeddings SignSGD lr 1e-4, decay 1.0; 2,000 warmup steps, then constant; EMA 0.999). The
    reference's Attractor (TRM-DEQ) runs used ``puzzle_emb_lr=1e-2`` (see ``reference_optim_config``)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1.0
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0
    warmup_steps: int = 2000
    min_lr_ratio: float = 1.0
    grad_clip: float | None = None
    skip_nonfinite: bool = True
    ema_decay: float | None = 0.999

    def __post_init__(self):
        for k in ("lr", "eps", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"PuzzleOptimConfig.{k}={v!r} must be a finite number >= 0")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"PuzzleOptimConfig.warmup_steps={self.warmup_steps!r} must be an int >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"PuzzleOptimConfig.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"PuzzleOptimConfig.betas={self.betas!r} must be two numbers in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"PuzzleOptimConfig.grad_clip={self.grad_clip!r} must be > 0 or None")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"PuzzleOptimConfig.ema_decay={self.ema_decay!r} must be in [0, 1) or None")


def reference_optim_config(model_config: Any = None, **changes: Any) -> PuzzleOptimConfig:
    """The reference's settings for a model: TRM's for ``trm`` configs, the TRM-DEQ trainer's
    (puzzle-embedding lr 1e-2) for ``attractor_reasoner`` configs; ``changes`` override fields."""
    base = PuzzleOptimConfig()
    if getattr(model_config, "arch", None) == "attractor_reasoner":
        base = dataclasses.replace(base, puzzle_emb_lr=1e-2)
    return dataclasses.replace(base, **changes) if changes else base


def trm_schedule(warmup_steps: int, total_steps: int, min_lr_ratio: float = 1.0) -> optax.Schedule:
    """lr multiplier for update t = 0, 1, …: (t + 1)/W during warmup (TRM counts steps from 1), then
    ``r + (1 − r)·(1 + cos(π·s))/2`` with s = (t + 1 − W)/(T − W) (TRM's ``cosine_schedule_with_warmup``)."""
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"total_steps={total_steps!r} must be a positive int")
    w, r = int(warmup_steps), float(min_lr_ratio)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32) + 1.0
        s = jnp.clip((t - w) / max(1, total_steps - w), 0.0, 1.0)
        m = r + (1.0 - r) * 0.5 * (1.0 + jnp.cos(jnp.pi * s))
        if w > 0:
            m = jnp.where(t < w, t / w, m)
        return m

    return schedule


def make_puzzle_optimizer(config: PuzzleOptimConfig, *, total_steps: int) -> optax.GradientTransformation:
    """AdamW on dense parameters + sparse SignSGD on ``puzzle_emb`` with TRM's schedule (module docstring).

    ``update(grads, state, params)`` needs ``params`` (weight decay). Works on an ``nnx.State`` of params or
    its pure dict; groups come from the parameter paths.
    """
    if not isinstance(config, PuzzleOptimConfig):
        raise ValueError(f"config={type(config).__name__} is not valid; expected a PuzzleOptimConfig")
    b1, b2 = config.betas
    inner = optax.multi_transform(
        {
            "adamw": optax.adamw(config.lr, b1=b1, b2=b2, eps=config.eps, weight_decay=config.weight_decay),
            PUZZLE_EMB: sparse_sign_sgd(config.puzzle_emb_lr, config.puzzle_emb_weight_decay),
        },
        puzzle_param_labels,
    )
    schedule = trm_schedule(config.warmup_steps, total_steps, config.min_lr_ratio)
    base = {"adamw": float(config.lr), PUZZLE_EMB: float(config.puzzle_emb_lr)}
    return scheduled(inner, schedule, base, config.grad_clip, config.skip_nonfinite)


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
        top = _names(path)[0]
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
    row), and for the Attractor ``solver_iters``/``solver_residual``/``solver_converged``/``solver_diverged``
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
    ``nfe`` per puzzle, ``exact_by_step``/``cell_by_step`` lists, solver means per solve; ``solves_per_row``
    = halt_max_steps · H_cycles) and ``count``."""
    import numpy as np

    tot: dict = {}
    for r in rows:
        for k, v in r.items():
            v = np.asarray(v, np.float64)
            if k == "solver_residual_max":
                tot[k] = np.maximum(tot.get(k, 0.0), v)
            else:
                tot[k] = tot.get(k, 0.0) + v
    n = max(float(tot.get("count", 0.0)), 1.0)
    out: dict = {"count": int(tot.get("count", 0))}
    for k, v in tot.items():
        if k in ("count",):
            continue
        if k == "solver_residual_max":
            out[k] = float(v)
        elif k.startswith("solver_"):
            out[k] = float(v / (n * solves_per_row))
        elif np.ndim(v):
            out[k] = [float(x) for x in v / n]
        else:
            out[k] = float(v / n)
    return out


__all__ = [
    "PuzzleOptimConfig",
    "PuzzleTrainState",
    "ema_init",
    "ema_update",
    "group_grad_norms",
    "init_train_state",
    "is_puzzle_embedding",
    "make_puzzle_optimizer",
    "make_reasoner_eval_step",
    "make_reasoner_train_step",
    "puzzle_param_labels",
    "reference_optim_config",
    "sparse_sign_sgd",
    "summarize_eval",
    "trm_schedule",
]
