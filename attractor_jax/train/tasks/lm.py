"""The language-model task: next-token cross-entropy on packed text (grain or seqio pipelines), validation loss
at partial solver depths, tokens/s, FLOPs and MFU counting the solver's f-evaluations."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attractor_jax.implicit import SolverStats
from attractor_jax.models import build_model, param_counts
from attractor_jax.models.config import LMConfig
from attractor_jax.models.registry import depth_label, has_depth
import attractor_jax.train.sharding as shd
from attractor_jax.train.config import RunConfig
from attractor_jax.train.metrics import backward_vjps, flops_per_token, peak_flops
from attractor_jax.train.optim import make_optimizer, optimizer_metrics
from attractor_jax.train.rundir import memory_hint
from attractor_jax.train.tasks.base import Task


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array  # uint32[2] base key; the step's key is fold_in(rng, step)

    @property
    def eval_params(self) -> Any:
        """The weights evaluation uses."""
        return self.params


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), targets_BT).mean()


def model_metrics(aux: dict) -> dict[str, jax.Array]:
    """Scalar summaries of a model's aux outputs (solver statistics, gates, Parcae depths)."""
    out = {}
    if "iterations" in aux:
        out.update(SolverStats(aux["iterations"], aux["residual"], aux["converged"], aux["diverged"]).summary())
    if "head_contribution" in aux:
        out["head_contribution"] = aux["head_contribution"].mean()
    for k, v in aux.items():
        if k.startswith("gate_"):
            out[k] = v.mean()
        elif k in ("depth", "depths", "total_depth"):
            out["depth"] = v.astype(jnp.float32).mean()
    return out


def make_steps(graphdef, optimizer: optax.GradientTransformation, grad_accum: int):
    """Pure ``train_step(state, batch) -> (state, metrics)`` and ``eval_step(params, batch, max_iter) -> loss``."""

    def loss_fn(params, inputs, targets, key):
        logits, aux = nnx.merge(graphdef, params)(inputs, key=key)
        return cross_entropy(logits, targets), model_metrics(aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch["inputs"], batch["targets"], key)
        else:
            # Micro-batch i takes rows i, i + K, i + 2K, ...: each stays spread over every data-parallel device.
            micro = jax.tree_util.tree_map(
                lambda x: x.reshape(-1, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)

            def body(acc, xs):
                i, mb = xs
                (loss, metrics), grads = grad_fn(state.params, mb["inputs"], mb["targets"],
                                                 jax.random.fold_in(key, i))
                return jax.tree_util.tree_map(jnp.add, acc, (loss, metrics, grads)), None

            zero = jax.eval_shape(grad_fn, state.params, micro["inputs"][0], micro["targets"][0], key)
            zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (zero[0][0], zero[0][1], zero[1]))
            (loss, metrics, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / grad_accum, (loss, metrics, grads))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng)
        return new, {"loss": loss, **metrics, **optimizer_metrics(opt_state)}

    def eval_step(params, batch: dict, max_iter: int | None) -> dict:
        logits, aux = nnx.merge(graphdef, params)(batch["inputs"], max_iter=max_iter)
        out = {"loss": cross_entropy(logits, batch["targets"])}
        if "iterations" in aux:
            out["solver_iters"] = aux["iterations"].astype(jnp.float32).mean()
        return out

    return train_step, eval_step


def data_pipelines(run: RunConfig, process_index: int, process_count: int, check: bool = False):
    """``(train iterator, val_batches())``. ``check``: build both without starting threads or reading batches
    (raises on a split too small for one batch)."""
    from attractor_jax.data import make_text_pipeline

    d, t = run.data, run.train
    if d.path is not None and str(d.path).startswith("seqio:"):  # a seqio Task/Mixture (attractor_jax[seqio])
        from attractor_jax.data.seqio_tasks import make_seqio_pipelines

        return make_seqio_pipelines(d, t, process_index, process_count)
    common = dict(seq_len=t.seq_len, tokenizer=d.tokenizer, text_field=d.text_field,
                  val_path=d.val_path, val_fraction=d.val_fraction,
                  process_index=process_index, process_count=process_count)
    if check:
        common["prefetch"] = 0
    train_it = make_text_pipeline(d.path, batch_size=t.batch_size, seed=t.seed, split="train", **common)
    has_val = d.val_path is not None or d.val_fraction > 0
    if check:
        if has_val:
            make_text_pipeline(d.path, batch_size=t.batch_size, seed=t.seed, split="validation", **common)
        return train_it, None

    def val_batches():
        if not has_val:
            return []
        it = make_text_pipeline(d.path, batch_size=t.batch_size, seed=t.seed, split="validation", **common)
        return list(itertools.islice(it, t.eval_batches))

    return train_it, val_batches


