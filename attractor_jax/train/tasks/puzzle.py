"""The puzzle task: training and evaluation of the puzzle reasoners (TRM, the Attractor reasoner) in the same
loop and CLI as the language models.

`attractor_jax.train.trainer.train` runs a reasoner run (``TRMConfig``, ``AttractorReasonerConfig``) through
`PuzzleTask`; ``attractor-jax train --preset trm-sudoku-tiny --data DIR`` therefore trains on a built puzzle
dataset (TRM/HRM layout, see `attractor_jax.data.puzzles`) with the LM trainer's mesh, orbax checkpoints,
metrics.jsonl/TensorBoard, progress bar and SIGTERM handling.

What differs from language modelling:

* one optimizer step is one ACT supervision step (TRM's deep supervision): the carry (z_H, z_L, step counts,
  the rows' current puzzles) lives in the train state, so a row that did not halt keeps its puzzle and a
  checkpoint resumes exactly; rows are sharded over the data-parallel devices, parameters by their logical axes;
* the optimizer is TRM's (``OptimConfig(optimizer="trm")``: AdamW + sparse SignSGD puzzle embeddings, warmup, EMA
  of the weights); ``train.grad_accum`` must be 1 (the carry is per row of the global batch);
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attractor_jax.models import build_model, get_config
from attractor_jax.models.registry import depth_label
from attractor_jax.models.reasoner_losses import SUMMED_METRICS, summarize_act_metrics
import attractor_jax.train.sharding as shd
from attractor_jax.train.optim import make_optimizer
from attractor_jax.train.puzzle_optim import (PuzzleTrainState, init_train_state, make_reasoner_eval_step,
                                              make_reasoner_train_step, summarize_eval)
from attractor_jax.train.rundir import write_json_atomic
from attractor_jax.train.tasks.base import Task

__all__ = ["PuzzleTask", "dataset_model_config", "format_eval", "is_arc_dataset", "validate_puzzle_run"]


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


def validate_puzzle_run(run) -> Any:
    """Check a reasoner run before anything is written; returns the run with the dataset's sizes applied."""
    from attractor_jax.data.puzzles import load_puzzle_metadata

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
    if run.train.grad_accum != 1:
        raise ValueError(f"train.grad_accum={run.train.grad_accum} is not supported for puzzle reasoners (the "
                         "ACT carry belongs to the rows of one global batch); expected 1")
    model = dataset_model_config(run.model, str(root))
    if max(test_meta.vocab_size, train_meta.vocab_size) > model.vocab_size:
        raise ValueError(f"data {str(root)!r}: test vocab {test_meta.vocab_size} exceeds the train vocab "
                         f"{model.vocab_size}")
    run = dataclasses.replace(run, model=model)
    shd.check_batch(run.train.batch_size, 1, run.train.mesh, jax.device_count())
    # The periodic and final evaluation read the test split in batches of batch_size: fail now, not after training.
    _test_pipeline(run, run.train.batch_size)
    run.model_config()  # raises on an unknown dtype
    return run


