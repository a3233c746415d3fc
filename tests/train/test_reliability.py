"""Nothing lost, nothing poisoned: bad input is refused before anything is written, a failed attempt never
blocks the next one, out-of-memory is one clear error, and checkpoints are checksummed, skipped when damaged and
saved afresh when the run reaches them again."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attractor_jax.cli import main as cli_main
from attractor_jax.train import rundir
from attractor_jax.train.checkpoint import Checkpointer, tree_checksums
from attractor_jax.train.rundir import OutOfMemoryError, RunDirectory, out_of_memory
from attractor_jax.train.trainer import evaluate, train
from tests.train.test_trainer import corpus, final_params, read_metrics, small_run  # noqa: F401 - fixture

GPT = ["--preset", "gpt-tiny", "--set", "model.n_layers=1", "--set", "train.tensorboard=false",
       "--set", "train.batch_size=2", "--set", "seq_len=16"]


def listing(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_bad_config_writes_nothing_and_a_failed_attempt_never_blocks_a_retry(corpus, tmp_path, capsys):  # noqa: F811
    wd = tmp_path / "run"
    base = ["train", *GPT, "--data", corpus, "--workdir", str(wd), "--steps", "2"]
    assert cli_main(base + ["--set", "train.dtype=float7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "float7" in err and err.count("\n") == 1
    assert not wd.exists()
    # A config.json left by an attempt killed before its first checkpoint is not a run: it may not block the
    # corrected command, even though its configuration differs.
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"model": {"arch": "gpt"}, "train": {"dtype": "float7"}}))
    (wd / "checkpoints").mkdir()
    assert cli_main(base) == 0
    assert json.loads((wd / "config.json").read_text())["train"]["steps"] == 2
    # Once it holds a checkpoint it is a run: another configuration is refused, naming what differs.
    assert cli_main(base + ["--set", "train.seed=5"]) == 2
    assert "train.seed" in capsys.readouterr().err


def test_validation_split_too_small_for_a_batch_is_refused_up_front(tmp_path, capsys):
    data = tmp_path / "tiny.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 45)  # ~2 kB
    wd = tmp_path / "run"
    args = ["train", *GPT, "--data", str(data), "--workdir", str(wd), "--steps", "2",
            "--set", "train.batch_size=64"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "batch_size=64 is too large for the validation split" in err
    assert not wd.exists()


def test_step_that_cannot_fit_is_refused_before_anything_is_written(corpus, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(rundir, "_host_available_bytes", lambda: 1 << 20)  # pretend 1 MiB is free
    wd = tmp_path / "run"
    assert cli_main(["train", *GPT, "--data", corpus, "--workdir", str(wd), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the train step needs ")
    assert "1.00 MiB is available" in err
    assert "train.batch_size (now 2)" in err and "train.grad_accum" in err
    assert not wd.exists()


def test_out_of_memory_at_run_time_is_one_error_and_leaves_nothing(corpus, tmp_path):  # noqa: F811
    # XLA's RESOURCE_EXHAUSTED from inside the loop (simulated in the logging callback of step 1) becomes one
    # OutOfMemoryError; with no checkpoint saved yet, the attempt leaves nothing behind.
    run = small_run(corpus, steps=4)

    def boom(row):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB.")

    with pytest.raises(OutOfMemoryError, match=r"ran out of device memory .*RESOURCE_EXHAUSTED.*train.grad_accum"):
        train(run, tmp_path / "run", on_log=boom)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="other"):  # anything else passes through unchanged
        with out_of_memory("step", "hint"):
            raise ValueError("other")


def test_checksums_detect_any_changed_word():
    x = {"w": jnp.arange(1000, dtype=jnp.float32).reshape(10, 100), "b": jnp.ones((3,), jnp.bfloat16),
         "step": jnp.int32(7), "key": jax.random.PRNGKey(0)}
    base = tree_checksums(x)
    assert set(base) == {"['b']", "['key']", "['step']", "['w']"}
    rng = np.random.default_rng(0)
    for _ in range(20):  # flip one random bit of one element
        i, bit = int(rng.integers(1000)), int(rng.integers(32))
        bits = np.asarray(x["w"]).view(np.uint32).copy().reshape(-1)
        bits[i] ^= np.uint32(1 << bit)
        y = dict(x, w=jnp.asarray(bits.view(np.float32).reshape(10, 100)))
        got = tree_checksums(y)
        assert got["['w']"] != base["['w']"] and got["['b']"] == base["['b']"]
    # Swapping two elements changes it (positions are weighted).
    w = np.asarray(x["w"]).copy().reshape(-1)
    w[[3, 7]] = w[[7, 3]]
    assert tree_checksums(dict(x, w=jnp.asarray(w.reshape(10, 100))))["['w']"] != base["['w']"]
    # Independent oracle: the first sum recomputed with numpy's wrapping uint32 arithmetic.
    words = np.asarray(x["w"]).view(np.uint32).reshape(-1)
    i = np.arange(words.size, dtype=np.uint32)
    m1 = (i * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)) | np.uint32(1)
    assert base["['w']"][:8] == f"{int(np.sum(words * m1, dtype=np.uint32)):08x}"


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):  # noqa: F811
    """One finished 8-step run (checkpoints at 4 and 8), its losses and final parameters; tests copy it."""
    run = small_run(corpus, steps=8)
    wd = tmp_path_factory.mktemp("trained") / "run"
    train(run, wd)
    losses = [r["loss"] for r in read_metrics(wd) if "loss" in r]
    return run, wd, losses, final_params(wd, run)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and "metadata" not in f.name]
    return max(files, key=lambda f: f.stat().st_size)


def test_corrupted_bytes_are_caught_by_checksums_and_skipped(trained, tmp_path, capfd):
    wd = _copy(trained[1], tmp_path / "run")
    capfd.readouterr()
    target = _largest_array_file(wd / "checkpoints" / "8")
    data = bytearray(target.read_bytes())
    off = len(data) // 2
    data[off:off + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    res = evaluate(wd, depths=[None])
    assert res["step"] == 4
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "checkpoint step 8" in lines[0] and "damaged" in lines[0]
    assert "checksum mismatch" in lines[0] or "Error" in lines[0]


def test_damaged_step_is_discarded_and_saved_afresh_on_resume(trained, tmp_path, capfd):
    run, src, ref_losses, (s_ref, p_ref) = trained
    wd = _copy(src, tmp_path / "run")
    for f in (wd / "checkpoints" / "8" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    capfd.readouterr()
    # Evaluation only reads: it falls back with one warning line and deletes nothing.
    assert evaluate(wd, depths=[None])["step"] == 4
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "checkpoint step 8" in err[0], err
    assert (wd / "checkpoints" / "8").exists()
    # Resuming discards step 8 (saying so), retrains 5..8 and saves step 8 afresh: bitwise the reference run.
    train(run, wd)
    err = capfd.readouterr().err
    assert "discarded damaged checkpoint step 8" in err
    assert [r["loss"] for r in read_metrics(wd) if "loss" in r] == ref_losses
    s_run, p_run = final_params(wd, run)
    assert s_ref == s_run == 8
    for a, b in zip(p_ref, p_run):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_intact_step_is_an_error_not_a_fresh_start(tmp_path):
    ck = Checkpointer(tmp_path, async_save=False)
    state = {"w": jnp.ones((4,))}
    ck.save(1, state, None, {"step": 1})
    ck.wait()
    meta = tmp_path / "checkpoints" / "1" / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    saved["checksums"]["['w']"] = "0" * 24
    meta.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"no intact checkpoint .*step\(s\) \[1\].*checksum mismatch"):
        ck.restore(jax.eval_shape(lambda: state), None)
    ck.close()


def test_corrupted_config_json_is_named(corpus, tmp_path, capsys):  # noqa: F811
    wd = tmp_path / "run"
    args = ["train", *GPT, "--data", corpus, "--workdir", str(wd), "--steps", "2"]
    assert cli_main(args) == 0
    (wd / "config.json").write_text('{"model":\n')
    for cmd in (args, ["eval", "--workdir", str(wd)]):
        assert cli_main(cmd) == 2
        err = capsys.readouterr().err
        assert str(wd / "config.json") in err and "not valid JSON" in err and err.count("\n") == 1


def test_run_directory_session_cleans_only_when_nothing_was_saved(tmp_path):
    wd = tmp_path / "run"
    (tmp_path / "run").mkdir()
    (wd / "notes.txt").write_text("mine")  # a user's file in the workdir is never touched
    with pytest.raises(RuntimeError):
        with RunDirectory(wd).session({"a": 1}):
            (wd / "metrics.jsonl").write_text("{}\n")
            raise RuntimeError("fails before the first checkpoint")
    assert listing(wd) == ["notes.txt"]
    with pytest.raises(RuntimeError):
        with RunDirectory(wd).session({"a": 1}):
            (wd / "checkpoints" / "3").mkdir(parents=True)
            raise RuntimeError("fails after a checkpoint")
    assert listing(wd) == ["checkpoints", "checkpoints/3", "config.json", "notes.txt"]