def validate_run(run: RunConfig) -> None:
    """Check everything that can be checked before anything is written (bad values raise ValueError)."""
    from attractor_jax.data import text_corpus_stats

    if run.data.path is None:
        raise ValueError("data.path is not set: pass --data PATH")
    if run.model.vocab_size < 1:
        raise ValueError(f"model.vocab_size={run.model.vocab_size} must be >= 1")
    if str(run.data.path).startswith("seqio:"):  # a seqio Task/Mixture: the task's vocabulary, not data.tokenizer
        from attractor_jax.data.seqio_tasks import check_seqio_data

        vocab = check_seqio_data(run.data, seq_len=run.train.seq_len, batch_size=run.train.batch_size)
        source = f"seqio data {run.data.path!r}"
    else:
        stats = text_corpus_stats(run.data.path, seq_len=run.train.seq_len, tokenizer=run.data.tokenizer,
                                  val_fraction=run.data.val_fraction, val_path=run.data.val_path,
                                  text_field=run.data.text_field)
        if stats.num_rows < 1:
            raise ValueError(f"data {run.data.path!r} has too few tokens for one sequence of {run.train.seq_len}")
        from attractor_jax.data import make_tokenizer

        vocab = make_tokenizer(run.data.tokenizer).vocab_size
        source = f"tokenizer {run.data.tokenizer!r}"
    if vocab > run.model.vocab_size:
        raise ValueError(f"{source} has {vocab} tokens but model.vocab_size is {run.model.vocab_size}")
    run.model_config()  # raises on an unknown dtype
    if not str(run.data.path).startswith("seqio:"):
        # Build (not iterate) both pipelines: a split too small for one batch fails here, not after training.
        data_pipelines(run, jax.process_index(), jax.process_count(), check=True)
    shd.check_batch(run.train.batch_size, run.train.grad_accum, run.train.mesh, jax.device_count())


class Setup(NamedTuple):
    model_config: LMConfig  # with the run's dtype override applied
    mesh: jax.sharding.Mesh
    graphdef: Any
    optimizer: optax.GradientTransformation
    init: Callable[[], TrainState]  # jit with out_shardings=state_shardings to create a sharded state
    abstract_state: TrainState  # ShapeDtypeStructs
    state_shardings: TrainState  # NamedShardings


def setup(run: RunConfig, devices=None) -> Setup:
    """Model graph, optimizer, mesh, abstract state and shardings. ``devices`` defaults to ``jax.devices()``;
    ahead-of-time compilation passes a TPU topology's device descriptions instead."""
    if run.optim.ema_decay is not None:
        raise ValueError(f"optim.ema_decay={run.optim.ema_decay!r}: a weight EMA is kept for the puzzle reasoners "
                         "only; expected None for a language model")
    model_cfg = run.model_config()
    mesh = shd.make_mesh(run.train.mesh, devices)
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, seed=run.train.seed))
    graphdef, abstract_params = nnx.split(abstract)
    optimizer = make_optimizer(run.optim, abstract_params, model_cfg, total_steps=run.train.steps)

    def init() -> TrainState:
        _, params = nnx.split(build_model(model_cfg, seed=run.train.seed))
        return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                          rng=jax.random.PRNGKey(run.train.seed))

    abstract_state = jax.eval_shape(init)
    param_sh = shd.state_shardings(abstract_state.params, mesh)
    opt_sh = shd.state_shardings(abstract_state.opt_state, mesh)  # moments sharded like their parameters
    state_sh = TrainState(params=param_sh, opt_state=opt_sh, step=shd.replicated(mesh), rng=shd.replicated(mesh))
    return Setup(model_cfg, mesh, graphdef, optimizer, init, abstract_state, state_sh)


