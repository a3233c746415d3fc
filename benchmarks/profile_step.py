"""Where the train step's time goes: per-op times from a profiler trace, summed by source and phase.

Profiles the real jitted, donated train step (optimizer included) with `attractor_jax.train.op_profile`, on
vs_reference.py's configuration (the default: the issue's side-by-side table) or on a preset, and optionally the
solver-free value-and-gradient (``--target grad0``: backbone, decode and loss at max_iter 0, whose
backward/forward ratio vs_reference.py compares with the authors'). Prints the wall time per call, the summed op
time per phase, the model's stages (``by outer``) and the innermost call sites (``by path``), each with its
share of the summed op time. XLA:CPU runs independent ops concurrently, so op times overlap and sum to more
than the wall time; shares are of the summed time.

Usage: python benchmarks/profile_step.py [--preset vs-reference] [--target train_step|grad0] [--batch 8]
                                         [--seq 128] [--steps 5] [--depth 2] [--top 20]
                                         [--out benchmarks/results/profile_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax

from attractor_jax.train.op_profile import compile_for_profile, profile_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(preset: str, batch: int, seq: int, target: str):
    """``(run_once, compiled, description)`` for the chosen step."""
    from flax import nnx

    from attractor_jax.models import build_model, get_config
    from attractor_jax.train.trainer import RunConfig, TrainConfig
    from throughput import build_run, random_batch
    from vs_reference import t0_loss

    if preset == "vs-reference":
        from vs_reference import CONFIG, run_config

        run = run_config()
        seed = CONFIG["seed"]
    else:
        run = RunConfig(model=get_config(preset), train=TrainConfig(steps=1000, batch_size=batch, seq_len=seq))
        seed = 0
    desc = (f"{preset}: {run.model.name}, batch {run.train.batch_size} x seq {run.train.seq_len}, "
            f"{jax.devices()[0].device_kind} x{jax.device_count()}")
    if target == "train_step":
        holder = build_run(run, seed=seed)
        data = holder["data"]
        compiled = compile_for_profile(holder["step"], holder["state"], data)

        def run_once():
            holder["state"], metrics = compiled(holder["state"], data)
            return metrics

        return run_once, compiled, desc
    # the solver-free value and gradient only: no train step is built
    data = jax.device_put(random_batch(run.model.vocab_size, run.train.batch_size, run.train.seq_len, seed))
    graphdef, params = nnx.split(build_model(run.model, seed=seed))
    compiled = compile_for_profile(jax.jit(jax.value_and_grad(t0_loss(graphdef))), params, data["inputs"],
                                   data["targets"])
    return (lambda: compiled(params, data["inputs"], data["targets"])), compiled, desc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vs-reference",
                    help="'vs-reference' (vs_reference.py's configuration) or a model preset name")
    ap.add_argument("--target", default="train_step", choices=("train_step", "grad0"))
    ap.add_argument("--batch", type=int, default=8, help="for a preset (vs-reference fixes its own)")
    ap.add_argument("--seq", type=int, default=128, help="for a preset (vs-reference fixes its own)")
    ap.add_argument("--steps", type=int, default=5, help="profiled calls, after one warm-up call")
    ap.add_argument("--depth", type=int, default=2, help="frames per source in the tables")
    ap.add_argument("--top", type=int, default=20, help="rows printed per table")
    ap.add_argument("--out", default="benchmarks/results/profile_step.json")
    a = ap.parse_args(argv)
    for name in ("batch", "seq", "steps", "depth", "top"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.preset != "vs-reference":
        from attractor_jax.models import PRESETS
        from attractor_jax.models.config import REASONER_CONFIGS

        lm = sorted(n for n, c in PRESETS.items() if not isinstance(c, REASONER_CONFIGS))
        if a.preset not in lm:
            ap.error(f"--preset {a.preset!r} is not 'vs-reference' or a language-model preset: {', '.join(lm)}")
    run_once, compiled, desc = build(a.preset, a.batch, a.seq, a.target)
    prof = profile_ops(run_once, compiled, steps=a.steps)
    phases = prof.phase_ms()
    total = sum(phases.values())
    print(f"{a.target} on {desc}; {a.steps} profiled calls")
    print(f"wall {prof.wall_ms:.1f} ms per call (median); summed op time {total:.1f} ms "
          f"({total / prof.wall_ms:.2f}x the wall: ops overlap); forward {phases['forward']:.1f} ms, "
          f"backward {phases['backward']:.1f} ms (ops JAX made by transposition)")
    tables = {"outer": prof.table(depth=a.depth + 1, by="outer"), "path": prof.table(depth=a.depth, by="path"),
              "file": prof.table(by="file")}
    for by, rows in tables.items():
        print(f"\nby {by}:")
        print(f"{'ms':>8s} {'share':>6s} {'phase':8s} {'ops':>4s}  source")
        for r in rows[:a.top]:
            print(f"{r['ms']:8.1f} {100 * r['ms'] / total:5.1f}% {r['phase']:8s} {r['ops']:4d}  {r['source']}")
    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"target": a.target, "config": desc, "steps": a.steps, "wall_ms": prof.wall_ms,
                   "summed_op_ms": total, "phase_ms": phases, "unmatched_ms": prof.unmatched_ms,
                   "jax": jax.__version__, "tables": tables}, fh, indent=2)
    os.replace(tmp, a.out)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
