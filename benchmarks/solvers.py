"""Solver benchmark: f-evaluations and wall time to reach a relative tolerance, and compiled backward memory.

Problems
  tanh:  y <- tanh(y W + x U), a random contractive layer (batch of independent samples), W Gaussian (spectrum
         filling a disk: no Krylov/Anderson method can beat Picard much there) or symmetric (real spectrum).
  block: y <- c + Delta(y + c), an attractor-style pre-norm transformer block (attention + ReLU^2 MLP with
         LayerScale gates) on a [B, T, D] state, solved per token along the causal axis (batch_axis=0, causal_axis=1).
Solvers: our Picard, Anderson and Broyden, and jaxopt's AndersonAcceleration as the peer (jaxopt stops on the
absolute global residual, so it gets tol * ||y*|| and we report the per-sample relative residual it reaches).
Memory: compiled peak bytes of a jitted gradient through the block problem at max_iter 4 and 64, per backward.

Usage: python benchmarks/solvers.py [--tol 1e-4] [--repeats 20] [--out benchmarks/results/solvers.json]
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
import jax.numpy as jnp
import numpy as np

import attractor_jax as aj
from attractor_jax.implicit.fixed_point import BatchLayout


def tanh_problem(batch: int, dim: int, seed: int, symmetric: bool = False):
    """Gaussian W (spectrum filling a disk of radius ~0.9) or symmetric W (real spectrum in [-0.95, 0.95])."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    if symmetric:
        q, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, dim)))
        w = (q * jnp.linspace(-0.95, 0.95, dim)) @ q.T
    else:
        w = jax.random.normal(k1, (dim, dim)) * 0.9 / np.sqrt(dim)
    params = {"w": w, "u": 0.3 * jax.random.normal(k2, (dim, dim)) / np.sqrt(dim)}
    x = jax.random.normal(k3, (batch, dim))

    def f(y, params, x):
        return jnp.tanh(y @ params["w"] + x @ params["u"])

    return f, jnp.zeros((batch, dim)), (params, x), {"batch_axis": 0}


def _rms(x):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5)


def block_problem(batch: int, seq: int, dim: int, heads: int, seed: int, gate: float = 0.5):
    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    std = np.sqrt(2.0 / (5 * dim))
    p = {
        "q": jax.random.normal(ks[0], (dim, dim)) * std,
        "k": jax.random.normal(ks[1], (dim, dim)) * std,
        "v": jax.random.normal(ks[2], (dim, dim)) * std,
        "o": jax.random.normal(ks[3], (dim, dim)) * std,
        "fc": jax.random.normal(ks[4], (dim, 4 * dim)) * std,
        "proj": jax.random.normal(ks[5], (4 * dim, dim)) * std,
    }
    c = jax.random.normal(ks[6], (batch, seq, dim))
    hd = dim // heads
    mask = jnp.tril(jnp.ones((seq, seq), bool))

    def delta(h, p):
        """H(h) - h for a pre-norm block with gated residual branches."""
        a = _rms(h)
        q, k, v = (jnp.reshape(a @ p[n], (batch, seq, heads, hd)) for n in "qkv")
        s = jnp.einsum("bthd,bshd->bhts", _rms(q), _rms(k)) / np.sqrt(hd)
        s = jnp.where(mask, s, -1e30)
        att = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v).reshape(batch, seq, dim)
        att = gate * (att @ p["o"])
        mlp = gate * (0.5 * jnp.square(jax.nn.relu(_rms(h + att) @ p["fc"])) @ p["proj"])
        return att + mlp

    def f(y, p, c):
        return c + delta(y + c, p)

    return f, c, (p, c), {"batch_axis": 0, "causal_axis": 1}