class LMTask(Task):
    """Language modelling (`RunConfig` of an ``LMConfig``: GPT, Parcae, the Attractor LM)."""

    kind = "lm"
    rate_key = "tokens_per_s"

    def __init__(self, run: RunConfig, *, devices=None, validate: bool = True):
        if validate:
            validate_run(run)
        self.run = run
        (self.model_config, self.mesh, self.graphdef, self.optimizer, self.init, self.abstract_state,
         self.state_shardings) = setup(run, devices)
        t = run.train
        self.batch_shardings = {k: shd.batch_sharding(self.mesh) for k in ("inputs", "targets")}
        self.batch_layout = {k: ((t.batch_size, t.seq_len), jnp.int32) for k in ("inputs", "targets")}
        self._train_step, eval_step = make_steps(self.graphdef, self.optimizer, t.grad_accum)
        self._eval = jax.jit(shd.under_mesh(eval_step, self.mesh), static_argnums=(2,),
                             in_shardings=(self.state_shardings.params, self.batch_shardings))
        self._pipes = None
        self._val: list = []
        self.counts = param_counts(self.model_config)
        self.peak = peak_flops(jax.devices()[0].device_kind)
        self.vjps = backward_vjps(self.model_config)

    def train_step(self):
        return self._train_step

    def memory_hint(self) -> str:
        return memory_hint(self.run.train.batch_size, self.run.train.grad_accum)

    def _pipelines(self):
        if self._pipes is None:
            self._pipes = data_pipelines(self.run, jax.process_index(), jax.process_count())
        return self._pipes

    def train_pipeline(self):
        return self._pipelines()[0]

    def units_per_step(self) -> int:
        return self.run.train.batch_size * self.run.train.seq_len

    def log_row(self, metrics: dict, acc: Any, rate: float) -> dict:
        metrics = jax.device_get(metrics)
        # Every token is evaluated until the batch's last one exits: count the evaluations actually run.
        fpt = flops_per_token(self.model_config, self.counts, self.run.train.seq_len,
                              float(metrics.get("solver_iters_max", 0.0)), self.vjps)
        row = dict(metrics, ppl=float(math.exp(min(float(metrics["loss"]), 50.0))), tokens_per_s=rate,
                   flops_per_token=fpt)
        if self.peak:
            row["mfu"] = rate * fpt / (self.peak * jax.device_count())
        return row

    def progress_text(self, row: dict) -> str:
        rate = row["tokens_per_s"]  # NaN at the first logged step (it holds the compile)
        return f"loss {row['loss']:.4f}" + (f"  {rate:,.0f} tok/s" if math.isfinite(rate) else "") + (
            f"  iters {row['solver_iters']:.1f}" if "solver_iters" in row else "")

    def _depths(self) -> list[int | None]:
        return [*self.run.train.eval_depths, None] if has_depth(self.model_config) else [None]

    def _losses(self, params, batches, depths) -> dict:
        out = {}
        for depth in depths:
            rows = [jax.device_get(self._eval(params, b, depth)) for b in batches]
            r = {"loss": float(np.mean([x["loss"] for x in rows]))}
            r["ppl"] = float(math.exp(min(r["loss"], 50.0)))
            if "solver_iters" in rows[0]:
                r["solver_iters"] = float(np.mean([x["solver_iters"] for x in rows]))
            out[depth_label(depth)] = r
        return out

    def periodic_eval(self, state) -> dict:
        if not self._val:
            self._val.extend(self.put(b) for b in self._pipelines()[1]())
        if not self._val:
            return {}
        res = self._losses(state.eval_params, self._val, self._depths())
        out = {f"val_loss_{label}": r["loss"] for label, r in res.items()}
        out.update({f"val_solver_iters_{label}": r["solver_iters"] for label, r in res.items() if "solver_iters" in r})
        out["val_loss"] = out["val_loss_full"]
        out["val_ppl"] = float(math.exp(min(out["val_loss"], 50.0)))
        return out

    def final_eval(self, state, step: int, finished: bool, workdir) -> dict:
        return self.periodic_eval(state)

    def evaluate(self, state, step: int, depths, batches) -> dict:
        depths = self._depths() if depths is None else list(depths)
        run = self.run if not batches else dataclasses.replace(
            self.run, train=dataclasses.replace(self.run.train, eval_batches=batches))
        data = [self.put(b) for b in data_pipelines(run, jax.process_index(), jax.process_count())[1]()]
        if not data:
            raise ValueError("no validation data: set data.val_fraction > 0 or data.val_path")
        return {"step": step, "depths": self._losses(state.eval_params, data, depths)}
