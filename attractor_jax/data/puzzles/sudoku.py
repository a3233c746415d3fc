"""Sudoku: an exact solver that rates difficulty, a generator of hard puzzles with one solution, augmentation,
a validator and the Sudoku-Extreme dataset builder.

**Grids.** A grid is 81 cells row-major. Three forms are accepted everywhere: a CSV string ('.' or '0' for a
blank, '1'..'9'), raw digits (an int array of 81 or 9x9, 0 = blank) and tokens (the dataset encoding: value+1,
so 1 = blank, 2..10 = digits 1..9, 0 = PAD; vocab 11, seq_len 81, as TRM/HRM encode it).

**Solver.** Candidates are nine 81-bit integers, one per digit (bit c set: the digit may go in cell c), so one
Python integer operation updates a whole board. Propagation repeats, until nothing changes: naked singles (a
cell with one candidate, found for all cells at once by bit-sliced counting over the nine boards), hidden
singles (a digit with one place left in a row, column or box) and locked candidates (a digit confined to one
box-line intersection is removed from the rest of the line, and vice versa). When propagation stalls, it
branches on a cell with two candidates (else the cell with fewest) and tries each value in turn.

**Rating** = the number of guesses (values tried at branch points) in the complete search that finds the
solution *and* proves it is the only one; 0 = solved by propagation alone. It is deterministic for a given
grid (but, like tdoku's guess count that rates Sudoku-Extreme, not invariant under the sudoku symmetries), and
on a scale 6-9 times tdoku's (which stops at the first solution and propagates differently). Medians, ours vs
tdoku's: magictour top1465 24 vs 4, forum hardest 1106 422 vs 47, forum hardest 1905 (every 5th) 189 vs 30,
17-clue 0 vs 0.

**Generation** (`generate_sudoku`): a random solved grid (the solver with random branching), then givens are
removed in random order while the puzzle stays unique, which gives a minimal puzzle; it is kept if its rating
is at least `min_rating`, else a new grid is drawn (so the ratings follow the distribution of random minimal
puzzles above the floor; a local search that swaps givens to climb in rating was tried and was slower per
accepted puzzle). Measured on this 2-core CPU: min_rating=0 about 50 puzzles per CPU-second (54 % rated 0,
median 0, max 180), min_rating=10 (the default) about 2.2 per CPU-second (median 12, 68 % in 11-50); ratings
as high as the forum lists' (median 189+) are too rare in random minimal puzzles to collect in minutes.
Removing given c (value v) keeps a unique puzzle P unique when v is implied at once by a single (checked on
bitboards in a few operations); otherwise one search for a solution of P - c with v forbidden at c decides it
(any second solution must differ from P's at c), which is much cheaper than counting solutions. Puzzle i is
drawn from `np.random.default_rng([seed, i, attempt])`, so the output does not depend on the number of worker
processes.

**Termination.** The rating has no useful upper bound in terms of the number of blanks b (a complete search
tree can branch on every blank), but it has a lower one: a unique puzzle with b <= 4 blanks is always rated 0.
Propagation only stalls when every blank shares its row, its column and its box with another blank (else it is
a naked single); with at most 4 blanks that forces a rectangle of rows r1, r2 and columns c1, c2 in one band,
whose cell (r1, c1) has candidates {a, b} & {a, c} (b at (r1, c2), c at (r2, c1)). b = c is impossible: in
one box the four digits differ, and across two boxes (a b / b a) the swapped rectangle is a second solution.
So (r1, c1) is a single. `generate_sudoku` rejects min_rating > 0 with blanks <= 4 up front; beyond that
the rate of qualifying puzzles is only known empirically (blanks=30: no rating above 0 in 300 draws;
blanks=50: 8 % above 0, none >= 10; minimal: 7 % >= 10), so each puzzle gets at most `max_attempts` random
grids (default 1000) before a ValueError that names the count reached, the blanks and the rating.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from attractor_jax.data.common import check_int
from attractor_jax.data.puzzles.common import (CsvGrids, Draw, PuzzleRow, Validation, build_csv_dataset,
    csv_flags, draw_unique_rows, read_puzzle_csv)

__all__ = [
    "SUDOKU_SEQ_LEN",
    "SUDOKU_VOCAB_SIZE",
    "SudokuCSV",
    "augment_sudoku",
    "build_sudoku_dataset",
    "check_sudoku_csv",
    "check_sudoku_rows",
    "count_sudoku_solutions",
    "generate_sudoku",
    "rate_sudoku",
    "solve_sudoku",
    "sudoku_to_string",
    "sudoku_to_tokens",
    "validate_sudoku",
]

SUDOKU_VOCAB_SIZE = 11  # PAD 0, blank 1, digits 2..10
SUDOKU_SEQ_LEN = 81

# ----------------------------------------------------------------------------------------------------
# Grid forms
# ----------------------------------------------------------------------------------------------------


def _as_digits(grid: Any, what: str, encoded: bool | None = None) -> np.ndarray:
    """Raw digits int8 [81] (0 = blank) from a CSV string, raw digits or tokens. `encoded` None guesses:
    arrays holding a 10 (or, for a full grid, no 0..1) are tokens."""
    if isinstance(grid, (bytes, bytearray)):
        grid = grid.decode()
    if isinstance(grid, str):
        s = grid.strip()
        if len(s) != 81:
            raise ValueError(f"{what}: a sudoku string has 81 characters, got {len(s)}")
        a = np.frombuffer(s.replace(".", "0").encode(), np.uint8).astype(np.int16) - ord("0")
        if a.min() < 0 or a.max() > 9:
            bad = sorted(set(ch for ch in s if ch not in ".0123456789"))
            raise ValueError(f"{what}: characters {bad} are not '.', '0'..'9'")
        return a.astype(np.int8)
    a = np.asarray(grid)
    if a.size != 81 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: expected 81 integer cells (or a 9x9 grid), got shape {a.shape} {a.dtype}")
    a = a.reshape(81).astype(np.int16)
    if encoded is None:
        encoded = bool((a == 10).any())
    if encoded:
        if a.min() < 0 or a.max() > 10:
            raise ValueError(f"{what}: sudoku tokens are 0..10, got {int(a.min())}..{int(a.max())}")
        a = np.where(a >= 2, a - 1, 0)  # PAD and blank -> 0
    elif a.min() < 0 or a.max() > 9:
        raise ValueError(f"{what}: sudoku digits are 0..9, got {int(a.min())}..{int(a.max())}")
    return a.astype(np.int8)


_UNIT_NAMES = ("row", "column", "box")


def _units(grids: np.ndarray) -> np.ndarray:
    """[N, 27, 9]: the 9 rows, 9 columns and 9 boxes of each grid in [N, 81]."""
    g = grids.reshape(-1, 9, 9)
    boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    return np.concatenate([g, g.transpose(0, 2, 1), boxes], axis=1)


def sudoku_to_string(grid: Any, encoded: bool | None = None) -> str:
    """The 81-character CSV form ('.' for a blank)."""
    d = _as_digits(grid, "grid", encoded)
    return "".join("." if v == 0 else chr(48 + int(v)) for v in d)


def sudoku_to_tokens(grid: Any, encoded: bool | None = None) -> np.ndarray:
    """Dataset tokens uint8 [81]: digit + 1 (blank -> 1)."""
    return (_as_digits(grid, "grid", encoded).astype(np.uint8) + 1).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Bitboard solver
# ----------------------------------------------------------------------------------------------------

_ALL = (1 << 81) - 1
_CELL = [1 << c for c in range(81)]
_ROWS = [sum(_CELL[r * 9 + c] for c in range(9)) for r in range(9)]
_COLS = [sum(_CELL[r * 9 + c] for r in range(9)) for c in range(9)]
_BOXES = [sum(_CELL[(br * 3 + i) * 9 + bc * 3 + j] for i in range(3) for j in range(3))
          for br in range(3) for bc in range(3)]
_UNITS = _ROWS + _COLS + _BOXES
_CELL_UNITS = [(_ROWS[c // 9], _COLS[c % 9], _BOXES[(c // 27) * 3 + (c % 9) // 3]) for c in range(81)]
_PEERS = [(r | k | b) & ~_CELL[c] for c, (r, k, b) in enumerate(_CELL_UNITS)]
_NOT_PEERS = [_ALL & ~p for p in _PEERS]
_NOT_CELL = [_ALL & ~b for b in _CELL]
# box-line intersections: (box & line, box - line, ~(line - box), line - box, ~(box - line))
_INTER = [(B & L, B & ~L, _ALL & ~(L & ~B), L & ~B, _ALL & ~(B & ~L)) for B in _BOXES for L in _ROWS + _COLS if B & L]
_D9 = range(9)


def _propagate(cand: list[int], done: int, level: int = 3) -> int:
    """Apply naked singles (level >= 1), hidden singles (level >= 2) and locked candidates (level 3) to `cand`
    in place until a fixpoint. Returns the mask of cells whose value is fixed and propagated, or -1 on a
    contradiction."""
    while True:
        ones = twos = 0
        for b in cand:  # bit-sliced count of candidates per cell: ones = >=1, twos = >=2
            twos |= ones & b
            ones |= b
        if ones != _ALL:
            return -1  # a cell without candidates
        singles = ones & ~twos & ~done
        if singles:
            for d in _D9:
                s = cand[d] & singles
                while s:
                    low = s & -s
                    s ^= low
                    if not cand[d] & low:
                        return -1  # an earlier single in this pass took this cell's only value
                    cand[d] &= _NOT_PEERS[low.bit_length() - 1]
            done |= singles
            continue
        if level < 2:
            return done
        found = False
        for d in _D9:  # hidden singles
            b = cand[d]
            for u in _UNITS:
                x = b & u
                if not x & (x - 1):
                    if not x:
                        return -1  # digit d has no place in unit u
                    if not x & done:
                        nx = ~x
                        for e in _D9:
                            if e != d:
                                cand[e] &= nx
                        found = True
        if found:
            continue
        if level < 3:
            return done
        changed = False
        for d in _D9:  # locked candidates (pointing and claiming)
            b = cand[d] & ~done
            if not b:
                continue
            nb = b
            for inter, box_only, not_line_only, line_only, not_box_only in _INTER:
                if nb & inter:
                    if not nb & box_only:
                        nb &= not_line_only
                    elif not nb & line_only:
                        nb &= not_box_only
            if nb != b:
                cand[d] &= nb | done
                changed = True
        if not changed:
            return done


def _bivalue_cells(cand: list[int], done: int) -> int:
    """The mask of the unfixed cells with exactly two candidates (bit-sliced counts, as in `_propagate`)."""
    ones = twos = threes = 0
    for b in cand:
        threes |= twos & b
        twos |= ones & b
        ones |= b
    return twos & ~threes & ~done


def _branch_cell(cand: list[int], done: int) -> int:
    """The bit of an unfixed cell to branch on: the first with two candidates, else one with fewest."""
    biv = _bivalue_cells(cand, done)
    if biv:
        return biv & -biv
    best, pick = 10, 0
    rest = _ALL & ~done
    while rest:
        low = rest & -rest
        rest ^= low
        n = sum(1 for b in cand if b & low)
        if n < best:
            best, pick = n, low
    return pick


class _OutOfGuesses(Exception):
    pass


class _Search:
    """Depth-first search with a guess counter; `rng` (a numpy Generator) randomises branching; past
    `max_guesses` guesses it raises `_OutOfGuesses`."""

    def __init__(self, limit: int, rng: np.random.Generator | None = None, level: int = 3,
                 max_guesses: int | None = None):
        self.limit, self.rng, self.level, self.max_guesses = limit, rng, level, max_guesses
        self.guesses = 0
        self.solutions: list[list[int]] = []

    def run(self, cand: list[int], done: int) -> None:
        if self.max_guesses is not None and self.guesses > self.max_guesses:
            raise _OutOfGuesses
        done = _propagate(cand, done, self.level)
        if done < 0:
            return
        if done == _ALL:
            self.solutions.append(cand)
            return
        if self.rng is None:
            low = _branch_cell(cand, done)
        else:  # random cell among those with fewest candidates
            low = self._random_cell(cand, done)
        digits = [d for d in _D9 if cand[d] & low]
        if self.rng is not None:
            self.rng.shuffle(digits)
        nlow = ~low
        for d in digits:
            self.guesses += 1
            child = [b & nlow for b in cand]
            child[d] |= low
            self.run(child, done)
            if len(self.solutions) >= self.limit:
                return

    def _random_cell(self, cand: list[int], done: int) -> int:
        pool = _bivalue_cells(cand, done) or (_ALL & ~done)
        cells = [c for c in range(81) if pool >> c & 1]
        return _CELL[cells[int(self.rng.integers(len(cells)))]]


def _cand_from_digits(digits: Sequence[int]) -> list[int]:
    cand = [_ALL] * 9
    for c, v in enumerate(digits.tolist() if isinstance(digits, np.ndarray) else digits):
        if v:
            nc = _NOT_CELL[c]
            for e in _D9:
                if e != v - 1:
                    cand[e] &= nc
    return cand


def _digits_from_cand(cand: list[int]) -> np.ndarray:
    out = np.zeros(81, np.int8)
    for d in _D9:
        b = cand[d]
        while b:
            low = b & -b
            b ^= low
            out[low.bit_length() - 1] = d + 1
    return out


def _givens_consistent(digits: np.ndarray) -> bool:
    for unit in _units(digits)[0]:
        v = unit[unit > 0]
        if len(np.unique(v)) != len(v):
            return False
    return True


class SudokuSolution(NamedTuple):
    solutions: list[np.ndarray]  # raw digits int8 [81] each
    guesses: int


def solve_sudoku(puzzle: Any, max_solutions: int = 2, encoded: bool | None = None) -> SudokuSolution:
    """Up to `max_solutions` solutions (raw digits [81]) and the guesses the search made. With
    max_solutions=2 a single returned solution proves uniqueness."""
    digits = _as_digits(puzzle, "puzzle", encoded)
    if max_solutions < 1:
        raise ValueError(f"max_solutions={max_solutions} is invalid: expected >= 1")
    if not _givens_consistent(digits):
        return SudokuSolution([], 0)
    s = _Search(max_solutions)
    s.run(_cand_from_digits(digits), 0)
    return SudokuSolution([_digits_from_cand(c) for c in s.solutions], s.guesses)


def count_sudoku_solutions(puzzle: Any, limit: int = 2, encoded: bool | None = None) -> int:
    """min(number of solutions, limit)."""
    return len(solve_sudoku(puzzle, limit, encoded).solutions)


def rate_sudoku(puzzle: Any, encoded: bool | None = None) -> int:
    """Guesses to solve the puzzle and prove its solution unique (module docstring). ValueError unless the
    puzzle has exactly one solution."""
    sol = solve_sudoku(puzzle, 2, encoded)
    if len(sol.solutions) != 1:
        raise ValueError(f"puzzle has {'no' if not sol.solutions else 'several'} solutions; only a puzzle with "
                         "exactly one solution has a rating")
    return sol.guesses


# ----------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------


# A random fill of the empty grid takes 37 guesses at the median and under 50 in 99.9 % of draws, but its
# running time is heavy-tailed: about one draw in 3,000 runs into a dead region that takes minutes. Past this
# budget the search restarts (from the same generator, so the draw stays deterministic).
FILL_MAX_GUESSES = 200


def _random_solution(rng: np.random.Generator) -> np.ndarray:
    while True:
        s = _Search(1, rng, max_guesses=FILL_MAX_GUESSES)
        try:
            s.run([_ALL] * 9, 0)
        except _OutOfGuesses:
            continue
        return _digits_from_cand(s.solutions[0])


CHECK_LEVEL = 3


def _other_solution_exists(q: np.ndarray, cell: int, value: int) -> bool:
    """Whether puzzle q has a solution with a value other than `value` at its blank `cell`. When q plus
    (cell = value) is unique, this is exactly whether q has more than one solution."""
    cand = _cand_from_digits(q)
    cand[value - 1] &= _NOT_CELL[cell]
    s = _Search(1, level=CHECK_LEVEL)
    s.run(cand, 0)
    return bool(s.solutions)


def _rating(q: np.ndarray) -> int:
    s = _Search(2)
    s.run(_cand_from_digits(q), 0)
    return s.guesses if len(s.solutions) == 1 else -1


def _forced(givens: list[int], c: int, d: int) -> bool:
    """Whether blanking given c (digit d) leaves its value implied by one single: the cell sees the other
    eight digits among the givens, or one of its units has no other free cell that digit d may take."""
    peers = _PEERS[c]
    if all(givens[e] & peers for e in _D9 if e != d):
        return True
    bit = _CELL[c]
    occupied = 0
    for g in givens:
        occupied |= g
    free = ~(occupied & ~bit)
    rest, seen = givens[d] & ~bit, 0
    while rest:
        low = rest & -rest
        rest ^= low
        seen |= _PEERS[low.bit_length() - 1]
    return any(u & free & ~seen == bit for u in _CELL_UNITS[c])


def _minimise(q: np.ndarray, sol: np.ndarray, rng: np.random.Generator, blanks: int = 81) -> np.ndarray:
    """Remove givens in random order while the puzzle keeps its single solution `sol`, stopping once
    `blanks` cells are blank (81: a minimal puzzle)."""
    q = q.copy()
    givens = [0] * 9
    for c, v in enumerate(q.tolist()):
        if v:
            givens[v - 1] |= _CELL[c]
    for c in rng.permutation(81).tolist():
        if 81 - np.count_nonzero(q) >= blanks:
            break
        v = int(q[c])
        if not v:
            continue
        if not _forced(givens, c, v - 1):
            q[c] = 0
            unique = not _other_solution_exists(q, c, v)
            q[c] = v
            if not unique:
                continue
        q[c] = 0
        givens[v - 1] &= ~_CELL[c]
    return q


DEFAULT_MAX_ATTEMPTS = 1000
# A unique puzzle with at most this many blanks is solved by naked singles alone, so its rating is 0 (module
# docstring): a positive min_rating with so few blanks can never be met.
MAX_BLANKS_RATED_ZERO = 4


def _generate_one(args: tuple[int, ...]) -> Draw:
    """Puzzle `index` (`generate_sudoku`), keyed by its question; once `max_attempts` random grids failed, a
    draw that gave up with the best rating seen (-1 when no draw reached `blanks`)."""
    seed, index, attempt, min_rating, blanks, max_attempts = args
    rng = np.random.default_rng([seed, index, attempt])
    best = -1
    for _ in range(max_attempts):
        sol = _random_solution(rng)
        q = _minimise(sol, sol, rng, blanks)
        if blanks < 81 and 81 - np.count_nonzero(q) < blanks:
            continue  # became minimal before reaching `blanks`
        r = _rating(q)
        best = max(best, r)
        if r >= min_rating:
            question = sudoku_to_string(q)
            return Draw(question, sudoku_to_string(sol), r, question)
    return Draw(None, None, best, None)


def _gave_up_message(count: int, blanks: int | None, min_rating: int, max_attempts: int,
                     reached: int, index: int, best: int, excluded: bool) -> str:
    """Why `generate_sudoku` gave up (`gave_up` of `draw_unique_rows`, the first four arguments bound)."""
    shape = "minimal puzzles" if blanks is None else f"puzzles with {blanks} blanks"
    if excluded:
        why = (f"puzzle {index + 1} repeated an excluded or earlier question {max_attempts} times")
    elif best < 0:
        why = (f"none of {max_attempts} random grids for puzzle {index + 1} reached {blanks} blanks with one "
               "solution (they became minimal first; a random minimal puzzle has about 56 blanks)")
    else:
        why = (f"none of {max_attempts} random grids for puzzle {index + 1} was rated >= {min_rating} "
               f"(highest rating seen: {best})")
    return (f"gave up generating sudokus: reached {reached} of {count} {shape} rated >= {min_rating}; {why}. "
            "Lower --min-rating, use more --blanks (or none, for minimal puzzles), or raise --max-attempts")


def generate_sudoku(
    count: int, *, min_rating: int = 10, seed: int = 0, workers: int = 1, exclude: Iterable[str] = (),
    source: str = "attractor_jax.generate_sudoku", progress: bool = False, blanks: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[PuzzleRow]:
    """`count` puzzles with exactly one solution and rating >= min_rating, as CSV rows (source, question,
    answer, rating). Questions in `exclude` (CSV strings) or repeated are replaced by fresh draws. workers > 1
    starts that many spawned processes (from a script, call this under `if __name__ == "__main__":`).
    `blanks`: stop removing givens once this many cells are blank (easy puzzles for quick experiments; still
    exactly one solution); None removes givens until the puzzle is minimal (20–60 blanks is a sensible range:
    a random minimal puzzle has about 56). `progress` shows a progress bar on stdout.

    Never runs unbounded: a min_rating that no puzzle with `blanks` blanks can have is a ValueError up front
    (blanks <= 4 forces rating 0, module docstring); otherwise each puzzle gets at most `max_attempts` random
    grids (and at most `max_attempts` redraws for questions that repeat `exclude` or an earlier one), after
    which a ValueError names the count reached, the blanks and the rating asked for. The default (1000)
    gives up after about 35 CPU-seconds per puzzle for minimal puzzles, about 5-7 s with blanks=30;
    min_rating=10 needs about 14 grids per minimal puzzle on average."""
    count = check_int("count", count, 1)
    if blanks is not None and (isinstance(blanks, bool) or not isinstance(blanks, int)
                               or not 1 <= blanks <= 64):
        raise ValueError(f"blanks={blanks!r} is invalid: expected an int in [1, 64] (a sudoku with a unique "
                         "solution has at least 17 givens)")
    min_rating = check_int("min_rating", min_rating, 0)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", workers, 1)
    max_attempts = check_int("max_attempts", max_attempts, 1)
    if blanks is not None and blanks <= MAX_BLANKS_RATED_ZERO and min_rating > 0:
        raise ValueError(
            f"min_rating={min_rating} is unreachable with blanks={blanks}: a sudoku with one solution and at "
            f"most {MAX_BLANKS_RATED_ZERO} blanks is solved by singles alone (rating 0); use more blanks or "
            "--min-rating 0")

    gave_up = functools.partial(_gave_up_message, count, blanks, min_rating, max_attempts)
    # chunks of one puzzle: a puzzle that gives up is reported at once, not after its chunk
    return draw_unique_rows(_generate_one, (min_rating, 81 if blanks is None else blanks, max_attempts),
                            count, seed=seed, source=source, exclude=exclude, what="sudokus", workers=workers,
                            progress=progress, max_redraws=max_attempts, gave_up=gave_up)


# ----------------------------------------------------------------------------------------------------
# Augmentation and validation
# ----------------------------------------------------------------------------------------------------


def augment_sudoku(question: np.ndarray, answer: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random validity-preserving relabelling of a (question, answer) pair of raw 9x9 digit grids: digits
    permuted (blank stays 0), transposed with probability 1/2, bands and the rows within each band permuted,
    stacks and the columns within each stack permuted."""
    relabel = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.int8)
    transpose = rng.random() < 0.5
    rows = np.concatenate([3 * b + rng.permutation(3) for b in rng.permutation(3)])
    cols = np.concatenate([3 * s + rng.permutation(3) for s in rng.permutation(3)])

    def apply(g: np.ndarray) -> np.ndarray:
        g = np.asarray(g).reshape(9, 9)
        if transpose:
            g = g.T
        return relabel[g[rows][:, cols]]

    return apply(question), apply(answer)


