"""Train-step throughput per preset, measured side by side in one process (interleaved rounds).

For each preset: the real jitted, donated train step of `attractor_jax.train` (optimizer included) on random
tokens; reports tokens/s, ms/step, the attractor's solver f-evaluations per token, the estimated training FLOPs
per token (solver evaluations counted) and MFU where the device's peak is known (TPU/GPU; on other devices
pass ``--peak-flops``).

Usage: python benchmarks/throughput.py [--presets attractor-tiny,gpt-tiny,parcae-tiny] [--batch 8] [--seq 128]
                                        [--steps 10] [--rounds 3] [--dtype float32] [--out benchmarks/results/throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from attractor_jax.models import get_config, param_counts
from attractor_jax.train import sharding as shd
from attractor_jax.train.metrics import backward_vjps, flops_per_token, peak_flops
from attractor_jax.train.optim import OptimConfig
from attractor_jax.train.trainer import RunConfig, TrainConfig, make_steps, setup


def build(preset: str, batch: int, seq: int, dtype: str | None, steps: int):
    run = RunConfig(model=get_config(preset), train=TrainConfig(steps=max(steps, 1), batch_size=batch, seq_len=seq,
                                                                dtype=dtype),
                    optim=OptimConfig(lr=1e-3, muon_lr=1e-3))
    return build_run(run)


def random_batch(vocab_size: int, batch: int, seq: int, seed: int) -> dict:
    """``{"inputs", "targets"}``: ``batch`` rows of ``seq`` uniform random tokens and their next tokens."""
    toks = np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq + 1), dtype=np.int32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:]}


def build_run(run: RunConfig, seed: int = 0) -> dict:
    """``run``'s jitted, donated train step with a fresh sharded state and one batch of random tokens, compiled
    by a first step (its time is ``compile_s``)."""
    batch, seq = run.train.batch_size, run.train.seq_len
    s = setup(run)
    train_step, _ = make_steps(s.graphdef, s.optimizer, 1)
    bsh = shd.batch_sharding(s.mesh)
    step = jax.jit(train_step, in_shardings=(s.state_shardings, bsh), out_shardings=(s.state_shardings, None),
                   donate_argnums=(0,))
    state = jax.jit(s.init, out_shardings=s.state_shardings)()
    data = jax.device_put(random_batch(s.model_config.vocab_size, batch, seq, seed), bsh)
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    return {"run": run, "setup": s, "step": step, "state": state, "data": data, "metrics": metrics,
            "compile_s": time.perf_counter() - t0}

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="attractor-tiny,gpt-tiny,parcae-tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="compute dtype override (bfloat16 on accelerators)")
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    ap.add_argument("--peak-flops", type=float, default=None,
                    help="peak FLOP/s per device for MFU where the device is not in the table (e.g. a CPU: "
                         "cores x GHz x FLOPs/cycle); TPUs/GPUs are looked up")
    a = ap.parse_args(argv)
    presets = [p for p in a.presets.split(",") if p]
    built = {p: build(p, a.batch, a.seq, a.dtype, a.steps) for p in presets}
    times = {p: [] for p in presets}
    iters = {p: [] for p in presets}
    for _ in range(a.rounds):  # interleave presets so machine noise hits all of them alike
        for p, b in built.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                b["state"], metrics = b["step"](b["state"], b["data"])
            metrics = jax.device_get(metrics)
            times[p].append((time.perf_counter() - t0) / a.steps)
            iters[p].append(float(metrics.get("solver_iters", 0.0)))
    kind = jax.devices()[0].device_kind
    peak = a.peak_flops or peak_flops(kind)
    rows = []
    for p, b in built.items():
        sec = statistics.median(times[p])
        cfg = b["setup"].model_config
        f_evals = statistics.mean(iters[p])
        fpt = flops_per_token(cfg, param_counts(cfg), a.seq, f_evals, backward_vjps(cfg))
        tps = a.batch * a.seq / sec
        rows.append({"preset": p, "params": param_counts(cfg)["total"], "ms_per_step": 1e3 * sec,
                     "tokens_per_s": tps, "solver_f_evals_per_token": f_evals, "flops_per_token": fpt,
                     "mfu": tps * fpt / (peak * jax.device_count()) if peak else None,
                     "compile_s": b["compile_s"]})
    print(f"jax {jax.__version__} on {kind} x{jax.device_count()}; batch {a.batch} x seq {a.seq}; "
          f"dtype {a.dtype or 'float32'}; median of {a.rounds} interleaved rounds of {a.steps} steps")
    print(f"{'preset':16s} {'params':>10s} {'ms/step':>9s} {'tokens/s':>10s} {'f-evals':>8s} {'GFLOP/tok':>10s} "
          f"{'MFU':>6s}")
    for r in rows:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{r['preset']:16s} {r['params']:10,d} {r['ms_per_step']:9.1f} {r['tokens_per_s']:10,.0f} "
              f"{r['solver_f_evals_per_token']:8.2f} {r['flops_per_token'] / 1e9:10.4f} {mfu}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.out)), suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"device": kind, "batch": a.batch, "seq": a.seq, "dtype": a.dtype, "peak_flops": peak,
                   "rows": rows}, fh, indent=2)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
