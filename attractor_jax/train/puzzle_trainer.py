"""Training and evaluation of the puzzle reasoners (TRM, the Attractor reasoner) in the same trainer and CLI.

`attractor_jax.train.trainer.train` hands a run whose model is a reasoner (``TRMConfig``,
``AttractorReasonerConfig``) to `train_puzzles`; ``attractor-jax train --preset trm-sudoku-tiny --data DIR``
therefore trains on a built puzzle dataset (TRM/HRM layout, see `attractor_jax.data.puzzles`) with the LM
trainer's mesh, orbax checkpoints, metrics.jsonl/TensorBoard, progress bar and SIGTERM handling.

What differs from language modelling:

* one optimizer step is one ACT supervision step (TRM's deep supervision): the carry (z_H, z_L, step counts,
  the rows' current puzzles) lives in the train state, so a row that did not halt keeps its puzzle and a
  checkpoint resumes exactly; rows are sharded over the data-parallel devices, parameters by their logical axes;
* the optimizer is TRM's (`PuzzleOptimConfig`: AdamW + sparse SignSGD puzzle embeddings, warmup, EMA of the
  weights); ``train.grad_accum`` must be 1 (the carry is per row of the global batch);
* the model's ``seq_len``, ``vocab_size`` and ``num_puzzle_identifiers`` are taken from the dataset's
  ``dataset.json`` (as TRM does); the saved ``config.json`` records the values used;
* evaluation runs in eval mode (``model.predict``: all ``halt_max_steps`` supervision steps, no halting, no
  exploration) with the EMA weights on the ``test`` split, and reports exact accuracy (whole grid right),
  cell accuracy, accuracy after each supervision step, the copy-the-givens baseline, L_level applications
  (f-evaluations) per puzzle and, for the Attractor, the solver's iterations/residuals — at the full solve and
  at each ``train.eval_depths`` value of ``max_iter`` (0 removes the solver). Periodic evaluation
  (``train.eval_every``) reads ``train.eval_batches`` test batches; the final one and ``attractor-jax eval``
  read the whole test split. On an ARC dataset the full-depth evaluation adds pass@1/pass@2: every augmented
  variant's prediction is de-augmented and voted on (``attractor_jax.data.puzzles.arc_vote``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from attractor_jax.models import build_model, get_config
from attractor_jax.models.reasoner_losses import SUMMED_METRICS, summarize_act_metrics
from attractor_jax.train import sharding as shd
from attractor_jax.train.checkpoint import Checkpointer
from attractor_jax.train.rundir import (
    RunDirectory,
    check_step_memory,
    memory_hint,
    out_of_memory,
    read_json,
    write_json_atomic,
)
from attractor_jax.train.metrics import MetricsWriter
from attractor_jax.train.puzzle_optim import (
    PuzzleOptimConfig,
    PuzzleTrainState,
    ema_init,
    make_puzzle_optimizer,
    make_reasoner_eval_step,
    make_reasoner_train_step,
    summarize_eval,
)

__all__ = ["dataset_model_config", "evaluate_puzzles", "train_puzzles", "validate_puzzle_run"]


def _is_attractor(cfg) -> bool:
    return getattr(cfg, "arch", None) == "attractor_reasoner"


def dataset_model_config(model_cfg, data_path: str):
    """``model_cfg`` with ``seq_len``, ``vocab_size`` and ``num_puzzle_identifiers`` from the dataset's train
    split (TRM sizes its model from ``dataset.json`` the same way)."""
    from attractor_jax.data.puzzles import load_puzzle_metadata

    meta = load_puzzle_metadata(data_path, "train")
    changes = {k: getattr(meta, k) for k in ("seq_len", "vocab_size", "num_puzzle_identifiers")
               if getattr(model_cfg, k) != getattr(meta, k)}
    return get_config(model_cfg, **changes) if changes else model_cfg


def validate_puzzle_run(run, workdir=None) -> Any:
    """Check a reasoner run (and ``workdir``, when given) before anything is written; returns the run with the
    dataset's sizes applied."""
    from attractor_jax.data.puzzles import load_puzzle_metadata
    from attractor_jax.train.trainer import check_workdir

    if run.data.path is None:
        raise ValueError("data.path is not set: pass --data DIR (a built puzzle dataset; see `attractor-jax data`)")
    root = pathlib.Path(run.data.path).expanduser()
    for split in ("train", "test"):
        if not (root / split / "dataset.json").is_file():
            raise ValueError(f"data {str(root)!r} is not a built puzzle dataset: {split}/dataset.json is missing "
                             "(build one with `attractor-jax data sudoku|maze|arc ...`)")
    train_meta, test_meta = load_puzzle_metadata(root, "train"), load_puzzle_metadata(root, "test")
    if test_meta.seq_len != train_meta.seq_len:
        raise ValueError(f"data {str(root)!r}: train seq_len {train_meta.seq_len} != test seq_len {test_meta.seq_len}")
    if not isinstance(run.optim, PuzzleOptimConfig):
        raise ValueError(f"optim is {type(run.optim).__name__}; a reasoner run needs a PuzzleOptimConfig")
    if run.train.grad_accum != 1:
        raise ValueError(f"train.grad_accum={run.train.grad_accum} is not supported for puzzle reasoners (the "
                         "ACT carry belongs to the rows of one global batch); expected 1")
    model = dataset_model_config(run.model, str(root))
    if max(test_meta.vocab_size, train_meta.vocab_size) > model.vocab_size:
        raise ValueError(f"data {str(root)!r}: test vocab {test_meta.vocab_size} exceeds the train vocab "
                         f"{model.vocab_size}")
    run = dataclasses.replace(run, model=model)
    n_data = math.prod(v for k, v in shd.parse_mesh(run.train.mesh, jax.device_count()).items() if k != "tensor")
    if run.train.batch_size % n_data:
        raise ValueError(f"train.batch_size={run.train.batch_size} is not divisible by the {n_data} data-parallel "
                         f"devices of mesh {run.train.mesh!r}")
    # The periodic and final evaluation read the test split in batches of batch_size: fail now, not after training.
    _test_pipeline(run, run.train.batch_size)
    if run.train.dtype is not None:
        get_config(run.model, dtype=run.train.dtype)  # raises on an unknown dtype
    if workdir is not None:
        check_workdir(run, workdir)
    return run


