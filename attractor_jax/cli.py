"""Command line: ``attractor-jax info | demo``.

Bad input (an unknown preset, a bad value) prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
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

    run_demo(steps=args.steps, seed=args.seed, preset=args.preset, out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attractor-jax", description="Attractor Models in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, devices and presets; --preset NAME for a parameter split")
    info.add_argument("--preset", help="print the parameter split and solver settings of this preset")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="train a tiny attractor on the embedded text and sweep solver depth")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="attractor-tiny")
    demo.add_argument("--out", default=None, help="folder for demo.json (default: print only)")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
