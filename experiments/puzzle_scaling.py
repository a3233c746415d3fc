"""Test-time scaling of the trained reasoners (the paper's adaptive-depth argument) and, for sudoku, their
accuracy on the real hard puzzle lists in ``../shared/data/sudoku/``.

Reads the runs that ``sudoku.py`` / ``maze.py`` trained (``--runs DIR`` holding ``trm/`` and ``attractor/``) and
evaluates them, in eval mode with the EMA weights, on their test split while changing only inference compute:

- TRM: the number of supervision steps, up to ``--max-steps`` (beyond the trained ``halt_max_steps`` too);
- the Attractor: the same, and at each step the solver's ``max_iter`` (``--max-iters``; 0 removes the solver)
  and, at the full solve, its tolerance (``--tols``).

Every setting is one curve over supervision steps: exact and cell accuracy against the f-evaluations (L_level
applications) per puzzle counted up to that step (``nfe_by_step``: measured, not estimated). With ``--real-lists``
(sudoku only), each list is built into a dataset of ``--real-count`` puzzles (seeded subsample) and both models
are scored at their trained setting, beside the copy-the-givens baseline; ``--test-sets`` scores them the same
way on other built datasets (e.g. generated puzzles with more blanks than the training data).

Writes ``<out>/results.json``, ``<out>/scaling.png`` (default out: experiments/results/<kind>_scaling).

Usage: python experiments/puzzle_scaling.py --kind sudoku [--runs runs/experiments/sudoku] [--real-lists]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

REAL_LISTS = ("sudoku_17_clue_every10th.csv", "sudoku_magictour_top1465.csv",
              "sudoku_forum_hardest_1905_11plus_every5th.csv", "sudoku_forum_hardest_1106.csv")
COLORS = {"trm": "tab:blue", "attractor": "tab:red"}


def csv_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def with_inference(run, *, steps: int | None = None, tol: float | None = None):
    """``run`` with the reasoner's supervision steps and/or solver tolerance changed (parameters unchanged)."""
    from attractor_jax.models import get_config

    changes = {}
    if steps is not None:
        changes["halt_max_steps"] = steps
    if tol is not None:
        changes["solver"] = dataclasses.replace(run.model.solver, tol=tol)
    return dataclasses.replace(run, model=get_config(run.model, **changes)) if changes else run


