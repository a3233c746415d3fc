"""Training-step peak memory and step time against depth (paper Fig. 5; the backward costs of Table 5).

The Attractor (attractor-tiny) is compiled at solver depth T = max_iter (forced: tol 0 and min_iter = T, so
every token takes exactly T iterations) with four backward modes: Neumann-1 (the reference's one-step
u = v + Jᵀv, the default), Phantom (backprop through k = 2 damped steps from y*), IFT (Anderson on
(I − Jᵀ)u = v, up to T iterations) and unrolled (backprop through the whole solve). Parcae (parcae-tiny) is
compiled at loop depth T with backprop through all T recurrences ("full BPTT") and through the last 2 only
(parcae-tiny's truncation; the reference trains with 4 of a mean 8).

Peak memory is the compiled train step's ``memory_analysis()`` (temp + argument + output bytes) of the real
trainer step (forward, loss, gradient, optimizer update); step time is the measured median wall time on this
machine. The paper: memory is flat in the number of iterations for the Attractor and grows linearly for looped
LMs; full IFT costs 4.8× the peak memory and 2.7× the step time of one-step (60.3M model; no curve values given).

Writes ``<out>/results.json`` and ``<out>/memory_vs_depth.png``.

Usage: python experiments/memory_vs_depth.py [--depths 4,8,16,32] [--batch-size 8] [--seq-len 128]
       [--repeats 3] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

NAME = "memory_vs_depth"
VARIANTS = {
    # label: (preset, overrides as a function of the depth T)
    "attractor, Neumann-1 (default)": ("attractor-tiny", lambda t: {"backward.kind": "neumann", "backward.k": 1}),
    "attractor, Phantom (k=2)": ("attractor-tiny", lambda t: {"backward.kind": "phantom", "backward.k": 2}),
    "attractor, IFT (Anderson)": ("attractor-tiny", lambda t: {"backward.kind": "ift"}),
    "attractor, unrolled": ("attractor-tiny", lambda t: {"backward.kind": "unrolled"}),
    "parcae, full BPTT": ("parcae-tiny", lambda t: {"mean_backprop_depth": t}),
    "parcae, BPTT last 2": ("parcae-tiny", lambda t: {"mean_backprop_depth": min(2, t)}),
}


def overrides_for(preset: str, t: int, extra: dict) -> dict:
    if preset.startswith("attractor"):
        return {"solver.max_iter": t, "solver.min_iter": t, "solver.tol": 0.0, **extra}
    return {"mean_recurrence": t, "sampling": "fixed", **extra}


def plot(results: dict, out: pathlib.Path) -> pathlib.Path:
    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"Neumann": ("tab:blue", "o", "-"), "Phantom": ("tab:cyan", "s", "-"), "IFT": ("tab:purple", "^", "-"),
              "unrolled": ("tab:red", "v", "--"), "full BPTT": ("tab:green", "D", "--"),
              "last 2": ("tab:olive", "x", ":")}
    for label, rows in results["variants"].items():
        color, marker, ls = next(v for k, v in styles.items() if k in label)
        ts = [r["depth"] for r in rows]
        ax1.plot(ts, [r["peak_bytes"] / 2**20 for r in rows], marker=marker, ls=ls, color=color, label=label)
        ax2.plot(ts, [1e3 * r["step_seconds"] for r in rows], marker=marker, ls=ls, color=color, label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["depths"], [str(d) for d in results["depths"]])
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    ax1.set(xlabel="depth T (solver max_iter / Parcae loops)", ylabel="compiled peak memory (MiB)",
            title="train-step peak memory (temp + arguments + outputs)")
    ax2.set(xlabel="depth T (solver max_iter / Parcae loops)", ylabel="step time (ms)",
            title=f"train-step time on {results['env']['platform']} (median of {results['repeats']})")
    ax1.legend(fontsize=8)
    fig.suptitle(f"attractor-tiny / parcae-tiny, batch {results['batch_size']} × {results['seq_len']} tokens")
    fig.tight_layout()
    return common.save_figure(fig, out / f"{NAME}.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(ap, name=NAME, data=False)
    ap.add_argument("--depths", default="4,8,16,32", help="comma-separated depths T >= 3 (default 4,8,16,32)")
    ap.add_argument("--batch-size", type=int, default=common.BATCH)
    ap.add_argument("--seq-len", type=int, default=common.SEQ_LEN)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per point (median; default 3)")
    a = ap.parse_args(argv)
    try:
        depths = sorted({int(x) for x in a.depths.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--depths {a.depths!r}: expected comma-separated integers")
    if not depths or min(depths) < 3:
        # max_iter 1 or 2 switches the attractor to plain unrolled steps, whatever the backward mode
        ap.error(f"--depths {a.depths!r}: every depth must be >= 3")
    for k in ("batch_size", "seq_len", "repeats"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    a.steps, a.eval_batches, a.lr, a.data = 1, 1, common.LR, str(common.DEFAULT_DATA)
    out = pathlib.Path(a.out)
    t0 = time.perf_counter()
    results = {"experiment": NAME, "reproduces": "paper Fig. 5 (training memory vs iterations) and the cost "
               "columns of Table 5", "depths": depths, "batch_size": a.batch_size, "seq_len": a.seq_len,
               "repeats": a.repeats, "seed": a.seed, "env": common.environment(), "variants": {}}
    total = len(VARIANTS) * len(depths)
    done = 0
    for label, (preset, extra) in VARIANTS.items():
        rows = []
        for t in depths:
            run = common.make_run(preset, a, a.seed, **overrides_for(preset, t, extra(t)))
            cost = common.train_step_cost(run, repeats=a.repeats)
            done += 1
            bar = "#" * (24 * done // total)
            print(f"[{bar:24s}] {done}/{total} {label:32s} T={t:3d}  peak {cost['peak_bytes'] / 2**20:8.1f} MiB"
                  f"  temp {cost['temp_bytes'] / 2**20:8.1f} MiB  step {1e3 * cost['step_seconds']:8.1f} ms",
                  flush=True)
            rows.append({"depth": t, **cost})
        results["variants"][label] = rows
    base = {r["depth"]: r for r in results["variants"]["attractor, Neumann-1 (default)"]}
    results["ratios_vs_neumann1"] = {
        label: {str(r["depth"]): {"peak": r["peak_bytes"] / base[r["depth"]]["peak_bytes"],
                                  "time": r["step_seconds"] / base[r["depth"]]["step_seconds"]} for r in rows}
        for label, rows in results["variants"].items() if label.startswith("attractor")}
    results["growth_last_over_first"] = {
        label: {"peak": rows[-1]["peak_bytes"] / rows[0]["peak_bytes"],
                "temp": rows[-1]["temp_bytes"] / max(rows[0]["temp_bytes"], 1),
                "time": rows[-1]["step_seconds"] / rows[0]["step_seconds"]}
        for label, rows in results["variants"].items()}
    results["seconds"] = time.perf_counter() - t0
    common.write_json(out / "results.json", results)
    png = plot(results, out)
    print(f"\npeak MiB / step ms by depth ({a.batch_size}×{a.seq_len} tokens per step)")
    print(f"  {'variant':32s} " + " ".join(f"{'T=' + str(t):>16s}" for t in depths))
    for label, rows in results["variants"].items():
        print(f"  {label:32s} " + " ".join(f"{r['peak_bytes'] / 2**20:7.1f}/{1e3 * r['step_seconds']:7.0f}"
                                           for r in rows))
    print(f"wrote {out / 'results.json'} and {png} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
