"""Maze: TRM vs the Attractor reasoner at a matched budget, with and without the solver (paper §5.2, Table 2:
93.1 % on Maze-Hard (30×30) for the 27M Attractor vs 85.3 % for TRM; here at CPU scale on smaller mazes).

    python experiments/maze.py                       # 10×10 generated mazes with one shortest path > 14 moves
    python experiments/maze.py --size 30 --min-path 110 --no-unique-path --steps 5000   # the Maze-Hard procedure
    python experiments/maze.py --data DIR            # a built dataset (attractor-jax data maze ...)

Writes ``results.json`` and ``maze.png`` into ``--out`` (default experiments/results/maze); the generated data
and the runs go to ``--runs`` (default runs/experiments/maze). Mazes come from the
Searchformer procedure (``generate_maze``: random walls, A* shortest path, no wall layout shared between train
and test), by default only those with one shortest path (``--no-unique-path``: any); training mazes get the 8
dihedral images. Defaults: 1,000 training mazes, TRM's MLP-mixer block, 1,200 steps × 64 (TRM ~60 CPU-min,
the Attractor about three times that).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import puzzle_experiment as pe  # noqa: E402


def generate(a: argparse.Namespace):
    from attractor_jax.data import puzzles as pz

    kw = dict(size=a.size, min_path=a.min_path, unique_path=a.unique_path)
    train = pz.generate_maze(a.train_count, seed=a.seed, **kw)
    test = pz.generate_maze(a.test_count, seed=a.seed + 1000, exclude={pz.maze_layout_key(r.question) for r in train},
                            **kw)
    return train, test


def main(argv=None) -> int:
    from attractor_jax.data import puzzles as pz

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    pe.add_args(ap, name="maze", steps=1200, batch=64, lr=1e-3, train_count=1000, mlp_t=True)
    ap.add_argument("--size", type=int, default=10, help="maze side (default 10; Maze-Hard: 30)")
    ap.add_argument("--min-path", type=int, default=14, help="shortest path longer than this (Maze-Hard: 110)")
    ap.add_argument("--unique-path", action=argparse.BooleanOptionalAction, default=True,
                    help="only mazes with one shortest path (default on: with ties the exact score is capped and "
                         "the dihedral images' labels contradict each other; ~90 %% of 10x10 draws have ties)")
    a = ap.parse_args(argv)
    pe.check(ap, a)
    data = pe.dataset(a, generate, lambda csv, root: pz.build_maze_dataset(csv, root, aug=True, seed=a.seed))
    return pe.finish("maze", a, data, {"trm": "trm-maze-tiny", "attractor": "attractor-maze-tiny"},
                     f"Maze ({a.size}×{a.size} generated, path > {a.min_path} moves)")


if __name__ == "__main__":
    sys.exit(main())
