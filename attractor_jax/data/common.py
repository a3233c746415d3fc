"""What the data modules share: integer argument checks, the split of a global batch over processes, grain's
prefetching iterator over a random-access batch source, language-model rows as (inputs, targets), the
fingerprint check that keeps one pipeline's iterator state out of another, and atomic writes of outputs."""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from typing import Any, Callable, Iterator

import grain
import numpy as np

__all__ = [
    "BatchSource",
    "GrainWrapper",
    "LruCache",
    "atomic_path",
    "check_batching",
    "check_int",
    "check_output_free",
    "check_state_fingerprint",
    "default_epochs",
    "import_optional",
    "lm_batch",
    "local_batch_size",
    "prefetching_iterator",
    "resolve_process",
]


def check_int(name: str, value: Any, minimum: int = 0, allow_none: bool = False) -> int | None:
    """`value` as an int, or ValueError naming `name` unless it is an integer >= `minimum` (bools are not);
    None passes through when `allow_none`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}")
    return int(value)


def import_optional(module: str, message: str) -> Any:
    """`module`, imported; ImportError(`message`: what needs it and how to install it) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(message) from e


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Checked (process_index, process_count); a None defaults to `jax.process_index()` /
    `jax.process_count()` (which starts JAX's backend)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    process_count = check_int("process_count", process_count, 1)
    process_index = check_int("process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(
            f"process_index={process_index} is invalid: expected < process_count={process_count}"
        )
    return process_index, process_count


def local_batch_size(batch_size: int, process_count: int) -> int:
    """The rows each of `process_count` processes takes of a global batch, which must split evenly."""
    if batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} is invalid: expected a multiple of process_count={process_count}"
        )
    return batch_size // process_count


def check_batching(batch_size: Any, seed: Any, process_index: int | None, process_count: int | None
                   ) -> tuple[int, int, int, int, int]:
    """A pipeline's checked (batch_size, seed, process_index, process_count, local batch size): `batch_size`
    is the global batch, which must split evenly over the processes (`resolve_process`, `local_batch_size`)."""
    batch_size, seed = check_int("batch_size", batch_size, 1), check_int("seed", seed, 0)
    process_index, process_count = resolve_process(process_index, process_count)
    return batch_size, seed, process_index, process_count, local_batch_size(batch_size, process_count)


def default_epochs(num_epochs: Any, finite: bool) -> int | None:
    """Checked `num_epochs` (>= 1); None gives 1 for a `finite` pass (evaluation), else None (repeat)."""
    n = check_int("num_epochs", num_epochs, 1, allow_none=True)
    return (1 if finite else None) if n is None else n


def prefetching_iterator(source: Any, prefetch: int) -> grain.DatasetIterator:
    """grain's iterator over a random-access `source` (element k = batch k), preparing `prefetch` batches
    ahead in a background thread (0: none)."""
    read = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    return grain.MapDataset.source(source).to_iter_dataset(read).__iter__()


def lm_batch(rows: np.ndarray) -> dict[str, np.ndarray]:
    """`{"inputs": row[:-1], "targets": row[1:]}` of token rows [b, seq_len + 1]."""
    return {"inputs": np.ascontiguousarray(rows[:, :-1]), "targets": np.ascontiguousarray(rows[:, 1:])}


class BatchSource:
    """Base of a random-access source (for `prefetching_iterator`) whose element k is process-local batch k:
    the rows at stream positions [k·B + offset, k·B + offset + b) of global batch B (b = local_batch), which
    `batch(positions)` returns. Its length is `num_batches` (None: unbounded)."""

    def __init__(self, *, global_batch: int, local_batch: int, offset: int, num_batches: int | None):
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset
        self.set_num_batches(num_batches)

    def set_num_batches(self, num_batches: int | None) -> None:
        """Bound the source to `num_batches` batches (None: unbounded); set once, before iteration."""
        self._len = sys.maxsize if num_batches is None else num_batches

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        k = int(k)
        if not 0 <= k < self._len:
            raise IndexError(f"batch index {k} out of range [0, {self._len})")
        start = k * self.global_batch + self.offset
        return self.batch(np.arange(start, start + self.local_batch, dtype=np.int64))

    def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class LruCache:
    """The `size` most recently used values, each computed by `make()` on a miss (outside the lock: a slow
    computation blocks no other key); safe to share between threads (grain's reader threads)."""

    def __init__(self, size: int = 2):
        self._size = size
        self._items: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


def check_state_fingerprint(
    config: dict[str, Any], state: Any, kind: str, required: tuple = ("config",)
) -> None:
    """Raise ValueError unless ``state`` is a dict with ``required`` keys whose ``config`` equals ``config``
    (a pipeline's fingerprint): restoring another pipeline's position must fail loudly, not resume wrong."""
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ValueError(f"not a {kind}-pipeline iterator state: expected a dict with keys {list(required)}, "
                         f"got {state!r}")
    saved = state["config"]
    diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"data iterator state belongs to a different {kind} pipeline ({detail})")


class GrainWrapper:
    """Mixin for a pipeline iterator whose batches come from grain's iterator `self._parent` (see
    `prefetching_iterator`): its state is grain's plus the pipeline's fingerprint `self.config`, checked on
    restore (`check_state_fingerprint`, naming the pipeline `state_kind`)."""

    state_kind: str
    config: dict[str, Any]

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._parent.get_state(), "config": dict(self.config)}

    def set_state(self, state: dict[str, Any]) -> None:
        check_state_fingerprint(self.config, state, self.state_kind, required=("grain", "config"))
        self._parent.set_state(state["grain"])


def check_output_free(output: str | os.PathLike, overwrite: bool) -> None:
    """Fail before any work when the output exists (and overwrite is off) or cannot be created."""
    out = pathlib.Path(output).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output '{out}' already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder '{out.parent}' does not exist")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, directory: bool = False, overwrite: bool = True
) -> Iterator[pathlib.Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path`, on error remove it. With
    overwrite=False an existing `path` is an error, raised before anything is written."""
    check_output_free(path, overwrite)
    path = pathlib.Path(path).expanduser()
    parent = path.parent
    if directory:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
        os.close(fd)
        tmp = pathlib.Path(name)
    try:
        yield tmp
        if directory:
            old = None
            if path.exists():
                if not overwrite:
                    raise FileExistsError(f"output '{path}' appeared while building; not replacing it")
                old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
                os.rename(path, old / "x")
            os.rename(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
