"""How fast the seqio bridge feeds LM batches next to the grain text pipeline, on this machine's CPU.

    python benchmarks/data_pipelines.py [--text FILE] [--batch-size 32] [--seq-len 256] [--seconds 10]

Same file, same batch size and seq_len, byte tokenizer, one process. Two corpora: the text file as it is
(tinyshakespeare is a single document) and the same text cut at blank lines into many short documents joined
by `<|endoftext|>` (the per-document cost regime: ~7k documents of ~150 bytes). For each pipeline it reports
the construction time (first batch included) and the steady-state rate in examples (rows of seq_len + 1
tokens) per second and tokens per second. Writes benchmarks/results/data_pipelines.json.

Needs the `seqio` extra (pip install 'attractor_jax[seqio]'); without it only the grain rows are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attractor_jax.data import make_text_pipeline  # noqa: E402

P1 = dict(process_index=0, process_count=1)


def measure(make, seconds: float, batch_size: int, seq_len: int) -> dict:
    t0 = time.perf_counter()
    it = make()
    next(it)
    setup = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 5:
        next(it)
        n += 1
    ex_s = n * batch_size / elapsed
    return {
        "setup_s": round(setup, 3),
        "batches": n,
        "seconds": round(elapsed, 3),
        "examples_per_s": round(ex_s, 1),
        "tokens_per_s": round(ex_s * seq_len, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--text", default=str(ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare_input.txt")
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_pipelines.json"))
    args = ap.parse_args()

    src = pathlib.Path(args.text)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
    if not src.is_file():  # no shared data: a generated corpus of the same size
        import numpy as np

        rng = np.random.default_rng(0)
        words = np.array("the quick brown fox jumps over a lazy dog and then runs away from it".split())
        lines = [" ".join(rng.choice(words, 12)) for _ in range(20_000)]
        src = tmp / "generated.txt"
        src.write_text("\n".join(ln + ("\n" if i % 8 == 7 else "") for i, ln in enumerate(lines)))
    text = src.read_text(encoding="utf-8", errors="replace")
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    many = tmp / "many_docs.txt"
    many.write_text("<|endoftext|>".join(docs))
    corpora = {"one_document": src, "many_documents": many}

    try:
        from attractor_jax.data import seqio_tasks as st

        st.import_seqio()
    except ImportError as e:
        st = None
        print(f"seqio not installed ({e}); measuring grain only")

    B, T = args.batch_size, args.seq_len
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "batch_size": B,
        "seq_len": T,
        "tokenizer": "byte",
        "seconds_per_measurement": args.seconds,
        "text": str(args.text),
        "corpora": {},
    }
    for cname, path in corpora.items():
        rows: dict = {
            "bytes": path.stat().st_size,
            "documents": len(docs) if cname == "many_documents" else 1,
        }
        kw = dict(seq_len=T, batch_size=B, seed=0, **P1)
        cases = {
            "grain_map_shuffled": lambda: make_text_pipeline(path, **kw),
            "grain_stream_unshuffled": lambda: make_text_pipeline(path, streaming=True, shuffle=False, **kw),
        }
        if st is not None:
            name = st.register_text_task(f"bench_{cname}", path)
            cases["seqio_shuffled"] = lambda: st.make_seqio_pipeline(name, **kw)
            cases["seqio_unshuffled"] = lambda: st.make_seqio_pipeline(name, shuffle=False, **kw)
        for case, make in cases.items():
            rows[case] = measure(make, args.seconds, B, T)
            print(
                f"{cname:15s} {case:25s} {rows[case]['examples_per_s']:>10,.0f} examples/s "
                f"{rows[case]['tokens_per_s']:>12,.0f} tokens/s  (setup {rows[case]['setup_s']:.2f} s)",
                flush=True,
            )
        if st is not None:
            rows["seqio_over_grain_map"] = round(
                rows["seqio_shuffled"]["examples_per_s"] / rows["grain_map_shuffled"]["examples_per_s"], 4
            )
        results["corpora"][cname] = rows
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
