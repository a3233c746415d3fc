"""GPT vs Parcae vs Attractor at matched parameters and tokens on a real corpus (paper Table 1, small scale).

Trains the tiny presets gpt-tiny (886,144 parameters), parcae-tiny (919,296) and attractor-tiny (886,144) on
the same byte-tokenised corpus (default tinyshakespeare), the same number of steps × batch × sequence length
(so the same tokens, in the same order for a given seed) and the same optimizer, for 3 seeds each. Reports the
validation loss (nats/byte) and perplexity as mean ± std over seeds. The paper's Table 1 (FineWeb-Edu, 140M)
reads Transformer 21.48 / Parcae 19.06 / Attractor 18.30 validation PPL.

The Attractor and Parcae are also validated at depths T = 0, 1, 2, 4, 8 (see depth_sweep.py, which can reuse
these checkpoints with ``--from-runs``).

Writes ``<out>/results.json`` and ``<out>/lm_compare.png``; checkpoints go to ``--runs`` (rerunning resumes).

Usage: python experiments/lm_compare.py [--steps 300] [--seeds 3] [--seed 0] [--data PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

from attractor_jax.models import get_config, param_counts  # noqa: E402

NAME = "lm_compare"
PRESETS = ("gpt-tiny", "parcae-tiny", "attractor-tiny")
LABELS = {"gpt-tiny": "GPT (Transformer)", "parcae-tiny": "Parcae", "attractor-tiny": "Attractor"}
PAPER_140M = {"gpt-tiny": 21.48, "parcae-tiny": 19.06, "attractor-tiny": 18.30}
DEPTHS = (0, 1, 2, 4, 8)


def plot(results: dict, out: pathlib.Path) -> pathlib.Path:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"gpt-tiny": "tab:orange", "parcae-tiny": "tab:green", "attractor-tiny": "tab:blue"}
    for preset, r in results["models"].items():
        for i, run in enumerate(r["runs"]):
            curve = run["curve"]
            ax1.plot([c["step"] for c in curve], [c["loss"] for c in curve], color=colors[preset], alpha=0.7,
                     lw=1, label=LABELS[preset] if i == 0 else None)
    ax1.set(xlabel="step", ylabel="training loss (nats/byte)", title="training curves (all seeds)")
    ax1.legend()
    names = list(results["models"])
    means = [results["models"][p]["val_ppl"]["mean"] for p in names]
    stds = [results["models"][p]["val_ppl"]["std"] for p in names]
    bars = ax2.bar([LABELS[p] for p in names], means, yerr=stds, capsize=6, color=[colors[p] for p in names])
    for b, m, s in zip(bars, means, stds):
        ax2.text(b.get_x() + b.get_width() / 2, m + s, f"{m:.3f}\n±{s:.3f}", ha="center", va="bottom", fontsize=9)
    lo = min(m - s for m, s in zip(means, stds))
    hi = max(m + s for m, s in zip(means, stds))
    ax2.set_ylim(lo - 0.3 * (hi - lo) - 0.05, hi + 0.6 * (hi - lo) + 0.05)
    ax2.set(ylabel="validation perplexity (per byte)",
            title=f"validation PPL, mean ± std over {results['seeds']} seeds")
    fig.suptitle(f"{results['steps']} steps × {results['tokens_per_step']} tokens on "
                 f"{pathlib.Path(results['data']).name}")
    fig.tight_layout()
    return common.save_figure(fig, out / f"{NAME}.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(ap, name=NAME, steps=300)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per model: seed, seed+1, ... (default 3)")
    ap.add_argument("--runs", default="runs/experiments/lm_compare", help="checkpoint folder (resumable)")
    a = ap.parse_args(argv)
    common.check_args(ap, a)
    if a.seeds < 1:
        ap.error(f"--seeds={a.seeds} must be >= 1")
    out, runs_dir = pathlib.Path(a.out), pathlib.Path(a.runs)
    t_start = time.perf_counter()
    seeds = [a.seed + i for i in range(a.seeds)]
    results = {"experiment": NAME, "reproduces": "paper Table 1 (validation PPL), tiny scale",
               "data": str(a.data), "steps": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len,
               "tokens_per_step": a.batch_size * a.seq_len, "tokens": a.steps * a.batch_size * a.seq_len,
               "seeds": a.seeds, "seed_list": seeds, "lr": a.lr, "eval_batches": a.eval_batches,
               "env": common.environment(), "models": {}}
    for preset in PRESETS:
        recurrent = preset != "gpt-tiny"
        rows = []
        for seed in seeds:
            run = common.make_run(preset, a, seed)
            wd = runs_dir / f"{preset}-seed{seed}"
            tr = common.train_run(run, wd, f"{preset} seed {seed}")
            depths = [*DEPTHS, None] if recurrent else [None]
            ev = common.evaluate_with_stats(wd, depths)
            rows.append({"seed": seed, "workdir": str(wd), "train_seconds": tr["seconds"], "eval": ev["depths"],
                         "curve": tr["curve"]})
        losses = [r["eval"]["full"]["loss"] for r in rows]
        ppls = [r["eval"]["full"]["ppl"] for r in rows]
        entry = {"params": param_counts(get_config(preset))["total"], "val_loss": common.mean_std(losses),
                 "val_ppl": common.mean_std(ppls), "paper_val_ppl_140m": PAPER_140M[preset], "runs": rows}
        if recurrent:
            entry["val_loss_by_depth"] = {
                k: common.mean_std([r["eval"][k]["loss"] for r in rows]) for k in rows[0]["eval"]}
        if preset == "attractor-tiny":
            entry["solver_iters"] = common.mean_std([r["eval"]["full"]["solver_iters"] for r in rows])
            entry["converged"] = common.mean_std([r["eval"]["full"]["converged"] for r in rows])
        results["models"][preset] = entry
    results["seconds"] = time.perf_counter() - t_start
    common.write_json(out / "results.json", results)
    png = plot(results, out)

    print(f"\nvalidation after {a.steps} steps × {a.batch_size}×{a.seq_len} tokens, {a.seeds} seeds "
          f"(mean ± std):")
    print(f"  {'model':20s} {'params':>9s} {'val loss':>17s} {'val ppl':>17s} {'paper 140M PPL':>15s}")
    for preset, e in results["models"].items():
        print(f"  {LABELS[preset]:20s} {e['params']:9,d} {e['val_loss']['mean']:8.4f} ± {e['val_loss']['std']:.4f}"
              f" {e['val_ppl']['mean']:8.4f} ± {e['val_ppl']['std']:.4f} {e['paper_val_ppl_140m']:15.2f}")
    print(f"wrote {out / 'results.json'} and {png} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
