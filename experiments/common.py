"""Shared helpers of the language-model experiments: default corpus, run configs, train-and-evaluate with solver
statistics, mean ± std, results JSON and matplotlib setup.

Every experiment trains through the real trainer (``attractor_jax.train.trainer.train``), so a rerun with the
same flags resumes finished runs (only re-evaluates them) instead of training again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from attractor_jax.models import get_config
from attractor_jax.train.optim import OptimConfig
from attractor_jax.train import trainer
from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TEXT = REPO.parent / "shared" / "data" / "text"
DEFAULT_DATA = SHARED_TEXT / "tinyshakespeare_input.txt"
RESULTS = REPO / "experiments" / "results"

# The LM experiments' common small scale: 8 sequences of 128 bytes per step, the demo's peak learning rate
# (the reference's 8e-3 is tuned for 2k-token batches of its 140M models).
LR = 3e-3
BATCH = 8
SEQ_LEN = 128
EVAL_BATCHES = 16


def add_common_args(ap: argparse.ArgumentParser, *, name: str, steps: int | None = None,
                    data: bool = True) -> None:
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--out", default=str(RESULTS / name),
                    help=f"results folder (default experiments/results/{name})")
    if steps is not None:
        ap.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
        ap.add_argument("--batch-size", type=int, default=BATCH, help=f"sequences per step (default {BATCH})")
        ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help=f"tokens per sequence (default {SEQ_LEN})")
        ap.add_argument("--eval-batches", type=int, default=EVAL_BATCHES,
                        help=f"validation batches (default {EVAL_BATCHES})")
        ap.add_argument("--lr", type=float, default=LR, help=f"peak learning rate, AdamW and Muon (default {LR})")
    if data:
        ap.add_argument("--data", default=str(DEFAULT_DATA),
                        help="text corpus, byte-tokenised; the last 5%% is validation "
                             "(default ../shared/data/text/tinyshakespeare_input.txt)")


def check_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for k in ("steps", "batch_size", "seq_len", "eval_batches"):
        if getattr(a, k, 1) < 1:
            ap.error(f"--{k.replace('_', '-')}={getattr(a, k)} must be >= 1")
    if getattr(a, "lr", 1.0) <= 0:
        ap.error(f"--lr={a.lr} must be > 0")
    if a.seed < 0:
        ap.error(f"--seed={a.seed} must be >= 0")
    if hasattr(a, "data") and not pathlib.Path(a.data).exists():
        ap.error(f"--data {a.data!r} does not exist (the default corpus lives in ../shared/data/text)")


def make_run(preset: str, a: argparse.Namespace, seed: int, eval_depths: tuple[int, ...] = (),
             **overrides: Any) -> RunConfig:
    """A RunConfig for ``preset`` (with model overrides) at the experiment's scale and seed."""
    steps = a.steps
    return RunConfig(
        model=get_config(preset, **overrides),
        train=TrainConfig(steps=steps, batch_size=a.batch_size, seq_len=a.seq_len, seed=seed,
                          log_every=max(steps // 20, 1), save_every=steps, keep=1, eval_batches=a.eval_batches,
                          eval_depths=eval_depths, tensorboard=False, async_checkpoint=False),
        optim=OptimConfig(lr=a.lr, muon_lr=a.lr),
        data=DataConfig(path=str(a.data), val_fraction=0.05),
    )


def train_run(run: RunConfig, workdir: pathlib.Path, label: str) -> dict:
    """Train (or resume/skip) one run; returns ``{"seconds", "curve"}`` with the logged training curve."""
    print(f"\n== {label}  ({workdir})", flush=True)
    t0 = time.perf_counter()
    train_to_end(run, workdir)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "curve": read_curve(workdir)}


def train_to_end(run: RunConfig, workdir: pathlib.Path) -> dict:
    """The trainer's ``train(run, workdir)``, or SystemExit when it returned before the last step (SIGTERM: the
    trainer checkpoints and returns), so that no script evaluates or reports a partial run."""
    summary = trainer.train(run, workdir)
    if summary["step"] < run.train.steps:
        raise SystemExit(f"error: training in {workdir} stopped at step {summary['step']} of {run.train.steps} "
                         "(interrupted); nothing was evaluated or written — rerun the same command to resume it")
    return summary


def read_curve(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "loss", "solver_iters", "solver_converged", "tokens_per_s")
    return [{k: r[k] for k in keep if k in r} for r in rows if "loss" in r]


