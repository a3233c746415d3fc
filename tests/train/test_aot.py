"""Ahead-of-time TPU compilation (attractor_jax.train.aot): the evidence that the sharded train steps fit a
TPU slice, checked in `make test` on a CPU.

The compile tests need libtpu, which the ``dev`` extra installs (``jax[tpu]``) wherever its wheel exists
(Linux x86_64): there a missing libtpu is a failure, not a skip. Elsewhere (macOS, aarch64) they are
skipped unless ``TPU_LIBRARY_PATH`` points at a libtpu.so. Topology parsing and the input errors are checked
everywhere.
"""

import dataclasses
import json
import platform
import sys

import pytest

from attractor_jax.models import get_config
from attractor_jax.train import aot
from attractor_jax.train.trainer import RunConfig, TrainConfig

# Where pyproject's dev extra installs libtpu (the platforms libtpu has wheels for).
LIBTPU_WHEELS = sys.platform == "linux" and platform.machine() == "x86_64"

needs_libtpu = pytest.mark.skipif(
    not LIBTPU_WHEELS and not aot.libtpu_available(),
    reason=f"libtpu has no wheel for {sys.platform}/{platform.machine()} (only Linux x86_64) and "
    "TPU_LIBRARY_PATH is not set; TPU ahead-of-time compilation cannot run here",
)

GiB = 1 << 30
V5E_HBM = 16 * GiB


def test_libtpu_installed_where_it_can_be():
    """The dev extra installs libtpu on Linux x86_64, so the compile tests below run there (CI) and are never
    silently skipped."""
    if not LIBTPU_WHEELS:
        pytest.skip(f"libtpu has no wheel for {sys.platform}/{platform.machine()}")
    assert aot.libtpu_available(), (
        'libtpu is missing: pip install -e ".[dev]" (its jax[tpu] requirement) or '
        + aot._jax_tpu_pip()
    )


@pytest.mark.parametrize(
    "text, name, chips, acc",
    [
        ("v5litepod-256", "v5e:16x16", 256, "v5litepod-256"),
        ("v5e-16", "v5e:4x4", 16, "v5litepod-16"),
        ("v5e:2x2", "v5e:2x2", 4, "v5litepod-4"),
        ("v4-128", "v4:4x4x4", 64, "v4-128"),
        ("v4:2x2x1", "v4:2x2x1", 4, "v4-8"),
        ("v5p-128", "v5:4x4x4", 64, "v5p-128"),
        ("v6e:16x16", "v6e:16x16", 256, "v6e-256"),
    ],
)
def test_parse_topology(text, name, chips, acc):
    t = aot.parse_topology(text)
    assert (t.name, t.chips, t.accelerator_type) == (name, chips, acc)
    assert t.hbm_bytes > 0


@pytest.mark.parametrize("text", ["bogus", "v5litepod-3", "v9-8", "v4:4x4", "v5e:3x3", "v4-7"])
def test_parse_topology_rejects(text):
    with pytest.raises(aot.AOTError, match="topology|generation|TensorCores"):
        aot.parse_topology(text)


def _run(preset="gpt-tiny", **train):
    t = dict(batch_size=8, seq_len=64, steps=10)
    t.update(train)
    return RunConfig(model=get_config(preset), train=TrainConfig(**t))


def _reasoner_run(preset="attractor-sudoku-tiny", **train):
    t = dict(batch_size=16, steps=10)
    t.update(train)
    return RunConfig.for_model(get_config(preset), train=TrainConfig(**t))


def test_mesh_and_batch_errors_before_libtpu():
    with pytest.raises(aot.AOTError, match="4 chips"):
        aot.compile_train_step(_run(mesh="fsdp=8"), "v5e:2x2")
    with pytest.raises(aot.AOTError, match="not divisible"):
        aot.compile_train_step(_run(mesh="fsdp=4", batch_size=6), "v5e:2x2")
    with pytest.raises(aot.AOTError, match="grad_accum"):
        aot.compile_train_step(_reasoner_run(mesh="fsdp=4", grad_accum=2), "v5e:2x2")


def test_cli_reasoner_seq_len_is_the_models(capsys):
    assert aot.main(["--preset", "trm-sudoku-tiny", "--topology", "v5e:2x2", "--seq-len", "64"]) == 2
    assert "model.seq_len" in capsys.readouterr().err


