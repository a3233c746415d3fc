"""What every puzzle builder shares: the TRM/HRM on-disk layout, its metadata, the dihedral group, CSV I/O,
sources (a local folder or a Hugging Face dataset repo) and the dataset writer.

On-disk layout (identical to the TRM/HRM builders, so datasets built by either project load unchanged)::

    OUT/identifiers.json              list: puzzle identifier id -> name ("<blank>" for 0)
    OUT/builder.json                  ours: the builder, its flags, source files and their sha256
    OUT/{train,test}/dataset.json     PuzzleDatasetMetadata (below)
    OUT/{train,test}/all__inputs.npy              uint8 [E, L]   token ids
    OUT/{train,test}/all__labels.npy              uint8 [E, L]   token ids; ignore_label_id = not supervised
    OUT/{train,test}/all__puzzle_identifiers.npy  int32 [P]      one id per puzzle
    OUT/{train,test}/all__puzzle_indices.npy      int32 [P + 1]  puzzle p = examples [pi[p], pi[p+1])
    OUT/{train,test}/all__group_indices.npy       int32 [G + 1]  group g = puzzles  [gi[g], gi[g+1])

An *example* is one (input, label) grid pair, a *puzzle* is a list of examples that share a puzzle identifier
(one augmentation of one task), a *group* is a task with all its augmentations: training samples a puzzle per
group per epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from attractor_jax.data.common import atomic_path, check_int, check_output_free, import_optional
from attractor_jax.progress import Progress

__all__ = [
    "CSV_HEADER",
    "DIHEDRAL_INVERSE",
    "CsvGrids",
    "Draw",
    "IGNORE_LABEL_ID",
    "PuzzleDatasetMetadata",
    "PuzzleRow",
    "Validation",
    "build_csv_dataset",
    "dihedral_transform",
    "draw_unique_rows",
    "inverse_dihedral_transform",
    "load_puzzle_metadata",
    "rating_summary",
    "read_puzzle_csv",
    "write_puzzle_csv",
]

CSV_HEADER = ("source", "question", "answer", "rating")
IGNORE_LABEL_ID = -100  # what the reader puts in `labels` where the stored label is metadata.ignore_label_id
SET_NAME = "all"
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
HF_PREFIX = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# tid -> the tid that undoes it (rotations by 90 and 270 degrees undo each other; the flips are involutions).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


class Validation(NamedTuple):
    """`ok` plus the first reason it is not (empty when ok); truthy exactly when ok."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes, numbered as in TRM/HRM (so identifiers like
    `task|||t3|||...` mean the same): 0 identity, 1/2/3 rotation by 90/180/270 degrees counter-clockwise,
    4 left-right flip, 5 up-down flip, 6 transpose, 7 anti-transpose."""
    g = np.asarray(grid)
    if tid == 0:
        return g
    if tid in (1, 2, 3):
        return np.rot90(g, k=tid, axes=(-2, -1))
    if tid == 4:
        return np.flip(g, -1)
    if tid == 5:
        return np.flip(g, -2)
    if tid == 6:
        return np.swapaxes(g, -1, -2)
    if tid == 7:
        return np.flip(np.rot90(g, k=1, axes=(-2, -1)), -1)
    raise ValueError(f"dihedral transform id {tid!r} is invalid: expected an integer in 0..7")


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


# ----------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PuzzleDatasetMetadata:
    """`dataset.json` of one split, field for field as TRM writes it (HRM's lacks `total_puzzles`).

    vocab_size / seq_len size the model's embedding and sequence; num_puzzle_identifiers sizes the puzzle
    embedding table (id `blank_identifier_id` = 0 is the padding puzzle); labels equal to ignore_label_id are
    not supervised (the reader turns them into IGNORE_LABEL_ID = -100).
    """

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int | None = None
    sets: tuple[str, ...] = (SET_NAME,)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sets"] = list(self.sets)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "dataset.json") -> "PuzzleDatasetMetadata":
        need = [f.name for f in dataclasses.fields(cls) if f.name not in ("total_puzzles", "sets")]
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; expected a TRM/HRM dataset.json")
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["sets"] = tuple(d.get("sets", (SET_NAME,)))
        return cls(**kw)


def load_puzzle_metadata(path: str | os.PathLike, split: str = "train") -> PuzzleDatasetMetadata:
    """The metadata of `path/split/dataset.json` (for model construction: vocab_size, seq_len,
    num_puzzle_identifiers, ignore id)."""
    f = pathlib.Path(path).expanduser() / split / "dataset.json"
    if not f.is_file():
        raise FileNotFoundError(
            f"no puzzle dataset split at '{f.parent}' (expected {f.name} there; build one with "
            "`attractor-jax data sudoku|maze|arc`)"
        )
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not JSON ({e.msg})") from None
    return PuzzleDatasetMetadata.from_json(d, str(f))


# ----------------------------------------------------------------------------------------------------
# CSV (source,question,answer,rating)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PuzzleRow:
    source: str
    question: str
    answer: str
    rating: int


def read_puzzle_csv(path: str | os.PathLike) -> list[PuzzleRow]:
    """Rows of a CSV in the official `source,question,answer,rating` layout (header required; `source` and
    `rating` may be absent, `rating` may be empty)."""
    path = pathlib.Path(path)
    rows: list[PuzzleRow] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected the header {','.join(CSV_HEADER)}")
        header = [h.strip().lower() for h in header]
        if "question" not in header or "answer" not in header:
            raise ValueError(
                f"{path}: header {header} lacks 'question'/'answer' columns; expected {','.join(CSV_HEADER)}"
            )
        col = {name: header.index(name) for name in CSV_HEADER if name in header}
        for lineno, rec in enumerate(reader, 2):
            if not rec:
                continue
            if len(rec) != len(header):
                raise ValueError(f"{path}:{lineno}: {len(rec)} fields, expected {len(header)} ({header})")
            rating_text = rec[col["rating"]].strip() if "rating" in col else ""
            try:
                rating = int(float(rating_text)) if rating_text else 0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: rating {rating_text!r} is not a number") from None
            source = rec[col["source"]] if "source" in col else ""
            rows.append(PuzzleRow(source, rec[col["question"]], rec[col["answer"]], rating))
    return rows


def write_puzzle_csv(path: str | os.PathLike, rows: Iterable[PuzzleRow | Sequence]) -> int:
    """Write rows atomically (temp file + rename) in the official layout; returns the row count."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(CSV_HEADER)
            for r in rows:
                w.writerow(dataclasses.astuple(r) if isinstance(r, PuzzleRow) else tuple(r))
                n += 1
    return n


# ----------------------------------------------------------------------------------------------------
# Generators: rows with unique keys, drawn in worker processes
# ----------------------------------------------------------------------------------------------------


class Draw(NamedTuple):
    """One draw of a generator: the CSV fields of a row and its `key`, which no other row may share.
    question None: the draw gave up (its `rating` is then what the give-up message reports)."""

    question: str | None
    answer: str | None
    rating: int
    key: str | None


def draw_unique_rows(
    draw: Callable[[tuple], Draw], params: tuple, count: int, *, seed: int, source: str,
    exclude: Iterable[str], what: str, workers: int, progress: bool, chunksize: int = 1,
    max_redraws: int | None = None, gave_up: Callable[[int, int, int, bool], str] | None = None,
) -> list[PuzzleRow]:
    """`count` rows (`source` their first field), in index order, whose keys differ and are not in `exclude`.

    Row i is `draw((seed, i, attempt, *params))`: attempt 0, then attempt + 1 while the key is taken, at most
    `max_redraws` times (None: no limit). `draw` must be a module-level function: workers > 1 runs the draws
    in that many spawned processes, `chunksize` jobs at a time. A draw that gave up, or one redraw too many,
    raises ValueError(gave_up(rows so far, i, its rating, whether it was a redraw)), and the workers are then
    terminated, not waited for (so too on Ctrl-C). `progress` shows a bar of `what` on stdout."""
    seen = set(exclude)
    rows: dict[int, PuzzleRow] = {}
    todo = [(seed, i, 0, *params) for i in range(count)]
    bar = Progress(count, what, enabled=progress)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    finished = False
    try:
        while todo:
            results = pool.imap(draw, todo, chunksize=chunksize) if pool else map(draw, todo)
            redo = []
            for job, d in zip(todo, results):
                repeated = d.question is not None and d.key in seen
                if d.question is None or (repeated and max_redraws is not None and job[2] + 1 > max_redraws):
                    raise ValueError(gave_up(len(rows), job[1], d.rating, repeated))
                if repeated:
                    redo.append((job[0], job[1], job[2] + 1, *job[3:]))
                    continue
                seen.add(d.key)
                rows[job[1]] = PuzzleRow(source, d.question, d.answer, d.rating)
                bar.update()
            todo = redo
        finished = True
    finally:
        bar.close()
        if pool is not None:
            if finished:
                pool.close()
            else:
                pool.terminate()  # a failure (or Ctrl-C): do not wait for the other workers' draws
            pool.join()
    return [rows[i] for i in range(count)]


# ----------------------------------------------------------------------------------------------------
# Sources: local folder or Hugging Face dataset repo
# ----------------------------------------------------------------------------------------------------


def resolve_csv(source: str | os.PathLike, filename: str) -> pathlib.Path:
    """The local path of `filename` in `source`: a local folder (an absolute `filename` is taken as is), or a
    Hugging Face dataset repo id (`OWNER/NAME` or `hf://OWNER/NAME`) downloaded with the optional
    `huggingface_hub` package."""
    fname = pathlib.Path(filename).expanduser()
    if fname.is_absolute():
        if not fname.is_file():
            raise FileNotFoundError(f"puzzle CSV '{fname}' does not exist")
        return fname
    src = os.fspath(source)
    p = pathlib.Path(src).expanduser()
    if p.is_dir():
        f = p / fname
        if not f.is_file():
            have = sorted(x.name for x in p.glob("*.csv"))
            raise FileNotFoundError(
                f"'{f}' does not exist (CSV files in '{p}': {have or 'none'}); pass the file names with "
                "--train-csv/--test-csv"
            )
        return f
    if p.exists():
        raise ValueError(f"--source '{src}' is a file: expected a folder holding {fname} or a hub repo id")
    if not (src.startswith(HF_PREFIX) or _HUB_ID.match(src)):
        raise FileNotFoundError(
            f"--source '{src}' is neither a local folder nor a Hugging Face dataset repo id (OWNER/NAME)"
        )
    repo = src[len(HF_PREFIX) :] if src.startswith(HF_PREFIX) else src
    hub = import_optional("huggingface_hub", (
        f"'{src}' is not a local folder, so it is read as a Hugging Face dataset repo, which needs the "
        "'huggingface_hub' package (pip install huggingface_hub, or attractor_jax[hf]); or download "
        f"{fname} into a folder and pass that folder"))
    try:
        return pathlib.Path(hub.hf_hub_download(repo, os.fspath(fname), repo_type="dataset"))
    except Exception as e:  # network, auth, a typo: all surface here
        raise ConnectionError(
            f"'{src}' is not a local folder, and downloading {fname} from the Hugging Face dataset repo "
            f"'{repo}' failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the "
            "name and that the hub is reachable, or pass a local folder"
        ) from e


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Writing a dataset (atomically)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitArrays:
    """The five arrays of one split (the layout in the module docstring)."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray

    def fault(self, seq_len: int) -> str | None:
        """The first broken invariant of the layout that every reader relies on, or None."""
        E, P = self.inputs.shape[0], len(self.puzzle_identifiers)
        pi, gi = self.puzzle_indices, self.group_indices
        if self.inputs.ndim != 2 or self.inputs.shape[1] != seq_len or self.labels.shape != self.inputs.shape:
            return f"inputs {self.inputs.shape} / labels {self.labels.shape} do not match seq_len={seq_len}"
        if pi.shape != (P + 1,) or pi[0] != 0 or pi[-1] != E or np.any(np.diff(pi) <= 0):
            return f"puzzle_indices must rise strictly from 0 to {E} over {P} puzzles"
        if gi.ndim != 1 or len(gi) < 2 or gi[0] != 0 or gi[-1] != P or np.any(np.diff(gi) <= 0):
            return f"group_indices must rise strictly from 0 to {P}"
        return None

    def check(self, vocab_size: int, seq_len: int) -> None:
        """Assert the layout's invariants and the token range (a builder bug here would otherwise surface as
        NaNs)."""
        fault = self.fault(seq_len)
        assert fault is None, fault
        assert max(int(self.inputs.max(initial=0)), int(self.labels.max(initial=0))) < vocab_size


def grouped_single_examples(inputs: np.ndarray, labels: np.ndarray) -> SplitArrays:
    """Arrays for datasets where every puzzle is one example (sudoku, maze), from the tokens [G, k, L] of G
    groups of k puzzles each; identifier 0 for all."""
    G, k, L = inputs.shape
    return SplitArrays(
        inputs=np.ascontiguousarray(inputs.reshape(G * k, L), dtype=np.uint8),
        labels=np.ascontiguousarray(labels.reshape(G * k, L), dtype=np.uint8),
        puzzle_identifiers=np.zeros(G * k, np.int32),
        puzzle_indices=np.arange(G * k + 1, dtype=np.int32),
        group_indices=np.arange(0, G * k + 1, k, dtype=np.int32),
    )


def write_dataset(
    output: str | os.PathLike,
    splits: dict[str, SplitArrays],
    *,
    vocab_size: int,
    seq_len: int,
    identifiers: list[str],
    builder: dict[str, Any],
    overwrite: bool = False,
    extra_files: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write the layout atomically: everything goes to a temporary sibling folder renamed onto `output`. Every
    split's metadata has PAD, ignore label and blank identifier 0."""
    out = pathlib.Path(output).expanduser()
    with atomic_path(out, directory=True, overwrite=overwrite) as tmp:
        summary = {}
        for split, a in splits.items():
            a.check(vocab_size, seq_len)
            E, P, G = len(a.inputs), len(a.puzzle_identifiers), len(a.group_indices) - 1
            meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                         seq_len=seq_len, num_puzzle_identifiers=len(identifiers), total_groups=G,
                                         mean_puzzle_examples=E / P, total_puzzles=P, sets=(SET_NAME,))
            (tmp / split).mkdir(parents=True, exist_ok=True)
            (tmp / split / "dataset.json").write_text(json.dumps(meta.to_json()))
            for k in FIELDS:
                np.save(tmp / split / f"{SET_NAME}__{k}.npy", getattr(a, k))
            summary[split] = {"examples": E, "puzzles": P, "groups": G}
        (tmp / "identifiers.json").write_text(json.dumps(identifiers))
        (tmp / "builder.json").write_text(json.dumps({**builder, "splits": summary}, indent=2))
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj))
    return out