def evaluate_with_stats(workdir: pathlib.Path, depths: list[int | None], batches: int | None = None,
                        model_overrides: dict[str, Any] | None = None) -> dict:
    """Validation loss/ppl by depth of the latest checkpoint (on the validation batches of seed 0), plus (for the
    attractor) mean f-evaluations per token, the evaluations the batch ran (its largest per-token count), the
    fraction of tokens whose solve converged and the mean and largest final relative residual.

    Mirrors ``trainer.evaluate`` but keeps the model's aux outputs. ``model_overrides`` changes fields that do
    not change parameters (``dtype``, ``solver.*``). Keys: ``"0"``, ``"1"``, ..., ``"full"``.
    """
    import jax.numpy as jnp
    from flax import nnx

    from attractor_jax.train import sharding as shd
    from attractor_jax.train.checkpoint import Checkpointer
    from attractor_jax.train.trainer import data_pipelines, cross_entropy, setup

    wd = pathlib.Path(workdir)
    run = RunConfig.from_dict(json.loads((wd / "config.json").read_text()))
    # The validation rows are drawn with train.seed: fix it so every run (any seed, any model) is scored on the
    # same validation batches. The parameters come from the checkpoint, not from the seed.
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, seed=0))
    if model_overrides:
        run = dataclasses.replace(run, model=get_config(run.model, **model_overrides))
    if batches is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_batches=batches))
    _, mesh, graphdef, _, _, abstract_state, state_sh = setup(run)
    ckpt = Checkpointer(wd, keep=run.train.keep)
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract_state, state_sh)
    restored = ckpt.restore(abstract, None)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{wd} has no checkpoint")
    step, state, _ = restored
    _, val_batches = data_pipelines(run, 0, 1)
    data = [jax.device_put(b, shd.batch_sharding(mesh)) for b in val_batches()]

    def one(params, batch, max_iter):
        logits, aux = nnx.merge(graphdef, params)(batch["inputs"], max_iter=max_iter)
        out = {"loss": cross_entropy(logits, batch["targets"])}
        if "iterations" in aux:
            out["solver_iters"] = aux["iterations"].astype(jnp.float32).mean()
            out["solver_steps"] = aux["iterations"].max().astype(jnp.float32)
            out["converged"] = aux["converged"].astype(jnp.float32).mean()
            res = aux["residual"]
            out["residual"] = jnp.mean(jnp.where(jnp.isfinite(res), res, 0.0))
            out["residual_max"] = jnp.max(jnp.where(jnp.isfinite(res), res, 0.0))
        return out

    fn = jax.jit(one, static_argnums=(2,))
    results = {}
    for depth in depths:
        rows = [jax.device_get(fn(state.params, b, depth)) for b in data]
        r = {k: float(np.mean([x[k] for x in rows])) for k in rows[0]}
        r["ppl"] = float(math.exp(min(r["loss"], 50.0)))
        results["full" if depth is None else str(depth)] = r
    return {"step": int(step), "depths": results}


def mean_std(xs: list[float]) -> dict:
    return {"mean": float(statistics.fmean(xs)), "std": float(statistics.stdev(xs)) if len(xs) > 1 else 0.0,
            "values": [float(x) for x in xs]}


def environment() -> dict:
    return {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "device": jax.devices()[0].device_kind, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}


def write_json(path: pathlib.Path, payload: dict) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def pyplot():
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def train_step_cost(run: RunConfig, repeats: int = 3) -> dict:
    """Compiled peak memory and measured time of ``run``'s real jitted train step (model, loss, gradient and
    optimizer update) on random tokens.

    Peak memory is the compiled executable's ``memory_analysis()``: temp + argument + output bytes (arguments
    and outputs are the parameters, optimizer state and batch, so only ``temp`` changes with depth); step time
    is the median of ``repeats`` timed calls after one warm-up call.
    """
    import jax.numpy as jnp

    from attractor_jax.train.trainer import make_steps, setup

    s = setup(run)
    train_step, _ = make_steps(s.graphdef, s.optimizer, 1)
    b, t, v = run.train.batch_size, run.train.seq_len, run.model.vocab_size
    toks = jax.random.randint(jax.random.key(run.train.seed), (b, t + 1), 0, min(v, 256), dtype=jnp.int32)
    batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:]}
    state = jax.jit(s.init)()
    t0 = time.perf_counter()
    compiled = jax.jit(train_step).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(state, batch))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, batch))
        times.append(time.perf_counter() - t0)
    return {"peak_bytes": int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes),
            "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes), "step_seconds": float(statistics.median(times)),
            "compile_seconds": compile_s}
