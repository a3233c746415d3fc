"""What a run leaves on disk, and the checks that run before anything is written.

* `RunDirectory`: a workdir is a *run* once it holds a finalised checkpoint. Only then does its ``config.json``
  bind later invocations (resume with the same configuration). A workdir with a ``config.json`` but no
  checkpoint (a run that failed or was killed before its first save) is not a run yet: a corrected command may
  reuse it. `RunDirectory.session` writes ``config.json`` and, if the run fails before its first checkpoint,
  removes what it created, so a failed attempt never blocks the next one.
* `check_step_memory`: the compiled step's memory (``compiled.memory_analysis()``) against what the devices
  have, before the first step; `out_of_memory` turns a runtime ``RESOURCE_EXHAUSTED`` into one clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator, Sequence

import jax

GiB = 1 << 30


class OutOfMemoryError(RuntimeError):
    """A step does not fit in device memory (its message names the memory needed, available, and what to change)."""


def write_json_atomic(path: pathlib.Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: pathlib.Path, what: str = "file") -> Any:
    """Load JSON from ``path``; a damaged file raises ValueError naming it."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({exc}); restore it or use a new workdir") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({exc}); restore it or use a new workdir") from None


def finalised_steps(checkpoint_dir: pathlib.Path) -> list[int]:
    """Steps with a finalised orbax checkpoint (integer-named folders; orbax writes under a temporary name and
    renames when every item is written)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.isdigit())


class RunDirectory:
    """The files of one training run: ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``eval.json``."""

    CREATED = ("config.json", "metrics.jsonl", "tb", "checkpoints", "eval.json", "reference_config.json")

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir)

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / "config.json"

    def has_checkpoint(self) -> bool:
        return bool(finalised_steps(self.path / "checkpoints"))

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"workdir {str(self.path)!r} has no config.json (not a training run)")
        return read_json(self.config_path, "run config")

    def check(self, config: dict, ignore: Sequence[tuple[str, str]] = (("train", "steps"),)) -> None:
        """``workdir`` is a directory (or absent); if it holds a run (a checkpoint), its configuration equals
        ``config`` except for the ``ignore`` fields (section, key)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"workdir {str(self.path)!r} exists and is not a directory")
        if not self.has_checkpoint():
            return  # nothing saved yet: not a run, a corrected command may use it
        if not self.config_path.is_file():
            raise ValueError(f"workdir {str(self.path)!r} holds checkpoints but no config.json; use a new workdir")
        old = self.read_config()

        def comparable(d: dict) -> dict:
            d = json.loads(json.dumps(d))
            for section, key in ignore:
                d.get(section, {}).pop(key, None)
            return d

        a, b = comparable(old), comparable(config)
        if a.get("data", {}).get("path") is None:  # an imported model: its first training chooses data and loop
            for section in ("data", "train"):
                a.pop(section, None)
                b.pop(section, None)
        if a != b:
            diff = sorted(f"{s}.{k}" for s in set(a) | set(b) for k in set(a.get(s, {})) | set(b.get(s, {}))
                          if a.get(s, {}).get(k) != b.get(s, {}).get(k))
            raise ValueError(f"workdir {str(self.path)!r} holds a run with a different configuration "
                             f"({', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''} differ); use a new workdir "
                             "(only --steps may change when resuming)")

    @contextlib.contextmanager
    def session(self, config: dict) -> Iterator["RunDirectory"]:
        """Create the workdir, write ``config.json``; on an exception before any checkpoint exists, remove what
        this session created (or replaced), so that the failed attempt leaves nothing behind."""
        existed = self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config_path, config)
        try:
            yield self
        except BaseException:
            if not self.has_checkpoint():
                self.remove_unsaved(remove_dir=not existed)
            raise

    def remove_unsaved(self, remove_dir: bool = False) -> None:
        """Remove the run files of a workdir that holds no checkpoint (and the folder itself if asked and empty)."""
        if jax.process_index() != 0 or self.has_checkpoint():
            return
        for name in self.CREATED:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                with contextlib.suppress(OSError):
                    p.unlink()
        if remove_dir:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty


# --------------------------------------------------------------------------------------------------------------
# Memory


def memory_report(compiled: Any) -> dict[str, Any] | None:
    """Per-device bytes of a compiled executable from ``memory_analysis()``: arguments, outputs, aliased
    (donated), temps, generated_code, the compiler's ``peak`` (None when not reported) and ``total`` (the peak,
    else arguments + outputs − aliased + temps + code). None when the backend gives no analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    mem: dict[str, Any] = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "temps": int(m.temp_size_in_bytes),
        "generated_code": int(m.generated_code_size_in_bytes),
    }
    summed = mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temps"] + mem["generated_code"]
    mem["peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0) or None
    # The compiler's live-range peak when it reports one (buffers are reused, so it can be below the sum).
    mem["total"] = mem["peak"] or summed
    return mem


def _host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(devices: Sequence[Any]) -> tuple[int | None, int]:
    """``(bytes, sharing)``: memory available to one device, and how many devices share it (host-memory devices
    such as CPUs share the machine's free RAM; accelerators report their own limit)."""
    dev = devices[0]
    stats = None
    with contextlib.suppress(Exception):
        stats = dev.memory_stats()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 1
    local = [d for d in devices if d.process_index == dev.process_index]
    return _host_available_bytes(), len(local)


def _fmt(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.2f} MiB"


def memory_hint(batch_size: int, grad_accum: int) -> str:
    micro = batch_size // grad_accum
    return (f"lower train.batch_size (now {batch_size}) or raise train.grad_accum (now {grad_accum}, "
            f"{micro} sequences per micro-batch)")


def check_step_memory(compiled: Any, devices: Sequence[Any], what: str, hint: str) -> dict:
    """Refuse a compiled step that cannot fit: OutOfMemoryError naming the memory needed and available."""
    mem = memory_report(compiled)
    need = None if mem is None else mem["total"]
    avail, sharing = available_bytes(devices)
    info = {"bytes_per_device": need, "available_bytes": avail, "devices_sharing": sharing}
    if need is None or avail is None:
        return info
    if need * sharing > avail:
        share = f" × {sharing} devices sharing host memory" if sharing > 1 else ""
        raise OutOfMemoryError(f"the {what} needs {_fmt(need)} per device{share} but {_fmt(avail)} is available "
                               f"on {devices[0].device_kind}; {hint}")
    return info


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


@contextlib.contextmanager
def out_of_memory(what: str, hint: str, need: int | None = None, devices: Sequence[Any] | None = None):
    """Turn an XLA ``RESOURCE_EXHAUSTED`` raised inside the block into one `OutOfMemoryError`."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - anything else is re-raised unchanged
        if isinstance(exc, OutOfMemoryError) or not is_out_of_memory(exc):
            raise
        avail = available_bytes(devices)[0] if devices else None
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OutOfMemoryError(f"the {what} ran out of device memory (needs {_fmt(need)} per device, "
                               f"{_fmt(avail)} available): {first}; {hint}") from None
