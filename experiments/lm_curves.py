"""Learning curves of GPT, Parcae and the Attractor at matched parameters, equilibrium internalization over
training, and compute-matched GPT baselines (paper Table 1 and Fig. 7, as they move with the budget).

Every run trains through the real trainer on the byte-tokenised corpus (default tinyshakespeare) and validates
every ``--eval-every`` steps on 16 fixed validation batches (the same rows for every model at a given seed) at
the full solve and at the partial depths T = 0, 1, 2, 4 (8 for Parcae), so one run gives its learning curve and
its internalization curve (the T = 0 and T = 1 readouts against the converged solve) at once. Models (``--models``):

- ``gpt``, ``parcae``, ``attractor``: the rung's three parameter-matched models;
- ``gpt-flops``: a deeper GPT whose training FLOPs per token match the Attractor's (its depth is chosen from the
  FLOPs per token the same seed's Attractor run measured: head evaluations actually run, plus the backward);
- ``gpt-tokens``: the rung's GPT trained for more steps, so that its total training FLOPs equal the Attractor's.

Rungs (``--rung``): ``tiny`` (the *-tiny presets, ~0.9M parameters, d 128) and ``small`` (d 256, ~6M).

Runs go to ``--runs/<rung>/<model>-seed<s>``; a rerun with the same flags resumes or reuses them. After
training the requested runs, the script reports every finished run of the rung it finds (so runs trained by
separate invocations, e.g. one per core, are reported together; runs already recorded in an earlier
``results.json`` stay in the report when their folders are gone): ``<out>/<rung>/results.json``,
``lm_curves.png`` (validation loss against steps and against training FLOPs, mean ± std over seeds) and
``internalization.png`` (T = 0 and T = 1 gaps against steps).

Usage: python experiments/lm_curves.py [--rung tiny] [--models gpt,parcae,attractor] [--seeds 3]
           [--steps 3000] [--eval-every 250] [--report-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

from attractor_jax.models import get_config, param_counts  # noqa: E402

NAME = "lm_curves"
MODELS = ("gpt", "parcae", "attractor", "gpt-flops", "gpt-tokens")
LABELS = {"gpt": "GPT", "parcae": "Parcae", "attractor": "Attractor", "gpt-flops": "GPT, FLOPs/token matched",
          "gpt-tokens": "GPT, total FLOPs matched"}
COLORS = {"gpt": "tab:orange", "parcae": "tab:green", "attractor": "tab:blue", "gpt-flops": "tab:red",
          "gpt-tokens": "tab:purple"}
PRESETS = {"gpt": "gpt-tiny", "parcae": "parcae-tiny", "attractor": "attractor-tiny", "gpt-flops": "gpt-tiny",
           "gpt-tokens": "gpt-tiny"}
SMALL = dict(d_model=256, n_heads=4, mlp_dim=1024)
RUNGS = {
    "tiny": {"gpt": {}, "parcae": {}, "attractor": {}},
    "small": {"gpt": dict(SMALL, n_layers=8), "parcae": dict(SMALL, n_prelude=2, n_core=4, n_coda=2),
              "attractor": dict(SMALL, n_backbone_layers=7)},
}
DEPTHS = {"attractor": (0, 1, 2, 4), "parcae": (0, 1, 2, 4, 8)}


def overrides(rung: str, model: str) -> dict:
    """Model overrides of ``model`` in ``rung`` (without the compute-matched GPT's depth)."""
    base = "gpt" if model.startswith("gpt") else model
    ov = dict(RUNGS[rung][base])
    if rung != "tiny" and model == "attractor":
        # Match the GPT's parameter count with the head's MLP width (the attractor has no value embeddings).
        target = param_counts(get_config("gpt-tiny", **RUNGS[rung]["gpt"]))["total"]
        ov["mlp_dim"] = min(range(64, 4 * ov["mlp_dim"] + 1, 64), key=lambda m: abs(
            param_counts(get_config("attractor-tiny", **dict(ov, mlp_dim=m)))["total"] - target))
    return ov


def flops_per_token(cfg, seq_len: int, iters: float = 0.0) -> float:
    from attractor_jax.train.metrics import backward_vjps
    from attractor_jax.train.metrics import flops_per_token as fpt

    return fpt(cfg, param_counts(cfg), seq_len, iters, backward_vjps(cfg))


def read_metrics(wd: pathlib.Path) -> list[dict]:
    path = wd / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def finished(wd: pathlib.Path) -> bool:
    """Whether the run reached its configured steps and wrote its final validation row."""
    if not (wd / "config.json").exists():
        return False
    steps = json.loads((wd / "config.json").read_text())["train"]["steps"]
    return any(r.get("step") == steps and "val_loss" in r for r in read_metrics(wd))


def train_flops_per_token(wd: pathlib.Path) -> float:
    """Mean training FLOPs per token a run logged (for the Attractor: the head evaluations it actually ran)."""
    rows = [r["flops_per_token"] for r in read_metrics(wd) if isinstance(r.get("flops_per_token"), float)]
    if not rows:
        raise ValueError(f"{wd} has logged no flops_per_token")
    return sum(rows) / len(rows)


def matched(a: argparse.Namespace, seed: int) -> dict:
    """The compute-matched GPTs' depth and steps, from the same seed's finished Attractor run."""
    wd = run_dir(a, "attractor", seed)
    if not finished(wd):
        raise SystemExit(f"error: gpt-flops/gpt-tokens need the finished attractor run {wd} "
                         f"(train --models attractor first)")
    target = train_flops_per_token(wd)
    gpt = RUNGS[a.rung]["gpt"]
    base_layers = get_config("gpt-tiny", **gpt).n_layers
    layers = min(range(base_layers, 4 * base_layers + 1), key=lambda n: abs(
        flops_per_token(get_config("gpt-tiny", **dict(gpt, n_layers=n)), a.seq_len) - target))
    ratio = target / flops_per_token(get_config("gpt-tiny", **gpt), a.seq_len)
    return {"attractor_flops_per_token": target, "gpt_flops_layers": layers, "flops_ratio": ratio,
            "gpt_tokens_steps": int(round(a.steps * ratio))}


def run_dir(a: argparse.Namespace, model: str, seed: int) -> pathlib.Path:
    return pathlib.Path(a.runs) / a.rung / f"{model}-seed{seed}"


def make_run(a: argparse.Namespace, model: str, seed: int):
    ov, steps = overrides(a.rung, model), a.steps
    if model in ("gpt-flops", "gpt-tokens"):
        m = matched(a, seed)
        if model == "gpt-flops":
            ov["n_layers"] = m["gpt_flops_layers"]
        else:
            steps = m["gpt_tokens_steps"]
    run = common.make_run(PRESETS[model], a, seed, eval_depths=DEPTHS.get(model, ()), **ov)
    train = dataclasses.replace(run.train, steps=steps, log_every=math.gcd(50, a.eval_every),
                                eval_every=a.eval_every, save_every=a.save_every)
    return dataclasses.replace(run, train=train)


def curve(wd: pathlib.Path) -> list[dict]:
    """The validation rows of a run: step, val_loss (full solve) and val_loss_<T> for each partial depth."""
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("val_loss") or k.startswith("val_solver")}
            for r in read_metrics(wd) if "val_loss" in r]