# --------------------------------------------------------------------------------------------------------------


class _PuzzleSetup:
    """Model graph, optimizer, mesh, abstract state and shardings of a reasoner run."""

    def __init__(self, run, devices=None):
        self.run = run
        cfg = run.model if run.train.dtype is None else get_config(run.model, dtype=run.train.dtype)
        self.model_config = cfg
        self.mesh = shd.make_mesh(run.train.mesh, devices)
        abstract = nnx.eval_shape(lambda: build_model(cfg, seed=run.train.seed))
        self.graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
        self.optimizer = make_puzzle_optimizer(run.optim, total_steps=run.train.steps)
        self.use_ema = run.optim.ema_decay is not None
        b, length = run.train.batch_size, cfg.seq_len

        def init() -> PuzzleTrainState:
            model = build_model(cfg, seed=run.train.seed)
            _, params, buffers = nnx.split(model, nnx.Param, ...)
            return PuzzleTrainState(
                params=params, buffers=buffers, opt_state=self.optimizer.init(params),
                ema=ema_init(params) if self.use_ema else None,
                carry=model.initial_carry({"inputs": jnp.zeros((b, length), jnp.int32)}),
                step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(run.train.seed)))

        self.init = init
        self.abstract_state = jax.eval_shape(init)
        mesh, a = self.mesh, self.abstract_state
        rows = lambda x: NamedSharding(mesh, P(("data", "fsdp"), *([None] * (x.ndim - 1))))  # noqa: E731
        self.state_shardings = PuzzleTrainState(
            params=shd.state_shardings(a.params, mesh), buffers=shd.state_shardings(a.buffers, mesh),
            opt_state=shd.state_shardings(a.opt_state, mesh),
            ema=None if a.ema is None else shd.state_shardings(a.ema, mesh),
            carry=jax.tree.map(rows, a.carry), step=shd.replicated(mesh), rng=shd.replicated(mesh))
        self.batch_sharding = {k: shd.batch_sharding(mesh, n) for k, n in
                               (("inputs", 2), ("labels", 2), ("puzzle_identifiers", 1), ("mask", 1))}

    def abstract_sharded(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def put(self, batch: dict) -> dict:
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(self.batch_sharding[k], v) for k, v in batch.items()}
        return {k: jax.device_put(v, self.batch_sharding[k]) for k, v in batch.items()}

    def depths(self, depths=None) -> list[int | None]:
        """max_iter values to evaluate: the run's eval_depths + the full solve (Attractor), full only (TRM)."""
        if not _is_attractor(self.model_config):
            return [None]
        return [*self.run.train.eval_depths, None] if depths is None else list(depths)

    def solves_per_row(self) -> int:
        c = self.model_config
        return c.halt_max_steps * c.H_cycles


