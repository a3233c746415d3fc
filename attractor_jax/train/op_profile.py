"""Where a compiled step spends its time: per-op durations from a `jax.profiler` trace, attributed to our source.

A jitted function is compiled with per-op trace events (``xla_cpu_enable_xprof_traceme`` on XLA:CPU, where they
are off by default), run a few times under ``jax.profiler.trace``, and every trace event that names an HLO op
(its ``hlo_op`` argument) is matched to that instruction of the compiled module. Only XLA:CPU traces have been
checked; on other backends events whose op is not in the module are counted as ``unmatched_ms``. The
instruction's metadata gives

- the phase: ``backward`` when JAX produced it by transposing a linearised computation (``transpose(`` in its
  op name), otherwise ``forward``. A forward recomputed inside a backward (a VJP's own linearisation, a
  rematerialised block) counts as forward;
- the source: the Python frames XLA recorded for it, of which we keep those in this package and in optax (the
  optimizer), outermost first, e.g. ``Block.__call__ > MLP.__call__ > Linear.__call__``.

`OpProfile.table` sums the op durations per call by source and phase: the innermost frames (``by="path"``), the
model's stages (``by="outer"``) or the file (``by="file"``). An op's duration runs from its start event to its
``end:`` event where the runtime emits one (XLA:CPU's asynchronous thunks), else the event's own duration.
XLA:CPU runs independent ops concurrently, so the summed op time can exceed the wall time; both are reported.

Usage::

    compiled = compile_for_profile(jax.jit(loss_and_grad), params, batch)
    prof = profile_ops(lambda: compiled(params, batch), compiled, steps=5)
    for row in prof.table(depth=2):
        print(row)
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

# Frames kept in a source path: this package and the optimizer library.
_KEEP_FILES = re.compile(r"(?:^|/)(attractor_jax|optax)/(.+)$")
# HLO ops that only contain others: their events span their body's ops, which are counted themselves.
_CONTAINERS = frozenset({"while", "conditional", "call", "async-start", "async-done"})
_INSTR = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = .*? (?P<op>[\w\-]+)\((?P<rest>.*)$")


@dataclasses.dataclass(frozen=True)
class OpSource:
    """One HLO instruction: its opcode, phase and source path (outermost frame first)."""

    op: str
    phase: str  # "forward" or "backward"
    path: tuple[str, ...]
    files: tuple[str, ...]  # each path frame's file inside its package, e.g. "nn/mlp.py" (optax's as "optax/...")

    @property
    def file(self) -> str:
        """The innermost kept frame's file; "" when the op has no kept frame."""
        return self.files[-1] if self.files else ""


@dataclasses.dataclass
class OpProfile:
    """Summed per-op milliseconds over ``steps`` calls (``ms`` per op name) and the median wall time of one call."""

    ms: dict[str, float]
    sources: dict[str, OpSource]
    steps: int
    wall_ms: float
    unmatched_ms: float  # events that carry an op name absent from the module (another module's ops)

    def table(self, depth: int = 2, by: str = "path") -> list[dict[str, Any]]:
        """Rows ``{"source", "phase", "ms", "ops"}`` per call, largest first. ``by="path"`` groups by the
        innermost ``depth`` frames of the source path; ``by="outer"`` by the outermost ``depth`` frames outside
        the trainer (``train/``), i.e. the model's stages (``AttractorLM.__call__ > AttractorLM.encode``);
        ``by="file"`` by the innermost frame's file."""
        if by not in ("path", "outer", "file"):
            raise ValueError(f"by must be 'path', 'outer' or 'file', got {by!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        acc: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0.0, 0])
        for name, total in self.ms.items():
            src = self.sources[name]
            if by == "file":
                key = src.file or "(no source)"
            elif by == "outer":
                model = [fn for fn, f in zip(src.path, src.files) if not f.startswith("train/")]
                if model:
                    key = " > ".join(model[:depth])
                else:  # the trainer's own ops (optimizer, metrics)
                    key = f"(trainer) {src.path[-1]}" if src.path else "(no source)"
            else:
                key = " > ".join(src.path[-depth:]) if src.path else "(no source)"
            acc[(key, src.phase)][0] += total / self.steps
            acc[(key, src.phase)][1] += 1
        rows = [{"source": k, "phase": p, "ms": v[0], "ops": v[1]} for (k, p), v in acc.items()]
        return sorted(rows, key=lambda r: -r["ms"])

    def phase_ms(self) -> dict[str, float]:
        """Summed op milliseconds per call in each phase."""
        out = {"forward": 0.0, "backward": 0.0}
        for name, total in self.ms.items():
            out[self.sources[name].phase] += total / self.steps
        return out


_Pairs = dict[int, tuple[int, int]]


def _tables(hlo_text: str) -> tuple[dict[int, str], dict[int, str], _Pairs, _Pairs]:
    """The module's stack-frame tables: file names, function names, locations (file, function) and frames
    (location, parent)."""
    sections: dict[str, dict[int, Any]] = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {},
                                           "StackFrames": {}}
    current = None
    for line in hlo_text.splitlines():
        head = line.strip()
        if head in sections:
            current = head
            continue
        if current is None or not head:
            continue
        m = re.match(r"^(\d+) (.*)$", head)
        if not m:  # the section ended
            current = None
            continue
        idx, body = int(m.group(1)), m.group(2)
        if current in ("FileNames", "FunctionNames"):
            sections[current][idx] = body.strip('"')
        elif current == "FileLocations":
            f = re.search(r"file_name_id=(\d+)", body)
            fn = re.search(r"function_name_id=(\d+)", body)
            sections[current][idx] = (int(f.group(1)) if f else 0, int(fn.group(1)) if fn else 0)
        else:
            loc = re.search(r"file_location_id=(\d+)", body)
            parent = re.search(r"parent_frame_id=(\d+)", body)
            # The text form prints a frame's parent as (parent's id + 1), 1 for none: frame 3 called from frame 2
            # reads "parent_frame_id=3". Checked against known call chains in tests/train/test_op_profile.py.
            sections[current][idx] = (int(loc.group(1)) if loc else 0, int(parent.group(1)) - 1 if parent else 0)
    return sections["FileNames"], sections["FunctionNames"], sections["FileLocations"], sections["StackFrames"]


