"""The `Task` base class (see `attractor_jax.train.tasks`)."""

from __future__ import annotations

from typing import Any, Callable

import jax

from attractor_jax.train.sharding import under_mesh


class Task:
    """The parts of a run that depend on what is trained. Subclasses set, in ``__init__``: ``run`` (validated,
    possibly with sizes taken from the data), ``model_config`` (the run's dtype applied), ``mesh``,
    ``graphdef``, ``init`` (a function building a fresh state), ``abstract_state``, ``state_shardings``,
    ``batch_shardings`` and ``batch_layout`` (``{name: (shape, dtype)}`` of one global batch)."""

    kind: str = ""  # "lm" | "puzzle"
    rate_key: str = ""  # metrics.jsonl name of the throughput figure
    run: Any
    model_config: Any
    mesh: jax.sharding.Mesh
    graphdef: Any
    init: Callable[[], Any]
    abstract_state: Any
    state_shardings: Any
    batch_shardings: Any
    batch_layout: dict

    # ---- the step ---------------------------------------------------------------------------------------------

    def train_step(self) -> Callable:
        """The pure ``train_step(state, batch) -> (state, metrics)``."""
        raise NotImplementedError

    def jit_train_step(self):
        """The train step jitted with explicit in/out shardings and the state donated."""
        return jax.jit(under_mesh(self.train_step(), self.mesh), donate_argnums=(0,),
                       in_shardings=(self.state_shardings, self.batch_shardings),
                       out_shardings=(self.state_shardings, None))

    def abstract_sharded_state(self) -> Any:
        return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      self.abstract_state, self.state_shardings)

    def abstract_batch(self) -> dict:
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_shardings[k])
                for k, (shape, dtype) in self.batch_layout.items()}

    def lower_train_step(self):
        return self.jit_train_step().lower(self.abstract_sharded_state(), self.abstract_batch())

    def memory_hint(self) -> str:
        """What to change when the step does not fit in memory."""
        return f"lower train.batch_size (now {self.run.train.batch_size})"

    def put(self, batch: dict) -> dict:
        """A host batch (this process's rows) as global arrays with the batch shardings."""
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v) for k, v in batch.items()}
        return {k: jax.device_put(v, self.batch_shardings[k]) for k, v in batch.items()}

    # ---- the loop's hooks -------------------------------------------------------------------------------------

    def train_pipeline(self):
        """The training batches (a checkpointable grain iterator)."""
        raise NotImplementedError

    def units_per_step(self) -> int:
        """What ``rate_key`` counts per step (tokens, rows)."""
        raise NotImplementedError

    def accumulate(self, acc: Any, metrics: dict) -> Any:
        """Fold a step's metrics into what the next log row summarises (default: nothing to accumulate)."""
        return None

    def log_row(self, metrics: dict, acc: Any, rate: float) -> dict:
        """The metrics.jsonl row of a logged step from its (fetched) metrics."""
        raise NotImplementedError

    def progress_text(self, row: dict) -> str:
        raise NotImplementedError

    def periodic_eval(self, state: Any) -> dict:
        """Scalars added to a log row every ``train.eval_every`` steps."""
        raise NotImplementedError

    def final_eval(self, state: Any, step: int, finished: bool, workdir) -> dict:
        """Scalars written after the last step (``finished``: the run reached ``train.steps``)."""
        raise NotImplementedError

    def evaluate(self, state: Any, step: int, depths: list | None, batches: int | None) -> dict:
        """The evaluation of a restored checkpoint (``attractor-jax eval``; written to eval.json)."""
        raise NotImplementedError
