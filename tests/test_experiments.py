"""Smoke tests of the experiment scripts at a few steps (their real budgets do not fit CI): each runs end to end
through the real trainer and writes its JSON and PNGs."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return path


def test_lm_curves_trains_reports_and_matches_compute(tmp_path, corpus):
    from experiments import lm_curves

    args = ["--data", str(corpus), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--steps", "4", "--eval-every", "2", "--save-every", "4", "--batch-size", "2", "--seq-len", "16",
            "--eval-batches", "1", "--seeds", "1"]
    # the compute-matched GPTs need the same seed's finished Attractor run
    with pytest.raises(SystemExit, match="attractor"):
        lm_curves.main([*args, "--models", "gpt-tokens"])
    assert lm_curves.main([*args, "--models", "attractor,gpt-tokens"]) == 0
    res = json.loads((tmp_path / "out" / "tiny" / "results.json").read_text())
    attractor, gpt = res["models"]["attractor"], res["models"]["gpt-tokens"]
    assert [c["step"] for c in attractor["runs"][0]["curve"]] == [2, 4, 4]  # periodic, then the final evaluation
    assert {"val_loss_0", "val_loss_1", "val_loss_full"} <= set(attractor["runs"][0]["curve"][0])
    # total FLOPs matched: steps scale with the measured FLOPs-per-token ratio (> 1: the head is solved)
    ratio = attractor["train_flops_per_token"]["mean"] / gpt["train_flops_per_token"]["mean"]
    assert ratio > 1.2 and gpt["steps"] == round(4 * ratio)
    assert (tmp_path / "out" / "tiny" / "lm_curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "tiny" / "internalization.png").stat().st_size > 0
    # the recorded runs outlive their folders: a report with runs/ gone keeps them
    import shutil

    shutil.rmtree(tmp_path / "runs")
    assert lm_curves.main([*args, "--report-only"]) == 0
    again = json.loads((tmp_path / "out" / "tiny" / "results.json").read_text())
    assert again["models"]["attractor"]["runs"] == attractor["runs"]
    assert again["models"]["gpt-tokens"]["val_loss"] == gpt["val_loss"]


def test_puzzle_scaling_scores_inference_settings_and_real_lists(tmp_path, shared_data):
    from experiments import puzzle_scaling

    from attractor_jax.data import puzzles as pz
    from attractor_jax.models import get_config
    from attractor_jax.train.optim import reference_optim_config
    from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, train

    rows = pz.generate_sudoku(12, min_rating=0, seed=3, blanks=20)
    (tmp_path / "csv").mkdir()
    pz.write_puzzle_csv(tmp_path / "csv" / "train.csv", rows[:8])
    pz.write_puzzle_csv(tmp_path / "csv" / "test.csv", rows[8:])
    data = pz.build_sudoku_dataset(tmp_path / "csv", tmp_path / "data")
    model = get_config("attractor-sudoku-tiny", hidden_size=32, num_heads=2, L_layers=1, H_cycles=2,
                       halt_max_steps=2, puzzle_emb_len=1, **{"solver.max_iter": 6})
    train(RunConfig(model=model, optim=reference_optim_config(model, lr=1e-3, warmup_steps=1, ema_decay=0.9),
                    train=TrainConfig(steps=2, batch_size=4, eval_depths=(), tensorboard=False),
                    data=DataConfig(path=str(data))), tmp_path / "runs" / "attractor")
    assert puzzle_scaling.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                                "--max-steps", "3", "--max-iters", "0", "--tols", "",
                                "--real-lists", "sudoku_forum_hardest_1106.csv", "--real-count", "3",
                                "--real-dir", str(shared_data / "sudoku"), "--test-sets", str(data)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    full, removed = res["settings"]
    assert (full["setting"], removed["max_iter"]) == ("full solve", 0)
    # 3 supervision steps evaluated (the run trained 2); with the solver removed each step costs only its
    # H_cycles = 2 z_H updates
    assert removed["nfe_by_step"] == pytest.approx([2, 4, 6])
    assert len(full["exact_by_step"]) == 3 and full["nfe_by_step"][0] > 2
    (own,) = res["test_sets"]  # its own test split, scored as an extra test set: the trained setting's numbers
    assert own["count"] == 4 and own["cell"] == pytest.approx(full["cell_by_step"][1], abs=1e-6)
    (real,) = res["real_lists"]
    assert real["count"] == 3 and 0 < real["copy_cell"] < 0.5  # hard lists: fewer than 40 givens of 81
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 0


@pytest.mark.parametrize("script", ["sudoku", "maze"])
def test_puzzle_scripts_generate_train_evaluate_and_plot(tmp_path, script):
    import importlib

    mod = importlib.import_module(f"experiments.{script}")
    size = ["--blanks", "20"] if script == "sudoku" else ["--size", "6", "--min-path", "4"]
    from attractor_jax.train import trainer

    # TRM only (the Attractor reasoner's training and depth evaluation are covered by the scaling test above)
    args = ["--models", "trm", "--steps", "2", "--batch-size", "4", "--hidden", "32", "--act-steps", "1",
            "--train-count", "6", "--test-count", "4", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), *size]
    # interrupted training (as a SIGTERM ends it: checkpoint and return) is not evaluated or reported
    real = trainer.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "train", lambda run, wd: real(run, wd, stop_after=1))
        with pytest.raises(SystemExit, match="stopped at step 1 of 2"):
            mod.main(args)
    assert not (tmp_path / "out").exists()
    assert mod.main(args) == 0  # the rerun resumes at step 1
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    (entry,) = res["models"].values()
    assert res["args"]["mlp_t"] is True  # the tuned default of both: TRM's MLP-mixer block
    full = entry["eval"]["full"]
    assert full["count"] == 4 and 0 <= full["exact"] <= full["cell"] <= 1
    assert (tmp_path / "out" / f"{script}.png").stat().st_size > 0
    if script == "maze":
        # a larger --steps continues the finished run; the intervals derived from --steps stay as recorded
        # (save_every would be 4 from the new --steps, which the run directory refuses)
        assert mod.main([*args[:args.index("--steps") + 1], "4", *args[args.index("--steps") + 2:]]) == 0
        res = json.loads((tmp_path / "out" / "results.json").read_text())
        (entry,) = res["models"].values()
        assert [r["step"] for r in entry["curve"] if "loss" in r] == [1, 2, 3, 4]
        recorded = json.loads((tmp_path / "runs" / "trm" / "config.json").read_text())
        assert recorded["train"]["steps"] == 4 and recorded["train"]["save_every"] == 2
        # the run's lr is constant: it cannot be continued as a decaying one
        with pytest.raises(SystemExit, match="started with --min-lr-ratio 1.0, not 0.5"):
            mod.main([*args, "--min-lr-ratio", "0.5"])


def test_puzzle_scripts_pass_the_jacobian_penalty_to_the_attractor_only(tmp_path):
    import argparse

    from experiments import puzzle_experiment as pe

    ap = argparse.ArgumentParser()
    pe.add_args(ap, name="maze", steps=8, batch=4, lr=1e-3, train_count=6, mlp_t=True)
    a = ap.parse_args(["--jacobian-weight", "0.5"])
    pe.check(ap, a)
    assert pe.make_run("attractor-maze-tiny", tmp_path, a, ()).model.jacobian_weight == 0.5
    assert not hasattr(pe.make_run("trm-maze-tiny", tmp_path, a, ()).model, "jacobian_weight")
    assert pe.make_run("attractor-maze-tiny", tmp_path, ap.parse_args([]), ()).model.jacobian_weight == 0.0
    with pytest.raises(SystemExit):
        pe.check(ap, ap.parse_args(["--jacobian-weight", "-1"]))


def test_puzzle_scripts_decay_the_lr_to_the_floor_and_keep_a_decaying_run_to_its_steps(tmp_path, monkeypatch):
    import argparse
    import math

    from attractor_jax.train import rundir, trainer
    from attractor_jax.train.optim import make_schedule
    from experiments import puzzle_experiment as pe

    ap = argparse.ArgumentParser()
    pe.add_args(ap, name="maze", steps=100, batch=4, lr=1e-3, train_count=6, mlp_t=True)
    a = ap.parse_args(["--min-lr-ratio", "0.1"])
    pe.check(ap, a)
    run = pe.make_run("trm-maze-tiny", tmp_path, a, ())
    m = make_schedule(run.optim, run.train.steps)
    # warmup 5 steps (steps // 20), then 0.1 + 0.9 * (1 + cos(pi s)) / 2 with s = (t - 5) / 95, by hand
    for t in (4, 5, 52, 99, 100):
        s = min(max((t - 5) / 95, 0.0), 1.0)
        want = 1.0 if t < 5 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s))
        assert float(m(t)) == pytest.approx(want, rel=1e-5), t
    for bad in ("-0.1", "1.5"):
        with pytest.raises(SystemExit):
            pe.check(ap, ap.parse_args(["--min-lr-ratio", bad]))
    # a decaying run continues only to the steps it started with (its schedule is tied to them)
    monkeypatch.setattr(rundir.RunDirectory, "has_checkpoint", lambda self: True)
    monkeypatch.setattr(trainer, "read_run", lambda wd: run)
    assert pe.keep_schedule(run, tmp_path).train.steps == 100
    longer = pe.make_run("trm-maze-tiny", tmp_path, ap.parse_args(["--min-lr-ratio", "0.1", "--steps", "200"]), ())
    with pytest.raises(SystemExit, match="decays its lr over 100 steps"):
        pe.keep_schedule(longer, tmp_path)
