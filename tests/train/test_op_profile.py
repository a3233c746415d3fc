"""Per-op profile attribution: HLO source paths against the known call chain of a real block, event pairing
against hand-computed durations, and a traced run of a block's forward and backward."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from attractor_jax.nn.block import Block
from attractor_jax.nn.config import BlockConfig
from attractor_jax.train.op_profile import (
    OpProfile,
    OpSource,
    _op_durations,
    compile_for_profile,
    hlo_op_sources,
    profile_ops,
)


@pytest.fixture(scope="module")
def block_grad():
    """A causal pre-norm block's value-and-gradient on [2, 16, 32], compiled with trace events."""
    blk = Block(BlockConfig(d_model=32, n_heads=2, mlp_dim=64, out_init="matrix"), rngs=nnx.Rngs(0))
    gd, st = nnx.split(blk)
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))

    def loss(st, x):
        return jnp.sum(jnp.sin(nnx.merge(gd, st)(x)))

    compiled = compile_for_profile(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), st, x)
    return compiled, st, x


def test_sources_follow_the_call_chain(block_grad):
    compiled, _, _ = block_grad
    sources = hlo_op_sources(compiled.as_text())
    paths = {s.path for s in sources.values()}
    # Block.__call__ calls MLP.__call__ (mlp.py), which calls Linear.__call__ (layers.py) and relu2 (mlp.py);
    # Attention.__call__ calls Linear.__call__ for its projections.
    assert ("Block.__call__", "MLP.__call__", "Linear.__call__") in paths
    assert ("Block.__call__", "MLP.__call__", "relu2") in paths
    assert ("Block.__call__", "Attention.__call__", "Linear.__call__") in paths
    for s in sources.values():
        if s.path:
            assert s.path[0] == "Block.__call__", s  # nothing of ours sits above the block in this module
            assert len(s.files) == len(s.path)
        if s.path[-1:] == ("Linear.__call__",):
            assert s.file == "nn/layers.py"
            assert s.path[-2] in ("MLP.__call__", "Attention.__call__"), s
    mlp_linear = [s for s in sources.values() if s.path[-2:] == ("MLP.__call__", "Linear.__call__")]
    assert {s.phase for s in mlp_linear} == {"forward", "backward"}


def test_event_pairing_and_containers():
    ev = lambda name, ts, dur, op=True: {"ph": "X", "name": name, "ts": ts, "dur": dur,  # noqa: E731
                                         **({"args": {"hlo_op": name}} if op else {})}
    events = [
        ev("dot.1", 0.0, 1000.0), ev("end: dot.1", 9000.0, 1.0, op=False),  # asynchronous: 9 ms to its end
        ev("fusion.2", 10_000.0, 5000.0), ev("end: fusion.2", 14_990.0, 1.0, op=False),  # end just inside
        ev("while.3", 0.0, 20_000.0),  # a container: its body's ops count, it does not
        ev("other.4", 0.0, 2000.0),  # not an op of this module
        ev("dot.1", 30_000.0, 500.0),  # no end event: its own duration
        ev("ThunkExecutor::Execute", 0.0, 40_000.0, op=False),  # not an op event
    ]
    ms, unmatched = _op_durations(events, {"dot.1", "fusion.2", "while.3"}, {"while.3"})
    assert ms == pytest.approx({"dot.1": 9.0 + 0.5, "fusion.2": 5.0})
    assert unmatched == pytest.approx(2.0)


def test_table_groups_and_validates():
    src = {
        "a": OpSource("dot", "forward", ("train_step", "AttractorLM.encode", "MLP.__call__"),
                      ("train/trainer.py", "models/attractor.py", "nn/mlp.py")),
        "b": OpSource("dot", "backward", ("train_step", "AttractorLM.encode", "MLP.__call__"),
                      ("train/trainer.py", "models/attractor.py", "nn/mlp.py")),
        "c": OpSource("add", "forward", ("train_step", "update"), ("train/trainer.py", "train/optim.py")),
        "d": OpSource("copy", "forward", (), ()),
    }
    prof = OpProfile(ms={"a": 20.0, "b": 40.0, "c": 4.0, "d": 2.0}, sources=src, steps=2, wall_ms=30.0,
                     unmatched_ms=0.0)
    rows = {(r["source"], r["phase"]): r["ms"] for r in prof.table(depth=1, by="outer")}
    assert rows == {("AttractorLM.encode", "forward"): 10.0, ("AttractorLM.encode", "backward"): 20.0,
                    ("(trainer) update", "forward"): 2.0, ("(no source)", "forward"): 1.0}
    assert prof.table(by="file")[0] == {"source": "nn/mlp.py", "phase": "backward", "ms": 20.0, "ops": 1}
    assert prof.phase_ms() == {"forward": 13.0, "backward": 20.0}
    with pytest.raises(ValueError, match="by must be"):
        prof.table(by="line")
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        prof.table(depth=0)


def test_profiled_block_accounts_for_its_ops(block_grad):
    compiled, st, x = block_grad
    prof = profile_ops(lambda: compiled(st, x), compiled, steps=2)
    assert prof.unmatched_ms == 0.0
    phases = prof.phase_ms()
    assert phases["forward"] > 0 and phases["backward"] > 0
    # every timed op is one of the module's instructions, and the tables partition the same total
    assert set(prof.ms) <= set(prof.sources)
    total = sum(phases.values())
    for by in ("path", "outer", "file"):
        assert sum(r["ms"] for r in prof.table(by=by)) == pytest.approx(total)
    assert sum(r["ms"] for r in prof.table(by="path") if "MLP.__call__" in r["source"]) > 0
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        profile_ops(lambda: compiled(st, x), compiled, steps=0)
