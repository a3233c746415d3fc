"""Solver modes on one trained Attractor checkpoint: per-token causal freezing vs the reference's per-sequence
mixing, the Anderson restart safeguard, and bfloat16 compute with and without the bf16 tolerance; plus the
residual floor of each compute dtype (tol 0, 64 evaluations: the lowest residual a solve reaches).

Every row evaluates the *same* parameters on the same validation batches; only solver settings and the compute
dtype change. Reported per row: validation loss, mean f-evaluations per token, evaluations the batch ran (every
token is evaluated until the last one exits), fraction of tokens converged and the mean/largest final relative
residual (of the returned state). The paper reports 8.4 / 11.2 mean solver iterations (its two model sizes) with
the reference's per-sequence solver.

By default reuses ``runs/experiments/lm_compare/attractor-tiny-seed0`` (written by lm_compare.py) when it has a
checkpoint, else trains its own attractor-tiny for ``--steps`` steps.

Writes ``<out>/results.json`` and ``<out>/residual_floor.png``.

Usage: python experiments/solver_modes.py [--from-run DIR] [--steps 300] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402

NAME = "solver_modes"
ROWS = {
    "float32, token mixing, causal freezing (default)": {},
    "float32, sequence mixing (reference)": {"solve_mixing": "sequence"},
    "float32, token mixing, no restart": {"solver.restart": False},
    "bfloat16, token mixing, bf16_tol (default)": {"dtype": "bfloat16"},
    "bfloat16, token mixing, float32 tol": {"dtype": "bfloat16", "bf16_tol": None},
    "bfloat16, sequence mixing, bf16_tol": {"dtype": "bfloat16", "solve_mixing": "sequence"},
}
FLOOR = {"float32": {"solver.tol": 0.0, "solver.max_iter": 64},
         "bfloat16": {"dtype": "bfloat16", "bf16_tol": 0.0, "solver.max_iter": 64}}


def residuals(workdir: pathlib.Path, overrides: dict, batches: int):
    """Per-token final residuals of the full solve on the validation batches (for the floor histogram)."""
    import dataclasses
    import json

    import jax
    import numpy as np
    from flax import nnx

    from attractor_jax.models import get_config
    from attractor_jax.train.checkpoint import Checkpointer
    from attractor_jax.train.trainer import RunConfig, data_pipelines, setup

    run = RunConfig.from_dict(json.loads((workdir / "config.json").read_text()))
    run = dataclasses.replace(run, model=get_config(run.model, **overrides),
                              train=dataclasses.replace(run.train, seed=0, eval_batches=batches))
    _, _, graphdef, _, _, abstract_state, _ = setup(run)
    ckpt = Checkpointer(workdir, keep=run.train.keep)
    _, state, _ = ckpt.restore(abstract_state, None)
    ckpt.close()
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)[1]["residual"])
    _, val = data_pipelines(run, 0, 1)
    return np.concatenate([np.asarray(fn(state.params, b["inputs"])).ravel() for b in val()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap, name=NAME, steps=300)
    ap.add_argument("--from-run", default=str(common.REPO / "runs" / "experiments" / "lm_compare"
                                              / "attractor-tiny-seed0"),
                    help="a trained attractor run folder to reuse ('' trains one)")
    a = ap.parse_args()
    common.check_args(ap, a)
    out = pathlib.Path(a.out)
    wd = pathlib.Path(a.from_run) if a.from_run else None
    if wd is None or not (wd / "checkpoints").exists():
        wd = common.REPO / "runs" / "experiments" / NAME / "attractor-tiny"
        common.train_run(common.make_run("attractor-tiny", a, a.seed), wd, "attractor-tiny")
    t0 = time.perf_counter()
    rows = {}
    for label, ov in ROWS.items():
        ev = common.evaluate_with_stats(wd, [None], batches=a.eval_batches, model_overrides=ov)
        rows[label] = {"overrides": ov, "step": ev["step"], **ev["depths"]["full"]}
        r = rows[label]
        print(f"{label:52s} loss {r['loss']:.4f}  iters {r['solver_iters']:5.2f}  batch evals "
              f"{r['solver_steps']:5.1f}  converged {100 * r['converged']:5.1f} %  residual {r['residual']:.2e} "
              f"(max {r['residual_max']:.2e})")
    import numpy as np

    floors = {k: residuals(wd, ov, a.eval_batches) for k, ov in FLOOR.items()}
    floor_stats = {k: {q: float(np.quantile(v, p)) for q, p in (("p10", 0.1), ("median", 0.5), ("p90", 0.9),
                                                                  ("p99", 0.99))} for k, v in floors.items()}
    for k, st in floor_stats.items():
        print(f"residual floor ({k}, tol 0, 64 evaluations): " + ", ".join(f"{q} {v:.2e}" for q, v in st.items()))

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-8, 0, 60)
    for k, v in floors.items():
        ax.hist(np.clip(v, 1e-8, 1.0), bins=bins, alpha=0.6, label=f"{k} compute")
    from attractor_jax.models import get_config

    cfg = get_config("attractor-tiny")
    ax.axvline(cfg.solver.tol, color="k", ls="--", lw=1, label=f"preset tol {cfg.solver.tol:g}")
    ax.axvline(cfg.bf16_tol, color="tab:red", ls=":", lw=1, label=f"bf16_tol {cfg.bf16_tol:g}")
    ax.set_xscale("log")
    ax.set_xlabel("final relative residual per token (tol 0, 64 evaluations)")
    ax.set_ylabel("tokens")
    ax.set_title("Residual floor of the attractor head by compute dtype")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = common.save_figure(fig, out / "residual_floor.png")
    common.write_json(out / "results.json", {
        "run": str(wd), "rows": rows, "residual_floor": floor_stats,
        "seconds": time.perf_counter() - t0, "environment": common.environment()})
    print(f"wrote {out / 'results.json'} and {png}")


if __name__ == "__main__":
    main()