def curves(label: str, wd: pathlib.Path, a: argparse.Namespace) -> list[dict]:
    """One row per inference setting: its label and, per supervision step, f-evaluations and accuracies."""
    from attractor_jax.train.trainer import evaluate, read_run

    run = with_inference(read_run(wd), steps=a.max_steps)
    settings = [("trained setting" if label == "trm" else "full solve", None, None)]
    if label == "attractor":
        settings += [(f"max_iter {d}", d, None) for d in a.max_iters]
        settings += [(f"tol {t:g}", None, t) for t in a.tols]
    rows = []
    for name, depth, tol in settings:
        t0 = time.perf_counter()
        r = evaluate(wd, depths=[depth], run=with_inference(run, tol=tol), write=False)["depths"]
        (res,) = r.values()
        rows.append({"model": label, "setting": name, "max_iter": depth, "tol": tol,
                     "nfe_by_step": res["nfe_by_step"], "exact_by_step": res["exact_by_step"],
                     "cell_by_step": res["cell_by_step"], "copy_cell": res["copy_cell"], "count": res["count"],
                     **{k: res[k] for k in ("solver_iters", "solver_residual", "solver_converged") if k in res}})
        print(f"  {label:9s} {name:16s} exact by step {' '.join(f'{x:.3f}' for x in res['exact_by_step'])}  "
              f"f-evals {res['nfe_by_step'][-1]:.1f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def score(dirs: dict[str, pathlib.Path], name: str, root: pathlib.Path) -> list[dict]:
    """Both models at their trained setting on the test split of the built dataset ``root``."""
    from attractor_jax.train.trainer import evaluate

    rows = []
    for label, wd in dirs.items():
        (res,) = evaluate(wd, depths=[None], data_path=str(root), write=False)["depths"].values()
        rows.append({"list": name, "model": label, "count": res["count"], "exact": res["exact"],
                     "cell": res["cell"], "copy_cell": res["copy_cell"], "nfe": res["nfe"]})
        print(f"  {name:48s} {label:9s} exact {res['exact']:.3f}  cell {res['cell']:.3f}  "
              f"(copy-the-givens cell {res['copy_cell']:.3f})", flush=True)
    return rows


def real_lists(dirs: dict[str, pathlib.Path], a: argparse.Namespace) -> list[dict]:
    """Both models at their trained setting on ``--real-count`` puzzles of each chosen real list."""
    from attractor_jax.data.puzzles import build_sudoku_dataset

    rows = []
    for name in a.real_lists:
        root = pathlib.Path(a.runs) / "real" / f"{pathlib.Path(name).stem}-{a.real_count}"
        if not (root / "test" / "dataset.json").exists():
            root.parent.mkdir(parents=True, exist_ok=True)
            build_sudoku_dataset(a.real_dir, root, train_csv=name, test_csv=name, subsample_size=1,
                                 test_subsample_size=a.real_count, seed=0)
        rows += score(dirs, name, root)
    return rows


def plot(res: dict, path: pathlib.Path) -> pathlib.Path:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = ["-", "--", ":", "-."]
    for i, row in enumerate(res["settings"]):
        color = COLORS[row["model"]]
        main = row["setting"] in ("trained setting", "full solve")
        kw = dict(color=color, lw=2.2 if main else 1.0, alpha=1.0 if main else 0.75,
                  ls="-" if main else styles[i % len(styles)], marker="o" if main else ".", ms=4)
        for ax, key in zip(axes, ("exact_by_step", "cell_by_step")):
            ax.plot(row["nfe_by_step"], row[key], label=f"{row['model']}: {row['setting']}", **kw)
    copy = res["settings"][0]["copy_cell"]
    axes[1].axhline(copy, color="gray", ls=":", label="copy-the-givens")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax, what in zip(axes, ("exact (whole grid)", "cell")):
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="f-evaluations (L_level applications) per puzzle", ylabel=f"test {what} accuracy",
               xscale="log", title=f"{what} accuracy against inference compute")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{res['kind']}: test-time scaling (each line: one setting; its points: supervision steps "
                 f"1..{res['max_steps']})")
    fig.tight_layout()
    return common.save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("sudoku", "maze"), default="sudoku")
    ap.add_argument("--runs", help="folder with trm/ and attractor/ runs (default runs/experiments/<kind>)")
    ap.add_argument("--out", help="results folder (default experiments/results/<kind>_scaling)")
    ap.add_argument("--max-steps", type=int, default=8, help="supervision steps evaluated (default 8)")
    ap.add_argument("--max-iters", default="0,1,2,4", help="the Attractor's max_iter settings (default 0,1,2,4)")
    ap.add_argument("--tols", default="1e-1,1e-2", help="the Attractor's tolerances (default 1e-1,1e-2)")
    ap.add_argument("--real-lists", nargs="?", const="all", default="",
                    help="also score the real sudoku lists: 'all' (the default when given without a value) or "
                         "comma-separated file names in --real-dir")
    ap.add_argument("--test-sets", default="",
                    help="comma-separated built datasets (folders with test/) to score both models on as well, "
                         "e.g. generated puzzles with other blank counts than the training data")
    ap.add_argument("--real-count", type=int, default=300, help="puzzles per real list (default 300)")
    ap.add_argument("--real-dir", default=str(common.REPO.parent / "shared" / "data" / "sudoku"),
                    help="folder of the real lists (default ../shared/data/sudoku)")
    a = ap.parse_args(argv)
    a.runs = a.runs or str(common.REPO / "runs" / "experiments" / a.kind)
    out = pathlib.Path(a.out or common.RESULTS / f"{a.kind}_scaling")
    try:
        a.max_iters = [int(x) for x in csv_floats(a.max_iters)]
        a.tols = csv_floats(a.tols)
    except ValueError as e:
        ap.error(f"--max-iters/--tols: comma-separated numbers expected ({e})")
    if a.max_steps < 1 or a.real_count < 1 or any(d < 0 for d in a.max_iters) or any(t <= 0 for t in a.tols):
        ap.error("--max-steps and --real-count must be >= 1, --max-iters >= 0, --tols > 0")
    if a.real_lists and a.kind != "sudoku":
        ap.error("--real-lists applies to --kind sudoku only")
    a.real_lists = list(REAL_LISTS) if a.real_lists == "all" else [x for x in a.real_lists.split(",") if x]
    missing = [x for x in a.real_lists if not (pathlib.Path(a.real_dir) / x).is_file()]
    if missing:
        ap.error(f"--real-lists: {missing} not found in {a.real_dir}")
    a.test_sets = [pathlib.Path(x) for x in a.test_sets.split(",") if x]
    missing = [str(x) for x in a.test_sets if not (x / "test" / "dataset.json").is_file()]
    if missing:
        ap.error(f"--test-sets: {missing} hold no built test split (test/dataset.json)")
    dirs = {m: pathlib.Path(a.runs) / m for m in ("trm", "attractor")
            if (pathlib.Path(a.runs) / m / "config.json").exists()}
    if not dirs:
        ap.error(f"no trained trm/ or attractor/ run under {a.runs} (run experiments/{a.kind}.py first)")
    res = {"experiment": f"{a.kind}_scaling", "kind": a.kind, "runs": a.runs, "max_steps": a.max_steps,
           "env": common.environment(), "settings": []}
    for label, wd in dirs.items():
        res["settings"] += curves(label, wd, a)
    if a.test_sets:
        res["test_sets"] = [row for x in a.test_sets for row in score(dirs, str(x), x)]
    if a.real_lists:
        res["real_lists"] = real_lists(dirs, a)
    common.write_json(out / "results.json", res)
    png = plot(res, out / "scaling.png")
    print(f"wrote {out / 'results.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
