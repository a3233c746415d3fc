"""Generation benchmark: tokens/s with the equilibrium KV cache against recomputing the full context per token.

Model: attractor-tiny (random weights, or a trained run's with ``--workdir``), its max_seq_len raised to fit the
context (RoPE has no learned positions). One sequence, a ``--context``-token prompt (default 512, bytes of the
shared text corpus or random ids), ``--new`` greedy tokens:

  cached     `aj.generate`: one prefill, then per token the backbone on that token and the head's fixed point of
             that token only, against the cached keys/values of the converged prefix.
  recompute  per token, the uncached forward (backbone + the whole head solve) over the last ``--context``
             tokens, then the argmax at the last position: what generation costs without a cache.

Both are compiled before timing (best of ``--repeats``). Also reported: mean solver iterations (f-evaluations)
per generated token with the cache, and per token of the recomputed window. Writes benchmarks/results/generate.json.

Usage: python benchmarks/generate.py [--context 512] [--new 64] [--workdir RUN] [--out ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attractor_jax as aj
from attractor_jax.models import create_model, get_config

TEXT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare_input.txt"


def build_model(args, max_len: int):
    """attractor-tiny (or the run's model) with max_seq_len >= max_len; a run's trained weights when given."""
    if args.workdir is None:
        cfg = get_config(args.preset)
        return create_model(dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, max_len)), seed=0), "random"
    from attractor_jax.train.trainer import load_model

    trained, run, step = load_model(args.workdir)
    model = create_model(dataclasses.replace(run.model, max_seq_len=max(run.model.max_seq_len, max_len)))
    nnx.update(model, nnx.state(trained))
    data = pathlib.Path(str(run.data.path)).name
    return model, f"trained {step} steps of {run.train.batch_size}x{run.train.seq_len} tokens on {data}"


def prompt_tokens(context: int, vocab: int) -> tuple[np.ndarray, str]:
    if TEXT.is_file() and vocab >= 256:
        data = np.frombuffer(TEXT.read_bytes()[:context], np.uint8).astype(np.int32)
        if len(data) == context:
            return data[None], f"first {context} bytes of {TEXT.name}"
    return np.asarray(jax.random.randint(jax.random.key(0), (1, context), 0, vocab), np.int32), "random ids"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="attractor-tiny")
    ap.add_argument("--workdir", help="a trained run whose weights to use (default: random weights)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "generate.json"))
    args = ap.parse_args(argv)
    c, n = args.context, args.new
    model, weights = build_model(args, c + n)
    prompt, source = prompt_tokens(c, model.config.vocab_size)

    # cached: the public API, compiled by a first call
    run_cached = lambda: aj.generate(model, prompt, max_new_tokens=n, temperature=0.0, key=None,  # noqa: E731
                                     return_stats=True)
    tokens, stats = run_cached()
    jax.block_until_ready(tokens)
    t_cached = best_of(lambda: jax.block_until_ready(run_cached()), args.repeats)
    iters_cached = float(np.mean(np.asarray(stats["iterations"])))

    # recompute: the uncached forward over the last `context` tokens, once per new token
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda st, toks: nnx.merge(graphdef, st)(toks))

    def run_recompute():
        seq = list(prompt[0])
        its = []
        for _ in range(n):
            logits, aux = forward(state, jnp.asarray([seq[-c:]], jnp.int32))
            seq.append(int(jnp.argmax(logits[0, -1])))
            if "iterations" in aux:
                its.append(float(jnp.mean(aux["iterations"])))
        return seq, its

    forward(state, jnp.asarray(prompt))[0].block_until_ready()
    _, its = run_recompute()
    t_recompute = best_of(run_recompute, args.repeats)

    result = {
        "jax": jax.__version__,
        "platform": jax.devices()[0].platform,
        "device": jax.devices()[0].device_kind,
        "model": model.config.name,
        "weights": weights,
        "prompt": source,
        "context": c,
        "new_tokens": n,
        "solver": dataclasses.asdict(model.config.solver) if hasattr(model.config, "solver") else None,
        "cached_tokens_per_s": n / t_cached,
        "recompute_tokens_per_s": n / t_recompute,
        "speedup": t_recompute / t_cached,
        "cached_mean_solver_iters_per_generated_token": iters_cached,
        "recompute_mean_solver_iters_per_token": float(np.mean(its)) if its else None,
    }
    print(f"{model.config.name} ({weights}), context {c}, {n} greedy tokens, {result['platform']}:")
    print(f"  {'':10s} {'tokens/s':>10s} {'solver iters/token':>19s}")
    print(f"  {'cached':10s} {result['cached_tokens_per_s']:10.1f} {iters_cached:19.2f}")
    rec_its = result["recompute_mean_solver_iters_per_token"]
    print(f"  {'recompute':10s} {result['recompute_tokens_per_s']:10.1f} "
          f"{rec_its if rec_its is not None else float('nan'):19.2f}")
    print(f"  speed-up {result['speedup']:.1f}x")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
