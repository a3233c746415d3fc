"""Tasks: what differs between training a language model and a puzzle reasoner, behind one loop.

The loop (`attractor_jax.train.trainer`) owns what every run shares: the run directory, compilation and the
memory check, restore-or-init, the step loop, logging, periodic evaluation, checkpoints and SIGTERM. A `Task`
supplies the rest::

    trainer.train(run, workdir)                     trainer.evaluate(workdir)
        task = make_task(run)  ─────────────┐           task = make_task(run, validate=False)
        step = task.compile_train_step()    │           state = restore(task.abstract_sharded_state())
        state = restore or task.init()      │           task.evaluate(state, step, depths, batches)
        for each step:                      │
            state, m = step(state, task.put(next(it)))       ┌───────── Task ─────────────────────────┐
            task.accumulate / task.log_row / periodic_eval   │ LMTask (tasks/lm.py)                   │
        checkpoint; task.final_eval                          │ PuzzleTask (tasks/puzzle.py)           │
                                                             └────────────────────────────────────────┘

`Task.jit_train_step` is the one place where the step gets its in/out shardings and donation; the loop and the
ahead-of-time pod check (`attractor_jax.train.aot`) both use it.
"""

from __future__ import annotations

from attractor_jax.models.registry import is_reasoner
from attractor_jax.train.tasks.base import Task
from attractor_jax.train.tasks.lm import LMTask
from attractor_jax.train.tasks.puzzle import PuzzleTask


def make_task(run, *, devices=None, validate: bool = True) -> Task:
    """The task of ``run``: a `PuzzleTask` for reasoner models, an `LMTask` otherwise. With ``validate``,
    everything that can be checked before a run writes anything is checked (data, sizes, mesh, dtype)."""
    if is_reasoner(run.model):
        return PuzzleTask(run, devices=devices, validate=validate)
    return LMTask(run, devices=devices, validate=validate)


__all__ = ["LMTask", "PuzzleTask", "Task", "make_task"]