def rating_summary(values: Sequence[int]) -> dict[str, Any]:
    """min/median/mean/max and counts in the difficulty buckets 0, 1-2, 3-10, 11-50, 51+ (for reports)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return {"n": 0}
    edges = (("0", 0, 0), ("1-2", 1, 2), ("3-10", 3, 10), ("11-50", 11, 50), ("51+", 51, None))
    buckets = {k: int(((v >= lo) & (True if hi is None else v <= hi)).sum()) for k, lo, hi in edges}
    return {"n": int(v.size), "min": int(v.min()), "median": float(np.median(v)), "mean": round(float(v.mean()), 2),
            "max": int(v.max()), "buckets": buckets}


def subsample_rows(rng: np.random.Generator, k: int | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``k`` rows (seeded, kept in their original order) of equally long arrays; all rows when ``k`` is None
    or not smaller than their length."""
    if k is None or k >= len(arrays[0]):
        return arrays
    pick = np.sort(rng.choice(len(arrays[0]), k, replace=False))
    return tuple(a[pick] for a in arrays)


# ----------------------------------------------------------------------------------------------------
# The build shared by the CSV-sourced kinds (sudoku, maze)
# ----------------------------------------------------------------------------------------------------


class CsvGrids(NamedTuple):
    """One split of a CSV dataset, loaded and checked: question and answer grids [N, ...] of raw values, and
    `notes` for builder.json (field -> this split's value, recorded as `field: {split: value}`)."""

    questions: np.ndarray
    answers: np.ndarray
    notes: dict[str, Any] | None = None