def _test_pipeline(run, batch_size: int):
    from attractor_jax.data.puzzles import make_puzzle_pipeline

    return make_puzzle_pipeline(run.data.path, "test", batch_size=batch_size, shuffle=False,
                                process_index=jax.process_index(), process_count=jax.process_count())


def _evaluate(ps: _PuzzleSetup, jit_eval, params, buffers, batches, depths) -> dict:
    """``{label: summary}`` over ``batches`` (already on device) for each max_iter in ``depths``."""
    out = {}
    for depth in depths:
        rows = [jax.device_get(jit_eval(params, buffers, b, depth)) for b in batches]
        out["full" if depth is None else str(depth)] = summarize_eval(rows, ps.solves_per_row())
    return out


def is_arc_dataset(path) -> bool:
    """An ARC dataset built by ``build_arc_dataset`` (its test truth file is present)."""
    return (pathlib.Path(path).expanduser() / "test_puzzles.json").is_file()


def _arc_eval(ps: _PuzzleSetup, params, buffers, batches, n_examples: int, dataset) -> dict:
    """ARC pass@1/pass@2 (``arc_vote``: de-augmented predictions of every variant, ranked by votes, ties by
    the last step's halting logit) at the full solve over the whole test split."""
    from jax.experimental import multihost_utils

    from attractor_jax.data.puzzles import arc_vote

    graphdef = ps.graphdef

    @jax.jit
    def predict(params, buffers, batch):
        out = nnx.merge(graphdef, params, buffers).predict(batch)
        return out["preds"], out["q_halt_logits"][-1]

    preds, scores = [], []
    for b in batches:
        p, q = predict(params, buffers, b)
        if jax.process_count() > 1:  # rows of a global batch are spread over the processes
            p, q = multihost_utils.process_allgather((p, q), tiled=True)
        preds.append(np.asarray(p))
        scores.append(np.asarray(q))
    preds = np.concatenate(preds)[:n_examples]  # the padded rows of the last batch come last
    scores = np.concatenate(scores)[:n_examples]
    return arc_vote(dataset, preds, scores)


def _flat_eval(res: dict) -> dict:
    """Scalars for metrics.jsonl: ``eval_exact_full``, ``eval_cell_0``, ``eval_nfe_full``, ..."""
    row = {}
    for label, r in res.items():
        for k in ("exact", "cell", "nfe", "solver_iters", "solver_residual", "copy_cell", "pass@1", "pass@2"):
            if k in r:
                row[f"eval_{k}_{label}"] = r[k]
    return row


