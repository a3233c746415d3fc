"""The trainer: a falling loss, bitwise-identical resumption, SIGTERM, gradient
accumulation, mesh-independence on 8 simulated devices, and the CLI's error handling."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from attractor_jax.cli import main as cli_main
from attractor_jax.models import get_config
from attractor_jax.train.optim import OptimConfig
from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, evaluate, setup, train

SMALL = dict(d_model=64, n_heads=2, mlp_dim=128, n_backbone_layers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small real-ish corpus: this repository's own Python sources (always present)."""
    root = pathlib.Path(__file__).resolve().parents[2] / "attractor_jax"
    text = "\n".join(p.read_text() for p in sorted(root.rglob("*.py")))
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(text[:200_000])
    return str(path)


def small_run(corpus, steps=8, **train_kw):
    train_cfg = dict(steps=steps, batch_size=4, seq_len=32, log_every=1, save_every=4, eval_batches=1,
                     eval_depths=(0, 1), tensorboard=False)
    train_cfg.update(train_kw)
    return RunConfig(model=get_config("attractor-tiny", **SMALL), train=TrainConfig(**train_cfg),
                     optim=OptimConfig(lr=3e-3, muon_lr=3e-3), data=DataConfig(path=corpus, val_fraction=0.1))


def read_metrics(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir, run):
    from attractor_jax.train.checkpoint import Checkpointer

    *_, abstract_state, state_sh = setup(run)
    ck = Checkpointer(workdir)
    step, state, _ = ck.restore(abstract_state, None)
    ck.close()
    return step, jax.tree_util.tree_leaves(state.params)


def test_loss_falls_and_resumed_run_is_bitwise_identical(corpus, tmp_path):
    run = small_run(corpus, steps=8)
    full = tmp_path / "full"
    train(run, full)
    rows = [r for r in read_metrics(full) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"solver_iters", "solver_converged", "grad_norm", "tokens_per_s", "skipped_steps"} <= set(rows[0])
    assert "val_loss_0" in read_metrics(full)[-1] and "val_loss_full" in read_metrics(full)[-1]

    part = tmp_path / "part"
    summary = train(run, part, stop_after=5)  # "pre-empted" after step 5 (checkpoint written at 5)
    assert summary["step"] == 5
    train(run, part)  # the same command again resumes and finishes
    assert [r["loss"] for r in read_metrics(part) if "loss" in r] == [r["loss"] for r in rows]
    s_full, p_full = final_params(full, run)
    s_part, p_part = final_params(part, run)
    assert s_full == s_part == 8
    for a, b in zip(p_full, p_part):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # A larger --steps continues the finished run; evaluate() reads the newest checkpoint.
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=10))
    assert train(longer, part)["step"] == 10
    res = evaluate(part, depths=[0, 2, None])
    assert res["step"] == 10 and set(res["depths"]) == {"0", "2", "full"}


def test_sigterm_checkpoints_and_stops(corpus, tmp_path):
    run = small_run(corpus, steps=50, save_every=0)

    def on_log(row):
        if row["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    summary = train(run, tmp_path, on_log=on_log)
    assert summary["step"] == 3
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3]


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    losses = {}
    for accum in (1, 2):
        run = small_run(corpus, steps=2, grad_accum=accum, save_every=0, eval_batches=1)
        rows = []
        train(run, tmp_path / f"a{accum}", on_log=rows.append)
        losses[accum] = [r["loss"] for r in rows]
    np.testing.assert_allclose(losses[1], losses[2], rtol=1e-5)


def test_bfloat16_compute_trains(corpus, tmp_path):
    run = small_run(corpus, steps=3, dtype="bfloat16", save_every=0, eval_depths=(0,))
    rows = []
    summary = train(run, tmp_path, on_log=rows.append)
    assert all(np.isfinite(r["loss"]) for r in rows) and np.isfinite(summary["val_loss"])
    abstract_state = setup(run).abstract_state
    assert {x.dtype for x in jax.tree_util.tree_leaves(abstract_state.params)} == {np.dtype("float32")}


MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from attractor_jax.models import get_config
    from attractor_jax.train.optim import OptimConfig
    from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, train
    assert jax.device_count() == 8
    out = {}
    for mesh in ("data=8", "fsdp=4,tensor=2"):
        run = RunConfig(model=get_config("attractor-tiny", **json.loads(sys.argv[2])),
                        train=TrainConfig(steps=3, batch_size=8, seq_len=32, log_every=1, save_every=0,
                                          mesh=mesh, tensorboard=False, eval_batches=1, eval_depths=()),
                        optim=OptimConfig(lr=3e-3, muon_lr=3e-3), data=DataConfig(path=sys.argv[1], val_fraction=0.1))
        rows = []
        train(run, sys.argv[3] + "/" + mesh.replace(",", "_").replace("=", ""), on_log=rows.append)
        out[mesh] = [r["loss"] for r in rows]
    print("LOSSES" + json.dumps(out))
    """
)


def test_meshes_on_8_devices_match_one_device(corpus, tmp_path):
    run = small_run(corpus, steps=3, batch_size=8, save_every=0, eval_depths=())
    rows = []
    train(run, tmp_path / "one", on_log=rows.append)
    single = [r["loss"] for r in rows]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, corpus, json.dumps(SMALL), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("LOSSES", 1)[1])
    for mesh, losses in out.items():
        np.testing.assert_allclose(losses, single, rtol=1e-5, atol=1e-5, err_msg=mesh)


def test_cli_train_eval_and_bad_input(corpus, tmp_path, capsys):
    wd = tmp_path / "cli"
    args = ["train", "--preset", "gpt-tiny", "--data", corpus, "--workdir", str(wd), "--steps", "3",
            "--log-every", "1", "--set", "train.batch_size=2", "--set", "seq_len=16", "--set", "model.n_layers=1",
            "--set", "train.tensorboard=false"]
    assert cli_main(args) == 0
    rows = read_metrics(wd)
    assert rows[0]["step"] == 1 and "loss" in rows[0]
    assert cli_main(["eval", "--workdir", str(wd), "--max-iter", "full"]) == 0
    assert "T=full" in capsys.readouterr().out
    bad = [
        (["--preset", "nope"], "unknown preset"),
        (["--set", "train.steps=-3"], "train.steps=-3"),
        (["--set", "nosuchkey=1"], "unknown key"),
        (["--mesh", "data=3"], "3 devices"),
        (["--data", str(tmp_path / "missing.txt")], "does not exist"),
    ]
    for extra, message in bad:
        target = tmp_path / "never"
        base = ["train", "--preset", "gpt-tiny", "--data", corpus, "--workdir", str(target)]
        assert cli_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
        assert not target.exists()


def test_a_solver_that_stops_converging_is_reported_once(corpus, tmp_path, capsys):
    """Three logged steps whose solves cannot meet the tolerance (3 iterations to 1e-12): one warning naming the
    converged fraction; a converging row gives none."""
    from attractor_jax import implicit
    from attractor_jax.train.trainer import solver_alarm

    run = small_run(corpus, steps=3, save_every=0, eval_every=0)
    run = dataclasses.replace(run, model=dataclasses.replace(
        run.model, solver=implicit.Anderson(max_iter=3, tol=1e-12)))
    rows = []
    train(run, tmp_path, on_log=rows.append)
    assert [r["solver_converged"] for r in rows] == [0.0, 0.0, 0.0]
    err = capsys.readouterr().err
    assert err.count("of the solves converged") == 1 and "at step 1 only 0% of the solves converged" in err
    assert "mean 3.0 iterations, max 3" in err and "jacobian_weight" not in err  # an LM has no Jacobian penalty
    assert solver_alarm({"step": 5, "solver_converged": 0.9}) is None
    assert solver_alarm({"step": 5, "loss": 1.0}) is None  # a model without a solver
    msg = solver_alarm({"step": 375, "solver_converged": 0.48, "solver_iters": 17.5, "solver_iters_max": 24,
                        "solver_residual": 0.02}, get_config("attractor-maze-tiny"))
    assert "at step 375 only 48% of the solves converged (mean 17.5 iterations, max 24" in msg
    assert "jacobian_weight" in msg  # the reasoners have the penalty