def validate_sudoku(question: Any, prediction: Any, encoded: bool | None = None) -> Validation:
    """Whether `prediction` is a complete valid grid that keeps every given of `question` (both in any grid
    form). Arrays are read as tokens when `encoded` is True, as raw digits when False; None reads both as
    tokens when either holds a 10 (a complete token grid always does): pass encoded=True for model outputs."""
    if encoded is None:
        arrays = [np.asarray(x) for x in (question, prediction) if not isinstance(x, (str, bytes, bytearray))]
        encoded = any(a.size and np.issubdtype(a.dtype, np.integer) and (a == 10).any() for a in arrays)
    try:
        q = _as_digits(question, "question", encoded)
        p = _as_digits(prediction, "prediction", encoded)
    except ValueError as e:
        return Validation(False, str(e))
    if (p == 0).any():
        return Validation(False, f"{int((p == 0).sum())} cell(s) are blank or PAD")
    given = q > 0
    if (p[given] != q[given]).any():
        c = int(np.flatnonzero(given & (p != q))[0])
        return Validation(False, f"given at row {c // 9}, col {c % 9} changed from {q[c]} to {p[c]}")
    for k, unit in enumerate(_units(p)[0]):
        if len(np.unique(unit)) != 9:
            return Validation(False, f"{_UNIT_NAMES[k // 9]} {k % 9} repeats a digit")
    return Validation(True)


