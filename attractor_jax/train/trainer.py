"""The sharded, resumable training loop, one for every task.

A run is a `RunConfig` (model, train, optim, data) and a work directory; a `Task` (`attractor_jax.train.tasks`:
language modelling or a puzzle reasoner) supplies what differs. The loop is nanodo-sized:

    task = make_task(run)                      # everything validated before anything is written
    step = task's train step, compiled         # explicit in/out shardings, donated state; memory checked
    state = restore or task.init()             # sharded by logical-axis rules over the (data, fsdp, tensor) mesh
    for step in range(start, steps):
        state, metrics = step(state, batch)
        log / evaluate / checkpoint at their intervals
    checkpoint at the end (and on SIGTERM); the task's final evaluation

Train and eval steps are pure functions over the split NNX state (``nnx.split`` once; ``nnx.merge`` inside the
step), as in Flax's gemma example. Everything random comes from ``train.seed``: parameters from the seed, the
per-step model key from ``fold_in(key(seed), step)``, the data order from the pipeline's seed and position — so
a run stopped at step k and resumed ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax

from attractor_jax.models import check_depths, is_reasoner
from attractor_jax.progress import Progress
from attractor_jax.train.checkpoint import Checkpointer
from attractor_jax.train.config import DataConfig, RunConfig, TrainConfig, apply_sets
from attractor_jax.train.metrics import MetricsWriter
from attractor_jax.train.rundir import RunDirectory, check_step_memory, out_of_memory, write_json_atomic
from attractor_jax.train.tasks import Task, make_task
from attractor_jax.train.tasks.lm import TrainState, cross_entropy, data_pipelines, make_steps, setup

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "TrainState", "apply_sets", "cross_entropy",
           "data_pipelines", "evaluate", "load_model", "make_steps", "read_run", "restore_state", "setup",
           "train"]


def restore_or_init(ckpt: Checkpointer, task: Task, data_iter: Any, workdir: pathlib.Path) -> tuple[int, Any]:
    """``(start_step, state)``: the newest intact checkpoint (and the data position, restored into
    ``data_iter``), or a fresh sharded ``task.init()`` at step 0. metrics.jsonl is cut back to the start step."""
    restored = ckpt.restore(task.abstract_sharded_state(), data_iter, discard_damaged=True)
    if restored is None:
        MetricsWriter.truncate_after(workdir, -1)
        return 0, jax.jit(task.init, out_shardings=task.state_shardings)()
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


def compile_train_step(task: Task):
    """The task's train step compiled ahead of the first batch; refused (`OutOfMemoryError`) when its
    compiled memory exceeds what the devices have. Returns ``(compiled, memory report)``."""
    devices = list(task.mesh.devices.flat)
    with out_of_memory("train step", task.memory_hint(), devices=devices):
        compiled = task.lower_train_step().compile()
    return compiled, check_step_memory(compiled, devices, "train step", task.memory_hint())


def train(run: RunConfig, workdir: str | os.PathLike, *, stop_after: int | None = None,
          on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) ``run`` in ``workdir``. Returns a summary dict (the last log row, the final
    evaluation and ``step``).

    ``stop_after`` ends the loop after that many steps of this invocation (with a checkpoint), as a pre-emption
    would; tests use it to interrupt and resume.
    """
    wd = pathlib.Path(workdir)
    task = make_task(run)
    RunDirectory(wd).check(task.run.to_dict())
    step_fn, mem = compile_train_step(task)  # before anything is written
    with RunDirectory(wd).session(task.run.to_dict()), \
            out_of_memory("train step", task.memory_hint(), mem["bytes_per_device"], list(task.mesh.devices.flat)):
        return _loop(task, step_fn, wd, stop_after, on_log)


def _loop(task: Task, step_fn, wd: pathlib.Path, stop_after: int | None, on_log) -> dict:
    t = task.run.train
    train_it = task.train_pipeline()
    ckpt = Checkpointer(wd, keep=t.keep, async_save=t.async_checkpoint)
    start, state = restore_or_init(ckpt, task, train_it, wd)
    writer = MetricsWriter(wd, tensorboard=t.tensorboard)
    stop, old_handler = install_sigterm()
    progress = Progress(t.steps, "steps", start=start)
    last_t, last_step, summary, step, acc = time.perf_counter(), start, {}, start, None
    alarmed = False  # the solver alarm is printed once per invocation

    def meta(step: int) -> dict:
        return {"step": step, "config": task.run.to_dict(), "time": time.time()}

    try:
        end = t.steps if stop_after is None else min(t.steps, start + stop_after)
        for step in range(start + 1, end + 1):
            state, metrics = step_fn(state, task.put(next(train_it)))
            acc = task.accumulate(acc, metrics)
            if step == start + 1:  # exclude compilation from the throughput figures
                jax.block_until_ready(metrics)
                last_t, last_step = time.perf_counter(), step
            if step % t.log_every == 0 or step == end:
                now = time.perf_counter()
                rate = task.units_per_step() * (step - last_step) / (now - last_t) if step > last_step \
                    else float("nan")
                last_t, last_step = now, step
                row = task.log_row(metrics, acc, rate)
                acc = None
                if t.eval_every and step % t.eval_every == 0:
                    row.update(task.periodic_eval(state))
                text = task.progress_text(row)  # before writing, which turns NaN into a string
                alarm = None if alarmed else solver_alarm({"step": step, **row}, task.run.model)
                summary = row = writer.write(step, row)
                if on_log:
                    on_log(row)
                progress.show(step, text)
                if alarm:
                    print(f"\n{alarm}", file=sys.stderr, flush=True)
                    alarmed = True
            if t.save_every and step % t.save_every == 0:
                ckpt.save(step, state, train_it, meta(step))
            if stop["signal"] is not None:
                print(f"\nreceived signal {stop['signal']}: checkpointing step {step} and stopping")
                break
        ckpt.save(step, state, train_it, meta(step), force=True)
        progress.close()
        final = task.final_eval(state, step, stop["signal"] is None and step == t.steps, wd)
        if final:
            writer.write(step, final)
            summary.update(final)
    finally:
        progress.close()
        ckpt.close()
        writer.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    summary["step"] = step
    return summary


