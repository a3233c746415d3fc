"""GPU check: train attractor-small-140m and gpt-small-140m on synthetic tokens and report tokens/s, MFU
and peak GPU memory; then a few minutes of attractor-sudoku-27m puzzle training (benchmarks/puzzle_check.py:
rows/s, solver iterations and residuals). Everything within ``--budget`` (8 min on one H200 by default).

Each preset runs in its own process (so ``peak_bytes_in_use`` is that model's alone) through the trainer's
own pieces: `trainer.setup` (mesh over the local devices, sharded state) and the jitted, donated
`make_steps` train step (AdamW + Muon, float32 master weights, ``--dtype`` compute), on random tokens
already on the device (no input pipeline in the timing). After compilation and a few warm-up steps,
``--steps`` steps are timed (stopping early after ``--max-seconds``). MFU counts the attractor solver's
measured f-evaluations (`attractor_jax.train.metrics.flops_per_token`) against the device's dense bf16 peak.
A preset that runs out of memory is retried at half the batch (twice at most). The solver's f-evaluations
on random tokens need not match those on real text.

    python benchmarks/gpu_check.py                    # on a GPU machine: ~5-7 min on one H200
    python benchmarks/gpu_check.py --smoke            # anywhere (CPU): tiny presets, a few steps

Writes a JSON summary (``--out``; default benchmarks/results/gpu_check.json, with ``--smoke``
gpu_check_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

FULL = dict(
    presets="attractor-small-140m,gpt-small-140m",
    batch_size=16,
    seq_len=2048,
    steps=300,
    warmup=5,
    max_seconds=80.0,
    budget=470.0,
)
PUZZLE_RESERVE = {False: 190.0, True: 120.0}  # seconds kept for benchmarks/puzzle_check.py (full, smoke)
SMOKE = dict(
    presets="attractor-tiny,gpt-tiny",
    batch_size=4,
    seq_len=64,
    steps=12,
    warmup=2,
    max_seconds=60.0,
    budget=300.0,
)
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def bench_one(
    preset: str,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    max_seconds: float,
    dtype: str | None,
    attention_impl: str | None,
    mesh: str | None,
    optimizer: str | None,
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from attractor_jax.models import get_config, param_counts
    from attractor_jax.train import metrics as mt
    from attractor_jax.train import sharding as shd
    from attractor_jax.train.optim import OptimConfig
    from attractor_jax.train.trainer import RunConfig, TrainConfig, make_steps, setup

    model = get_config(preset, attention_impl=attention_impl) if attention_impl else get_config(preset)
    optim = OptimConfig(optimizer=optimizer) if optimizer else OptimConfig()
    run = RunConfig(
        model=model,
        optim=optim,
        train=TrainConfig(steps=warmup + steps + 1, batch_size=batch, seq_len=seq, dtype=dtype, mesh=mesh),
    )
    t0 = time.perf_counter()
    s = setup(run)
    train_step, _ = make_steps(s.graphdef, s.optimizer, 1)
    bsh = shd.batch_sharding(s.mesh)
    step = jax.jit(
        train_step,
        in_shardings=(s.state_shardings, bsh),
        out_shardings=(s.state_shardings, None),
        donate_argnums=(0,),
    )
    state = jax.jit(s.init, out_shardings=s.state_shardings)()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(16):  # distinct random batches, already on the device
        toks = rng.integers(0, s.model_config.vocab_size, size=(batch, seq + 1), dtype=np.int32)
        batches.append(jax.device_put({"inputs": toks[:, :-1], "targets": toks[:, 1:]}, bsh))
    jax.block_until_ready((state, batches))
    t1 = time.perf_counter()
    state, m = step(state, batches[0])
    first = jax.device_get(m)
    compile_s = time.perf_counter() - t1
    for i in range(warmup):
        state, m = step(state, batches[(i + 1) % 16])
    jax.block_until_ready(m)

    timed, kept = 0, []
    t2 = time.perf_counter()
    while timed < steps:
        n = min(25, steps - timed)  # dispatch asynchronously; sync every 25 steps to check the time budget
        for _ in range(n):
            state, m = step(state, batches[timed % 16])
            kept.append(m.get("solver_iters", jnp.zeros(())))
            timed += 1
        jax.block_until_ready(m)
        if time.perf_counter() - t2 > max_seconds:
            break
    elapsed = time.perf_counter() - t2
    last = jax.device_get(m)
    f_evals = float(np.mean(jax.device_get(kept))) if "solver_iters" in last else 0.0

    cfg = s.model_config
    counts = param_counts(cfg)
    fpt = mt.flops_per_token(cfg, counts, seq, f_evals, mt.backward_vjps(cfg))
    dev = jax.devices()[0]
    tps = timed * batch * seq / elapsed
    peak = mt.peak_flops(dev.device_kind)
    stats = dev.memory_stats() or {}
    return {
        "preset": preset,
        "params": counts["total"],
        "device": dev.device_kind,
        "devices": jax.device_count(),
        "batch_size": batch,
        "seq_len": seq,
        "dtype": cfg.dtype,
        "attention_impl": cfg.attention_impl,
        "optimizer": run.optim.optimizer,
        "steps_timed": timed,
        "seconds_timed": elapsed,
        "ms_per_step": 1e3 * elapsed / timed,
        "tokens_per_s": tps,
        "solver_f_evals_per_token": f_evals if "solver_iters" in last else None,
        "flops_per_token": fpt,
        "mfu": tps * fpt / (peak * jax.device_count()) if peak else None,
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
        "loss_first": float(first["loss"]),
        "loss_last": float(last["loss"]),
        "setup_s": t1 - t0,
        "compile_s": compile_s,
        "skipped_steps": int(last.get("skipped_steps", 0)),
    }


def _child(a) -> int:
    try:
        row = bench_one(
            a.child,
            a.batch_size,
            a.seq_len,
            a.steps,
            a.warmup,
            a.max_seconds,
            a.dtype,
            a.attention_impl,
            a.mesh,
            a.optimizer,
        )
    except Exception as exc:  # noqa: BLE001 - report the reason to the parent
        msg = f"{type(exc).__name__}: {exc}"
        with open(a.child_out, "w") as fh:
            json.dump({"preset": a.child, "error": msg[:2000], "oom": any(k in msg for k in OOM_MARKERS)}, fh)
        return 3
    with open(a.child_out, "w") as fh:
        json.dump(row, fh)
    return 0


def _fmt_bytes(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny presets, few steps: runs on a CPU in ~1 min")
    ap.add_argument(
        "--presets", help=f"comma-separated (default {FULL['presets']}; smoke {SMOKE['presets']})"
    )
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--steps", type=int, help="timed steps per preset")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--max-seconds", type=float, help="stop a preset's timed loop after this long")
    ap.add_argument("--budget", type=float, help="wall-clock budget for everything (seconds)")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    ap.add_argument(
        "--attention-impl", default=None, help="xla (default) or cudnn (flash attention on NVIDIA)"
    )
    ap.add_argument("--mesh", default=None, help="device mesh over the local GPUs (default: all on data)")
    ap.add_argument("--optimizer", default=None, help="muon (default) or adamw")
    ap.add_argument("--out", help="JSON summary path")
    ap.add_argument("--no-puzzle", action="store_true",
                    help="skip the attractor-sudoku-27m puzzle check (benchmarks/puzzle_check.py)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    d = SMOKE if a.smoke else FULL
    for k in ("presets", "batch_size", "seq_len", "steps", "warmup", "max_seconds", "budget"):
        if getattr(a, k) is None:
            setattr(a, k, d[k])
    if a.child:
        return _child(a)
    a.out = a.out or os.path.join(
        "benchmarks", "results", "gpu_check_smoke.json" if a.smoke else "gpu_check.json"
    )

    start = time.perf_counter()
    rows = []
    for preset in [p for p in a.presets.split(",") if p]:
        batch = a.batch_size
        for attempt in range(3):
            reserve = 0.0 if a.no_puzzle else PUZZLE_RESERVE[a.smoke]
            left = a.budget - (time.perf_counter() - start) - reserve
            if left < 30:
                rows.append({"preset": preset, "error": "out of time budget"})
                break
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = tmp.name
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                preset,
                "--child-out",
                out,
                "--batch-size",
                str(batch),
                "--seq-len",
                str(a.seq_len),
                "--steps",
                str(a.steps),
                "--warmup",
                str(a.warmup),
                "--max-seconds",
                str(min(a.max_seconds, max(left - 60, 10))),
                "--dtype",
                a.dtype,
            ]
            for flag, v in (
                ("--attention-impl", a.attention_impl),
                ("--mesh", a.mesh),
                ("--optimizer", a.optimizer),
            ):
                if v:
                    cmd += [flag, v]
            print(
                f"[gpu_check] {preset}: batch {batch} x {a.seq_len}, {a.dtype}, up to {a.steps} timed steps",
                flush=True,
            )
            try:
                proc = subprocess.run(
                    cmd, timeout=left, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                row = (
                    json.load(open(out))
                    if os.path.getsize(out)
                    else {"preset": preset, "error": f"exit {proc.returncode}: {proc.stdout[-1500:]}"}
                )
            except subprocess.TimeoutExpired:
                row = {"preset": preset, "error": "timed out (budget)"}
            finally:
                os.unlink(out)
            if row.get("oom") and batch > 1 and attempt < 2:
                print(
                    f"[gpu_check] {preset}: out of memory at batch {batch}; retrying at {batch // 2}",
                    flush=True,
                )
                batch //= 2
                continue
            rows.append(row)
            break

    puzzle = None
    if not a.no_puzzle:
        left = a.budget - (time.perf_counter() - start)
        pout = os.path.join(os.path.dirname(os.path.abspath(a.out)),
                            "puzzle_check_smoke.json" if a.smoke else "puzzle_check.json")
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "puzzle_check.py"),
               "--out", pout, "--seconds", str(max(10.0, left - 100))] + (["--smoke"] if a.smoke else [])
        print(f"[gpu_check] puzzle check: {' '.join(cmd[2:])}", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=max(left, 30), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("[puzzle_check]")))
            puzzle = json.load(open(pout)) if proc.returncode == 0 else {"error": proc.stdout[-1500:]}
        except subprocess.TimeoutExpired:
            puzzle = {"error": "timed out (budget)"}

    import jax

    print(
        f"\njax {jax.__version__}; {rows[0].get('device', '?') if rows else '?'}; dtype {a.dtype}; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print(
        f"{'preset':22s} {'batch':>5s} {'steps':>5s} {'ms/step':>8s} {'tokens/s':>10s} {'f-evals':>7s} "
        f"{'MFU':>6s} {'peak mem':>10s} {'compile':>7s} {'loss':>13s}"
    )
    ok = True
    for r in rows:
        if "error" in r:
            ok = False
            print(f"{r['preset']:22s} ERROR {r['error'][:300]}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        fe = (
            f"{r['solver_f_evals_per_token']:7.2f}"
            if r["solver_f_evals_per_token"] is not None
            else "      -"
        )
        print(
            f"{r['preset']:22s} {r['batch_size']:5d} {r['steps_timed']:5d} {r['ms_per_step']:8.1f} "
            f"{r['tokens_per_s']:10,.0f} {fe} {mfu} {_fmt_bytes(r['peak_bytes_in_use']):>10s} "
            f"{r['compile_s']:6.0f}s {r['loss_first']:6.3f}>{r['loss_last']:6.3f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(
            {
                "jax": jax.__version__,
                "smoke": a.smoke,
                "dtype": a.dtype,
                "rows": rows,
                "puzzle": puzzle,
                "total_s": time.perf_counter() - start,
            },
            fh,
            indent=2,
        )
    if puzzle is not None and "error" in puzzle:
        ok = False
        print(f"puzzle check ERROR {puzzle['error'][:400]}")
    print(f"wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
