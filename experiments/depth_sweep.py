"""Validation loss against the test-time depth T for the Attractor and Parcae (paper Fig. 7, equilibrium
internalization).

T is the number of solver iterations of the Attractor (T = 0 decodes the backbone proposal c directly; T = 1, 2
are plain steps y ← f(y, c); larger T runs the Anderson solver capped at T iterations) and the number of
recurrences of Parcae (trained with a Poisson depth of mean 4); "full" is the Attractor's converged solve
(tolerance 1e-3, at most 16 iterations) and Parcae's training mean depth. Training is held fixed; only the
inference depth changes. The paper reports that the Attractor reaches its best quality at T = 1 and is near it
already at T = 0, while Parcae improves monotonically from T = 1 and plateaus near T = 8 (no numbers given).

By default reuses the checkpoints lm_compare.py wrote (``--from-runs runs/experiments/lm_compare``, every
``attractor-tiny-seed*`` and ``parcae-tiny-seed*`` there, plus ``gpt-tiny-seed*`` as a reference line); with
``--from-runs ''`` (or when that folder is empty) it trains its own attractor-tiny and parcae-tiny.

Writes ``<out>/results.json`` and ``<out>/depth_sweep.png``.

Usage: python experiments/depth_sweep.py [--from-runs DIR] [--steps 300] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

NAME = "depth_sweep"
DEPTHS = (0, 1, 2, 4, 8, 16)
MODELS = ("attractor-tiny", "parcae-tiny")
LABELS = {"attractor-tiny": "Attractor", "parcae-tiny": "Parcae", "gpt-tiny": "GPT"}


def find_runs(root: pathlib.Path, preset: str) -> list[pathlib.Path]:
    return sorted(p for p in root.glob(f"{preset}-seed*") if (p / "config.json").exists()
                  and (p / "checkpoints").exists())


def plot(results: dict, out: pathlib.Path) -> pathlib.Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"attractor-tiny": "tab:blue", "parcae-tiny": "tab:green"}
    xs = list(DEPTHS)
    for preset in MODELS:
        r = results["models"][preset]
        m = [r["val_loss_by_depth"][str(d)]["mean"] for d in xs]
        s = [r["val_loss_by_depth"][str(d)]["std"] for d in xs]
        x_plot = [0.5 if d == 0 else d for d in xs]  # T = 0 drawn at 0.5 on the log axis
        ax.errorbar(x_plot, m, yerr=s, marker="o", capsize=3, color=colors[preset], label=LABELS[preset])
        full = r["val_loss_by_depth"]["full"]["mean"]
        ax.axhline(full, color=colors[preset], ls=":", lw=1,
                   label=f"{LABELS[preset]} full ({r['full_means']})")
    if "gpt-tiny" in results["models"]:
        ax.axhline(results["models"]["gpt-tiny"]["val_loss_full"]["mean"], color="tab:orange", ls="--",
                   label="GPT (fixed depth)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([0.5, *xs[1:]], ["0", *[str(d) for d in xs[1:]]])
    ax.set(xlabel="inference depth T (solver iterations / recurrences)", ylabel="validation loss (nats/byte)",
           title=f"validation loss vs test-time depth ({results['n_seeds']} seed(s) each)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, out / f"{NAME}.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(ap, name=NAME, steps=300)
    ap.add_argument("--from-runs", default="runs/experiments/lm_compare",
                    help="folder of lm_compare checkpoints to evaluate ('' trains new runs)")
    ap.add_argument("--runs", default="runs/experiments/depth_sweep", help="checkpoints when training here")
    a = ap.parse_args(argv)
    common.check_args(ap, a)
    out = pathlib.Path(a.out)
    t0 = time.perf_counter()
    src = pathlib.Path(a.from_runs) if a.from_runs else None
    workdirs: dict[str, list[pathlib.Path]] = {}
    if src is not None and all(find_runs(src, p) for p in MODELS):
        for p in (*MODELS, "gpt-tiny"):
            workdirs[p] = find_runs(src, p)
        mode = f"evaluated the checkpoints in {src}"
    else:
        if src is not None:
            print(f"depth_sweep: no attractor-tiny/parcae-tiny checkpoints in {src}; training new runs")
        for p in MODELS:
            wd = pathlib.Path(a.runs) / f"{p}-seed{a.seed}"
            common.train_run(common.make_run(p, a, a.seed), wd, f"{p} seed {a.seed}")
            workdirs[p] = [wd]
        mode = f"trained {a.steps} steps here"
    results = {"experiment": NAME, "reproduces": "paper Fig. 7 (quality vs inference iterations T), tiny scale",
               "source": mode, "depths": list(DEPTHS) + ["full"], "env": common.environment(), "models": {}}
    for preset, wds in workdirs.items():
        if not wds:
            continue
        depths = [None] if preset == "gpt-tiny" else [*DEPTHS, None]
        evals = []
        for wd in wds:
            print(f"evaluating {wd} at depths {depths}", flush=True)
            evals.append(common.evaluate_with_stats(wd, depths, batches=a.eval_batches)["depths"])
        if preset == "gpt-tiny":
            results["models"][preset] = {"val_loss_full": common.mean_std([e["full"]["loss"] for e in evals]),
                                         "workdirs": [str(w) for w in wds]}
            continue
        entry = {"workdirs": [str(w) for w in wds], "evals": evals,
                 "val_loss_by_depth": {k: common.mean_std([e[k]["loss"] for e in evals]) for k in evals[0]},
                 "val_ppl_by_depth": {k: common.mean_std([e[k]["ppl"] for e in evals]) for k in evals[0]}}
        if preset == "attractor-tiny":
            entry["solver_iters_by_depth"] = {k: common.mean_std([e[k]["solver_iters"] for e in evals])
                                              for k in evals[0]}
            entry["full_means"] = f"tol 1e-3, {entry['solver_iters_by_depth']['full']['mean']:.1f} iters"
        else:
            entry["full_means"] = "T = 4, the training mean"
        results["models"][preset] = entry
    results["n_seeds"] = min(len(workdirs[p]) for p in MODELS)
    results["seconds"] = time.perf_counter() - t0
    common.write_json(out / "results.json", results)
    png = plot(results, out)
    print(f"\nvalidation loss by inference depth T (mean ± std over {results['n_seeds']} seed(s)); {mode}")
    print(f"  {'model':10s} " + " ".join(f"{'T=' + str(d):>15s}" for d in [*DEPTHS, 'full']))
    for preset in MODELS:
        r = results["models"][preset]["val_loss_by_depth"]
        print(f"  {LABELS[preset]:10s} " + " ".join(
            f"{r[k]['mean']:7.4f}±{r[k]['std']:.4f}" for k in [*map(str, DEPTHS), "full"]))
    print(f"wrote {out / 'results.json'} and {png} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