def test_missing_libtpu_names_the_pip_command(monkeypatch, capsys):
    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    with pytest.raises(aot.AOTError, match=r'pip install "jax\[tpu\]'):
        aot.topology_devices(aot.parse_topology("v5e:2x2"))
    assert aot.main(["--preset", "gpt-tiny", "--topology", "v5e:2x2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: libtpu is not installed")


def test_cli_bad_topology(capsys):
    assert aot.main(["--preset", "gpt-tiny", "--topology", "v5litepod-3"]) == 2
    assert "unknown TPU topology" in capsys.readouterr().err


def _check_sharded_fit(r: dict) -> None:
    """A 4-chip v5e compile over fsdp=2 × tensor=2: it fits, parameters and optimizer state are split over the
    chips, and the program gathers the FSDP shards and reduces over the mesh."""
    print("\n" + aot.format_report(r))
    assert r["fits"] and r["error"] is None, r
    assert r["chips"] == 4 and r["device_kind"].startswith("TPU v5"), r
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert r["hbm_per_chip"] == V5E_HBM
    m = r["memory_per_chip"]
    assert 0 < m["arguments"] and 0 < m["total"] < V5E_HBM, m
    assert m["total"] >= m["arguments"] - m["aliased"], m
    assert m["aliased"] > 0, m  # the donated state is updated in place
    # FSDP × tensor parallelism: each chip holds well under half of the parameters and optimizer state (the
    # big matrices are split both ways; only norms/gains and the like are replicated) ...
    per, total = r["state_per_chip"], r["state_total"]
    for part in ("params", "opt_state"):
        assert 0 < per[part] < 0.5 * total[part], (part, per[part], total[part])
    assert not r["notes"], r["notes"]
    # ... so the compiled step's inputs on one chip (its state shards and batch rows) are smaller than the
    # full parameters + optimizer state ...
    assert m["arguments"] < total["params"] + total["opt_state"], (m, total)
    # ... and the program communicates: all-gathers of the FSDP shards, all-reduces over the mesh.
    c = r["collectives"]
    assert c["all-gather"] > 0 and c["all-reduce"] + c["reduce-scatter"] > 0, c


@needs_libtpu
def test_compile_lm_fsdp_tp_on_v5e_2x2(tmp_path, capsys):
    """The Attractor LM's real train step (fixed-point head: Anderson solve forward, Neumann implicit
    backward; donated state, AdamW + Muon) sharded over fsdp × tensor compiles for a 4-chip v5e, through the
    CLI and its JSON report."""
    out = tmp_path / "aot.json"
    rc = aot.main(
        [
            "--preset",
            "attractor-tiny",
            "--topology",
            "v5e:2x2",
            "--mesh",
            "fsdp=2,tensor=2",
            "--batch-size",
            "8",
            "--seq-len",
            "64",
            "--steps",
            "10",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "fits" in printed and "collectives per step" in printed
    r = json.loads(out.read_text())
    assert r["preset"] == "attractor-tiny" and r["kind"] == "lm" and r["tokens_per_step"] == 8 * 64
    assert r["activation_constraints"] > 0  # block inputs/outputs pinned to the batch sharding (fsdp=2)
    _check_sharded_fit(r)


@needs_libtpu
def test_compile_reasoner_fsdp_tp():
    """The Attractor reasoner's step (one ACT supervision step on the row-sharded carry, TRM's optimizer, the
    EMA) sharded over fsdp × tensor on a v5e 2x2 slice."""
    r = aot.compile_train_step(_reasoner_run(mesh="fsdp=2,tensor=2"), "v5e:2x2")
    assert r["kind"] == "reasoner" and r["seq_len"] == 81 and r["batch_size"] == 16
    assert {"ema", "carry"} <= set(r["state_per_chip"])
    # the carry's rows are split over the data-parallel chips (fsdp=2)
    assert r["state_per_chip"]["carry"] * 2 == r["state_total"]["carry"]
    assert r["activation_constraints"] > 0
    _check_sharded_fit(r)


@needs_libtpu
def test_out_of_memory_is_reported_not_raised():
    """A step that cannot fit a chip's HBM gives fits=False with the compiler's numbers."""
    run = _run(batch_size=4096, seq_len=256)
    run = dataclasses.replace(
        run, model=get_config(run.model, vocab_size=131072, n_layers=1, value_embeds=False)
    )
    r = aot.compile_train_step(run, "v5e:1x1")
    assert r["fits"] is False and "memory" in r["error"].lower()
    assert r["memory_per_chip"].get("temps_required", 0) > r["hbm_per_chip"] // 2
