"""Ahead-of-time compile check: compile the real train step for a TPU slice on this (CPU) machine.

MaxText's ``train_compile.py`` approach: ``jax.experimental.topologies.get_topology_desc`` gives compile-only
device descriptions of a TPU slice (libtpu must be installed; no TPU is needed), `trainer.setup` builds the
mesh, abstract state and shardings over them exactly as a run would, and the jitted, donated train step is
lowered on ``ShapeDtypeStruct`` s and compiled by the TPU compiler. ``memory_analysis()`` then gives the
per-chip memory of the step, so a pod configuration (preset × topology × mesh × batch) is validated before
anyone pays for the pod. A step that does not fit fails to compile with the compiler's own numbers; that is
reported as ``fits: false``, not as a crash. A puzzle-reasoner preset (``trm-*``, ``attractor-sudoku-*``, ...)
compiles the reasoner's step instead: one ACT supervision step on the sharded carry, TRM's optimizer and the
EMA, as the trainer's puzzle task jits it (its sequence length is the model's ``seq_len``).

    python -m attractor_jax.train.aot --preset attractor-large-770m --topology v5litepod-256 \\
        --mesh fsdp=64,tensor=4 --batch-size 256 --seq-len 2048 --dtype bfloat16 --json aot.json

``--topology`` takes a gcloud accelerator type (``v5litepod-256``, ``v5e-16``, ``v4-128``, ``v5p-128``,
``v6e-64``: for v4/v5p the number counts TensorCores, two per chip) or a libtpu topology name
(``v5e:16x16``, ``v4:4x4x4``, ``v5p:4x4x4``, ``v6e:4x4``). Exit status: 0 fits, 1 does not fit, 2 bad input
(unknown topology or preset, a mesh that does not match the chip count, libtpu missing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any, Sequence

GiB = 1 << 30

# HBM per chip (bytes) and the libtpu name of each generation; v4 and v5p chips are one "megacore" device.
_GENERATIONS = {
    "v4": dict(libtpu="v4", hbm=32 * GiB, dims=3, chip_config="megacore", cores_per_chip=2),
    "v5p": dict(libtpu="v5", hbm=95 * GiB, dims=3, chip_config="megacore", cores_per_chip=2),
    "v5e": dict(libtpu="v5e", hbm=16 * GiB, dims=2, chip_config="default", cores_per_chip=1),
    "v6e": dict(libtpu="v6e", hbm=32 * GiB, dims=2, chip_config="default", cores_per_chip=1),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}
# Slice shapes of the accelerator types (chips -> chip grid), as in MaxText's accelerator_to_spec_map.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
    256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
    256: (4, 8, 8), 384: (4, 4, 24), 512: (8, 8, 8), 768: (8, 8, 12), 1024: (8, 8, 16), 2048: (8, 16, 16),
    4096: (16, 16, 16)}


class AOTError(ValueError):
    """Bad input to the AOT check (one clear line)."""


def _jax_tpu_pip() -> str:
    try:
        from importlib.metadata import version

        v = version("jax")
    except Exception:  # noqa: BLE001
        v = None
    return f'pip install "jax[tpu]=={v}"' if v else 'pip install "jax[tpu]"'


def libtpu_available() -> bool:
    """libtpu importable (``pip install "jax[tpu]"``) or pointed to by ``TPU_LIBRARY_PATH``."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if path and os.path.isfile(path):
        return True
    return importlib.util.find_spec("libtpu") is not None


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: ``accelerator_type`` is gcloud's name (v5litepod-256), ``name`` libtpu's (v5e:16x16)."""

    generation: str
    shape: tuple[int, ...]
    name: str
    accelerator_type: str
    chips: int
    hbm_bytes: int
    chip_config_name: str
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    num_slices: int = 1

    @property
    def devices_total(self) -> int:
        return self.chips * self.num_slices

    @property
    def hosts(self) -> int:
        """TPU VMs of the slice(s): 4 chips per VM on v4/v5p, 8 on v5e/v6e (smaller slices: one VM)."""
        per_vm = 4 if _GENERATIONS[self.generation]["dims"] == 3 else 8
        return max(1, self.chips // per_vm) * self.num_slices


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """``v5litepod-256`` / ``v4-128`` (accelerator types) or ``v5e:16x16`` / ``v4:4x4x4`` (libtpu names)."""
    original = text
    text = text.strip().lower()
    if num_slices < 1:
        raise AOTError(f"--num-slices={num_slices} must be >= 1")
    known = ("accelerator types v5litepod-N (= v5e-N), v6e-N, v4-N, v5p-N, or libtpu names such as v5e:4x4, "
             "v6e:16x16, v4:4x4x4, v5p:2x2x2")
    m_type = re.fullmatch(r"(v\d[a-z]*)-(\d+)", text)
    m_name = re.fullmatch(r"(v\d[a-z]*):(\d+(?:x\d+){1,2})", text)
    if not (m_type or m_name):
        raise AOTError(f"unknown TPU topology {original!r}; expected {known}")
    gen = (m_type or m_name).group(1)
    gen = _ALIASES.get(gen, gen)
    if gen not in _GENERATIONS:
        raise AOTError(f"unknown TPU generation in {original!r}; supported: {', '.join(_GENERATIONS)} ({known})")
    g = _GENERATIONS[gen]
    table = _SHAPES_3D if g["dims"] == 3 else _SHAPES_2D
    if m_type:
        n = int(m_type.group(2))
        if n % g["cores_per_chip"]:
            raise AOTError(f"{original!r}: {gen} accelerator types count TensorCores ({g['cores_per_chip']} per chip)")
        chips = n // g["cores_per_chip"]
        if chips not in table:
            sizes = ", ".join(f"{gen if gen != 'v5e' else 'v5litepod'}-{c * g['cores_per_chip']}" for c in table)
            raise AOTError(f"unknown TPU topology {original!r}; {gen} slices are {sizes}")
        shape = table[chips]
    else:
        shape = tuple(int(x) for x in m_name.group(2).split("x"))
        if len(shape) != g["dims"] or 0 in shape:
            raise AOTError(f"TPU topology {original!r}: {gen} slices are {g['dims']}-D chip grids "
                           f"(e.g. {gen}:{'x'.join(map(str, table[16]))})")
        chips = math.prod(shape)
    grid = shape + (1,) * (3 - len(shape))
    if g["dims"] == 2:
        wrap = (grid[0] == 16, grid[1] == 16, False)
    else:
        wrap = (min(grid) >= 4,) * 3
    bounds = (1, 1, 1) if chips == 1 else (2, 2, 1)
    if any(d % b for d, b in zip(grid, bounds, strict=True)):
        raise AOTError(f"TPU topology {original!r}: the chip grid {'x'.join(map(str, shape))} is not a multiple "
                       f"of the 2x2 chips of a host")
    label = {"v5e": "v5litepod"}.get(gen, gen)
    return Topology(generation=gen, shape=shape, name=f"{g['libtpu']}:{'x'.join(map(str, shape))}",
                    accelerator_type=f"{label}-{chips * g['cores_per_chip']}", chips=chips, hbm_bytes=g["hbm"],
                    chip_config_name=g["chip_config"], chips_per_host_bounds=bounds, wrap=wrap,
                    num_slices=num_slices)


@contextlib.contextmanager
def _captured_fd2():
    """Silence libtpu's start-up chatter (written to fd 2 directly); the text is kept for error messages."""
    buf = {"text": ""}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf["text"] = tmp.read().decode("utf-8", "replace")


