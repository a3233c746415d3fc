"""Puzzle datasets for the tiny reasoners: Sudoku-Extreme, Maze-Hard and ARC-AGI.

* builders (`build_sudoku_dataset`, `build_maze_dataset`, `build_arc_dataset`) write TRM/HRM's on-disk layout
  (`common`), so datasets built by those projects load unchanged and ours load in theirs;
* `make_puzzle_pipeline` reads a built split by memory map through grain, with TRM's sampling and exact
  resumption (`reader`);
* offline generators written from scratch (`generate_sudoku`: hard puzzles with one solution; `generate_maze`:
  Searchformer mazes with a long shortest path) write the official CSV layout `source,question,answer,rating`;
* validators (`validate_sudoku`, `validate_maze`) check any predicted grid, in CSV or token form;
  `check_sudoku_csv` checks a whole sudoku CSV (solved answers that keep the givens, no repeated question).

This package never imports models (the data layer sits at the bottom of the dependency order).
"""

from attractor_jax.data.puzzles.arc import (
    ARC_VOCAB_SIZE,
    arc_decode_grid,
    arc_inverse_transform,
    arc_vote,
    build_arc_dataset,
    load_arc_tasks,
)
from attractor_jax.data.puzzles.common import (
    CSV_HEADER,
    DIHEDRAL_INVERSE,
    IGNORE_LABEL_ID,
    PuzzleDatasetMetadata,
    PuzzleRow,
    Validation,
    dihedral_transform,
    inverse_dihedral_transform,
    load_puzzle_metadata,
    read_puzzle_csv,
    write_puzzle_csv,
)
from attractor_jax.data.puzzles.maze import (
    MAZE_CHARSET,
    MAZE_VOCAB_SIZE,
    build_maze_dataset,
    generate_maze,
    maze_exclusions,
    maze_layout_key,
    maze_shortest_path,
    maze_shortest_path_count,
    maze_to_string,
    maze_to_tokens,
    validate_maze,
)
from attractor_jax.data.puzzles.reader import PuzzleIterator, load_puzzle_split, make_puzzle_pipeline
from attractor_jax.data.puzzles.sudoku import (
    SUDOKU_SEQ_LEN,
    SUDOKU_VOCAB_SIZE,
    SudokuCSV,
    augment_sudoku,
    build_sudoku_dataset,
    check_sudoku_csv,
    check_sudoku_rows,
    count_sudoku_solutions,
    generate_sudoku,
    rate_sudoku,
    solve_sudoku,
    sudoku_exclusions,
    sudoku_to_string,
    sudoku_to_tokens,
    validate_sudoku,
)

__all__ = [
    "ARC_VOCAB_SIZE",
    "CSV_HEADER",
    "DIHEDRAL_INVERSE",
    "IGNORE_LABEL_ID",
    "MAZE_CHARSET",
    "MAZE_VOCAB_SIZE",
    "SUDOKU_SEQ_LEN",
    "SUDOKU_VOCAB_SIZE",
    "PuzzleDatasetMetadata",
    "PuzzleIterator",
    "PuzzleRow",
    "SudokuCSV",
    "Validation",
    "arc_decode_grid",
    "arc_inverse_transform",
    "arc_vote",
    "augment_sudoku",
    "build_arc_dataset",
    "build_maze_dataset",
    "build_sudoku_dataset",
    "check_sudoku_csv",
    "check_sudoku_rows",
    "count_sudoku_solutions",
    "dihedral_transform",
    "generate_maze",
    "generate_sudoku",
    "inverse_dihedral_transform",
    "load_arc_tasks",
    "load_puzzle_metadata",
    "load_puzzle_split",
    "make_puzzle_pipeline",
    "maze_exclusions",
    "maze_layout_key",
    "maze_shortest_path",
    "maze_shortest_path_count",
    "maze_to_string",
    "maze_to_tokens",
    "rate_sudoku",
    "read_puzzle_csv",
    "solve_sudoku",
    "sudoku_exclusions",
    "sudoku_to_string",
    "sudoku_to_tokens",
    "validate_maze",
    "validate_sudoku",
    "write_puzzle_csv",
]
