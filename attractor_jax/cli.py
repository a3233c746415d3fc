"""Command line: ``attractor-jax train | eval | info | demo``.

Bad input (an unknown preset, a bad value) prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import jax

    import attractor_jax
    from attractor_jax.models import describe_preset, list_presets

    if args.preset:
        print(describe_preset(args.preset))
        return 0
    print(f"attractor_jax {attractor_jax.__version__}; jax {jax.__version__}")
    print(f"devices: {', '.join(str(d) for d in jax.devices())}")
    print("presets: " + ", ".join(list_presets()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from attractor_jax.demo import run_demo

    run_demo(steps=args.steps, seed=args.seed, out=args.out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from attractor_jax.models import get_config
    from attractor_jax.train.trainer import RunConfig, train

    if args.distributed or os.environ.get("ATTRACTOR_JAX_DISTRIBUTED") == "1":
        import jax

        jax.distributed.initialize()  # multi-host: coordinator from the TPU/SLURM environment
    run = RunConfig(model=get_config(args.preset))
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=args.data))
    changes = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("mesh", args.mesh),
                                 ("log_every", args.log_every)) if v is not None}
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))
    if args.set:
        from attractor_jax.train.trainer import apply_sets

        run = apply_sets(run, args.set)
    summary = train(run, args.workdir)
    keys = [k for k in ("step", "loss", "val_loss", "tokens_per_s") if k in summary]
    print("done: " + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                                for k in keys))
    return 0


def _parse_depths(text: str | None) -> list[int | None] | None:
    if text is None:
        return None
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "full":
            out.append(None)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"--max-iter {text!r}: expected comma-separated non-negative ints or 'full'")
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    from attractor_jax.train.trainer import evaluate

    res = evaluate(args.workdir, depths=_parse_depths(args.max_iter), data_path=args.data, batches=args.batches)
    print(f"step {res['step']}: validation loss by solver depth")
    for depth, r in res["depths"].items():
        extra = f"  f-evals/token {r['solver_iters']:.2f}" if "solver_iters" in r else ""
        print(f"  T={depth:>4s}  loss {r['loss']:.4f}  ppl {r['ppl']:.2f}{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attractor-jax", description="Attractor Models in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or resume) a preset on text data in a work directory")
    tr.add_argument("--preset", required=True, help="model preset, e.g. attractor-tiny (see `info`)")
    tr.add_argument("--data", required=True, help="text file, folder, glob, .jsonl/.parquet, or hf://OWNER/NAME")
    tr.add_argument("--workdir", required=True, help="run folder: config, checkpoints, metrics.jsonl")
    tr.add_argument("--steps", type=int, help="total optimizer steps (a larger value continues a finished run)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--mesh", help="device mesh, e.g. data=2,fsdp=2,tensor=2 (default: all devices on data)")
    tr.add_argument("--log-every", type=int)
    tr.add_argument("--distributed", action="store_true",
                    help="call jax.distributed.initialize() first (multi-host; also ATTRACTOR_JAX_DISTRIBUTED=1)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config field: model.FIELD, train.FIELD, optim.FIELD, data.FIELD (repeatable)")
    tr.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="validation loss of a run's latest checkpoint at several solver depths")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--max-iter", help="comma-separated depths, e.g. 0,1,2,4,full (default: the run's)")
    ev.add_argument("--data", help="evaluate on this data instead of the run's validation split")
    ev.add_argument("--batches", type=int, help="validation batches (default: the run's eval_batches)")
    ev.set_defaults(func=_cmd_eval)
    info = sub.add_parser("info", help="versions, devices and presets; --preset NAME for a parameter split")
    info.add_argument("--preset", help="print the parameter split and solver settings of this preset")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="train attractor-tiny and gpt-tiny on the stdlib's sources; compare depths")
    demo.add_argument("--steps", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo", help="folder for the runs, demo.json and demo.png")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