def topology_devices(topology: Topology) -> list:
    """Compile-only TPU devices of ``topology`` (needs libtpu, not a TPU)."""
    if not libtpu_available():
        raise AOTError(f"libtpu is not installed, so TPU programs cannot be compiled here: {_jax_tpu_pip()} "
                       "(about 210 MB), or set TPU_LIBRARY_PATH to a libtpu.so")
    # Another JAX process of this environment may hold /tmp/libtpu_lockfile (libtpu takes it whenever JAX
    # probes for TPUs); compile-only use does not touch chips, so allow a second load.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    with _captured_fd2() as log:
        try:
            desc = topologies.get_topology_desc(
                topology_name=topology.name,
                platform="tpu",
                chip_config_name=topology.chip_config_name,
                chips_per_host_bounds=topology.chips_per_host_bounds,
                num_slices=topology.num_slices,
                wrap=topology.wrap,
            )
            error = None
        except Exception as exc:  # noqa: BLE001 - reported below with libtpu's own words
            error = exc
    if error is not None:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = f" (libtpu's log: {log['text'].strip().splitlines()[-1][:300]})" if log["text"].strip() else ""
        raise AOTError(f"libtpu could not describe TPU topology {topology.name!r}: {detail}{hint}")
    devices = list(desc.devices)
    if len(devices) != topology.devices_total:
        raise AOTError(f"libtpu describes {topology.name!r} with {len(devices)} devices, expected "
                       f"{topology.devices_total}")
    return devices


