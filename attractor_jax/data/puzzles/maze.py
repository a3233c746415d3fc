"""Maze-Hard: a generator (Searchformer procedure with HRM's hardness filter), A*, a shortest-path validator
and the dataset builder.

**Grids.** An n x n maze (30 x 30 for Maze-Hard) is a string of n*n characters over "# SGo" (wall, free,
start, goal, path), row-major, in the CSV; the dataset tokens are 1..5 in that order (0 = PAD; vocab 6,
seq_len 900), as TRM/HRM encode them. A question holds one S and one G and no 'o'; its answer marks the cells
of a shortest S-G path strictly between S and G with 'o'.

**Generation** (`generate_maze`): draw a wall density p ~ U[0.3, 0.5] and put round(p n^2) walls on uniformly
random cells (Searchformer's layouts), then a start S and goal G whose shortest path is longer than `min_path`
moves. Plain rejection (uniform S and G, keep the long ones) is hopeless: at 30x30 a path over 110 moves
turns up about once in 10^5-10^6 draws. So a layout is kept only if a double breadth-first sweep (from random
cell to its farthest cell b, then from b) finds a path longer than `min_path` (about 0.4 % of layouts, nearly
all with p in 0.33-0.42, the only densities where such paths exist), S is drawn uniformly among the cells
farther than `min_path` from b, G uniformly among the cells farther than `min_path` from S, and S and G are
swapped with probability 1/2. Layouts are Searchformer's conditioned on holding a long path; S and G given the
layout are conditioned on their distance, not exactly uniform. The answer path is A*'s (Manhattan heuristic,
4-neighbourhood); the `rating` column is its length in moves. Measured: about 20 mazes per CPU-second at
30x30 and min_path=110; the lengths pile up just above the floor (1000 mazes: min 111, median 111, mean 112,
max 132), since longer paths are rarer still.
**Ties.** Random walls leave most mazes with several shortest paths: at 10x10 with min_path=14, 5-11 % of
the draws have one (measured on 200-1,000 draws; median 6 paths), so A*'s tie-break decides the answer, and a
dihedral image of a maze gets the image of the original's path, which need not be the path A* picks on the
image; a token-exact score then cannot reach 100 % and the training labels contradict each other.
`unique_path=True` keeps only mazes with one shortest path (up to 32 S-G draws per layout, then a new layout),
where the answer is the only right one and every image's label is that image's answer (about 20x slower at
10x10: 200 mazes in 1.8 s). `maze_shortest_path_count` counts them for any question.
No wall layout repeats, within the output or with the layouts of the `exclude` CSVs, up to the 8 symmetries
of the square (the builder augments training mazes by them), so a test file generated with
`exclude=[train.csv]` shares no layout with the training file. Maze i is drawn from
`np.random.default_rng([seed, i, attempt])`: the output does not depend on the number of workers.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import heapq
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from attractor_jax.data.common import check_int
from attractor_jax.data.puzzles.common import (CsvGrids, Draw, PuzzleRow, Validation, build_csv_dataset,
    csv_flags, dihedral_transform, draw_unique_rows, read_puzzle_csv)

__all__ = [
    "MAZE_CHARSET",
    "MAZE_VOCAB_SIZE",
    "build_maze_dataset",
    "generate_maze",
    "maze_layout_key",
    "maze_shortest_path",
    "maze_shortest_path_count",
    "maze_to_string",
    "maze_to_tokens",
    "validate_maze",
]

MAZE_CHARSET = "# SGo"  # tokens 1..5; 0 = PAD
MAZE_VOCAB_SIZE = len(MAZE_CHARSET) + 1
_CHAR2ID = np.zeros(256, np.uint8)
_CHAR2ID[np.frombuffer(MAZE_CHARSET.encode(), np.uint8)] = np.arange(1, len(MAZE_CHARSET) + 1)
_ID2CHAR = np.frombuffer(("?" + MAZE_CHARSET).encode(), np.uint8)
WALL, FREE, START, GOAL, PATH = range(1, 6)


# ----------------------------------------------------------------------------------------------------
# Grid forms
# ----------------------------------------------------------------------------------------------------


def _as_tokens(grid: Any, what: str) -> np.ndarray:
    """Tokens uint8 [n, n] (1..5, 0 = PAD) from a CSV string or a token array (flat n*n or n x n)."""
    if isinstance(grid, (bytes, bytearray)):
        grid = grid.decode()
    if isinstance(grid, str):
        raw = np.frombuffer(grid.encode(), np.uint8)
        t = _CHAR2ID[raw]
        if (t == 0).any():
            bad = sorted(set(ch for ch in grid if ch not in MAZE_CHARSET))
            raise ValueError(f"{what}: characters {bad} are not in the maze charset {MAZE_CHARSET!r}")
    else:
        t = np.asarray(grid)
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{what}: expected maze tokens (integers 0..5), got dtype {t.dtype}")
        if t.size and (t.min() < 0 or t.max() > 5):
            raise ValueError(f"{what}: maze tokens are 0..5, got {int(t.min())}..{int(t.max())}")
        t = t.astype(np.uint8)
    n = int(round(np.sqrt(t.size)))
    if n < 2 or n * n != t.size:
        raise ValueError(f"{what}: a maze is a square grid, got {t.size} cells")
    return t.reshape(n, n)


def maze_to_string(grid: Any) -> str:
    t = _as_tokens(grid, "maze")
    return _ID2CHAR[t.reshape(-1)].tobytes().decode()


def maze_to_tokens(grid: Any) -> np.ndarray:
    return _as_tokens(grid, "maze").reshape(-1)


def maze_layout_key(grid: Any) -> str:
    """A hash of the wall layout, the same for all 8 symmetric images of it."""
    walls = _as_tokens(grid, "maze") == WALL
    images = [np.packbits(dihedral_transform(walls, t)).tobytes() for t in range(8)]
    return hashlib.sha1(min(images)).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------

@functools.cache
def _neighbours(n: int) -> list[tuple[int, ...]]:
    """The 4-neighbours of each cell of an n x n grid."""
    out = []
    for c in range(n * n):
        r, k = divmod(c, n)
        out.append(tuple(c + d for d, ok in ((-n, r > 0), (n, r < n - 1), (-1, k > 0), (1, k < n - 1)) if ok))
    return out


def _bfs(free: bytearray, n: int, start: int) -> list[int]:
    """Distances (moves) from start over free cells; -1 = unreachable."""
    nb = _neighbours(n)
    dist = [-1] * (n * n)
    dist[start] = 0
    q = collections.deque([start])
    while q:
        c = q.popleft()
        dc = dist[c] + 1
        for m in nb[c]:
            if free[m] and dist[m] < 0:
                dist[m] = dc
                q.append(m)
    return dist


def _astar(free: bytearray, n: int, start: int, goal: int) -> list[int] | None:
    """A shortest 4-neighbourhood path start..goal (cells, both ends included) by A* with the Manhattan
    heuristic; ties are broken by smaller heuristic, then insertion order, so the path is deterministic."""
    nb = _neighbours(n)
    gr, gk = divmod(goal, n)

    def h(c: int) -> int:
        r, k = divmod(c, n)
        return abs(r - gr) + abs(k - gk)

    g = {start: 0}
    parent = {start: -1}
    heap = [(h(start), h(start), 0, start)]
    counter = 0
    closed = set()
    while heap:
        _, _, _, c = heapq.heappop(heap)
        if c in closed:
            continue
        if c == goal:
            path = [c]
            while parent[path[-1]] >= 0:
                path.append(parent[path[-1]])
            return path[::-1]
        closed.add(c)
        gc = g[c] + 1
        for m in nb[c]:
            if free[m] and gc < g.get(m, 1 << 30):
                g[m] = gc
                parent[m] = c
                counter += 1
                hm = h(m)
                heapq.heappush(heap, (gc + hm, hm, counter, m))
    return None


def _free_cells(t: np.ndarray) -> bytearray:
    """Row-major 0/1 mask of the non-wall cells of tokens ``t``, as `_bfs` and `_astar` read it."""
    return bytearray((t.reshape(-1) != WALL).astype(np.uint8).tobytes())


def maze_shortest_path(question: Any) -> list[tuple[int, int]] | None:
    """A shortest S-G path of a maze question as (row, col) cells, S and G included (None if G is
    unreachable)."""
    t = _as_tokens(question, "question")
    n = t.shape[0]
    s, g = _endpoints(t, "question")
    path = _astar(_free_cells(t), n, s, g)
    return None if path is None else [divmod(c, n) for c in path]


def _endpoints(t: np.ndarray, what: str) -> tuple[int, int]:
    flat = t.reshape(-1)
    s, g = np.flatnonzero(flat == START), np.flatnonzero(flat == GOAL)
    if len(s) != 1 or len(g) != 1:
        raise ValueError(f"{what}: a maze has exactly one S and one G, found {len(s)} S and {len(g)} G")
    return int(s[0]), int(g[0])


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------


def _count_shortest_paths(free: bytearray, n: int, start: int, goal: int, cap: int | None = None,
                          ds: Sequence[int] | None = None) -> int:
    """The number of shortest 4-neighbourhood start-goal paths (0 if the goal is unreachable), counted over
    the cells in order of distance; with `cap`, counts stop growing past it (min(count, cap)). `ds`: the
    distances from `start` (`_bfs`), when the caller has them."""
    ds = _bfs(free, n, start) if ds is None else ds
    dg = _bfs(free, n, goal)
    total = ds[goal]
    if total < 0:
        return 0
    nb = _neighbours(n)
    on = sorted((c for c in range(n * n) if ds[c] >= 0 and dg[c] >= 0 and ds[c] + dg[c] == total),
                key=ds.__getitem__)
    ways = {start: 1}
    for c in on[1:]:
        w = sum(ways.get(m, 0) for m in nb[c] if ds[m] == ds[c] - 1)
        ways[c] = w if cap is None else min(w, cap)
    return ways[goal]


def maze_shortest_path_count(question: Any) -> int:
    """How many shortest S-G paths a maze question has (0 if G is unreachable). A maze whose count is 1
    has one right answer; otherwise the answer marks the one A* returns (`maze_shortest_path`)."""
    t = _as_tokens(question, "question")
    s, g = _endpoints(t, "question")
    return _count_shortest_paths(_free_cells(t), t.shape[0], s, g)


# S-G pairs tried on a layout before a unique-path draw (`generate_maze(unique_path=True)`) draws a new one
_UNIQUE_TRIES = 32


def _generate_one(args: tuple[int, int, int, int, int, float, float, bool]) -> Draw:
    """Maze `index` (`generate_maze`), keyed by its layout."""
    seed, index, attempt, n, min_path, lo, hi, unique = args
    rng = np.random.default_rng([seed, index, attempt])
    cells = n * n
    while True:
        p = rng.uniform(lo, hi)
        walls = np.zeros(cells, bool)
        walls[rng.choice(cells, int(round(p * cells)), replace=False)] = True
        free_idx = np.flatnonzero(~walls)
        if len(free_idx) < 2:
            continue
        free = bytearray((~walls).astype(np.uint8).tobytes())
        # double sweep: the farthest cell b from a random cell is (nearly) an end of the longest shortest path
        d0 = _bfs(free, n, int(free_idx[rng.integers(len(free_idx))]))
        b = int(np.argmax(d0))
        db = np.asarray(_bfs(free, n, b))
        far_b = np.flatnonzero(db > min_path)
        if len(far_b) == 0:
            continue
        for _ in range(_UNIQUE_TRIES if unique else 1):
            start = int(far_b[rng.integers(len(far_b))])
            dist = _bfs(free, n, start)
            far = np.flatnonzero(np.asarray(dist) > min_path)  # non-empty: it holds b
            goal = int(far[rng.integers(len(far))])
            # the count is symmetric in S and G, so it is taken before the swap, from the BFS at hand
            one = not unique or _count_shortest_paths(free, n, start, goal, cap=2, ds=dist) == 1
            if rng.random() < 0.5:
                start, goal = goal, start
            if one:
                break
        else:
            continue  # no S-G pair with one shortest path on this layout: a new layout
        path = _astar(free, n, start, goal)
        assert path is not None and len(path) - 1 > min_path
        q = np.where(walls, WALL, FREE).astype(np.uint8)
        q[start], q[goal] = START, GOAL
        a = q.copy()
        a[path[1:-1]] = PATH
        return Draw(maze_to_string(q), maze_to_string(a), len(path) - 1, maze_layout_key(q))


def generate_maze(
    count: int, *, size: int = 30, min_path: int = 110, wall_fraction: tuple[float, float] = (0.3, 0.5),
    seed: int = 0, workers: int = 1, exclude: Iterable[str] = (), source: str = "attractor_jax.generate_maze",
    progress: bool = False, unique_path: bool = False,
) -> list[PuzzleRow]:
    """`count` mazes whose shortest path is longer than `min_path` moves, as CSV rows; `exclude` holds layout
    keys (`maze_layout_key`) that must not be reused (module docstring). `unique_path` keeps only mazes with
    exactly one shortest path (module docstring: otherwise the answer is one of several). workers > 1 starts
    that many spawned processes (from a script, call this under `if __name__ == "__main__":`). `progress`
    shows a progress bar on stdout."""
    count = check_int("count", count, 1)
    size = check_int("size", size, 2)
    min_path = check_int("min_path", min_path, 0)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", workers, 1)
    lo, hi = (float(x) for x in wall_fraction)
    if not 0.0 <= lo <= hi < 1.0:
        raise ValueError(f"wall_fraction={wall_fraction!r} is invalid: expected 0 <= low <= high < 1")
    if min_path >= size * size - 1:
        raise ValueError(f"min_path={min_path} is invalid: a {size}x{size} maze has paths of < {size * size - 1} moves")
    if not isinstance(unique_path, bool):
        raise ValueError(f"unique_path={unique_path!r} is invalid: expected a bool")
    return draw_unique_rows(_generate_one, (size, min_path, lo, hi, unique_path), count, seed=seed, source=source,
                            exclude=exclude, what="mazes", workers=workers, progress=progress, chunksize=8)


def maze_exclusions(paths: Sequence[str | os.PathLike]) -> set[str]:
    """Layout keys of the mazes in existing CSVs."""
    return {maze_layout_key(r.question) for p in paths for r in read_puzzle_csv(p)}


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def validate_maze(question: Any, prediction: Any) -> Validation:
    """Whether `prediction` marks a shortest S-G path of `question`: it agrees with the question off the
    path, its 'o' cells are free cells that with S and G form one simple 4-connected path from S to G, and
    that path is as short as the shortest one (A*). Either argument may be a CSV string or tokens."""
    try:
        q = _as_tokens(question, "question")
        p = _as_tokens(prediction, "prediction")
        s, g = _endpoints(q, "question")
    except ValueError as e:
        return Validation(False, str(e))
    if p.shape != q.shape:
        return Validation(False, f"prediction is {p.shape[0]}x{p.shape[1]}, question {q.shape[0]}x{q.shape[1]}")
    if (q == PATH).any():
        return Validation(False, "question already contains path cells ('o')")
    n = q.shape[0]
    qf, pf = q.reshape(-1), p.reshape(-1)
    on_path = pf == PATH
    if (on_path & (qf != FREE)).any():
        c = int(np.flatnonzero(on_path & (qf != FREE))[0])
        return Validation(False, f"path cell at row {c // n}, col {c % n} is not a free cell")
    if ((~on_path) & (pf != qf)).any():
        c = int(np.flatnonzero((~on_path) & (pf != qf))[0])
        return Validation(False, f"cell at row {c // n}, col {c % n} differs from the question off the path")
    dist = _bfs(_free_cells(q), n, s)[g]
    if dist < 0:
        return Validation(False, "the goal is unreachable in the question")
    members = set(np.flatnonzero(on_path).tolist()) | {s, g}
    nb = _neighbours(n)
    prev, cur, steps = -1, s, 0
    while cur != g:
        nxt = [m for m in nb[cur] if m in members and m != prev]
        if len(nxt) != 1:
            return Validation(False, f"the path branches or breaks at row {cur // n}, col {cur % n}")
        prev, cur, steps = cur, nxt[0], steps + 1
        if steps > len(members):
            return Validation(False, "the path loops")
    if steps + 1 != len(members):
        return Validation(False, f"{len(members) - steps - 1} path cell(s) are not on the S-G path")
    if steps != dist:
        return Validation(False, f"path has {steps} moves, the shortest has {dist}")
    return Validation(True)


# ----------------------------------------------------------------------------------------------------
# Dataset builder (Maze-Hard layout)
# ----------------------------------------------------------------------------------------------------


def _load_maze_csv(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    qs, ans, n0 = [], [], None
    for i, row in enumerate(read_puzzle_csv(path)):
        where = f"{path}: row {i + 1}"
        q, a = _as_tokens(row.question, f"{where} question"), _as_tokens(row.answer, f"{where} answer")
        if q.shape != a.shape or (n0 is not None and q.shape[0] != n0):
            raise ValueError(f"{where}: grid size {q.shape} differs from {a.shape if q.shape != a.shape else n0}")
        n0 = q.shape[0]
        qs.append(q)
        ans.append(a)
    if not qs:
        raise ValueError(f"{path}: no mazes")
    return np.stack(qs), np.stack(ans)


def _load_maze_csvs(paths: dict[str, pathlib.Path]) -> dict[str, CsvGrids]:
    """Each split's question and answer tokens [N, n, n]; every split has the train split's size n."""
    out: dict[str, CsvGrids] = {}
    for split, path in paths.items():
        q, a = _load_maze_csv(path)
        n = out["train"].questions.shape[1] if out else q.shape[1]
        if q.shape[1] != n:
            raise ValueError(f"{path}: {q.shape[1]}x{q.shape[1]} mazes, but the train split has {n}x{n}")
        out[split] = CsvGrids(q, a)
    return out


def build_maze_dataset(
    source: str | os.PathLike, output: str | os.PathLike, *, train_csv: str = "train.csv",
    test_csv: str = "test.csv", subsample_size: int | None = None, test_subsample_size: int | None = None,
    aug: bool = True, seed: int = 0, overwrite: bool = False,
) -> pathlib.Path:
    """Build the Maze-Hard dataset layout from `source` (a folder holding train_csv/test_csv or a hub repo id
    such as `sapientinc/maze-30x30-hard-1k`). Train: optionally subsampled, each maze a group of its 8
    dihedral images (inputs and labels transformed together; aug=False keeps only the original). Test: as is
    (optionally subsampled)."""
    flags = {**csv_flags(train_csv, test_csv, subsample_size, test_subsample_size), "aug": aug,
             "seed": check_int("seed", seed, 0)}

    def dihedral_groups(split: str, q: np.ndarray, a: np.ndarray, rng: np.random.Generator):
        tids = range(8) if (split == "train" and aug) else range(1)
        images = [np.stack([dihedral_transform(g, t) for t in tids], 1) for g in (q, a)]
        return tuple(x.reshape(len(q), len(tids), -1) for x in images)

    return build_csv_dataset("maze", source, output, flags, load=_load_maze_csvs, expand=dihedral_groups,
                             vocab_size=MAZE_VOCAB_SIZE, overwrite=overwrite)
