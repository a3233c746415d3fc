"""Side by side with the authors' PyTorch code, on one small configuration, in interleaved rounds.

The configuration (issue 15's table): d 256, 4 heads, MLP 1024, 2 backbone blocks + 1 attractor-head block,
vocabulary 1024 (2,623,744 parameters), batch 8 x 256 tokens, exactly 12 forward solver f-evaluations
(Anderson, m 5, tol 0), one-step (Neumann-1) backward, AdamW with global-norm clip 1.0, float32 on the CPU.

Measured, each as a median over rounds (our jitted functions; their eager modules under ``torch.no_grad`` where
only a forward is timed):

- ``train_step``: one optimizer step (forward solve, implicit backward, clip, AdamW), tokens/s;
- ``head_pass``: one evaluation of the attractor map f(y, c) = H(y + c) - y, forward only;
- ``backbone``: the backbone's forward (embedding and 2 blocks) that proposes c;
- ``fwd0`` / ``grad0``: loss at max_iter 0 (c decoded directly) and its value-and-gradient; the ratio
  (grad0 - fwd0) / fwd0 is the backward's cost in forwards (theirs: the same decode of c with their modules,
  ``reference_worker.py``; their forward under ``torch.no_grad``);
- with ``--components``: the first backbone block and its parts (`COMPONENTS`), ``<part>_fwd`` and
  ``<part>_grad`` (value and gradient with respect to the part's parameters and input), on both sides.

The authors' side runs in a separate interpreter that has torch (``--reference-python``) on a checkout of
their repository (``--reference-repo``, jacobfa/Attractor), driven round by round through a pipe so that
machine noise hits both alike; it is never imported here. Without those flags only our side runs.

Usage: python benchmarks/vs_reference.py [--rounds 3] [--reps 5] [--threads 2] [--components]
           [--reference-python /path/venv/bin/python --reference-repo /path/Attractor]
           [--out benchmarks/results/vs_reference.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = dict(d_model=256, n_heads=4, mlp_dim=1024, n_backbone_layers=2, n_fp_blocks=1, vocab_size=1024,
              batch=8, seq=256, iters=12, seed=0)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_worker.py")


COMPONENTS = ("block", "attention", "attn_core", "mlp", "decode_ce")


def run_config():
    """Our `RunConfig` for CONFIG: attractor-small-140m resized, exactly ``iters`` Anderson iterations (tol 0),
    the one-step (Neumann-1) backward, AdamW."""
    from attractor_jax import implicit
    from attractor_jax.models import get_config
    from attractor_jax.train.optim import OptimConfig
    from attractor_jax.train.trainer import RunConfig, TrainConfig

    c = CONFIG
    model_cfg = dataclasses.replace(
        get_config("attractor-small-140m"), vocab_size=c["vocab_size"], d_model=c["d_model"], n_heads=c["n_heads"],
        n_kv_heads=c["n_heads"], mlp_dim=c["mlp_dim"], n_backbone_layers=c["n_backbone_layers"],
        n_fp_blocks=c["n_fp_blocks"], max_seq_len=c["seq"],
        solver=implicit.Anderson(m=5, max_iter=c["iters"], min_iter=c["iters"], tol=0.0),
        backward=implicit.Neumann(k=1))
    return RunConfig(model=model_cfg, train=TrainConfig(steps=1000, batch_size=c["batch"], seq_len=c["seq"]),
                     optim=OptimConfig(optimizer="adamw", lr=1e-3, grad_clip=1.0))


def t0_loss(graphdef):
    """The solver-free loss ``(params, inputs, targets) -> cross-entropy`` of the model ``graphdef`` describes:
    its forward at max_iter 0 (the Attractor decodes c; a GPT ignores max_iter)."""
    from flax import nnx

    from attractor_jax.train.trainer import cross_entropy

    def loss0(p, t, tg):
        logits, _ = nnx.merge(graphdef, p)(t, max_iter=0)
        return cross_entropy(logits, tg)

    return loss0


def build_ours(components: bool = False):
    """Our functions on CONFIG, each a zero-argument callable that runs once and waits for the result;
    ``components`` adds ``<part>_fwd`` / ``<part>_grad`` for each of `COMPONENTS` (see `main`'s help)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from attractor_jax.models import build_model, param_counts
    from attractor_jax.models.attractor import _head_map
    from throughput import build_run  # this folder is on sys.path when run as a script

    c = CONFIG
    run = run_config()
    model_cfg = run.model
    holder = build_run(run, seed=c["seed"])
    batch = holder["data"]

    def run_step():
        holder["state"], metrics = holder["step"](holder["state"], batch)
        return metrics

    model = build_model(model_cfg, seed=c["seed"])
    graphdef, params = nnx.split(model)
    head_def, head_state = nnx.split(model.head)
    encode = jax.jit(lambda p, t: nnx.merge(graphdef, p).encode(t))
    cvec = encode(params, batch["inputs"])
    y = cvec + 0.01 * jax.random.normal(jax.random.key(1), cvec.shape)
    head = jax.jit(lambda y, cc, hs: _head_map(head_def, y, cc, hs, None))

    loss0 = t0_loss(graphdef)
    fwd0 = jax.jit(loss0)
    grad0 = jax.jit(jax.value_and_grad(loss0))
    iters = float(jax.device_get(holder["metrics"]).get("solver_iters", float("nan")))
    fns = {
        "train_step": lambda: jax.block_until_ready(run_step()),
        "head_pass": lambda: jax.block_until_ready(head(y, cvec, head_state)),
        "backbone": lambda: jax.block_until_ready(encode(params, batch["inputs"])),
        "fwd0": lambda: jax.block_until_ready(fwd0(params, batch["inputs"], batch["targets"])),
        "grad0": lambda: jax.block_until_ready(grad0(params, batch["inputs"], batch["targets"])),
    }
    if components:
        fns.update(_our_components(model, cvec, batch["targets"]))
    for fn in fns.values():  # compile everything before timing
        fn()
    info = {"params": param_counts(model_cfg)["total"], "solver_f_evals": iters, "jax": jax.__version__,
            "device": jax.devices()[0].device_kind, "dtype": str(jnp.dtype(model_cfg.dtype))}
    return fns, info


def _our_components(model, x, targets) -> dict:
    """Forward and value-and-gradient (parameters and input) of the first backbone block's parts on ``x``:
    ``sum(part(x) · r)`` for a fixed random ``r``; ``decode_ce`` is the final norm, tied logits and
    cross-entropy."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from attractor_jax.nn.attention import dot_product_attention
    from attractor_jax.train.trainer import cross_entropy

    blk = model.backbone[0]
    b, t, d = x.shape
    n, hd = model.config.n_heads, d // model.config.n_heads
    r = jax.random.normal(jax.random.key(3), x.shape)
    qkv = jax.random.normal(jax.random.key(4), (3, b, t, n, hd))
    r_core = jax.random.normal(jax.random.key(5), (b, t, n, hd))
    parts = {"block": (blk, lambda m, x: jnp.sum(m(x) * r)),
             "attention": (blk.attn, lambda m, x: jnp.sum(m(x) * r)),
             "mlp": (blk.mlp, lambda m, x: jnp.sum(m(x) * r)),
             "decode_ce": (model, lambda m, x: cross_entropy(m.decode(x), targets))}
    def timed(name, loss, *args):  # <name>_fwd and <name>_grad: jitted, with respect to every argument
        fwd = jax.jit(loss)
        grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))
        fns[f"{name}_fwd"] = lambda: jax.block_until_ready(fwd(*args))
        fns[f"{name}_grad"] = lambda: jax.block_until_ready(grad(*args))

    fns = {}
    for name, (mod, call) in parts.items():
        graphdef, state = nnx.split(mod)
        timed(name, lambda st, x, gd=graphdef, call=call: call(nnx.merge(gd, st), x), state, x)
    # the attention core alone: the CPU default (einsum_attention), causal
    timed("attn_core", lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, causal=True) * r_core), *qkv)
    return fns


def time_fns(fns: dict, reps: int) -> dict:
    """Median milliseconds of ``reps`` calls of each function."""
    out = {}
    for name, fn in fns.items():
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(ts)
    return out


class Reference:
    """The authors' side in its own interpreter: sends ``round REPS``, reads one JSON line back."""

    def __init__(self, python: str, repo: str, threads: int, components: bool = False):
        cfg = json.dumps(CONFIG)
        self.proc = subprocess.Popen([python, WORKER, repo, cfg, str(threads), str(int(components))],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference worker exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def round(self, reps: int) -> dict:
        self.proc.stdin.write(f"round {reps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="calls per function per round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the reference side")
    ap.add_argument("--reference-python", default=None, help="an interpreter with torch, einops, safetensors")
    ap.add_argument("--reference-repo", default=None, help="a checkout of jacobfa/Attractor")
    ap.add_argument("--components", action="store_true",
                    help="also time the first backbone block and its parts (attention with its projections, the "
                         "attention core alone, the MLP, and the final norm + tied logits + cross-entropy), forward "
                         "and forward+backward, on both sides")
    ap.add_argument("--out", default="benchmarks/results/vs_reference.json")
    a = ap.parse_args(argv)
    if bool(a.reference_python) != bool(a.reference_repo):
        ap.error("--reference-python and --reference-repo go together")
    ref = Reference(a.reference_python, a.reference_repo, a.threads, a.components) if a.reference_python else None
    fns, info = build_ours(a.components)
    if ref is not None and ref.info["params"] != info["params"]:
        raise SystemExit(f"parameter counts differ: ours {info['params']:,}, theirs {ref.info['params']:,}")
    ours, theirs = [], []
    for _ in range(a.rounds):
        ours.append(time_fns(fns, a.reps))
        if ref is not None:
            theirs.append(ref.round(a.reps))
    if ref is not None:
        ref.close()
    med = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
    tok = CONFIG["batch"] * CONFIG["seq"]
    per_round = [(r["grad0"] - r["fwd0"]) / r["fwd0"] for r in ours]  # the spread that machine noise leaves
    rows = {"ours": {**med, "tokens_per_s": tok / med["train_step"] * 1e3,
                     "backward_over_forward": (med["grad0"] - med["fwd0"]) / med["fwd0"],
                     "backward_over_forward_by_round": per_round, "info": info}}
    print(f"{info['params']:,} parameters; batch {CONFIG['batch']} x {CONFIG['seq']}; {info['solver_f_evals']:.0f} "
          f"f-evaluations per token; median of {a.rounds} interleaved rounds of {a.reps} calls")
    print(f"{'':22s} {'ours':>10s}" + (f" {'theirs':>10s} {'ours/theirs':>12s}" if ref else ""))
    if ref is not None:
        tmed = {k: statistics.median(r[k] for r in theirs) for k in theirs[0]}
        rows["theirs"] = {**tmed, "tokens_per_s": tok / tmed["train_step"] * 1e3,
                          "backward_over_forward": (tmed["grad0"] - tmed["fwd0"]) / tmed["fwd0"],
                          "backward_over_forward_by_round": [(r["grad0"] - r["fwd0"]) / r["fwd0"] for r in theirs],
                          "info": ref.info}
    for k, label in (("train_step", "train step ms"), ("head_pass", "head pass ms"), ("backbone", "backbone fwd ms"),
                     ("fwd0", "loss at T=0 ms"), ("grad0", "value+grad at T=0 ms")):
        line = f"{label:22s} {med[k]:10.1f}"
        if ref is not None and k in rows["theirs"]:
            line += f" {rows['theirs'][k]:10.1f} {rows['theirs'][k] / med[k]:11.2f}x"
        print(line)
    line = f"{'tokens/s':22s} {rows['ours']['tokens_per_s']:10,.0f}"
    if ref is not None:
        speed = rows["ours"]["tokens_per_s"] / rows["theirs"]["tokens_per_s"]
        line += f" {rows['theirs']['tokens_per_s']:10,.0f} {speed:11.2f}x"
        rows["train_step_speedup"] = speed
        rows["head_pass_speedup"] = rows["theirs"]["head_pass"] / med["head_pass"]
    print(line)
    if a.components:
        print(f"\n{'component (ms)':16s} {'fwd ours':>9s} {'theirs':>7s} {'fwd+bwd ours':>13s} {'theirs':>7s} "
              f"{'bwd/fwd ours':>13s} {'theirs':>7s}")
        for part in COMPONENTS:
            f, g = med[f"{part}_fwd"], med[f"{part}_grad"]
            t = rows.get("theirs", {})
            tf, tg = t.get(f"{part}_fwd", float("nan")), t.get(f"{part}_grad", float("nan"))
            print(f"{part:16s} {f:9.1f} {tf:7.1f} {g:13.1f} {tg:7.1f} {(g - f) / f:13.2f} {(tg - tf) / tf:7.2f}")
    for side in rows:
        if side in ("ours", "theirs"):
            r = rows[side]["backward_over_forward_by_round"]
            print(f"backward / forward at T=0, {side}: {rows[side]['backward_over_forward']:.2f} (rounds: "
                  f"{min(r):.2f}–{max(r):.2f})")
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"config": CONFIG, "rounds": a.rounds, "reps": a.reps, **rows}, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