def _shard_bytes(tree, shardings) -> int:
    """Bytes of one device's shards of ``tree`` (``shardings`` None: the unsharded total)."""
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    shards = jax.tree_util.tree_leaves(shardings) if shardings is not None else [None] * len(leaves)
    total = 0
    for a, s in zip(leaves, shards, strict=True):
        shape = tuple(a.shape) if s is None else s.shard_shape(tuple(a.shape))
        total += math.prod(shape) * a.dtype.itemsize
    return total


def _oom_numbers(message: str) -> dict:
    out = {}
    m = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", message)
    unit = {"K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}
    if m:
        out["temps_required"] = int(float(m.group(1)) * unit[m.group(2)])
    m = re.search(r"exceeds available HBM \(([\d.]+)([KMGT])\)", message)
    if m:
        out["hbm_available"] = int(float(m.group(1)) * unit[m.group(2)])
    return out


_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops of the compiled (per-chip) program, by kind: FSDP shows up as all-gathers of the sharded
    parameters, tensor parallelism and gradient reduction as all-reduces (or reduce-scatters)."""
    return {op: len(re.findall(rf"[\s(]{op}(?:-start)?\(", hlo_text)) for op in _COLLECTIVES}


# Parts of the train state reported per chip (those the state has and that are not None).
_STATE_PARTS = ("params", "opt_state", "ema", "buffers", "carry")


def _check(run, topo: Topology) -> dict[str, int]:
    """The mesh sizes for ``run`` on ``topo``; `AOTError` for a mesh or batch that does not fit the chips."""
    import attractor_jax.train.sharding as shd
    from attractor_jax.models import is_reasoner

    t = run.train
    try:
        shd.parse_mesh(t.mesh, topo.devices_total)
    except ValueError as exc:
        msg = f"mesh {t.mesh!r} does not fit TPU topology {topo.name} ({topo.devices_total} chips): {exc}"
        raise AOTError(msg) from None
    if is_reasoner(run.model) and t.grad_accum != 1:
        raise AOTError(f"train.grad_accum={t.grad_accum}: puzzle reasoners train with grad_accum 1 (the ACT carry "
                       "belongs to the rows of one global batch)")
    try:
        return shd.check_batch(t.batch_size, t.grad_accum, t.mesh, topo.devices_total)
    except ValueError as exc:
        raise AOTError(str(exc).replace("devices (data × fsdp)", "chips (data × fsdp)")) from None


def _header(run, task, topo: Topology, sizes: dict, devices, seconds: float) -> dict[str, Any]:
    """The report's description of the step: preset, topology, mesh, batch and the state per chip."""
    from attractor_jax.models import param_counts

    t, state, shardings = run.train, task.abstract_state, task.state_shardings
    seq_len = task.batch_layout["inputs"][0][1]
    parts = [p for p in _STATE_PARTS if getattr(state, p, None) is not None]
    return {
        "preset": run.model.name, "kind": "reasoner" if task.kind == "puzzle" else "lm",
        "topology": topo.name, "accelerator_type": topo.accelerator_type, "num_slices": topo.num_slices,
        "chips": topo.devices_total, "hosts": topo.hosts, "device_kind": devices[0].device_kind,
        "mesh": sizes, "batch_size": t.batch_size, "seq_len": seq_len, "grad_accum": t.grad_accum,
        "tokens_per_step": t.batch_size * seq_len, "dtype": task.model_config.dtype,
        "optimizer": getattr(run.optim, "optimizer", "adamw+signsgd (TRM)"),
        "params": param_counts(task.model_config)["total"], "hbm_per_chip": topo.hbm_bytes,
        "state_per_chip": {p: _shard_bytes(getattr(state, p), getattr(shardings, p)) for p in parts},
        "state_total": {p: _shard_bytes(getattr(state, p), None) for p in parts},
        "lower_seconds": round(seconds, 2),
    }


def _replication_notes(report: dict, sizes: dict) -> list[str]:
    notes = []
    if sizes["fsdp"] * sizes["tensor"] > 1:
        for part in ("params", "opt_state"):
            total, per = report["state_total"][part], report["state_per_chip"][part]
            if total and per > 0.5 * total:
                notes.append(f"{part} is {100 * per / total:.0f}% replicated per chip despite fsdp×tensor="
                             f"{sizes['fsdp'] * sizes['tensor']} ({_gib(per)} of {_gib(total)})")
    return notes


def compile_train_step(run, topology: Topology | str, *, devices: Sequence | None = None) -> dict:
    """Lower and compile ``run``'s train step for ``topology``; return the per-chip memory report.

    ``run`` is a `trainer.RunConfig` (no data path needed) of a language model or of a puzzle reasoner; the
    step is the one the trainer runs (`Task.jit_train_step`). Raises `AOTError` for bad input; a step that does
    not fit in HBM returns ``fits: False`` with the compiler's message.
    """
    from attractor_jax.train.rundir import memory_report
    from attractor_jax.train.tasks import make_task

    topo = parse_topology(topology) if isinstance(topology, str) else topology
    sizes = _check(run, topo)
    if devices is None:
        devices = topology_devices(topo)
    t0 = time.perf_counter()
    task = make_task(run, devices=devices, validate=False)
    lowered = task.lower_train_step()
    t1 = time.perf_counter()
    report = _header(run, task, topo, sizes, devices, t1 - t0)
    report["notes"] = _replication_notes(report, sizes)
    # batch-sharding constraints on activations (nn.shard_batch) that reached the program
    report["activation_constraints"] = lowered.as_text().count("sharding_constraint")
    try:
        compiled = lowered.compile()
    except Exception as exc:  # noqa: BLE001 - out of HBM is an answer, anything else is re-raised
        msg = str(exc)
        if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
            raise
        report.update(fits=False, compile_seconds=round(time.perf_counter() - t1, 2),
                      error=msg.strip().splitlines()[0][:500], memory_per_chip=_oom_numbers(msg))
        return report
    t2 = time.perf_counter()
    mem = memory_report(compiled)
    try:
        collectives = _count_collectives(compiled.as_text())
    except Exception:  # noqa: BLE001 - the op counts are informative only
        collectives = None
    report.update(fits=mem["total"] <= topo.hbm_bytes, compile_seconds=round(t2 - t1, 2), memory_per_chip=mem,
                  headroom=topo.hbm_bytes - mem["total"], collectives=collectives, error=None)
    return report


def _gib(x: int | None) -> str:
    if x is None:
        return "?"
    return f"{x / GiB:.2f} GiB" if abs(x) >= GiB // 4 else f"{x / (1 << 20):.1f} MiB"


def format_report(r: dict) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v != 1) or "data=1"
    lines = [
        f"{r['preset']} ({r['params'] / 1e6:.0f}M params, {r['dtype']}) on {r['accelerator_type']} "
        f"({r['topology']}, {r['chips']} chips {r['device_kind']}, {r['hosts']} "
        f"host{'s' if r['hosts'] > 1 else ''}), mesh {mesh}, "
        f"batch {r['batch_size']}×{r['seq_len']} (grad_accum {r['grad_accum']})"
    ]
    sp, st, label = r["state_per_chip"], r["state_total"], {"opt_state": "optimizer", "ema": "EMA"}
    lines.append("  state per chip: " + ", ".join(f"{label.get(p, p)} {_gib(sp[p])} (of {_gib(st[p])})" for p in sp))
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    m = r["memory_per_chip"]
    if r["error"]:
        lines.append(f"  DOES NOT FIT: {r['error']}")
    else:
        lines.append(f"  per chip: arguments {_gib(m['arguments'])}, outputs {_gib(m['outputs'])} "
                     f"(aliased {_gib(m['aliased'])}), temps {_gib(m['temps'])}, code {_gib(m['generated_code'])}")
        lines.append(f"  total {_gib(m['total'])} of {_gib(r['hbm_per_chip'])} HBM: "
                     + ("fits" if r["fits"] else "DOES NOT FIT")
                     + f" (headroom {_gib(r['headroom'])}); compiled in {r['compile_seconds']:.0f} s")
        if r.get("collectives"):
            ops = ", ".join(f"{n} {op}" for op, n in r["collectives"].items() if n)
            lines.append(f"  collectives per step: {ops or 'none'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attractor_jax.train.aot", description="Compile the train step for "
                                "a TPU slice on this machine (no TPU needed) and report per-chip memory.")
    p.add_argument("--preset", required=True, help="model preset, e.g. attractor-large-770m")
    p.add_argument("--topology", required=True,
                   help="v5litepod-256 / v5e-16 / v4-128 / v5p-128 / v6e-64, or v5e:16x16 / v4:4x4x4")
    p.add_argument("--num-slices", type=int, default=1, help="multislice: this many copies of the slice (DCN)")
    p.add_argument("--mesh", help="device mesh, e.g. fsdp=64,tensor=4 (default: all chips on data)")
    p.add_argument("--batch-size", type=int, help="global batch (= --set train.batch_size=N)")
    p.add_argument("--seq-len", type=int, help="= --set train.seq_len=N")
    p.add_argument("--grad-accum", type=int, help="= --set train.grad_accum=N")
    p.add_argument("--dtype", help="compute dtype (= --set train.dtype=...); default: the preset's, as in training")
    p.add_argument("--steps", type=int, help="total steps (only the schedule depends on it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="config override as for `attractor-jax train` (repeatable)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-': stdout only JSON)")
    return p


def run_from_args(args: argparse.Namespace):
    from attractor_jax.models import get_config, is_reasoner
    from attractor_jax.train.trainer import RunConfig, apply_sets

    run = RunConfig.for_model(get_config(args.preset))  # a reasoner gets TRM's optimizer
    if is_reasoner(run.model) and args.seq_len is not None:
        raise AOTError(
            f"--seq-len: {args.preset} is a puzzle reasoner, whose sequence length is its model's "
            f"seq_len ({run.model.seq_len}); use --set model.seq_len=N"
        )
    changes = {k: getattr(args, k) for k in ("steps", "seed", "mesh", "batch_size", "seq_len", "grad_accum", "dtype")
               if getattr(args, k) is not None}
    if changes:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))
    return apply_sets(run, args.set) if args.set else run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import jax

    # Compile-only: never claim local accelerators (this may run on a TPU VM next to a training job).
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # noqa: BLE001 - backends already initialised (library use): nothing to change
        pass
    try:
        topo = parse_topology(args.topology, args.num_slices)
        run = run_from_args(args)
        report = compile_train_step(run, topo)
    except (AOTError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2)
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