def train_puzzles(run, workdir, *, stop_after: int | None = None,
                  on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) a reasoner ``run`` in ``workdir`` (module docstring). Returns a summary dict."""
    run = validate_puzzle_run(run, workdir)
    wd = pathlib.Path(workdir)
    ps = _PuzzleSetup(run)
    cfg = ps.model_config
    train_step = make_reasoner_train_step(ps.graphdef, ps.optimizer, loss_type=cfg.loss_type,
                                          ema_decay=run.optim.ema_decay)
    # Compile before anything is written, and refuse a step that cannot fit in device memory.
    b, length = run.train.batch_size, cfg.seq_len
    abstract_batch = {
        "inputs": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=ps.batch_sharding["inputs"]),
        "labels": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=ps.batch_sharding["labels"]),
        "puzzle_identifiers": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=ps.batch_sharding["puzzle_identifiers"]),
        "mask": jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=ps.batch_sharding["mask"]),
    }
    hint = memory_hint(run.train.batch_size, 1).replace(" or raise train.grad_accum (now 1, ", " (")
    devices = list(ps.mesh.devices.flat)
    with out_of_memory("train step", hint, devices=devices):
        jit_train = jax.jit(train_step, in_shardings=(ps.state_shardings, ps.batch_sharding),
                            out_shardings=(ps.state_shardings, None), donate_argnums=(0,)
                            ).lower(ps.abstract_sharded(), abstract_batch).compile()
    mem = check_step_memory(jit_train, devices, "train step", hint)
    jit_eval = jax.jit(make_reasoner_eval_step(ps.graphdef), static_argnums=(3,))
    with RunDirectory(wd).session(run.to_dict()), out_of_memory("train step", hint, mem["bytes_per_device"], devices):
        return _train_puzzles_loop(run, wd, ps, jit_train, jit_eval, stop_after, on_log)


def _train_puzzles_loop(run, wd, ps, jit_train, jit_eval, stop_after, on_log) -> dict:
    from attractor_jax.data.puzzles import make_puzzle_pipeline
    from attractor_jax.train.trainer import _Progress, close_run, install_sigterm, restore_or_init

    train_it = make_puzzle_pipeline(run.data.path, "train", batch_size=run.train.batch_size, seed=run.train.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    ckpt = Checkpointer(wd, keep=run.train.keep, async_save=run.train.async_checkpoint)
    start, state = restore_or_init(ckpt, ps.abstract_sharded(), train_it, ps.init, ps.state_shardings, wd)
    writer = MetricsWriter(wd, tensorboard=run.train.tensorboard)

    stop, old_handler = install_sigterm()

    periodic: list = []

    def eval_params():
        return state.ema if state.ema is not None else state.params

    def periodic_eval() -> dict:
        if not periodic:
            it = _test_pipeline(run, run.train.batch_size)
            for _, b in zip(range(run.train.eval_batches), it):
                periodic.append(ps.put(b))
        return _flat_eval(_evaluate(ps, jit_eval, eval_params(), state.buffers, periodic, ps.depths()))

    progress = _Progress(run.train.steps, start)
    last_t, last_step, summary, step = time.perf_counter(), start, {}, start
    acc = None
    try:
        end = run.train.steps if stop_after is None else min(run.train.steps, start + stop_after)
        for step in range(start + 1, end + 1):
            batch = ps.put(next(train_it))
            state, metrics = jit_train(state, batch)
            sums = {k: metrics[k] for k in ("count", *SUMMED_METRICS)}
            acc = sums if acc is None else jax.tree.map(jnp.add, acc, sums)
            if step == start + 1:
                jax.block_until_ready(metrics)
                last_t, last_step = time.perf_counter(), step
            if step % run.train.log_every == 0 or step == end:
                metrics = jax.device_get({**metrics, **acc})  # halted-row sums over the whole log interval
                acc = None
                now = time.perf_counter()
                rate = run.train.batch_size * (step - last_step) / (now - last_t) if step > last_step else float("nan")
                last_t, last_step = now, step
                row = {k: float(v) for k, v in summarize_act_metrics(metrics).items()}
                row["rows_per_s"] = rate  # rows (puzzle examples) advanced by one supervision step per second
                if run.train.eval_every and step % run.train.eval_every == 0:
                    row.update(periodic_eval())
                row = writer.write(step, row)
                summary = row
                if on_log:
                    on_log(row)
                progress.show(step, f"loss {row['loss']:.4f}  acc {row['accuracy']:.3f}  exact "
                                    f"{row['exact_accuracy']:.3f}  {rate:,.0f} rows/s"
                              + (f"  iters {row['solver_iters']:.1f}" if "solver_iters" in row else ""))
            if run.train.save_every and step % run.train.save_every == 0:
                ckpt.save(step, state, train_it, {"step": step, "config": run.to_dict(), "time": time.time()})
            if stop["signal"] is not None:
                print(f"\nreceived signal {stop['signal']}: checkpointing step {step} and stopping")
                break
        ckpt.save(step, state, train_it, {"step": step, "config": run.to_dict(), "time": time.time()}, force=True)
        if stop["signal"] is None and step == run.train.steps:
            progress.close()
            test_it = _test_pipeline(run, run.train.batch_size)
            test_batches = [ps.put(b) for b in test_it]
            res = _evaluate(ps, jit_eval, eval_params(), state.buffers, test_batches, ps.depths())
            if is_arc_dataset(run.data.path):
                res["full"].update(_arc_eval(ps, eval_params(), state.buffers, test_batches, test_it.num_examples,
                                             run.data.path))
            final = _flat_eval(res)
            writer.write(step, final)
            summary.update(final)
            write_json_atomic(wd / "eval.json", {"step": step, "ema": state.ema is not None, "depths": res})
    finally:
        close_run(progress, ckpt, writer, old_handler)
    summary["step"] = step
    return summary


def evaluate_puzzles(run, workdir, depths: list[int | None] | None = None, batches: int | None = None) -> dict:
    """Evaluate the latest checkpoint of a reasoner run on its test split (all of it unless ``batches``) at
    the given ``max_iter`` values (None = full; default: the run's eval_depths + full). Writes eval.json."""
    wd = pathlib.Path(workdir)
    ps = _PuzzleSetup(run)
    if depths is not None and not _is_attractor(ps.model_config) and any(d is not None for d in depths):
        raise ValueError(f"--max-iter {depths}: TRM has no solver; only 'full' applies")
    ckpt = Checkpointer(wd, keep=run.train.keep)
    restored = ckpt.restore(ps.abstract_sharded(), None)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"workdir {str(wd)!r} has no checkpoint")
    step, state, _ = restored
    it = _test_pipeline(run, run.train.batch_size)
    data = [ps.put(b) for _, b in zip(range(batches or it.num_batches), it)]
    jit_eval = jax.jit(make_reasoner_eval_step(ps.graphdef), static_argnums=(3,))
    params = state.ema if state.ema is not None else state.params
    res = _evaluate(ps, jit_eval, params, state.buffers, data, ps.depths(depths))
    if is_arc_dataset(run.data.path) and "full" in res and batches is None:
        res["full"].update(_arc_eval(ps, params, state.buffers, data, it.num_examples, run.data.path))
    out = {"step": step, "ema": state.ema is not None, "depths": res}
    write_json_atomic(wd / "eval.json", out)
    return out


def format_eval(res: dict) -> str:
    """A table of a puzzle evaluation (``evaluate_puzzles``/eval.json)."""
    lines = [f"step {res['step']}: test split, {'EMA' if res.get('ema') else 'live'} weights, eval mode"]
    for label, r in res["depths"].items():
        line = (f"  max_iter={label:>4s}  exact {r['exact']:.4f}  cell {r['cell']:.4f}  "
                f"f-evals/puzzle {r['nfe']:.1f}")
        if "solver_iters" in r:
            line += f"  solver iters {r['solver_iters']:.2f}  residual {r['solver_residual']:.2e}"
        if "pass@1" in r:
            line += f"  ARC pass@1 {r['pass@1']:.4f}  pass@2 {r['pass@2']:.4f} ({r['tasks']} tasks)"
        lines.append(line)
    first = next(iter(res["depths"].values()), None)
    if first is not None:
        lines.append(f"  ({first['count']} puzzles; copy-the-givens baseline cell accuracy {first['copy_cell']:.4f})")
    return "\n".join(lines)


def load_eval(workdir) -> dict:
    return read_json(pathlib.Path(workdir) / "eval.json", "evaluation")
