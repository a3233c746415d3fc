"""Reasoner runs through the trainer and CLI: bitwise-identical resumption with the ACT carry and EMA in the
checkpoint, eval-mode evaluation (exact/cell accuracy, f-evaluations, solver removed), masks on the padded
last test batch, and the CLI's errors."""

import json
import pathlib

import numpy as np
import pytest

from attractor_jax.cli import main as cli_main
from attractor_jax.data import puzzles as pz
from attractor_jax.models import get_config
from attractor_jax.train.optim import reference_optim_config
from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, evaluate, train

TINY = dict(hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=1, halt_max_steps=2,
            puzzle_emb_len=1)


@pytest.fixture(scope="module")
def sudoku_data(tmp_path_factory):
    """A built sudoku dataset (easy generated puzzles, 1 augmentation); 10 test puzzles."""
    root = tmp_path_factory.mktemp("sudoku")
    train_rows = pz.generate_sudoku(24, min_rating=0, seed=3, blanks=20)
    test_rows = pz.generate_sudoku(10, min_rating=0, seed=4, blanks=20, exclude={r.question for r in train_rows})
    (root / "csv").mkdir()
    pz.write_puzzle_csv(root / "csv" / "train.csv", train_rows)
    pz.write_puzzle_csv(root / "csv" / "test.csv", test_rows)
    return str(pz.build_sudoku_dataset(root / "csv", root / "ds", num_aug=1, seed=0))


def run_for(preset, data, steps=4, **train_kw):
    model = get_config(preset, **TINY, **({"solver.max_iter": 6} if preset.startswith("attractor") else {}))
    kw = dict(steps=steps, batch_size=4, log_every=1, save_every=2, eval_batches=1, eval_depths=(0, 2),
              tensorboard=False)
    kw.update(train_kw)
    return RunConfig(model=model, train=TrainConfig(**kw),
                     optim=reference_optim_config(model, lr=1e-3, warmup_steps=1, ema_decay=0.9,
                                                  weight_decay=0.1),
                     data=DataConfig(path=data))


