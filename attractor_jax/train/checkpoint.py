"""Orbax checkpoints of a training run: model, optimizer state, step, RNG, data-iterator state and config.

Every checkpoint is one `CheckpointManager` step with three items:

* ``state``  the `TrainState` pytree (parameters, optimizer state, step, RNG key), saved asynchronously;
* ``data``   the grain iterator position (`grain.checkpoint.CheckpointSave`), so resumption sees the same batches;
* ``meta``   JSON: the run config, the step and the wall-clock time.

Orbax finalises a step only after every item is written (temp directory, then rename), so a run killed
mid-save leaves the previous checkpoint as the latest. A finalised but damaged step (a truncated file) fails to
restore; `Checkpointer.restore` then warns and falls back to the next older step.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save/restore `TrainState` + data iterator + JSON metadata under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"checkpoint keep={keep} must be >= 1")
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any, meta: dict, *, force: bool = False) -> bool:
        """Start an asynchronous save (returns at once); a step already saved is skipped."""
        if step in self.manager.all_steps():
            return False
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any, dict] | None:
        """Restore the newest readable step into ``abstract_state``'s structure/shardings and ``data_iter``.

        Returns ``(step, state, meta)`` or None when there is no checkpoint. A damaged newest step is skipped
        with a warning (and the next older one restored).
        """
        for step in reversed(self.steps()):
            args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
            if data_iter is not None:
                args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(**args))
            except Exception as exc:  # noqa: BLE001 - any failure to read a step means: try the previous one
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the previous one",
                            step, self.directory, type(exc).__name__, str(exc).splitlines()[0][:200])
                continue
            return step, out.state, dict(out.meta)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
