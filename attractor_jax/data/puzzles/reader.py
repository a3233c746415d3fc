"""The puzzle input pipeline: a built dataset (TRM/HRM layout, `common`) read by memory map through grain.

    it = make_puzzle_pipeline("data/sudoku-1k", split="train", batch_size=768, seed=0)
    batch = next(it)    # inputs, labels int32 [b, L]; puzzle_identifiers int32 [b]; mask bool [b]
    it.metadata         # PuzzleDatasetMetadata: vocab_size, seq_len, num_puzzle_identifiers, ignore_label_id
    state = it.get_state(); it.set_state(state)   # exact resumption (grain.checkpoint.CheckpointSave(it) too)

`labels` hold IGNORE_LABEL_ID = -100 where the stored label is the dataset's ignore_label_id (PAD); `mask` is
False on the padding rows of a final evaluation batch (their inputs are PAD, labels -100, identifier blank).

**Training order** (shuffle=True, the default for split="train"): epoch e draws, from
`np.random.default_rng([seed, e])`, a permutation of the groups and, for each group, one of its puzzles (one
augmentation), as TRM does. The chosen puzzle contributes its examples in a random order (c_g of them, c_g the
smallest puzzle size in the group: every puzzle of a TRM/HRM group has the same size, so all of them). The
epochs' example streams are concatenated and cut into global batches of `batch_size`: an epoch has E = sum c_g
examples whatever the draws, so global batch k is positions [kB, (k+1)B) of that stream and is computed from k
alone (this is TRM's sampler with its epochs_per_iter concatenation taken to the whole run; unlike TRM a
puzzle's examples may straddle two batches instead of being cut off at the batch end). With `num_epochs` set
the trailing partial batch is dropped. Process p of P takes rows [p·b, (p+1)·b) of each global batch (b=B/P),
so the state (the next batch index) is the same on every host.

**Evaluation order** (shuffle=False, the default for split="test"): every example once, in stored order, in
global batches of B; the last one is padded (mask False), and each process takes its rows of it as above.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import grain
import numpy as np

from attractor_jax.data.puzzles.common import (
    FIELDS,
    IGNORE_LABEL_ID,
    PuzzleDatasetMetadata,
    SplitArrays,
    load_puzzle_metadata,
)
from attractor_jax.data.common import (
    BatchSource,
    GrainWrapper,
    LruCache,
    check_batching,
    check_int,
    default_epochs,
    prefetching_iterator,
)

__all__ = ["PuzzleIterator", "load_puzzle_split", "make_puzzle_pipeline"]


class PuzzleSplit:
    """One split of a built dataset: inputs/labels memory-mapped, the index arrays in memory."""

    def __init__(self, path: str | os.PathLike, split: str = "train", set_name: str | None = None):
        self.root = pathlib.Path(path).expanduser()
        self.split = split
        self.metadata = load_puzzle_metadata(self.root, split)
        sets = list(self.metadata.sets)
        if set_name is None:
            if len(sets) != 1:
                raise ValueError(f"{self.root / split}: holds sets {sets}; choose one with set_name=")
            set_name = sets[0]
        elif set_name not in sets:
            raise ValueError(f"set_name={set_name!r} is not in {self.root / split} (sets: {sets})")
        arrays = {}
        for k in FIELDS:
            f = self.root / split / f"{set_name}__{k}.npy"
            if not f.is_file():
                raise FileNotFoundError(f"puzzle dataset file '{f}' is missing")
            try:
                arrays[k] = np.load(f, mmap_mode="r" if k in ("inputs", "labels") else None)
            except ValueError as e:
                raise ValueError(f"{f}: not a numpy array file ({e})") from None
        self.inputs, self.labels = arrays["inputs"], arrays["labels"]
        self.puzzle_identifiers = np.asarray(arrays["puzzle_identifiers"], np.int32)
        self.puzzle_indices = np.asarray(arrays["puzzle_indices"], np.int64)
        self.group_indices = np.asarray(arrays["group_indices"], np.int64)
        fault = SplitArrays(self.inputs, self.labels, self.puzzle_identifiers, self.puzzle_indices,
                            self.group_indices).fault(self.metadata.seq_len)
        if fault:
            raise ValueError(f"{self.root / split}: {fault}")

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    def examples(self, ex: np.ndarray, puz: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """int32 `inputs` and `labels` [len(ex), L] of examples `ex` (labels IGNORE_LABEL_ID where the stored
        label is the ignore_label_id) and the `puzzle_identifiers` [len(ex)] of their puzzles `puz` (by default
        looked up)."""
        if puz is None:
            puz = np.searchsorted(self.puzzle_indices, ex, side="right") - 1
        order = np.argsort(ex, kind="stable")  # sorted reads are kinder to the memory map
        inputs = np.empty((len(ex), self.metadata.seq_len), np.int32)
        labels = np.empty_like(inputs)
        inputs[order], labels[order] = self.inputs[ex[order]], self.labels[ex[order]]
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        return {"inputs": inputs, "labels": labels, "puzzle_identifiers": self.puzzle_identifiers[puz].astype(np.int32)}


load_puzzle_split = PuzzleSplit  # the former function's name: load_puzzle_split(path, split="train", set_name=None)


class _Batches(BatchSource):
    """Random-access source: element k is process-local batch k (the maths: module docstring)."""

    def __init__(self, data: PuzzleSplit, *, seed: int, shuffle: bool, **batching: Any):
        super().__init__(**batching)
        self.d = data
        self.meta = data.metadata
        self.seed, self.shuffle = seed, shuffle
        psize = np.diff(data.puzzle_indices)
        self.group_take = np.minimum.reduceat(psize, data.group_indices[:-1]).astype(np.int64)
        self.single = bool(np.all(psize == 1))
        self.epoch_len = int(self.group_take.sum()) if shuffle else data.num_examples
        self._tables = LruCache(2)  # a batch spans at most two epochs

    def _epoch_table(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(example index, puzzle index) of every position of the epoch's stream."""
        d = self.d
        rng = np.random.default_rng([self.seed, epoch])
        G = d.num_groups
        order = rng.permutation(G)
        first, count = d.group_indices[order], np.diff(d.group_indices)[order]
        chosen = first + np.floor(rng.random(G) * count).astype(np.int64)
        starts = d.puzzle_indices[chosen]
        if self.single:
            return starts, chosen
        size = d.puzzle_indices[chosen + 1] - starts
        block = np.repeat(np.arange(G), size)
        block_start = np.repeat(np.cumsum(size) - size, size)
        rank = np.arange(len(block)) - block_start
        perm = np.lexsort((rng.random(len(block)), block))  # random order within each block
        keep = rank < np.repeat(self.group_take[order], size)
        return (np.repeat(starts, size) + rank[perm])[keep], np.repeat(chosen, size)[keep]

    def batch(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        if self.shuffle:
            ex = np.empty(self.local_batch, np.int64)
            puz = np.empty(self.local_batch, np.int64)
            epochs, within = np.divmod(pos, self.epoch_len)
            for e in np.unique(epochs):
                sel = epochs == e
                t_ex, t_puz = self._tables.get(int(e), lambda: self._epoch_table(int(e)))
                ex[sel], puz[sel] = t_ex[within[sel]], t_puz[within[sel]]
            valid = np.ones(self.local_batch, bool)
        else:
            # an example's position in the stored order; a batch past the end of the split is all padding
            valid = pos < self.d.num_examples
            ex, puz = np.where(valid, pos, 0), None  # `examples` looks the puzzles up
        out = self.d.examples(ex, puz)
        if not valid.all():
            out["inputs"][~valid] = self.meta.pad_id
            out["labels"][~valid] = IGNORE_LABEL_ID
            out["puzzle_identifiers"][~valid] = self.meta.blank_identifier_id
        return {**out, "mask": valid.copy()}


class PuzzleIterator(GrainWrapper, grain.DatasetIterator):
    """A grain `DatasetIterator` of puzzle batches with exact, JSON-serialisable `get_state()` /
    `set_state()`. The state carries a fingerprint of the pipeline; `set_state` with a state from another
    pipeline raises ValueError.

    Attributes: `metadata` (PuzzleDatasetMetadata), `split`, `batch_size` (global), `local_batch_size`,
    `num_batches` (None when unbounded), `epoch_examples` (examples per epoch: sum over groups of the examples
    drawn per group when shuffling, all examples otherwise), `num_groups`, `num_examples`, `config`.
    """

    metadata: PuzzleDatasetMetadata
    split: str
    batch_size: int
    local_batch_size: int
    num_batches: int | None
    epoch_examples: int
    num_groups: int
    num_examples: int
    config: dict[str, Any]
    state_kind = "puzzle"

    def __str__(self) -> str:
        return (
            f"PuzzleIterator({self.split}, seq_len={self.metadata.seq_len}, "
            f"batch={self.local_batch_size}/{self.batch_size})"
        )


def make_puzzle_pipeline(
    path: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    set_name: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> PuzzleIterator:
    """The puzzle input pipeline over `path/split` (module docstring for the orders).

    batch_size: the global batch (each of P processes yields batch_size / P rows; P defaults to
      `jax.process_count()`). shuffle: default True for "train" (TRM sampling), False otherwise (every example
      once, padded last batch). num_epochs: default None (unbounded) when shuffling, else 1 (a sequential pass
      must be finite). prefetch: batches prepared ahead in a background thread (0: none).
    """
    batch_size, seed, pidx, pcount, local = check_batching(batch_size, seed, process_index, process_count)
    prefetch = check_int("prefetch", prefetch, 0)
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    num_epochs = default_epochs(num_epochs, finite=not shuffle)
    if not shuffle and num_epochs != 1:
        raise ValueError(f"num_epochs={num_epochs} is invalid without shuffling: a sequential pass is one epoch")
    data = PuzzleSplit(path, split, set_name)
    src = _Batches(data, seed=seed, shuffle=shuffle, global_batch=batch_size, local_batch=local,
                   offset=pidx * local, num_batches=None)
    E = src.epoch_len
    if shuffle:
        num_batches = None if num_epochs is None else (num_epochs * E) // batch_size
        if num_batches == 0:
            raise ValueError(
                f"batch_size={batch_size} is too large for {data.root / split}: {num_epochs} epoch(s) hold "
                f"{num_epochs * E} examples, fewer than one batch"
            )
    else:
        num_batches = math.ceil(E / batch_size)
    src.set_num_batches(num_batches)
    it = PuzzleIterator(prefetching_iterator(src, prefetch))
    it.metadata, it.split = data.metadata, split
    it.batch_size, it.local_batch_size, it.num_batches = batch_size, local, num_batches
    it.epoch_examples, it.num_groups, it.num_examples = E, data.num_groups, data.num_examples
    it.config = {
        "split": split,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle": shuffle,
        "num_examples": data.num_examples,
        "num_groups": data.num_groups,
        "seq_len": data.metadata.seq_len,
    }
    return it