def read_metrics(workdir):
    return [json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_attractor_reasoner_resumes_bitwise_and_evaluates_by_depth(sudoku_data, tmp_path):
    run = run_for("attractor-sudoku-tiny", sudoku_data)
    full, part = tmp_path / "full", tmp_path / "part"
    s_full = train(run, full)
    train(run, part, stop_after=2)
    assert sorted(p.name for p in (part / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    s_part = train(run, part)  # resumes at step 2: params, opt state, EMA, ACT carry and data position
    a = [r for r in read_metrics(full) if "loss" in r]
    b = [r for r in read_metrics(part) if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for k in ("loss", "solver_iters", "solver_residual", "grad_norm", "count"):
            assert x[k] == y[k], (k, x, y)
    assert s_full["eval_cell_full"] == s_part["eval_cell_full"]

    # the saved config records the sizes taken from the dataset; eval.json holds every depth
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["model"]["seq_len"] == 81 and cfg["model"]["vocab_size"] == 11
    assert cfg["optim"]["ema_decay"] == 0.9
    res = json.loads((full / "eval.json").read_text())
    assert res["ema"] is True and set(res["depths"]) == {"0", "2", "full"}
    for r in res["depths"].values():
        assert r["count"] == 10  # 10 test puzzles in 3 batches of 4: the padded rows are not counted
        assert 0.0 <= r["cell"] <= 1.0 and 0.0 <= r["exact"] <= 1.0
        assert len(r["exact_by_step"]) == 2 and r["cell_by_step"][-1] == pytest.approx(r["cell"])
        assert r["nfe_by_step"][-1] == pytest.approx(r["nfe"])
        assert r["copy_cell"] == pytest.approx(61 / 81)  # 20 blanks: the givens-only baseline
    # f-evaluations per puzzle: (solver iterations + 1 z_H update) per H cycle, over 2 ACT steps
    assert res["depths"]["0"]["nfe"] == pytest.approx(2 * 2 * 1)
    assert res["depths"]["2"]["nfe"] == pytest.approx(2 * 2 * 4)  # 2 plain steps + 1 measuring + z_H
    assert res["depths"]["2"]["nfe_by_step"] == pytest.approx([2 * 4, 2 * 2 * 4])  # per supervision step
    assert res["depths"]["2"]["solver_iters"] == pytest.approx(3.0)
    full_r = res["depths"]["full"]
    assert full_r["nfe"] == pytest.approx(2 * 2 * (full_r["solver_iters"] + 1), rel=1e-5)
    assert 0 < full_r["solver_residual"] < 0.1

    # `attractor-jax eval` agrees with the end-of-training evaluation
    again = evaluate(full, depths=[0, None])
    assert again["depths"]["full"]["cell"] == res["depths"]["full"]["cell"]
    assert again["depths"]["0"]["nfe"] == res["depths"]["0"]["nfe"]


def test_trm_train_and_cli_eval(sudoku_data, tmp_path, capsys):
    wd = tmp_path / "trm"
    code = cli_main(["train", "--preset", "trm-sudoku-tiny", "--data", sudoku_data, "--workdir", str(wd),
                     "--steps", "2", "--set", "batch_size=4", "--set", "warmup_steps=1", "--set", "hidden_size=32",
                     "--set", "num_heads=2", "--set", "halt_max_steps=2", "--set", "L_cycles=1",
                     "--set", "H_cycles=2", "--set", "puzzle_emb_len=1", "--set", "tensorboard=false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "eval_cell_full" in out
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["optim"]["puzzle_emb_lr"] == 1e-4  # TRM's recipe, not the LM optimizer
    assert cli_main(["eval", "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "max_iter=full" in out and "copy-the-givens" in out
    assert cli_main(["eval", "--workdir", str(wd), "--max-iter", "0,full"]) == 2  # TRM has no solver
    assert "TRM has no solver" in capsys.readouterr().err


def test_bad_reasoner_runs_fail_before_writing(sudoku_data, tmp_path, capsys):
    cases = [
        (["--data", str(tmp_path)], "not a built puzzle dataset"),
        (["--data", sudoku_data, "--set", "grad_accum=2", "--set", "batch_size=4"], "grad_accum=2"),
    ]
    for extra, msg in cases:
        wd = tmp_path / "never"
        code = cli_main(["train", "--preset", "attractor-sudoku-tiny", "--workdir", str(wd), "--steps", "1", *extra])
        assert code == 2
        assert msg in capsys.readouterr().err
        assert not wd.exists()


def test_short_run_beats_the_givens_baseline(tmp_path):
    """A short CPU run of TRM on easy generated puzzles (8 blanks) learns more than copying the givens."""
    root = tmp_path
    train_rows = pz.generate_sudoku(256, min_rating=0, seed=5, blanks=8)
    test_rows = pz.generate_sudoku(32, min_rating=0, seed=6, blanks=8, exclude={r.question for r in train_rows})
    (root / "csv").mkdir()
    pz.write_puzzle_csv(root / "csv" / "train.csv", train_rows)
    pz.write_puzzle_csv(root / "csv" / "test.csv", test_rows)
    data = str(pz.build_sudoku_dataset(root / "csv", root / "ds", num_aug=0, seed=0))
    run = run_for("trm-sudoku-tiny", data, steps=300, batch_size=32, log_every=50, save_every=0, eval_batches=1)
    run = RunConfig(model=run.model, train=run.train, data=run.data,
                    optim=reference_optim_config(run.model, lr=3e-3, warmup_steps=10, ema_decay=0.9,
                                                 weight_decay=0.1, puzzle_emb_weight_decay=0.1))
    train(run, root / "run")
    res = json.loads((root / "run" / "eval.json").read_text())["depths"]["full"]
    base = res["copy_cell"]
    assert base == pytest.approx(73 / 81)
    assert res["cell"] > base + 0.25 * (1 - base), res  # a quarter of the blanks right, well above chance (1/9)


def test_arc_run_reports_pass_at_k_with_voting(tmp_path):
    rng = np.random.default_rng(0)

    def pair():
        g = rng.integers(0, 10, size=tuple(rng.integers(2, 5, size=2)))
        return {"input": g.tolist(), "output": np.fliplr(g).tolist()}

    for subset, names in (("training", ["t1"]), ("evaluation", ["e1", "e2"])):
        (tmp_path / "src" / subset).mkdir(parents=True)
        for name in names:
            task = {"train": [pair(), pair()], "test": [pair()]}
            (tmp_path / "src" / subset / f"{name}.json").write_text(json.dumps(task))
    data = str(pz.build_arc_dataset(tmp_path / "src", tmp_path / "arc", num_aug=2, seed=0))
    run = run_for("trm-sudoku-tiny", data, steps=1, save_every=0)  # sizes come from the dataset: 900 tokens
    summary = train(run, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "eval.json").read_text())["depths"]["full"]
    assert res["tasks"] == 2 and res["inputs"] == 2 and res["count"] == 6  # 2 tasks x 3 variants
    assert 0.0 <= res["pass@1"] <= res["pass@2"] <= 1.0
    assert summary["eval_pass@2_full"] == res["pass@2"]


MESH_SCRIPT = """
import json, sys
import jax
from tests.train.test_puzzle_trainer import run_for
from attractor_jax.train.trainer import train
assert jax.device_count() == 8
data, out = sys.argv[1], sys.argv[2]
res = {}
for mesh in ("data=8", "data=4,fsdp=2"):
    rows = []
    run = run_for("attractor-sudoku-tiny", data, steps=2, batch_size=8, save_every=0, eval_depths=(), mesh=mesh)
    train(run, f"{out}/{mesh.replace(',', '_').replace('=', '')}", on_log=rows.append)
    res[mesh] = [[r["loss"], r["solver_iters"]] for r in rows]
print("LOSSES" + json.dumps(res))
"""


def test_reasoner_on_8_devices_matches_one_device(sudoku_data, tmp_path):
    """Rows (and the ACT carry) sharded over data / fsdp devices give the single-device losses and solver
    iterations."""
    import os
    import subprocess
    import sys

    rows = []
    train(run_for("attractor-sudoku-tiny", sudoku_data, steps=2, batch_size=8, save_every=0, eval_depths=()),
          tmp_path / "one", on_log=rows.append)
    single = [[r["loss"], r["solver_iters"]] for r in rows]
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, sudoku_data, str(tmp_path)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("LOSSES", 1)[1])
    for mesh, got in out.items():
        np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5, err_msg=mesh)
