"""Shared driver of `sudoku.py` and `maze.py`: TRM vs the Attractor reasoner at a matched budget.

Both models train through the real trainer (``attractor_jax.train.trainer.train``, which hands reasoner runs
to its puzzle task) on the same generated dataset, with the same steps, global batch, optimizer settings,
seed and ACT depth, and are evaluated in eval mode on the test split: exact accuracy (whole grid right), cell
accuracy, f-evaluations (L_level applications) per puzzle and, for the Attractor, the solver removed
(max_iter = 0), 1, 2, 4 steps and the full solve. The solver's iterations and residuals during training come
from metrics.jsonl. A rerun with the same flags reuses finished runs (it only re-evaluates them).

The paper's scale (1,000 Sudoku-Extreme puzzles ×1,000 augmentations, batch 768, 50k+ steps on GPUs) does not
fit a 2-core CPU; the default here is easy generated puzzles and tiny models, enough to see both reasoners
learn and to compare them with and without the solver.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

from experiments.common import environment, pyplot, save_figure, train_to_end, write_json


def add_args(ap: argparse.ArgumentParser, *, name: str, steps: int, batch: int, lr: float,
             train_count: int, mlp_t: bool = False) -> None:
    ap.add_argument("--seed", type=int, default=0)
    repo = pathlib.Path(__file__).resolve().parents[1]
    ap.add_argument("--out", default=str(repo / "experiments" / "results" / name),
                    help=f"results.json and {name}.png (default experiments/results/{name})")
    ap.add_argument("--runs", default=str(repo / "runs" / "experiments" / name),
                    help=f"generated data and run folders (default runs/experiments/{name}; rerunning reuses them)")
    ap.add_argument("--steps", type=int, default=steps, help=f"supervision steps per model (default {steps})")
    ap.add_argument("--batch-size", type=int, default=batch, help=f"global batch (default {batch})")
    ap.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr})")
    ap.add_argument("--min-lr-ratio", type=float, default=1.0,
                    help="cosine decay of the lr after warmup down to this fraction of the peak at --steps "
                         "(default 1: constant, TRM's schedule)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of both models (default 64)")
    ap.add_argument("--act-steps", type=int, default=4, help="halt_max_steps of both models (default 4)")
    ap.add_argument("--mlp-t", action=argparse.BooleanOptionalAction, default=mlp_t,
                    help="TRM's MLP-mixer block (a token-mixing MLP over the sequence instead of attention, no "
                         f"positional encoding) in both models (default {'on' if mlp_t else 'off'})")
    ap.add_argument("--models", default="trm,attractor", help="comma-separated subset of trm,attractor")
    ap.add_argument("--data", help=f"a built {name} dataset folder (default: generate one into RUNS/data)")
    ap.add_argument("--train-count", type=int, default=train_count, help="generated training puzzles")
    ap.add_argument("--test-count", type=int, default=200, help="generated test puzzles")
    ap.add_argument("--jacobian-weight", type=float, default=0.0,
                    help="the Attractor reasoner's Jacobian penalty λ (λ·||∂L/∂z||²_F / dim at the solved z_L, "
                         "training only; default 0: off). Keeps its z_L map contractive where it drifts")


def check(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for k in ("steps", "batch_size", "hidden", "act_steps"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')}={getattr(a, k)} must be >= 1")
    if not a.lr > 0:
        ap.error(f"--lr={a.lr} must be > 0")
    if not 0.0 <= a.min_lr_ratio <= 1.0:
        ap.error(f"--min-lr-ratio={a.min_lr_ratio} must be in [0, 1]")
    if not a.jacobian_weight >= 0:
        ap.error(f"--jacobian-weight={a.jacobian_weight} must be >= 0")
    bad = set(a.models.split(",")) - {"trm", "attractor"}
    if bad or not a.models:
        ap.error(f"--models {a.models!r}: expected a comma-separated subset of trm,attractor")


def dataset(a: argparse.Namespace, generate, build) -> pathlib.Path:
    """``--data``, or a dataset generated once into ``RUNS/data`` (reused by reruns): ``generate(a)`` returns
    the (train, test) CSV rows, ``build(csv_dir, root)`` builds the TRM/HRM layout from them."""
    from attractor_jax.data import puzzles as pz

    if a.data:
        return pathlib.Path(a.data)
    runs = pathlib.Path(a.runs)
    root, csv = runs / "data", runs / "csv"
    if (root / "train" / "dataset.json").exists():
        return root
    csv.mkdir(parents=True, exist_ok=True)
    train, test = generate(a)
    pz.write_puzzle_csv(csv / "train.csv", train)
    pz.write_puzzle_csv(csv / "test.csv", test)
    return build(csv, root)


def finish(kind: str, a: argparse.Namespace, data: pathlib.Path, presets: dict[str, str], title: str) -> int:
    """Train and evaluate both models, plot ``OUT/<kind>.png`` and print the table."""
    res = run_models(kind, data, a, presets)
    plot(res, pathlib.Path(a.out) / f"{kind}.png",
         f"{title}: TRM vs Attractor reasoner, {a.steps} steps × batch {a.batch_size}")
    print("\n" + table(res))
    return 0


def make_run(preset: str, data: pathlib.Path, a: argparse.Namespace, depths: tuple[int, ...]):
    from attractor_jax.models import get_config
    from attractor_jax.train.optim import reference_optim_config
    from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig

    mixer = dict(mlp_t=True, pos_encodings="none") if a.mlp_t else {}
    cfg = get_config(preset, hidden_size=a.hidden, num_heads=max(1, a.hidden // 32), halt_max_steps=a.act_steps,
                     **mixer)
    if a.jacobian_weight > 0 and hasattr(cfg, "jacobian_weight"):  # the Attractor reasoner's; TRM has none
        cfg = dataclasses.replace(cfg, jacobian_weight=a.jacobian_weight)
    optim = reference_optim_config(cfg, lr=a.lr, weight_decay=0.1, puzzle_emb_weight_decay=0.1,
                                   warmup_steps=max(1, a.steps // 20), ema_decay=0.99,
                                   min_lr_ratio=a.min_lr_ratio)
    train = TrainConfig(steps=a.steps, batch_size=a.batch_size, seed=a.seed, log_every=max(1, a.steps // 40),
                        eval_every=max(1, a.steps // 4), eval_batches=2, eval_depths=depths,
                        save_every=a.steps, keep=1, tensorboard=False)
    return RunConfig(model=cfg, train=train, optim=optim, data=DataConfig(path=str(data)))


def keep_schedule(run, workdir: pathlib.Path):
    """``run`` for a workdir that may already hold a run of it: a rerun with a larger ``--steps`` continues that
    run (the trainer resumes; only the step count may change), so the fields derived from ``--steps`` (warmup,
    log, evaluation and save intervals) keep the values the run started with. The puzzle lr is constant after
    warmup, so the continued run follows the schedule a longer run would have had. A decaying lr
    (``--min-lr-ratio`` < 1) is tied to its step count: such a run continues only to the steps it was started
    with."""
    from attractor_jax.train.rundir import RunDirectory
    from attractor_jax.train.trainer import read_run

    if not RunDirectory(workdir).has_checkpoint():
        return run
    old = read_run(workdir)
    if old.optim.min_lr_ratio != run.optim.min_lr_ratio:
        raise SystemExit(f"{workdir}: the run was started with --min-lr-ratio {old.optim.min_lr_ratio}, "
                         f"not {run.optim.min_lr_ratio}; use that value or another --runs folder")
    if old.optim.min_lr_ratio < 1.0 and old.train.steps != run.train.steps:
        raise SystemExit(f"{workdir}: the run decays its lr over {old.train.steps} steps (--min-lr-ratio "
                         f"{old.optim.min_lr_ratio}); --steps {run.train.steps} would change its schedule. Use "
                         f"--steps {old.train.steps} or another --runs folder")
    train = dataclasses.replace(run.train, log_every=old.train.log_every, eval_every=old.train.eval_every,
                                save_every=old.train.save_every)
    return dataclasses.replace(run, train=train,
                               optim=dataclasses.replace(run.optim, warmup_steps=old.optim.warmup_steps))


def curve(workdir: pathlib.Path) -> list[dict]:
    keep = ("step", "loss", "accuracy", "exact_accuracy", "steps", "solver_iters", "solver_iters_max",
            "solver_residual", "solver_residual_max", "solver_converged", "rows_per_s", "eval_cell_full",
            "eval_exact_full", "eval_cell_0", "eval_exact_0")
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep if k in r} for r in rows]


def run_models(kind: str, data: pathlib.Path, a: argparse.Namespace, presets: dict[str, str]) -> dict:
    """Train and evaluate each model; returns the results dict (also written to ``out/results.json``)."""
    from attractor_jax.models import param_counts
    from attractor_jax.train.trainer import evaluate, read_run

    out = pathlib.Path(a.out)
    results = {"kind": kind, "env": environment(), "data": str(data), "args": vars(a), "models": {}}
    for label in a.models.split(","):
        depths = (0, 1, 2, 4) if label == "attractor" else ()
        wd = pathlib.Path(a.runs) / label
        run = keep_schedule(make_run(presets[label], data, a, depths), wd)
        print(f"\n== {label} ({presets[label]}, hidden {a.hidden}, {a.steps} steps × batch {a.batch_size})",
              flush=True)
        t0 = time.perf_counter()
        train_to_end(run, wd)
        seconds = time.perf_counter() - t0
        ev = evaluate(wd, depths=[*depths, None])
        # the trained model's count: the run directory's config has the dataset's seq_len and identifiers (the
        # preset's may differ, e.g. the maze presets' 30×30 grids, which the MLP-mixer's size depends on)
        results["models"][label] = {
            "preset": presets[label], "params": param_counts(read_run(wd).model)["total"], "seconds": seconds,
            "eval": ev["depths"], "curve": curve(wd),
        }
        full = ev["depths"]["full"]
        print(f"   {label}: exact {full['exact']:.3f}  cell {full['cell']:.3f}  "
              f"(copy-the-givens baseline {full['copy_cell']:.3f})", flush=True)
    write_json(out / "results.json", results)
    return results


def plot(results: dict, path: pathlib.Path, title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"trm": "tab:blue", "attractor": "tab:red"}
    for label, r in results["models"].items():
        c = r["curve"]
        axes[0].plot([x["step"] for x in c if "loss" in x], [x["loss"] for x in c if "loss" in x],
                     color=colors[label], label=f"{label} ({r['params']:,} params)")
        ev = [x for x in c if "eval_cell_full" in x]
        axes[1].plot([x["step"] for x in ev], [x["eval_cell_full"] for x in ev], "o-", color=colors[label],
                     label=f"{label} cell")
        axes[1].plot([x["step"] for x in ev], [x["eval_exact_full"] for x in ev], "s--", color=colors[label],
                     label=f"{label} exact")
    base = next(iter(results["models"].values()))["eval"]["full"]["copy_cell"]
    axes[1].axhline(base, color="gray", ls=":", label="copy-the-givens (cell)")
    axes[0].set(xlabel="supervision step", ylabel="training loss (ACT)", title="training loss")
    axes[1].set(xlabel="supervision step", ylabel="test accuracy (2 batches, EMA)", title="test accuracy",
                ylim=(0, 1.02))
    names, cells, exacts = [], [], []
    for label, r in results["models"].items():
        for depth, e in r["eval"].items():
            names.append(f"{label}\nT={depth}" if label == "attractor" else label)
            cells.append(e["cell"])
            exacts.append(e["exact"])
    xs = range(len(names))
    axes[2].bar([x - 0.2 for x in xs], cells, 0.4, label="cell")
    axes[2].bar([x + 0.2 for x in xs], exacts, 0.4, label="exact")
    axes[2].axhline(base, color="gray", ls=":")
    axes[2].set_xticks(list(xs), names, fontsize=8)
    axes[2].set(ylabel="test accuracy (all test puzzles)", title="by solver depth (T=0: solver removed)",
                ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def table(results: dict) -> str:
    """A markdown table of the final evaluation."""
    lines = ["| model | params | max_iter | exact | cell | f-evals/puzzle | solver iters | residual |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in results["models"].items():
        for depth, e in r["eval"].items():
            it = f"{e['solver_iters']:.2f}" if "solver_iters" in e else "–"
            res = f"{e['solver_residual']:.1e}" if "solver_residual" in e else "–"
            lines.append(f"| {label} | {r['params']:,} | {depth} | {e['exact']:.3f} | {e['cell']:.3f} | "
                         f"{e['nfe']:.1f} | {it} | {res} |")
    return "\n".join(lines)