def time_call(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_sample_rel(f, y, args, layout):
    fy = f(y, *args)
    axes = (layout["batch_axis"],) + ((layout["causal_axis"],) if "causal_axis" in layout else ())
    red = tuple(i for i in range(y.ndim) if i not in axes)
    return jnp.sqrt(jnp.sum((fy - y) ** 2, axis=red)) / jnp.sqrt(jnp.sum(y ** 2, axis=red))


def bench_problem(name, f, y0, args, layout, tol, max_iter, repeats):
    rows = []
    ours = {
        "picard": aj.Picard(tol=tol, max_iter=max_iter),
        "anderson": aj.Anderson(m=5, tol=tol, max_iter=max_iter),
        "broyden": aj.Broyden(memory=20, tol=tol, max_iter=max_iter),
    }
    y_ref = None
    for label, solver in ours.items():
        run = jax.jit(lambda y0, args, s=solver: aj.fixed_point(f, y0, *args, solver=s, **layout))
        sol = run(y0, args)
        sec = time_call(run, y0, args, repeats=repeats)
        it = np.asarray(sol.stats.iterations)
        rows.append({
            "problem": name, "solver": label, "f_evals_max": int(it.max()), "f_evals_mean": float(it.mean()),
            "loop_trips": int(it.max()), "converged": float(np.mean(sol.stats.converged)),
            "max_rel_residual": float(np.max(per_sample_rel(f, sol.value, args, layout))),
            "ms": 1e3 * sec,
        })
        if label == "anderson":
            y_ref = sol.value

    import jaxopt  # the peer; a test/benchmark dependency only

    abs_tol = tol * float(jnp.linalg.norm(y_ref))
    aa = jaxopt.AndersonAcceleration(fixed_point_fun=f, history_size=5, maxiter=max_iter, tol=abs_tol, jit=True)
    run = jax.jit(lambda y0, args: aa.run(y0, *args))
    out = run(y0, args)
    sec = time_call(run, y0, args, repeats=repeats)
    n = int(out.state.iter_num)
    rows.append({
        "problem": name, "solver": "jaxopt.AndersonAcceleration", "f_evals_max": n, "f_evals_mean": float(n),
        "loop_trips": n, "converged": float(float(out.state.error) <= abs_tol),
        "max_rel_residual": float(np.max(per_sample_rel(f, out.params, args, layout))), "ms": 1e3 * sec,
    })
    return rows


def memory_rows(f, y0, args, layout):
    rows = []
    stats_shape = BatchLayout(y0, layout.get("batch_axis", 0), layout.get("causal_axis")).stats_shape
    # "ift" is the custom_jvp form (forward and reverse mode); "ift+probe" the reverse-only custom_vjp form that
    # recomputes f in the backward pass (taken when an adjoint probe is requested).
    for label, backward, probe in (("ift", aj.IFT(), False), ("ift+probe", aj.IFT(), True),
                                   ("neumann1", aj.Neumann(k=1), False), ("phantom2", aj.Phantom(k=2), False),
                                   ("unrolled", aj.Unrolled(), False)):
        sizes = {}
        for max_iter in (4, 64):
            def loss(args, mi=max_iter):
                extra = {"probe": aj.adjoint_probe(stats_shape)} if probe else {}
                sol = aj.fixed_point(f, y0, *args, solver=aj.Anderson(max_iter=mi), backward=backward,
                                     **layout, **extra)
                return jnp.sum(sol.value ** 2)

            shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
            mem = jax.jit(jax.grad(loss)).lower(shapes).compile().memory_analysis()
            sizes[max_iter] = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        rows.append({"backward": label, "peak_bytes_max_iter_4": sizes[4], "peak_bytes_max_iter_64": sizes[64],
                     "ratio_64_over_4": sizes[64] / sizes[4]})
    return rows


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/solvers.json")
    a = ap.parse_args(argv)
    if not 0 < a.tol < 1:
        ap.error(f"--tol={a.tol} must be in (0, 1)")

    problems = {
        "tanh[B=32,D=256]": tanh_problem(32, 256, a.seed),
        "tanh-sym[B=32,D=256]": tanh_problem(32, 256, a.seed, symmetric=True),
        "block[B=4,T=64,D=128]": block_problem(4, 64, 128, 4, a.seed, gate=3.0),
    }
    rows = []
    for name, (f, y0, args, layout) in problems.items():
        rows += bench_problem(name, f, y0, args, layout, a.tol, a.max_iter, a.repeats)
    f, y0, args, layout = problems["block[B=4,T=64,D=128]"]  # memory: the attractor-like map
    mem = memory_rows(f, y0, args, layout)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; tol {a.tol} (relative, per sample)")
    print(f"{'problem':24s} {'solver':30s} {'f-evals max':>11s} {'mean':>7s} {'conv':>5s} {'max rel res':>11s} {'ms':>8s}")
    for r in rows:
        print(f"{r['problem']:24s} {r['solver']:30s} {r['f_evals_max']:11d} {r['f_evals_mean']:7.1f} "
              f"{r['converged']:5.2f} {r['max_rel_residual']:11.2e} {r['ms']:8.2f}")
    ratios = {}
    for name in problems:
        ours = next(r for r in rows if r["problem"] == name and r["solver"] == "anderson")
        peer = next(r for r in rows if r["problem"] == name and r["solver"].startswith("jaxopt"))
        ratios[name] = peer["ms"] / ours["ms"]
        print(f"{name}: jaxopt Anderson / our Anderson wall time = {ratios[name]:.2f}x")
    print(f"\n{'backward':10s} {'peak MiB @4':>12s} {'peak MiB @64':>13s} {'ratio':>6s}")
    for r in mem:
        print(f"{r['backward']:10s} {r['peak_bytes_max_iter_4'] / 2**20:12.2f} "
              f"{r['peak_bytes_max_iter_64'] / 2**20:13.2f} {r['ratio_64_over_4']:6.2f}")
    write_json(a.out, {"jax": jax.__version__, "platform": jax.devices()[0].platform, "tol": a.tol,
                       "solvers": rows, "jaxopt_over_ours_anderson_time": ratios, "memory": mem})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
