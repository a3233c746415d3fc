"""`attractor-jax demo` (`make demo`): train attractor-tiny and gpt-tiny on an embedded corpus, compare them.

Needs no download and ships nothing third-party: the corpus is the Python standard library's own source files
(every machine running this has them), byte-tokenised. Both models go through the real trainer (sharded step,
orbax checkpoints, metrics.jsonl) with the same data, steps and optimizer; then the attractor's validation loss
is measured at solver depths T = 0 (the backbone proposal c decoded directly), 1, 2 and the full solve, next to
the GPT. A table is printed and a plot saved, and the trained attractor continues a prompt (generation with the
equilibrium KV cache). Rerunning resumes (and re-evaluates) the finished runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import sysconfig
import tempfile

from attractor_jax.models import get_config
from attractor_jax.train.optim import OptimConfig
from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, evaluate, train


def write_stdlib_corpus(path: pathlib.Path, max_bytes: int = 2_000_000) -> pathlib.Path:
    """Concatenate the standard library's top-level ``*.py`` files (sorted by name) into ``path``."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for src in sorted(stdlib.glob("*.py")):
        text = src.read_text(encoding="utf-8", errors="replace")
        chunks.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    if total < 100_000:
        raise FileNotFoundError(f"demo corpus: found only {total} characters of Python sources under {stdlib}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(chunks)[:max_bytes])
    os.replace(tmp, path)
    return path


def plot(results: dict, out: pathlib.Path) -> pathlib.Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        steps = [row["step"] for row in r["curve"]]
        ax1.plot(steps, [row["loss"] for row in r["curve"]], label=name)
    ax1.set(xlabel="step", ylabel="train loss (nats/byte)", title="training")
    ax1.legend()
    att = results["attractor-tiny"]["eval"]
    labels = list(att)
    ax2.bar(labels, [att[k]["loss"] for k in labels], color="tab:blue", label="attractor-tiny")
    ax2.axhline(results["gpt-tiny"]["eval"]["full"]["loss"], color="tab:orange", ls="--", label="gpt-tiny")
    lo = min(min(att[k]["loss"] for k in labels), results["gpt-tiny"]["eval"]["full"]["loss"])
    ax2.set_ylim(lo * 0.95, None)
    ax2.set(xlabel="solver depth T", ylabel="validation loss", title="equilibrium internalisation")
    ax2.legend()
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_sample(workdir: pathlib.Path, prompt: str = "def ", max_new_tokens: int = 60, seed: int = 0) -> str:
    """Print the trained model's continuation of ``prompt`` (sampled at temperature 0.8, top-k 20)."""
    import jax

    from attractor_jax.eval.generate import generate_text, run_tokenizer
    from attractor_jax.train.trainer import load_model

    model, run, _ = load_model(workdir)
    print(f"\nsample from {workdir.name} ({max_new_tokens} tokens, temperature 0.8, top-k 20):\n")
    text = generate_text(model, run_tokenizer(run), prompt, out=sys.stdout, max_new_tokens=max_new_tokens,
                         temperature=0.8, top_k=20, key=jax.random.key(seed))
    print("\n")
    return text


def run_demo(steps: int = 400, seed: int = 0, out: str = "runs/demo", batch_size: int = 8,
             seq_len: int = 128) -> dict:
    if steps < 1:
        raise ValueError(f"demo: steps={steps} must be >= 1")
    out_dir = pathlib.Path(out)
    corpus = write_stdlib_corpus(out_dir / "stdlib_corpus.txt")
    print(f"demo: corpus {corpus} ({corpus.stat().st_size:,} bytes of Python standard-library source)")
    base = RunConfig(
        model=get_config("gpt-tiny"),
        train=TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, seed=seed, log_every=25,
                          save_every=max(steps // 2, 1), eval_batches=8, eval_depths=(0, 1, 2)),
        optim=OptimConfig(lr=3e-3, muon_lr=3e-3),
        data=DataConfig(path=str(corpus), val_fraction=0.05),
    )
    results = {}
    for preset in ("attractor-tiny", "gpt-tiny"):
        run = dataclasses.replace(base, model=get_config(preset))
        print(f"\n== {preset}")
        train(run, out_dir / preset)
        depths = [0, 1, 2, None] if preset.startswith("attractor") else [None]
        ev = evaluate(out_dir / preset, depths=depths)
        curve = [json.loads(line) for line in (out_dir / preset / "metrics.jsonl").read_text().splitlines()]
        results[preset] = {"eval": ev["depths"], "curve": [r for r in curve if "loss" in r]}
    print(f"\nvalidation loss (nats/byte) after {steps} steps of {batch_size}x{seq_len} tokens, same data:")
    print(f"  {'model':16s} {'T=0':>8s} {'T=1':>8s} {'T=2':>8s} {'full':>8s} {'f-evals/token':>14s}")
    att = results["attractor-tiny"]["eval"]
    print(f"  {'attractor-tiny':16s} " + " ".join(f"{att[k]['loss']:8.4f}" for k in ("0", "1", "2", "full"))
          + f" {att['full'].get('solver_iters', float('nan')):14.2f}")
    gpt = results["gpt-tiny"]["eval"]["full"]["loss"]
    print(f"  {'gpt-tiny':16s} {'':>8s} {'':>8s} {'':>8s} {gpt:8.4f}")
    print_sample(out_dir / "attractor-tiny", seed=seed)
    png = plot(results, out_dir)
    summary = {k: {"eval": v["eval"]} for k, v in results.items()}
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out_dir / 'demo.json'}" + (f" and {png}" if png else ""))
    return results
