"""Puzzle-reasoner check: a few minutes of ``attractor-sudoku-27m`` training in the paper's data format.

Generates hard sudokus offline (minimal puzzles with a unique solution, `generate_sudoku`), builds them in the
TRM/HRM on-disk layout with augmentations (`build_sudoku_dataset`), trains through the real trainer
(``trainer.train`` with the puzzle task: TRM's optimizer, ACT carry, EMA, orbax checkpoints) at the paper's global
batch (768) until ``--seconds`` run out — then the trainer's own SIGTERM path checkpoints and stops — and
evaluates in eval mode on a few test batches with the solver at full depth and removed. Reports rows/s (puzzle
examples advanced one supervision step per second), the solver's iterations, residual and converged
fraction over training (from metrics.jsonl), the loss, and the evaluation.

    python benchmarks/puzzle_check.py                  # on a GPU: ~2-3 min
    python benchmarks/puzzle_check.py --smoke          # anywhere (CPU): tiny preset, a few steps

Run from `benchmarks/gpu_check.py` as part of the GPU check; writes a JSON summary (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import tempfile
import time

FULL = dict(preset="attractor-sudoku-27m", batch_size=768, puzzles=1000, test_puzzles=256, num_aug=8,
            seconds=120.0, log_every=5)
SMOKE = dict(preset="attractor-sudoku-tiny", batch_size=8, puzzles=32, test_puzzles=8, num_aug=1,
             seconds=40.0, log_every=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--preset")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--puzzles", type=int, help="training puzzles to generate")
    ap.add_argument("--test-puzzles", type=int)
    ap.add_argument("--num-aug", type=int)
    ap.add_argument("--seconds", type=float, help="training wall-clock budget (after compilation starts)")
    ap.add_argument("--log-every", type=int)
    ap.add_argument("--out", help="JSON summary (default benchmarks/results/puzzle_check[_smoke].json)")
    a = ap.parse_args(argv)
    d = SMOKE if a.smoke else FULL
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.out = a.out or os.path.join("benchmarks", "results", "puzzle_check_smoke.json" if a.smoke else
                                  "puzzle_check.json")

    import jax

    from attractor_jax.data import puzzles as pz
    from attractor_jax.models import get_config, param_counts
    from attractor_jax.train.optim import reference_optim_config
    from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, evaluate, train

    t0 = time.perf_counter()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="puzzle_check_"))
    (tmp / "csv").mkdir()
    workers = max(1, min(16, os.cpu_count() or 1))
    train_rows = pz.generate_sudoku(a.puzzles, min_rating=0, seed=0, workers=workers)
    test_rows = pz.generate_sudoku(a.test_puzzles, min_rating=0, seed=1, workers=workers,
                                   exclude={r.question for r in train_rows})
    pz.write_puzzle_csv(tmp / "csv" / "train.csv", train_rows)
    pz.write_puzzle_csv(tmp / "csv" / "test.csv", test_rows)
    data = pz.build_sudoku_dataset(tmp / "csv", tmp / "data", num_aug=a.num_aug, seed=0)
    data_s = time.perf_counter() - t0
    print(f"[puzzle_check] {a.puzzles} + {a.test_puzzles} sudokus generated and built in {data_s:.0f} s "
          f"(median rating {sorted(r.rating for r in train_rows)[len(train_rows) // 2]})", flush=True)

    model = get_config(a.preset)
    run = RunConfig(model=model, optim=reference_optim_config(model),
                    train=TrainConfig(steps=100_000, batch_size=a.batch_size, log_every=a.log_every, save_every=0,
                                      keep=1, tensorboard=False, eval_depths=(0,)),
                    data=DataConfig(path=str(data)))
    state = {"start": None}

    def on_log(row):
        now = time.perf_counter()
        if state["start"] is None:
            state["start"] = now
        elif now - state["start"] > a.seconds:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's pre-emption path: checkpoint and stop

    wd = tmp / "run"
    t1 = time.perf_counter()
    train(run, wd, on_log=on_log)
    train_s = time.perf_counter() - t1
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    timed = rows[1:] or rows
    ev = evaluate(wd, depths=[0, None], batches=max(1, a.test_puzzles // a.batch_size))

    def mean(k):
        xs = [r[k] for r in timed if k in r]
        return sum(xs) / len(xs) if xs else None

    summary = {
        "preset": a.preset, "params": param_counts(model)["total"], "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "batch_size": a.batch_size, "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": train_s, "data_seconds": data_s, "rows_per_s": mean("rows_per_s"),
        "solver_iters": mean("solver_iters"), "solver_iters_max": max((r.get("solver_iters_max", 0) for r in rows),
                                                                      default=None),
        "solver_residual": mean("solver_residual"), "solver_converged": mean("solver_converged"),
        "loss_first": rows[0]["loss"] if rows else None, "loss_last": rows[-1]["loss"] if rows else None,
        "train_accuracy_last": rows[-1].get("accuracy") if rows else None,
        "eval": ev["depths"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(summary, fh, indent=2)
    f = ev["depths"]["full"]
    print(f"[puzzle_check] {a.preset}: {summary['steps']} steps × batch {a.batch_size} in {train_s:.0f} s; "
          f"{summary['rows_per_s'] or 0:,.0f} rows/s; solver iters {summary['solver_iters'] or 0:.2f} "
          f"(max {summary['solver_iters_max']}), residual {summary['solver_residual'] or 0:.2e}, converged "
          f"{summary['solver_converged'] or 0:.3f}; loss {summary['loss_first']:.3f} > {summary['loss_last']:.3f}; "
          f"eval cell {f['cell']:.3f} exact {f['exact']:.3f} (T=0 cell {ev['depths']['0']['cell']:.3f})")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