def aggregate(a: argparse.Namespace, previous: dict | None = None) -> dict:
    """Every finished run of the rung: curves, final losses and mean ± std over seeds per model.

    ``previous`` is an earlier ``results.json`` of the same rung: its runs are kept where no finished run
    directory of the same model and seed exists any more (a run found on disk replaces its recorded copy), so
    a report survives deleting ``runs/`` and runs trained on other machines can be added later."""
    from attractor_jax.train.trainer import read_run

    models = {}
    for model in MODELS:
        by_seed = {r["seed"]: r for r in ((previous or {}).get("models", {}).get(model, {}).get("runs", []))}
        for wd in sorted((pathlib.Path(a.runs) / a.rung).glob(f"{model}-seed*")):
            if not finished(wd):
                continue
            run = read_run(wd)
            by_seed[run.train.seed] = {
                "seed": run.train.seed, "workdir": str(wd), "steps": run.train.steps,
                "tokens_per_step": run.train.batch_size * run.train.seq_len,
                "train_flops_per_token": train_flops_per_token(wd), "params": param_counts(run.model)["total"],
                "n_layers": getattr(run.model, "n_layers", None), "curve": curve(wd)}
        runs = [by_seed[k] for k in sorted(by_seed)]
        if not runs:
            continue
        finals = [r["curve"][-1] for r in runs]
        entry = {"label": LABELS[model], "runs": runs, "params": runs[0]["params"], "steps": runs[0]["steps"],
                 "train_flops_per_token": common.mean_std([r["train_flops_per_token"] for r in runs]),
                 "val_loss": common.mean_std([f["val_loss"] for f in finals])}
        for key in finals[0]:
            if key.startswith("val_loss_") and key != "val_loss_full":
                entry[key] = common.mean_std([f[key] for f in finals])
        models[model] = entry
    return models