def hlo_op_sources(hlo_text: str) -> dict[str, OpSource]:
    """Every instruction of an optimised HLO module's text (``compiled.as_text()``), nested computations
    included, mapped to its `OpSource`."""
    files, funcs, locs, frames = _tables(hlo_text)
    path_cache: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def path_of(frame_id: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if frame_id in path_cache:
            return path_cache[frame_id]
        chain, seen, fid = [], set(), frame_id
        while fid and fid in frames and fid not in seen:  # innermost first
            seen.add(fid)
            loc_id, parent = frames[fid]
            file_id, func_id = locs.get(loc_id, (0, 0))
            m = _KEEP_FILES.search(files.get(file_id, ""))
            if m and m.group(2) != "train/op_profile.py":  # our own frame when a function is traced here
                chain.append((funcs.get(func_id, "?"), m.group(2) if m.group(1) == "attractor_jax"
                              else f"optax/{m.group(2)}"))
            fid = parent
        names: list[str] = []
        where: list[str] = []
        for fn, f in reversed(chain):  # outermost first; a recursive or repeated frame is kept once in a row
            if not names or names[-1] != fn:
                names.append(fn)
                where.append(f)
        out = (tuple(names), tuple(where))
        path_cache[frame_id] = out
        return out

    sources: dict[str, OpSource] = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        rest = m.group("rest")
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        path, path_files = path_of(int(frame.group(1))) if frame else ((), ())
        phase = "backward" if op_name and "transpose(" in op_name.group(1) else "forward"
        sources[m.group("name")] = OpSource(m.group("op"), phase, path, path_files)
    return sources


def compile_for_profile(jitted, *args, **kwargs):
    """``jitted`` lowered on ``args`` and compiled with per-op trace events (on XLA:CPU they are off by
    default)."""
    lowered = jitted.lower(*args, **kwargs)
    options = {"xla_cpu_enable_xprof_traceme": True} if jax.default_backend() == "cpu" else {}
    return lowered.compile(compiler_options=options)


def _op_durations(events: Iterable[dict], names: set[str], containers: set[str]) -> tuple[dict[str, float], float]:
    """Summed milliseconds per op name in ``names`` (less ``containers``, whose time their body's ops already
    count); start events paired in order with their ``end:`` events where those exist. Also the milliseconds
    of op events whose name is not in ``names``."""
    events = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
    ends: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    for e in events:
        if e["name"].startswith("end: "):
            ends[e["name"][5:]].append(e["ts"])
    ms: dict[str, float] = collections.defaultdict(float)
    unmatched = 0.0
    for e in events:
        args = e.get("args") or {}
        if "hlo_op" not in args:
            continue
        name = args["hlo_op"]
        if name in containers:
            continue
        start, dur = e["ts"], e.get("dur", 0.0)
        queue = ends.get(e["name"])
        while queue and queue[0] < start:
            queue.popleft()  # an end that belongs to an earlier, unpaired start
        if queue:
            dur = max(dur, queue.popleft() - start)
        if name in names:
            ms[name] += dur / 1e3
        else:
            unmatched += dur / 1e3
    return dict(ms), unmatched


def profile_ops(run: Callable[[], Any], compiled, steps: int = 5, trace_dir: str | None = None) -> OpProfile:
    """Call ``run`` (which calls ``compiled`` once and returns its outputs) ``steps`` times under the profiler,
    after one untraced warm-up call, and attribute each op's time (see the module docstring)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sources = hlo_op_sources(compiled.as_text())
    jax.block_until_ready(run())
    own_dir = trace_dir is None
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="op_profile_")
    walls = []
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            walls.append(time.perf_counter() - t0)
    found = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not found:
        raise RuntimeError(f"jax.profiler wrote no perfetto trace under {trace_dir}")
    with gzip.open(found[-1]) as fh:
        trace = json.load(fh)
    if own_dir:
        shutil.rmtree(trace_dir, ignore_errors=True)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ms, unmatched = _op_durations(events, set(sources), {n for n, s in sources.items() if s.op in _CONTAINERS})
    walls.sort()
    return OpProfile(ms=ms, sources=sources, steps=steps, wall_ms=1e3 * walls[len(walls) // 2],
                     unmatched_ms=unmatched / steps)


__all__ = ["OpProfile", "OpSource", "compile_for_profile", "hlo_op_sources", "profile_ops"]
