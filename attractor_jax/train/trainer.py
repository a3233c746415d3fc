"""The sharded, resumable trainer.

A run is a `RunConfig` (model, train, optim, data) and a work directory. The loop is nanodo-sized:

    state = init or restore                    # sharded by logical-axis rules over the (data, fsdp, tensor) mesh
    for step in range(start, steps):
        state, metrics = train_step(state, batch)   # jax.jit, explicit in/out shardings, donated state
        log / validate / checkpoint at their intervals
    checkpoint at the end (and on SIGTERM)

`train_step` and `eval_step` are pure functions over the split NNX state (``nnx.split`` once; ``nnx.merge``
inside the step), as in Flax's gemma example. Everything random comes from ``train.seed``: parameters from the
seed, the per-step model key from ``fold_in(key(seed), step)``, the data order from the pipeline's seed and
position — so a run stopped at step k and resumed ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attractor_jax.models import build_model, config_from_dict, config_to_dict, get_config, param_counts
from attractor_jax.models.config import LMConfig, TRMConfig
from attractor_jax.models.registry import is_reasoner
from attractor_jax.train import sharding as shd
from attractor_jax.train.checkpoint import Checkpointer
from attractor_jax.train.rundir import (
    RunDirectory,
    check_step_memory,
    memory_hint,
    out_of_memory,
    write_json_atomic,
)
from attractor_jax.train.metrics import MetricsWriter, backward_vjps, flops_per_token, peak_flops
from attractor_jax.train.optim import OptimConfig, make_optimizer, optimizer_metrics
from attractor_jax.train.puzzle_optim import PuzzleOptimConfig, reference_optim_config

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokens come from: ``path`` (file, folder, glob or ``hf://...``), a tokenizer spec ("byte", a
    SentencePiece ``.model`` or a HF ``tokenizers`` ``.json``), and the validation split (``val_path``, or the
    last ``val_fraction`` of ``path``)."""

    path: str | None = None
    tokenizer: str = "byte"
    val_path: str | None = None
    val_fraction: float = 0.05
    text_field: str = "text"

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch (sequences per optimizer step, split into
    ``grad_accum`` micro-batches); ``eval_depths`` are the partial solver depths validated besides the full
    solve; ``mesh`` is e.g. ``"data=2,fsdp=2,tensor=2"`` (None: all devices on ``data``); ``dtype`` overrides
    the model's compute dtype (``"bfloat16"`` on accelerators; parameters stay float32)."""

    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    eval_depths: tuple[int, ...] = (0, 1, 2, 4)
    save_every: int = 200
    keep: int = 3
    grad_accum: int = 1
    mesh: str | None = None
    dtype: str | None = None
    async_checkpoint: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "log_every", "eval_batches", "keep", "grad_accum"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"train.{name}={v!r} must be a positive int")
        for name in ("eval_every", "save_every", "seed"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"train.{name}={v!r} must be an int >= 0")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of "
                             f"train.grad_accum={self.grad_accum}")
        if any(not (isinstance(d, int) and d >= 0) for d in self.eval_depths):
            raise ValueError(f"train.eval_depths={self.eval_depths!r} must be ints >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run: model config, loop settings, optimizer and data. Language models take an `OptimConfig`; the
    puzzle reasoners (``TRMConfig``/``AttractorReasonerConfig``) take a `PuzzleOptimConfig` (TRM's recipe).
    `RunConfig.for_model(cfg)` picks the right default optimizer."""

    model: LMConfig | TRMConfig
    train: TrainConfig = TrainConfig()
    optim: OptimConfig | PuzzleOptimConfig = OptimConfig()
    data: DataConfig = DataConfig()

    @classmethod
    def for_model(cls, model: LMConfig | TRMConfig, **sections: Any) -> "RunConfig":
        """A run for ``model`` with the default optimizer of its kind (the reference's settings)."""
        if is_reasoner(model) and "optim" not in sections:
            sections["optim"] = reference_optim_config(model)
        return cls(model=model, **sections)

    def to_dict(self) -> dict:
        return {"model": config_to_dict(self.model), "train": dataclasses.asdict(self.train),
                "optim": dataclasses.asdict(self.optim), "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        def build(kind, values):
            fields = {f.name: f for f in dataclasses.fields(kind)}
            out = {}
            for k, v in values.items():
                if k not in fields:
                    raise ValueError(f"{kind.__name__}: unknown field {k!r}")
                out[k] = tuple(v) if isinstance(v, list) else v
            return kind(**out)

        model = config_from_dict(d["model"])
        optim_cls = PuzzleOptimConfig if is_reasoner(model) else OptimConfig
        return cls(model=model, train=build(TrainConfig, d.get("train", {})),
                   optim=build(optim_cls, d.get("optim", {})), data=build(DataConfig, d.get("data", {})))


def _coerce(text: str, current: Any) -> Any:
    """Parse a ``--set`` value to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, (tuple, list)):
        return tuple(_coerce(t, current[0] if current else 0) for t in text.split(",") if t)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if current is None:
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
    return text


def apply_sets(run: RunConfig, sets: list[str]) -> RunConfig:
    """Apply ``key=value`` overrides. Keys are ``model.FIELD`` (dotted into sub-configs, e.g.
    ``model.solver.tol``), ``train.FIELD``, ``optim.FIELD``, ``data.FIELD``, or a bare field name found in
    exactly one of them."""
    sections = {"train": run.train, "optim": run.optim, "data": run.data}
    model_overrides: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        section, _, field = key.partition(".")
        if section not in ("model", *sections) or not field:
            owners = [s for s, c in sections.items() if key in {f.name for f in dataclasses.fields(c)}]
            model_fields = {f.name for f in dataclasses.fields(run.model)}
            if key in model_fields:
                owners.append("model")
            if len(owners) != 1:
                raise ValueError(
                    f"--set {key!r}: " + ("unknown key" if not owners else f"ambiguous (in {owners})")
                    + "; use model.FIELD, train.FIELD, optim.FIELD or data.FIELD")
            section, field = owners[0], key
        if section == "model":
            head, _, rest = field.partition(".")
            cur = getattr(run.model, head, None)
            cur = getattr(cur, rest, None) if rest else cur
            try:
                model_overrides[field] = _coerce(text.strip(), cur)
            except ValueError as exc:
                raise ValueError(f"--set {key}={text}: {exc}") from None
            continue
        cfg = sections[section]
        names = {f.name for f in dataclasses.fields(cfg)}
        if field not in names:
            raise ValueError(f"--set {key!r}: unknown field of {section}; valid: {', '.join(sorted(names))}")
        try:
            value = _coerce(text.strip(), getattr(cfg, field))
        except ValueError as exc:
            raise ValueError(f"--set {key}={text}: {exc}") from None
        sections[section] = dataclasses.replace(cfg, **{field: value})
    model = get_config(run.model, **model_overrides) if model_overrides else run.model
    return RunConfig(model=model, **sections)


# --------------------------------------------------------------------------------------------------------------
# State and steps


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array  # uint32[2] base key; the step's key is fold_in(rng, step)


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), targets_BT).mean()


def model_metrics(aux: dict) -> dict[str, jax.Array]:
    """Scalar summaries of a model's aux outputs (solver statistics, gates, Parcae depths)."""
    out = {}
    if "iterations" in aux:
        it = aux["iterations"].astype(jnp.float32)
        out.update(solver_iters=it.mean(), solver_iters_max=it.max(),
                   solver_residual=jnp.mean(jnp.where(jnp.isfinite(aux["residual"]), aux["residual"], 0.0)),
                   solver_residual_max=jnp.max(jnp.where(jnp.isfinite(aux["residual"]), aux["residual"], 0.0)),
                   solver_converged=aux["converged"].astype(jnp.float32).mean(),
                   solver_diverged=aux["diverged"].astype(jnp.float32).mean())
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


# --------------------------------------------------------------------------------------------------------------
# The run


def _data_pipelines(run: RunConfig, process_index: int, process_count: int, check: bool = False):
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


def validate_run(run: RunConfig, workdir: str | os.PathLike) -> None:
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
    if run.train.dtype is not None:
        get_config(run.model, dtype=run.train.dtype)  # raises on an unknown dtype
    if not str(run.data.path).startswith("seqio:"):
        # Build (not iterate) both pipelines: a split too small for one batch fails here, not after training.
        _data_pipelines(run, jax.process_index(), jax.process_count(), check=True)
    shd.parse_mesh(run.train.mesh, jax.device_count())
    n_data = math.prod(v for k, v in shd.parse_mesh(run.train.mesh, jax.device_count()).items() if k != "tensor")
    if (run.train.batch_size // run.train.grad_accum) % n_data:
        raise ValueError(f"train.batch_size={run.train.batch_size} (per micro-batch "
                         f"{run.train.batch_size // run.train.grad_accum}) is not divisible by the {n_data} "
                         f"data-parallel devices of mesh {run.train.mesh!r}")
    check_workdir(run, workdir)


def check_workdir(run: RunConfig, workdir: str | os.PathLike) -> None:
    """``workdir`` is a directory (or absent); if it holds a run (a checkpoint), its configuration is ``run``'s
    (only ``train.steps`` may differ). A workdir without a checkpoint is not a run yet and never blocks."""
    RunDirectory(workdir).check(run.to_dict())


_write_json_atomic = write_json_atomic


def restore_or_init(ckpt: Checkpointer, abstract_sharded: Any, data_iter: Any, init: Callable[[], Any],
                    shardings: Any, workdir: pathlib.Path) -> tuple[int, Any]:
    """``(start_step, state)``: the newest readable checkpoint (and the data position, restored into
    ``data_iter``), or a fresh sharded ``init()`` at step 0. metrics.jsonl is cut back to the start step."""
    restored = ckpt.restore(abstract_sharded, data_iter, discard_damaged=True)
    if restored is None:
        MetricsWriter.truncate_after(workdir, -1)
        return 0, jax.jit(init, out_shardings=shardings)()
    start, state, _ = restored
    MetricsWriter.truncate_after(workdir, start)
    print(f"resuming from step {start} in {workdir}")
    return start, state


def install_sigterm() -> tuple[dict, Any]:
    """Catch SIGTERM (pre-emption): returns ``(stop, old_handler)``; ``stop["signal"]`` is set when it arrives,
    and the loop checkpoints and ends. Outside the main thread nothing is installed (the caller handles it)."""
    stop: dict = {"signal": None}

    def on_sigterm(signum, frame):
        stop["signal"] = signum

    try:
        return stop, signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        return stop, None


def close_run(progress, ckpt, writer, old_handler) -> None:
    """End a training loop: finish the progress line, wait for checkpoints, close metrics, restore SIGTERM."""
    progress.close()
    ckpt.close()
    writer.close()
    if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)


class _Progress:
    """A one-line progress bar on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, start: int):
        self.total, self.tty = total, sys.stdout.isatty()
        self.show(start, "")

    def show(self, step: int, text: str) -> None:
        width = 24
        done = int(width * step / max(self.total, 1))
        line = f"[{'#' * done}{'.' * (width - done)}] {step}/{self.total} {text}"
        if self.tty:
            sys.stdout.write("\r" + line[:160].ljust(160))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        if self.tty:
            sys.stdout.write("\n")


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
    model_cfg = run.model if run.train.dtype is None else get_config(run.model, dtype=run.train.dtype)
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


def train(run: RunConfig, workdir: str | os.PathLike, *, stop_after: int | None = None,
          on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) ``run`` in ``workdir``. Returns a summary dict.

    ``stop_after`` ends the loop after that many steps of this invocation (with a checkpoint), as a pre-emption
    would; tests use it to interrupt and resume. A reasoner run (TRM, Attractor reasoner) goes to
    `attractor_jax.train.puzzle_trainer.train_puzzles`.
    """
    if is_reasoner(run.model):
        from attractor_jax.train.puzzle_trainer import train_puzzles

        return train_puzzles(run, workdir, stop_after=stop_after, on_log=on_log)
    validate_run(run, workdir)
    wd = pathlib.Path(workdir)
    model_cfg, mesh, graphdef, optimizer, init, abstract_state, state_sh = setup(run)
    train_step, eval_step = make_steps(graphdef, optimizer, run.train.grad_accum)
    batch_sh = shd.batch_sharding(mesh)
    abstract_sharded = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
    # Compile before anything is written, and refuse a step that cannot fit in device memory.
    hint = memory_hint(run.train.batch_size, run.train.grad_accum)
    abstract_batch = {k: jax.ShapeDtypeStruct((run.train.batch_size, run.train.seq_len), jnp.int32,
                                              sharding=batch_sh) for k in ("inputs", "targets")}
    with out_of_memory("train step", hint, devices=mesh.devices.flat):
        jit_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
                            donate_argnums=(0,)).lower(abstract_sharded, abstract_batch).compile()
    mem = check_step_memory(jit_train, list(mesh.devices.flat), "train step", hint)
    jit_eval = jax.jit(eval_step, in_shardings=(state_sh.params, batch_sh), static_argnums=(2,))
    with RunDirectory(wd).session(run.to_dict()), \
            out_of_memory("train step", hint, mem["bytes_per_device"], list(mesh.devices.flat)):
        return _train_loop(run, wd, model_cfg, init, state_sh, abstract_sharded, batch_sh, jit_train, jit_eval,
                           stop_after, on_log)


def _train_loop(run, wd, model_cfg, init, state_sh, abstract_sharded, batch_sh, jit_train, jit_eval, stop_after,
                on_log) -> dict:
    train_it, val_batches = _data_pipelines(run, jax.process_index(), jax.process_count())
    ckpt = Checkpointer(wd, keep=run.train.keep, async_save=run.train.async_checkpoint)
    start, state = restore_or_init(ckpt, abstract_sharded, train_it, init, state_sh, wd)
    writer = MetricsWriter(wd, tensorboard=run.train.tensorboard)

    counts = param_counts(model_cfg)
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    tokens_per_step = run.train.batch_size * run.train.seq_len
    vjps = backward_vjps(model_cfg)

    stop, old_handler = install_sigterm()
    val_cache: list = []

    def run_validation(step: int) -> dict:
        if not val_cache:
            val_cache.extend(jax.device_put(b, batch_sh) for b in val_batches())
        if not val_cache:
            return {}
        out = {}
        depths = list(run.train.eval_depths) + [None] if getattr(model_cfg, "solver", None) or \
            hasattr(model_cfg, "mean_recurrence") else [None]
        for depth in depths:
            rows = [jax.device_get(jit_eval(state.params, b, depth)) for b in val_cache]
            label = "full" if depth is None else str(depth)
            out[f"val_loss_{label}"] = float(np.mean([r["loss"] for r in rows]))
            if "solver_iters" in rows[0]:
                out[f"val_solver_iters_{label}"] = float(np.mean([r["solver_iters"] for r in rows]))
        out["val_loss"] = out["val_loss_full"]
        out["val_ppl"] = float(math.exp(min(out["val_loss"], 50.0)))
        return out

    progress = _Progress(run.train.steps, start)
    last_t, last_step, summary = time.perf_counter(), start, {}
    step = start
    try:
        end = run.train.steps if stop_after is None else min(run.train.steps, start + stop_after)
        for step in range(start + 1, end + 1):
            batch = next(train_it)
            batch = jax.make_array_from_process_local_data(batch_sh, batch) if jax.process_count() > 1 \
                else jax.device_put(batch, batch_sh)
            state, metrics = jit_train(state, batch)
            if step == start + 1:  # exclude compilation from the throughput figures
                jax.block_until_ready(metrics)
                last_t, last_step = time.perf_counter(), step
            if step % run.train.log_every == 0 or step == end:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                tps = tokens_per_step * (step - last_step) / (now - last_t) if step > last_step else float("nan")
                last_t, last_step = now, step
                # Every token is evaluated until the batch's last one exits: count the evaluations actually run.
                fpt = flops_per_token(model_cfg, counts, run.train.seq_len,
                                      float(metrics.get("solver_iters_max", 0.0)), vjps)
                row = dict(metrics, ppl=float(math.exp(min(float(metrics["loss"]), 50.0))),
                           tokens_per_s=tps, flops_per_token=fpt)
                if peak:
                    row["mfu"] = tps * fpt / (peak * jax.device_count())
                if run.train.eval_every and step % run.train.eval_every == 0:
                    row.update(run_validation(step))
                row = writer.write(step, row)
                summary = row
                if on_log:
                    on_log(row)
                progress.show(step, f"loss {row['loss']:.4f}  {tps:,.0f} tok/s" + (
                    f"  iters {row['solver_iters']:.1f}" if "solver_iters" in row else ""))
            if run.train.save_every and step % run.train.save_every == 0:
                ckpt.save(step, state, train_it, {"step": step, "config": run.to_dict(), "time": time.time()})
            if stop["signal"] is not None:
                print(f"\nreceived signal {stop['signal']}: checkpointing step {step} and stopping")
                break
        final = run_validation(step)
        if final:
            writer.write(step, final)
            summary.update(final)
        ckpt.save(step, state, train_it, {"step": step, "config": run.to_dict(), "time": time.time()},
                  force=True)
    finally:
        close_run(progress, ckpt, writer, old_handler)
    summary["step"] = step
    return summary


def evaluate(workdir: str | os.PathLike, depths: list[int | None] | None = None, data_path: str | None = None,
             batches: int | None = None) -> dict:
    """Validation loss of the latest checkpoint in ``workdir`` at the given solver depths (None = full)."""
    wd = pathlib.Path(workdir)
    run = RunConfig.from_dict(RunDirectory(wd).read_config())
    if data_path is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=data_path))
    if is_reasoner(run.model):
        from attractor_jax.train.puzzle_trainer import evaluate_puzzles, validate_puzzle_run

        if data_path is not None:  # another dataset: it must have the sizes the model was trained with
            check = validate_puzzle_run(run)
            if check.model != run.model:
                raise ValueError(f"data {data_path!r} does not match the run's model (seq_len, vocab or puzzle "
                                 "identifiers differ)")
        return evaluate_puzzles(run, wd, depths=depths, batches=batches)
    if batches is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_batches=batches))
    model_cfg, mesh, graphdef, optimizer, init, abstract_state, state_sh = setup(run)
    _, eval_step = make_steps(graphdef, optimizer, 1)
    ckpt = Checkpointer(wd, keep=run.train.keep)
    abstract_sharded = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
    restored = ckpt.restore(abstract_sharded, None)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"workdir {str(wd)!r} has no checkpoint")
    step, state, _ = restored
    _, val_batches = _data_pipelines(run, jax.process_index(), jax.process_count())
    batch_sh = shd.batch_sharding(mesh)
    data = [jax.device_put(b, batch_sh) for b in val_batches()]
    if not data:
        raise ValueError("no validation data: set data.val_fraction > 0 or data.val_path")
    depths = [*run.train.eval_depths, None] if depths is None else depths
    jit_eval = jax.jit(eval_step, static_argnums=(2,))
    results = {"step": step, "depths": {}}
    for depth in depths:
        rows = [jax.device_get(jit_eval(state.params, b, depth)) for b in data]
        r = {"loss": float(np.mean([x["loss"] for x in rows]))}
        r["ppl"] = float(math.exp(min(r["loss"], 50.0)))
        if "solver_iters" in rows[0]:
            r["solver_iters"] = float(np.mean([x["solver_iters"] for x in rows]))
        results["depths"]["full" if depth is None else str(depth)] = r
    _write_json_atomic(wd / "eval.json", results)
    return results