def band(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps present in every run, and the mean and std of ``key`` over runs there."""
    import numpy as np

    common_steps = sorted(set.intersection(*[{c["step"] for c in r["curve"] if key in c} for r in runs]))
    vals = np.array([[next(c[key] for c in r["curve"] if c["step"] == s) for s in common_steps] for r in runs])
    return common_steps, list(vals.mean(0)), list(vals.std(0, ddof=1) if len(runs) > 1 else 0 * vals.mean(0))


def tables(res: dict) -> str:
    """Markdown: validation loss by budget (mean ± std over seeds) and the Attractor's partial-depth gaps."""
    models = res["models"]
    # columns up to the parameter-matched runs' length (the total-FLOPs GPT runs longer; its end is "final")
    main = [e for m, e in models.items() if m in RUNGS["tiny"]] or list(models.values())
    last = max(r["curve"][-1]["step"] for e in main for r in e["runs"])
    budgets = sorted({c["step"] for e in models.values() for r in e["runs"] for c in r["curve"]
                      if c["step"] <= last and (c["step"] % 500 == 0 or c["step"] == last)})

    def cell(vals: list[float], digits: int = 4) -> str:
        v = common.mean_std(vals)
        return f"{v['mean']:.{digits}f}" + (f" ± {v['std']:.{digits}f}" if len(vals) > 1 else "")

    lines = ["| model | parameters | train FLOPs/token | seeds | steps | " + " | ".join(f"{b:,} steps" for b in budgets)
             + " | final |", "|---|---:|---:|---:|---:|" + "---:|" * (len(budgets) + 1)]
    for e in models.values():
        cells = []
        for b in budgets:
            vals = [next((c["val_loss"] for c in r["curve"] if c["step"] == b), None) for r in e["runs"]]
            cells.append(cell(vals) if None not in vals else "")
        cells.append(f"**{cell([r['curve'][-1]['val_loss'] for r in e['runs']])}**")
        lines.append(f"| {e['label']} | {e['params']:,} | {e['train_flops_per_token']['mean'] / 1e6:.2f} M | "
                     f"{len(e['runs'])} | {e['steps']:,} | " + " | ".join(cells) + " |")
    e = models.get("attractor")
    if e:
        keys = [k for k in e["runs"][0]["curve"][0] if k.startswith("val_loss_") and k != "val_loss_full"]
        lines += ["", "| Attractor, gap to the full solve (nats/byte) | " + " | ".join(
            f"{b:,} steps" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for k in keys + ["val_solver_iters_full"]:
            cells = []
            for b in budgets:
                rows = [next((c for c in r["curve"] if c["step"] == b), None) for r in e["runs"]]
                if any(c is None or k not in c for c in rows):
                    cells.append("")
                    continue
                if k.startswith("val_solver"):
                    cells.append(f"{common.mean_std([c[k] for c in rows])['mean']:.2f}")
                else:
                    cells.append(cell([c[k] - c["val_loss"] for c in rows], 3))
            name = "f-evaluations per token, full solve" if k.startswith("val_solver") else \
                f"T = {k.rsplit('_', 1)[1]}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(res: dict, out: pathlib.Path) -> pathlib.Path:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, e in res["models"].items():
        steps, mean, std = band(e["runs"], "val_loss")
        lo, hi = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        flops = [s * e["runs"][0]["tokens_per_step"] * e["train_flops_per_token"]["mean"] for s in steps]
        label = f"{e['label']} ({e['params'] / 1e6:.2f}M, {len(e['runs'])} seeds)"
        for ax, x in ((ax1, steps), (ax2, flops)):
            ax.plot(x, mean, color=COLORS[model], label=label)
            ax.fill_between(x, lo, hi, color=COLORS[model], alpha=0.25)
    ax1.set(xlabel="optimizer step (× 1,024 tokens)", ylabel="validation loss (nats/byte)",
            title="validation loss, mean ± std over seeds")
    ax2.set(xlabel="training FLOPs", ylabel="validation loss (nats/byte)", xscale="log",
            title="against training compute")
    from matplotlib.ticker import NullFormatter

    ax2.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a narrow log range
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(top=min(ax.get_ylim()[1], 2.6))
    fig.suptitle(f"{res['rung']} rung on {pathlib.Path(res['data']).name} (the lr schedule cools down over "
                 "each run's second half)")
    fig.tight_layout()
    return common.save_figure(fig, out / f"{NAME}.png")


def plot_internalization(res: dict, out: pathlib.Path) -> pathlib.Path | None:
    e = res["models"].get("attractor")
    if e is None:
        return None
    import numpy as np

    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, color in (("val_loss_0", "tab:red"), ("val_loss_1", "tab:blue"), ("val_loss_2", "tab:green")):
        steps, _, _ = band(e["runs"], key)
        gaps = np.array([[next(c[key] - c["val_loss"] for c in r["curve"] if c["step"] == s) for s in steps]
                         for r in e["runs"]])
        mean, std = gaps.mean(0), gaps.std(0, ddof=1) if len(gaps) > 1 else 0 * gaps.mean(0)
        label = f"T = {key.rsplit('_', 1)[1]} − full solve"
        ax1.plot(steps, mean, color=color, label=label)
        ax1.fill_between(steps, mean - std, mean + std, color=color, alpha=0.25)
        ax2.plot(steps, np.maximum(mean, 1e-4), color=color, label=label)
    ax1.axhline(0, color="gray", lw=0.8)
    ax1.set(xlabel="optimizer step", ylabel="validation loss gap (nats/byte)",
            title="Attractor: partial-depth readout minus the converged solve")
    ax2.set(xlabel="optimizer step", ylabel="gap (log scale)", yscale="log", title="the same, log scale")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"equilibrium internalization over training (paper Fig. 7), {len(e['runs'])} seeds, mean ± std")
    fig.tight_layout()
    return common.save_figure(fig, out / "internalization.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(ap, name=NAME, steps=3000)
    ap.add_argument("--rung", choices=sorted(RUNGS), default="tiny", help="model size (default tiny)")
    ap.add_argument("--models", default="gpt,parcae,attractor",
                    help=f"comma-separated subset of {','.join(MODELS)} to train (default gpt,parcae,attractor)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per model: seed, seed+1, ... (default 3)")
    ap.add_argument("--eval-every", type=int, default=250, help="steps between validations (default 250)")
    ap.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (default 500)")
    ap.add_argument("--runs", default=str(common.REPO / "runs" / "experiments" / NAME),
                    help="run folders (default runs/experiments/lm_curves; rerunning resumes)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    a = ap.parse_args(argv)
    common.check_args(ap, a)
    models = [m for m in a.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        ap.error(f"--models {a.models!r}: expected a comma-separated subset of {','.join(MODELS)}")
    for k in ("seeds", "eval_every", "save_every"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')}={getattr(a, k)} must be >= 1")
    t0 = time.perf_counter()
    if not a.report_only:
        for seed in range(a.seed, a.seed + a.seeds):
            for model in models:
                common.train_run(make_run(a, model, seed), run_dir(a, model, seed), f"{a.rung} {model} seed {seed}")
    out = pathlib.Path(a.out) / a.rung
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    if previous is not None and previous.get("rung") != a.rung:
        raise SystemExit(f"error: {out / 'results.json'} holds rung {previous.get('rung')!r}, expected {a.rung!r}")
    res = {"experiment": NAME, "rung": a.rung, "data": str(a.data), "batch_size": a.batch_size,
           "seq_len": a.seq_len, "lr": a.lr, "eval_batches": a.eval_batches, "eval_every": a.eval_every,
           "env": common.environment(), "models": aggregate(a, previous)}
    if not res["models"]:
        print(f"no finished runs under {pathlib.Path(a.runs) / a.rung}")
        return 0
    res["seconds"] = time.perf_counter() - t0
    common.write_json(out / "results.json", res)
    pngs = [plot_curves(res, out), plot_internalization(res, out)]
    md = tables(res)
    (out / "tables.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\n{a.rung} rung, final validation loss (nats/byte), mean ± std over seeds:")
    for model, e in res["models"].items():
        gaps = "".join(f"  T={k.rsplit('_', 1)[1]} {e[k]['mean']:.4f}" for k in e if k.startswith("val_loss_"))
        print(f"  {e['label']:28s} {e['params']:>10,d} params {e['steps']:>6d} steps  "
              f"{e['val_loss']['mean']:.4f} ± {e['val_loss']['std']:.4f} ({len(e['runs'])} seeds){gaps}")
    print("wrote " + ", ".join(str(p) for p in [out / "results.json", out / "tables.md", *pngs] if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