def solver_alarm(row: dict, model_config: Any = None) -> str | None:
    """A warning when fewer than half of the solves in a logged training row converged (``solver_converged`` <
    0.5), else None. A solver that stops converging during training means the map stopped contracting: the
    returned state is then not a fixed point, each step pays ``max_iter`` evaluations, and the implicit gradient
    no longer describes the forward (seen on 10×10 mazes, where the Attractor reasoner went from 100 % to 1 %
    converged solves). The trainer prints it once per invocation."""
    conv = row.get("solver_converged")
    if conv is None or not conv < 0.5:
        return None
    remedy = ("a Jacobian penalty (jacobian_weight > 0), a smaller learning rate, or a larger max_iter"
              if hasattr(model_config, "jacobian_weight") else "a smaller learning rate or a larger max_iter")
    return (f"warning: at step {row.get('step')} only {conv:.0%} of the solves converged (mean "
            f"{row.get('solver_iters', float('nan')):.1f} iterations, max {row.get('solver_iters_max', float('nan')):.0f}; "
            f"mean relative residual {row.get('solver_residual', float('nan')):.1e}): the map is not contracting, "
            f"so the solved state is not a fixed point. Consider {remedy}.")


def read_run(workdir: str | os.PathLike) -> RunConfig:
    """The `RunConfig` recorded in a run directory's ``config.json``."""
    return RunConfig.from_dict(RunDirectory(pathlib.Path(workdir)).read_config())


def restore_state(workdir: str | os.PathLike, task: Task | None = None) -> tuple[Task, int, Any]:
    """``(task, step, state)`` of the newest intact checkpoint in a run directory (``task`` defaults to the
    one the run's own config.json describes)."""
    wd = pathlib.Path(workdir)
    if task is None:
        task = make_task(read_run(wd), validate=False)
    ckpt = Checkpointer(wd, keep=task.run.train.keep)
    try:
        restored = ckpt.restore(task.abstract_sharded_state(), None)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"workdir {str(wd)!r} has no checkpoint")
    step, state, _ = restored
    return task, step, state


def load_model(workdir: str | os.PathLike, run: RunConfig | None = None) -> tuple[Any, RunConfig, int]:
    """``(model, run, step)``: the NNX model of a run directory's newest intact checkpoint, with the weights
    evaluation uses (the EMA for reasoners that keep one), for generation, evaluation and export. ``run``: the
    directory's `RunConfig` when the caller has read it already (default: `read_run`)."""
    from flax import nnx

    task, step, state = restore_state(workdir, make_task(run or read_run(workdir), validate=False))
    return nnx.merge(task.graphdef, state.eval_params), task.run, step


def evaluate(workdir: str | os.PathLike, depths: list[int | None] | None = None, data_path: str | None = None,
             batches: int | None = None, run: RunConfig | None = None, write: bool = True) -> dict:
    """Evaluate the newest intact checkpoint in ``workdir`` at the given solver depths (None = full; default:
    the run's ``eval_depths`` and the full solve) on the run's validation/test data or on ``data_path``; writes
    (unless ``write`` is false) and returns ``eval.json``. Language models report the loss, puzzle reasoners
    accuracies (see the tasks). ``run``: the directory's `RunConfig` when the caller has read it already
    (default: `read_run`), or one changed only where the parameters do not change (e.g. the solver's tolerance
    or the reasoner's number of supervision steps, for test-time scaling)."""
    wd = pathlib.Path(workdir)
    run = read_run(wd) if run is None else run
    if data_path is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=data_path))
    if depths is not None and not is_reasoner(run.model):
        depths = check_depths(run.model, depths)  # a GPT has only the full depth
    task = make_task(run, validate=data_path is not None)  # other data is checked, and must fit the model
    if data_path is not None:
        if task.run.model != run.model:
            raise ValueError(f"data {data_path!r} does not match the run's model (seq_len, vocab or puzzle "
                             "identifiers differ)")
    _, step, state = restore_state(wd, task)
    results = task.evaluate(state, step, depths, batches)
    if write:
        write_json_atomic(wd / "eval.json", results)
    return results
