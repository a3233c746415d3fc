"""Ahead-of-time TPU compilation (attractor_jax.train.aot).

The compile tests need libtpu (``pip install "jax[tpu]==<jax version>"``, or ``TPU_LIBRARY_PATH`` pointing
at a libtpu.so) and are skipped without it; topology parsing and the input errors are checked everywhere.
"""

import dataclasses
import json

import pytest

from attractor_jax.models import get_config
from attractor_jax.train import aot
from attractor_jax.train.trainer import RunConfig, TrainConfig

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason='libtpu is not installed (pip install "jax[tpu]==<jax version>" or set TPU_LIBRARY_PATH); '
    "TPU ahead-of-time compilation cannot run",
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


def test_mesh_and_batch_errors_before_libtpu():
    with pytest.raises(aot.AOTError, match="4 chips"):
        aot.compile_train_step(_run(mesh="fsdp=8"), "v5e:2x2")
    with pytest.raises(aot.AOTError, match="not divisible"):
        aot.compile_train_step(_run(mesh="fsdp=4", batch_size=6), "v5e:2x2")


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


@needs_libtpu
def test_compile_tiny_on_v5e_2x2(tmp_path, capsys):
    """The real train step (fsdp × tensor mesh, donated state, AdamW + Muon) compiles for a 4-chip v5e."""
    out = tmp_path / "aot.json"
    rc = aot.main(
        [
            "--preset",
            "gpt-tiny",
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
    assert rc == 0, capsys.readouterr()
    r = json.loads(out.read_text())
    assert r["fits"] and r["error"] is None and r["chips"] == 4 and r["device_kind"].startswith("TPU v5")
    m = r["memory_per_chip"]
    assert 0 < m["arguments"] < r["hbm_per_chip"] and m["total"] >= m["arguments"] - m["aliased"]
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert "fits" in capsys.readouterr().out


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
