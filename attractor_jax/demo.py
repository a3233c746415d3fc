"""`attractor-jax demo`: train a tiny Attractor LM on an embedded text excerpt, then sweep the solver depth.

Needs no download and ships nothing third-party: the corpus is the Python standard library's own source files
(every machine running this has them), byte-tokenised. Shows the whole method on two CPU cores in about a minute: the backbone proposal c, the solved
head y* = f(y*, c) with per-token Anderson statistics, the implicit (Neumann-1) gradient, and equilibrium
internalisation (loss with the solver removed, T = 0, versus 1, 2, 4 steps and the full solve).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

def embedded_tokens(max_bytes: int = 2_000_000) -> np.ndarray:
    """Byte tokens of the standard library's top-level ``*.py`` files (sorted by name), up to ``max_bytes``."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if total < 100_000:
        raise FileNotFoundError(f"demo corpus: found only {total} bytes of Python sources under {stdlib}")
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


def _batches(tokens: np.ndarray, batch: int, seq: int, rng: np.random.Generator):
    starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
    window = np.stack([tokens[s:s + seq + 1] for s in starts]).astype(np.int32)
    return window[:, :-1], window[:, 1:]


def _progress(step: int, total: int, text: str) -> None:
    width = 28
    done = int(width * step / total)
    sys.stdout.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {text}")
    sys.stdout.flush()


def run_demo(steps: int = 300, seed: int = 0, batch: int = 8, seq: int = 64, lr: float = 3e-3,
             preset: str = "attractor-tiny", out: str | None = None) -> dict:
    """Train ``preset`` for ``steps`` steps and return (and optionally write as JSON) the results."""
    from attractor_jax.models import create_model

    if steps < 1:
        raise ValueError(f"demo: steps={steps} must be >= 1")
    tokens = embedded_tokens()
    split = int(0.9 * len(tokens))
    train_tok, val_tok = tokens[:split], tokens[split:]
    model = create_model(preset, seed=seed)
    graphdef, state = nnx.split(model)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.0))
    opt_state = opt.init(state)

    def loss_fn(state, x, y, max_iter=None):
        logits, aux = nnx.merge(graphdef, state)(x, max_iter=max_iter)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, aux

    @jax.jit
    def train_step(state, opt_state, x, y):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state, x, y)
        updates, opt_state = opt.update(grads, opt_state, state)
        stats = {"loss": loss, "iters": jnp.mean(aux.get("iterations", jnp.zeros(()))),
                 "converged": jnp.mean(aux.get("converged", jnp.ones(())))}
        return optax.apply_updates(state, updates), opt_state, stats

    rng = np.random.default_rng(seed)
    print(f"demo: {preset} on {len(tokens):,} bytes of Python stdlib source, {steps} steps of {batch}x{seq} tokens "
          f"({jax.devices()[0].platform})")
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        x, y = _batches(train_tok, batch, seq, rng)
        state, opt_state, stats = train_step(state, opt_state, x, y)
        if step % 10 == 0 or step == steps:
            stats = {k: float(v) for k, v in stats.items()}
            history.append({"step": step, **stats})
            _progress(step, steps, f"loss {stats['loss']:.3f}  solver iters {stats['iters']:.1f}  "
                                   f"converged {stats['converged']:.2f}")
    print(f"\ntrained in {time.perf_counter() - t0:.1f}s")

    eval_rng = np.random.default_rng(seed + 1)
    xv, yv = _batches(val_tok, 16, seq, eval_rng)
    sweep = {}
    for depth in (0, 1, 2, 4, None):
        loss, aux = jax.jit(lambda s, x, y, d=depth: loss_fn(s, x, y, max_iter=d))(state, xv, yv)
        label = "full" if depth is None else str(depth)
        sweep[label] = {"loss": float(loss), "iterations": float(jnp.mean(aux.get("iterations", jnp.zeros(()))))}
    print("validation loss by solver depth T (T=0 decodes the backbone proposal c with the solver removed):")
    for label, r in sweep.items():
        print(f"  T={label:>4s}  loss {r['loss']:.4f}  mean f-evals/token {r['iterations']:.2f}")
    result = {"preset": preset, "seed": seed, "steps": steps, "batch": batch, "seq": seq, "lr": lr,
              "history": history, "depth_sweep": sweep}
    if out:
        os.makedirs(out, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, os.path.join(out, "demo.json"))
        print(f"wrote {os.path.join(out, 'demo.json')}")
    return result
