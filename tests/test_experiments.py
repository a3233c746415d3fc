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