def csv_flags(train_csv: str, test_csv: str, subsample_size: int | None, test_subsample_size: int | None
              ) -> dict[str, Any]:
    """The flags every CSV build shares, checked, in the order builder.json records them (first)."""
    return {
        "train_csv": train_csv,
        "test_csv": test_csv,
        "subsample_size": check_int("subsample_size", subsample_size, 1, allow_none=True),
        "test_subsample_size": check_int("test_subsample_size", test_subsample_size, 1, allow_none=True),
    }


def build_csv_dataset(
    kind: str, source: str | os.PathLike, output: str | os.PathLike, flags: dict[str, Any], *,
    load: Callable[[dict[str, pathlib.Path]], dict[str, CsvGrids]],
    expand: Callable[[str, np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    vocab_size: int, overwrite: bool,
) -> pathlib.Path:
    """Build a dataset of one puzzle per example from the `train` and `test` CSVs of `source`.

    flags: the build's checked flags, in the order builder.json records them: `csv_flags` (`train_csv` /
    `test_csv`: file names in `source`, see `resolve_csv`; `subsample_size` / `test_subsample_size`: puzzles
    kept per split, None for all), then the kind's own, among them `seed`.
    load: {split: CSV path} -> {split: CsvGrids}, every row checked (one error, nothing written).
    expand: (split, questions, answers, rng) -> (inputs, labels) uint8 tokens [N, k, L]: each puzzle's group
      of k examples (the original and its augmentations).

    Fails before any work when `output` is taken; one generator seeded with `seed` subsamples and expands
    the splits in turn (train, then test); the layout is written atomically (`write_dataset`), builder.json
    recording `kind`, `source`, the CSVs with their sha256, `flags` and the splits' notes."""
    check_output_free(output, overwrite)
    paths = {"train": resolve_csv(source, flags["train_csv"]), "test": resolve_csv(source, flags["test_csv"])}
    loaded = load(paths)
    rng = np.random.default_rng(flags["seed"])
    keep = {"train": flags["subsample_size"], "test": flags["test_subsample_size"]}
    splits = {}
    for split, grids in loaded.items():
        q, a = subsample_rows(rng, keep[split], grids.questions, grids.answers)
        splits[split] = grouped_single_examples(*expand(split, q, a, rng))
    builder = {
        "builder": kind,
        "source": os.fspath(source),
        "files": {s: {"path": str(p), "sha256": sha256_file(p)} for s, p in paths.items()},
        "flags": flags,
    }
    for split, grids in loaded.items():
        for field, value in (grids.notes or {}).items():
            builder.setdefault(field, {})[split] = value
    return write_dataset(output, splits, vocab_size=vocab_size, seq_len=splits["train"].inputs.shape[1],
                         identifiers=["<blank>"], builder=builder, overwrite=overwrite)
