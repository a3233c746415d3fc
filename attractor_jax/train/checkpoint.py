"""Orbax checkpoints of a training run: model, optimizer state, step, RNG, data-iterator state and config.

Every checkpoint is one `CheckpointManager` step with three items:

* ``state``  the `TrainState` pytree (parameters, optimizer state, step, RNG key), saved asynchronously;
* ``data``   the grain iterator position (`grain.checkpoint.CheckpointSave`), so resumption sees the same batches;
* ``meta``   JSON: the run config, the step, the wall-clock time and a content checksum of every array of
  ``state`` (`tree_checksums`).

Guarantees (each tested in ``tests/train/test_reliability.py``):

* **Atomic steps.** Orbax finalises a step only after every item is written (temporary folder, then rename), so
  a run killed mid-save leaves the previous checkpoint as the latest.
* **Checksums.** On restore, every array's checksum is recomputed and compared with the one saved in ``meta``.
  A step whose arrays changed on disk (bit rot, a partial overwrite) is damaged, like one that cannot be read.
* **Fallback.** A damaged step is reported in one warning line and the next older step is restored. When
  training resumes (``discard_damaged=True``) the damaged newer steps are deleted, so they are saved afresh when
  the run reaches them again. If steps exist but none is readable, restore raises instead of starting over.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# --------------------------------------------------------------------------------------------------------------
# Content checksums: computed on device, for the logical (global) array, so independent of sharding.


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as a flat uint32 vector (narrower types widened, 64-bit types split in two)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
    word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}.get(x.dtype.itemsize)  # 8: [..., 2] words
    if word is None:
        raise TypeError(f"checkpoint checksum: unsupported dtype {x.dtype}")
    return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32).reshape(-1)


def _checksum(x: jax.Array) -> jax.Array:
    """Two position-weighted sums of the words modulo 2**32. Integer sums wrap exactly, so the result does not
    depend on reduction order or sharding. Changing any single word changes the first sum (its weight is odd)."""
    w = _words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    m1 = (i * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)
    h = w ^ (w >> jnp.uint32(15))
    h = h * jnp.uint32(0x2C1B3C6D)
    h = h ^ (h >> jnp.uint32(12))
    s1 = jnp.sum(w * m1, dtype=jnp.uint32)
    s2 = jnp.sum(h * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    return jnp.stack([s1, s2, jnp.uint32(w.shape[0] & 0xFFFFFFFF)])


@jax.jit
def _checksums(leaves: list) -> list:
    return [_checksum(x) for x in leaves]


def tree_checksums(tree: Any) -> dict[str, str]:
    """``{leaf path: hex checksum}`` of every array leaf of ``tree`` (computed on device; one host transfer)."""
    paths, leaves = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, (jax.Array, np.ndarray)) and leaf.dtype != jax.dtypes.float0:
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            paths.append(jax.tree_util.keystr(path))
            leaves.append(leaf)
    sums = jax.device_get(_checksums(leaves)) if leaves else []
    return {p: "".join(f"{int(v):08x}" for v in np.asarray(s)) for p, s in zip(paths, sums)}


class CheckpointDamaged(Exception):
    """A finalised step whose content does not match its saved checksums."""


def _verify(state: Any, meta: dict) -> None:
    saved = meta.get("checksums")
    if saved is None:
        return  # written before checksums existed: nothing to verify against
    got = tree_checksums(state)
    bad = sorted(k for k in set(saved) | set(got) if saved.get(k) != got.get(k))
    if bad:
        raise CheckpointDamaged(f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:3])}"
                                + (" ..." if len(bad) > 3 else ""))


def _reason(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


class _DropEventLoopClosed(logging.Filter):
    """Orbax/tensorstore background tasks of a failed restore log 'Event loop is closed' tracebacks; one warning
    line says everything, so those records are dropped while restoring."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return "Event loop is closed" not in text


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
        """Start an asynchronous save (returns at once; the checksums are computed first, on device); a step
        already saved is skipped."""
        if step in self.manager.all_steps():
            return False
        meta = dict(meta, checksums=tree_checksums(state))
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, abstract_state: Any, data_iter: Any, *, discard_damaged: bool = False
                ) -> tuple[int, Any, dict] | None:
        """Restore the newest intact step into ``abstract_state``'s structure/shardings and ``data_iter``.

        Returns ``(step, state, meta)``, or None when there is no checkpoint. A damaged step (unreadable, or its
        arrays fail their checksums) is reported in one warning line and the next older one is tried; with
        ``discard_damaged`` the damaged steps newer than the one restored are deleted (a resumed run saves them
        afresh). Raises ValueError when steps exist but none is intact.
        """
        damaged: list[tuple[int, str]] = []
        steps = self.steps()
        drop = _DropEventLoopClosed()
        loggers = [logging.getLogger(), logging.getLogger("asyncio"), logging.getLogger("absl")]
        for lg in loggers:
            lg.addFilter(drop)
        try:
            for step in reversed(steps):
                args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
                if data_iter is not None and (self.directory / str(step) / "data").exists():
                    # (an imported model's checkpoint has no data position: its data starts at the beginning)
                    args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
                try:
                    out = self.manager.restore(step, args=ocp.args.Composite(**args))
                    _verify(out.state, dict(out.meta))
                except Exception as exc:  # noqa: BLE001 - any failure to read a step means: try the previous one
                    reason = _reason(exc)
                    damaged.append((step, reason))
                    print(f"warning: checkpoint step {step} in {self.directory} is damaged ({reason}); "
                          "falling back to the previous one", file=sys.stderr)
                    continue
                if discard_damaged:
                    self._discard(damaged)
                return step, out.state, dict(out.meta)
        finally:
            for lg in loggers:
                lg.removeFilter(drop)
        if damaged:
            raise ValueError(f"no intact checkpoint in {self.directory}: step(s) {[s for s, _ in damaged]} are all "
                             f"damaged (newest: {damaged[0][1]}); delete the folder to start over")
        return None

    def _discard(self, damaged: list[tuple[int, str]]) -> None:
        for step, reason in damaged:
            self.manager.delete(step)
            print(f"warning: discarded damaged checkpoint step {step} ({reason}); it is saved afresh when the "
                  "run reaches it again", file=sys.stderr)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