class PuzzleTask(Task):
    """A puzzle reasoner on a built puzzle dataset (module docstring)."""

    kind = "puzzle"
    rate_key = "rows_per_s"  # rows (puzzle examples) advanced by one supervision step per second

    def __init__(self, run, *, devices=None, validate: bool = True):
        if validate:
            run = validate_puzzle_run(run)
        self.run = run
        self.model_config = cfg = run.model_config()
        self.mesh = shd.make_mesh(run.train.mesh, devices)
        abstract = nnx.eval_shape(lambda: build_model(cfg, seed=run.train.seed))
        self.graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
        self.optimizer = make_optimizer(run.optim, abstract_params, cfg, total_steps=run.train.steps)
        use_ema = run.optim.ema_decay is not None
        b, length = run.train.batch_size, cfg.seq_len

        def init() -> PuzzleTrainState:
            return init_train_state(build_model(cfg, seed=run.train.seed), self.optimizer,
                                    {"inputs": jnp.zeros((b, length), jnp.int32)}, seed=run.train.seed,
                                    ema=use_ema)[1]

        self.init = init
        self.abstract_state = a = jax.eval_shape(init)
        mesh = self.mesh
        self.state_shardings = PuzzleTrainState(
            params=shd.state_shardings(a.params, mesh), buffers=shd.state_shardings(a.buffers, mesh),
            opt_state=shd.state_shardings(a.opt_state, mesh),
            ema=None if a.ema is None else shd.state_shardings(a.ema, mesh),
            carry=jax.tree.map(lambda x: shd.batch_sharding(mesh, x.ndim), a.carry), step=shd.replicated(mesh),
            rng=shd.replicated(mesh))
        self.batch_layout = {"inputs": ((b, length), jnp.int32), "labels": ((b, length), jnp.int32),
                             "puzzle_identifiers": ((b,), jnp.int32), "mask": ((b,), jnp.bool_)}
        self.batch_shardings = {k: shd.batch_sharding(mesh, len(s)) for k, (s, _) in self.batch_layout.items()}
        self._eval = jax.jit(shd.under_mesh(make_reasoner_eval_step(self.graphdef), mesh), static_argnums=(3,))
        self._periodic: list = []

    def train_step(self):
        return make_reasoner_train_step(self.graphdef, self.optimizer, loss_type=self.model_config.loss_type,
                                        ema_decay=self.run.optim.ema_decay)

    def depths(self, depths=None) -> list[int | None]:
        """max_iter values to evaluate: the run's eval_depths + the full solve (Attractor), full only (TRM)."""
        if not _is_attractor(self.model_config):
            return [None]
        return [*self.run.train.eval_depths, None] if depths is None else list(depths)

    def solves_per_row(self) -> int:
        c = self.model_config
        return c.halt_max_steps * c.H_cycles

    def train_pipeline(self):
        from attractor_jax.data.puzzles import make_puzzle_pipeline

        t = self.run.train
        return make_puzzle_pipeline(self.run.data.path, "train", batch_size=t.batch_size, seed=t.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count())

    def units_per_step(self) -> int:
        return self.run.train.batch_size

    def accumulate(self, acc, metrics: dict):
        sums = {k: metrics[k] for k in ("count", *SUMMED_METRICS)}
        return sums if acc is None else jax.tree.map(jnp.add, acc, sums)

    def log_row(self, metrics: dict, acc, rate: float) -> dict:
        metrics = jax.device_get({**metrics, **acc})  # halted-row sums over the whole log interval
        row = {k: float(v) for k, v in summarize_act_metrics(metrics).items()}
        row["rows_per_s"] = rate
        return row

    def progress_text(self, row: dict) -> str:
        rate = row["rows_per_s"]  # NaN at the first logged step (it holds the compile)
        return (f"loss {row['loss']:.4f}  acc {row['accuracy']:.3f}  exact {row['exact_accuracy']:.3f}"
                + (f"  {rate:,.0f} rows/s" if math.isfinite(rate) else "")
                + (f"  iters {row['solver_iters']:.1f}" if "solver_iters" in row else ""))

    def _evaluate(self, params, buffers, batches, depths) -> dict:
        """``{label: summary}`` over ``batches`` (already on device) for each max_iter in ``depths``."""
        out = {}
        for depth in depths:
            rows = [jax.device_get(self._eval(params, buffers, b, depth)) for b in batches]
            out[depth_label(depth)] = summarize_eval(rows, self.solves_per_row())
        return out

    def periodic_eval(self, state) -> dict:
        if not self._periodic:
            it = _test_pipeline(self.run, self.run.train.batch_size)
            self._periodic.extend(self.put(b) for _, b in zip(range(self.run.train.eval_batches), it))
        return _flat_eval(self._evaluate(state.eval_params, state.buffers, self._periodic, self.depths()))

    def final_eval(self, state, step: int, finished: bool, workdir) -> dict:
        if not finished:
            return {}
        res = self.evaluate(state, step, None, None)
        write_json_atomic(pathlib.Path(workdir) / "eval.json", res)
        return _flat_eval(res["depths"])

    def evaluate(self, state, step: int, depths, batches) -> dict:
        if depths is not None and not _is_attractor(self.model_config) and any(d is not None for d in depths):
            raise ValueError(f"--max-iter {depths}: TRM has no solver; only 'full' applies")
        it = _test_pipeline(self.run, self.run.train.batch_size)
        data = [self.put(b) for _, b in zip(range(batches or it.num_batches), it)]
        params = state.eval_params
        res = self._evaluate(params, state.buffers, data, self.depths(depths))
        if is_arc_dataset(self.run.data.path) and "full" in res and batches is None:
            res["full"].update(_arc_eval(self.graphdef, params, state.buffers, data, it.num_examples,
                                         self.run.data.path))
        return {"step": step, "ema": state.ema is not None, "depths": res}


def _test_pipeline(run, batch_size: int):
    from attractor_jax.data.puzzles import make_puzzle_pipeline

    return make_puzzle_pipeline(run.data.path, "test", batch_size=batch_size, shuffle=False,
                                process_index=jax.process_index(), process_count=jax.process_count())


def is_arc_dataset(path) -> bool:
    """An ARC dataset built by ``build_arc_dataset`` (its test truth file is present)."""
    return (pathlib.Path(path).expanduser() / "test_puzzles.json").is_file()


def _arc_eval(graphdef, params, buffers, batches, n_examples: int, dataset) -> dict:
    """ARC pass@1/pass@2 (``arc_vote``: de-augmented predictions of every variant, ranked by votes, ties by
    the last step's halting logit) at the full solve over the whole test split."""
    from jax.experimental import multihost_utils

    from attractor_jax.data.puzzles import arc_vote

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