# ----------------------------------------------------------------------------------------------------
# Dataset builder (Sudoku-Extreme layout)
# ----------------------------------------------------------------------------------------------------


class SudokuCSV(NamedTuple):
    """A checked sudoku CSV (`check_sudoku_csv`): raw digits int8 [N, 81] (0 = blank), ratings int64 [N],
    and how many later duplicate questions were dropped (dedupe=True)."""

    questions: np.ndarray
    answers: np.ndarray
    ratings: np.ndarray
    dropped_duplicates: int


_SHOW_LINES = 5  # line numbers listed per failed check


def _parse_grids(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw digits int8 [N, 81] of CSV grid strings ('.' or '0' blank) and a mask of the malformed ones (not 81
    characters of '.0123456789'), whose rows are left 0."""
    n = len(texts)
    out = np.zeros((n, 81), np.int8)
    bad = np.zeros(n, bool)
    raw = [t.strip().encode("utf-8", "replace") for t in texts]
    ok = np.array([len(b) == 81 for b in raw], bool)
    bad |= ~ok
    idx = np.flatnonzero(ok)
    if len(idx):
        buf = np.frombuffer(b"".join(raw[i] for i in idx), np.uint8).reshape(-1, 81)
        buf = np.where(buf == ord("."), ord("0"), buf).astype(np.int16) - ord("0")
        good = ((buf >= 0) & (buf <= 9)).all(axis=1)
        out[idx[good]] = buf[good].astype(np.int8)
        bad[idx[~good]] = True
    return out, bad


def _solved_grid_mask(answers: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Which complete grids are solved sudokus: every row, column and box, sorted, is exactly 1..9."""
    ok = np.empty(len(answers), bool)
    want = np.arange(1, 10, dtype=np.int8)
    for s in range(0, len(answers), chunk):
        u = np.sort(_units(answers[s:s + chunk]), axis=-1)
        ok[s:s + chunk] = (u == want).all(axis=(1, 2))
    return ok


def _first_unit_fault(answer: np.ndarray) -> str:
    """'row 2 of 9 holds 5 more than once and lacks 7' for the first unit (counted from 1) of a complete grid
    that is not a permutation of 1..9."""
    for k, unit in enumerate(_units(answer)[0]):
        counts = np.bincount(unit, minlength=10)[1:]
        if (counts != 1).any():
            name = _UNIT_NAMES[k // 9]
            twice = [str(d + 1) for d in np.flatnonzero(counts > 1)]
            lacks = [str(d + 1) for d in np.flatnonzero(counts == 0)]
            return (f"{name} {k % 9 + 1} of 9 holds {', '.join(twice)} more than once and lacks "
                    f"{', '.join(lacks)}")
    return "no unit fault"


def _csv_line_numbers(path: pathlib.Path) -> list[int]:
    """The 1-based CSV line of each row `read_puzzle_csv` returns (header = line 1; blank records skipped)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)
        return [reader.line_num for rec in reader if rec]


def _lines_text(lines: Sequence[int]) -> str:
    shown = ", ".join(str(x) for x in lines[:_SHOW_LINES])
    more = f", ... ({len(lines) - _SHOW_LINES} more)" if len(lines) > _SHOW_LINES else ""
    s = "s" if len(lines) != 1 else ""
    return f"{len(lines)} row{s} (CSV line{s} {shown}{more})"


def check_sudoku_rows(
    rows: Sequence[PuzzleRow], *, dedupe: bool = False, where: str = "sudoku CSV",
    line_numbers: Sequence[int] | Callable[[], Sequence[int]] | None = None,
) -> SudokuCSV:
    """Check every row of a sudoku CSV and return its grids, or raise one ValueError (a single line) that
    names each failed check with the CSV line numbers of its rows (the first few and the count):

    * the question and answer are 81 characters of '.', '0'..'9' (the answer complete: no blank);
    * the answer is a solved sudoku: each row, column and 3x3 box holds 1..9 exactly once;
    * the answer extends the question: every given digit equals the answer's digit at that cell;
    * no question (blanks '.' and '0' alike) appears twice with different answers (several solutions), and
      none appears twice at all unless `dedupe`, which keeps the first and drops later ones.

    `line_numbers` (a list or a callable giving one, called only on failure) maps row i to its line in the
    file; by default line i + 2 (a header, then one line per row)."""
    n = len(rows)
    q, q_bad = _parse_grids([r.question for r in rows])
    a, a_bad = _parse_grids([r.answer for r in rows])
    incomplete = ~a_bad & (a == 0).any(axis=1)
    comparable = ~q_bad & ~a_bad & ~incomplete
    unsolved = comparable & ~_solved_grid_mask(a)
    disagrees = comparable & ((q > 0) & (q != a)).any(axis=1)
    first_of: dict[bytes, int] = {}
    duplicate, conflicting, keep = [], [], np.ones(n, bool)
    for i in np.flatnonzero(~q_bad).tolist():
        key = q[i].tobytes()
        j = first_of.setdefault(key, i)
        if j != i:
            keep[i] = False
            (conflicting if not a_bad[i] and not a_bad[j] and (a[i] != a[j]).any() else duplicate).append(i)
    failures: list[tuple[str, np.ndarray]] = [
        ("question is not 81 characters of '.', '0'..'9'", np.flatnonzero(q_bad)),
        ("answer is not 81 characters of '.', '0'..'9'", np.flatnonzero(a_bad)),
        ("answer has blank cells", np.flatnonzero(incomplete)),
        ("answer is not a solved sudoku (a row, column or box does not hold 1..9 exactly once)",
         np.flatnonzero(unsolved)),
        ("answer disagrees with a given of the question", np.flatnonzero(disagrees)),
        ("question repeats an earlier one with a different answer (several solutions)",
         np.array(conflicting, int)),
    ]
    if not dedupe:
        failures.append(("question repeats an earlier one (pass --dedupe to drop later duplicates)",
                         np.array(duplicate, int)))
    failures = [(what, idx) for what, idx in failures if len(idx)]
    if failures:
        lines = line_numbers() if callable(line_numbers) else line_numbers
        lines = list(range(2, n + 2)) if lines is None else list(lines)
        bad = np.unique(np.concatenate([idx for _, idx in failures]))
        parts = []
        for what, idx in failures:
            text = f"{what}: {_lines_text([lines[i] for i in idx])}"
            if what.startswith("answer is not a solved"):
                text += f", first: line {lines[idx[0]]} {_first_unit_fault(a[idx[0]])}"
            elif what.startswith("question repeats"):
                i = idx[0]
                text += f", first: line {lines[i]} repeats line {lines[first_of[q[i].tobytes()]]}"
            parts.append(text)
        raise ValueError(f"{where}: {len(bad)} of {n} rows fail validation, nothing written; "
                         + "; ".join(parts))
    ratings = np.array([r.rating for r in rows], np.int64)
    return SudokuCSV(q[keep], a[keep], ratings[keep], int(n - keep.sum()))


def check_sudoku_csv(path: str | os.PathLike, *, dedupe: bool = False) -> SudokuCSV:
    """`check_sudoku_rows` on the rows of a CSV in the official layout; errors cite the file's lines."""
    path = pathlib.Path(path)
    rows = read_puzzle_csv(path)
    return check_sudoku_rows(rows, dedupe=dedupe, where=str(path),
                             line_numbers=lambda: _csv_line_numbers(path))


def _load_sudoku_csvs(paths: dict[str, pathlib.Path], min_rating: int | None, dedupe: bool
                      ) -> dict[str, CsvGrids]:
    """Each split's checked questions and answers (raw digits [N, 81]) rated >= min_rating, noting the
    duplicates dropped."""
    out = {}
    for split, path in paths.items():
        data = check_sudoku_csv(path, dedupe=dedupe)
        keep = np.ones(len(data.ratings), bool) if min_rating is None else data.ratings >= min_rating
        if not keep.any():
            raise ValueError(f"{path}: no puzzles" + (f" rated >= {min_rating}" if min_rating is not None else ""))
        out[split] = CsvGrids(data.questions[keep], data.answers[keep],
                              {"dropped_duplicates": data.dropped_duplicates})
    return out


def _augmented_groups(num_aug: int) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """`expand` for `build_csv_dataset`: each train puzzle (raw digits) followed by `num_aug` draws of
    `augment_sudoku`, each test puzzle alone; as tokens (digit + 1)."""

    def expand(split: str, q: np.ndarray, a: np.ndarray, rng: np.random.Generator):
        k = num_aug if split == "train" else 0
        ins = np.empty((len(q), 1 + k, 81), np.uint8)
        labs = np.empty_like(ins)
        for i in range(len(q)):
            ins[i, 0], labs[i, 0] = q[i], a[i]
            for j in range(1, k + 1):
                qa, aa = augment_sudoku(q[i], a[i], rng)
                ins[i, j], labs[i, j] = qa.reshape(81), aa.reshape(81)
        return ins + 1, labs + 1

    return expand


def build_sudoku_dataset(
    source: str | os.PathLike, output: str | os.PathLike, *, train_csv: str = "train.csv",
    test_csv: str = "test.csv", subsample_size: int | None = None, test_subsample_size: int | None = None,
    num_aug: int = 0, min_rating: int | None = None, seed: int = 0, overwrite: bool = False,
    dedupe: bool = False,
) -> pathlib.Path:
    """Build the Sudoku-Extreme dataset layout from `source` (a folder holding train_csv/test_csv or a hub
    repo id such as `sapientinc/sudoku-extreme`).

    Train: optionally filtered by rating, subsampled to `subsample_size` puzzles (seeded), and each puzzle
    becomes a group of 1 + num_aug puzzles (the original, then `augment_sudoku` draws). Test: filtered,
    optionally subsampled (`test_subsample_size`; TRM uses all), never augmented.

    Every row of both CSVs is checked first (`check_sudoku_rows`: a solved answer that extends its question,
    no repeated question unless `dedupe`, which drops later repeats and records their number per split in
    builder.json as `dropped_duplicates`); any failure is one ValueError and nothing is written.
    """
    flags = {
        **csv_flags(train_csv, test_csv, subsample_size, test_subsample_size),
        "num_aug": check_int("num_aug", num_aug, 0),
        "min_rating": min_rating,
        "seed": check_int("seed", seed, 0),
        "dedupe": dedupe,
    }
    return build_csv_dataset(
        "sudoku", source, output, flags, load=lambda paths: _load_sudoku_csvs(paths, min_rating, dedupe),
        expand=_augmented_groups(flags["num_aug"]), vocab_size=SUDOKU_VOCAB_SIZE, overwrite=overwrite,
    )


def sudoku_exclusions(paths: Sequence[str | os.PathLike]) -> set[str]:
    """Question strings of existing CSVs (to keep a generated test set disjoint from a train set)."""
    out: set[str] = set()
    for p in paths:
        out.update(sudoku_to_string(r.question) for r in read_puzzle_csv(p))
    return out
