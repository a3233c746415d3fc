"""seqio Tasks/Mixtures (optional extra `seqio`): the same token arrays as the grain pipelines for text and
puzzles, exact resumption, Mixtures, and training/resuming the LM trainer from `--data seqio:NAME`.

Skipped only when seqio is not importable (CI installs the extra)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from attractor_jax.data import make_puzzle_pipeline, make_text_pipeline
from attractor_jax.data import puzzles as pz

P1 = dict(process_index=0, process_count=1)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_importing_the_package_does_not_import_tensorflow_and_missing_seqio_is_named():
    code = textwrap.dedent("""
        import sys
        import attractor_jax, attractor_jax.data, attractor_jax.data.seqio_tasks as st
        import attractor_jax.train.trainer
        assert "tensorflow" not in sys.modules and "seqio" not in sys.modules, "eager import"
        sys.modules["tensorflow"] = None
        sys.modules["seqio"] = None
        try:
            st.register_text_task("x", "README.md")
        except ImportError as e:
            assert "pip install 'attractor_jax[seqio]'" in str(e), e
            print("OK")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


# Everything below needs seqio + TensorFlow.
st = None


@pytest.fixture(scope="module", autouse=False)
def seqio_mod():
    global st
    pytest.importorskip(
        "seqio", reason="seqio not installed (optional extra: pip install 'attractor_jax[seqio]')"
    )
    from attractor_jax.data import seqio_tasks

    st = seqio_tasks
    return seqio_tasks


def _docs(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "mat", "ünïcode", "zebra", "a", "dog", "ran", "\u00e9t\u00e9"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("seqio_text")
    (d / "a.txt").write_text("<|endoftext|>".join(_docs(23, 0)))
    with open(d / "b.jsonl", "w") as f:
        for t in _docs(11, 1):
            f.write(json.dumps({"text": t}) + "\n")
    return d


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ text


def test_byte_vocabulary_matches_the_byte_tokenizer(seqio_mod):
    import tensorflow as tf

    from attractor_jax.data import make_tokenizer

    tok, voc = make_tokenizer("byte"), seqio_mod.byte_vocabulary()
    assert (voc.vocab_size, voc.eos_id) == (tok.vocab_size, tok.eos_id) == (256, 0)
    for s in ["", "hello", "h\u00e9llo w\u00f6rld \U0001f600", "nul\0inside\0", "\ufffd"]:
        assert voc.encode(s) == tok.encode(s)
        assert list(voc.encode_tf(tf.constant(s)).numpy()) == tok.encode(s)
        assert voc.decode(tok.encode(s)) == tok.decode(tok.encode(s))
    ids = tok.encode("ab") + [0] + tok.encode("cd")
    assert voc.decode_tf(tf.constant(ids)).numpy() == b"ab"  # decoding stops at EOS, as seqio's contract says
    assert voc == seqio_mod.make_vocabulary("byte") and hash(voc) == hash(seqio_mod.byte_vocabulary())
    with pytest.raises(ValueError, match="no seqio vocabulary"):
        seqio_mod.make_vocabulary("tok.json")


def test_text_task_gives_the_grain_token_arrays(seqio_mod, corpus):
    name = seqio_mod.register_text_task("t_eq", corpus)
    assert name == "attractor_jax.t_eq"
    kw = dict(seq_len=16, batch_size=4, seed=0)
    grain_map = make_text_pipeline(corpus, shuffle=False, **kw, **P1)
    full = grain_map.stats.num_tokens // 17 // 4  # batches of whole rows in the first epoch
    # Unshuffled, the seqio stream is grain's streaming stream, batch for batch, into the second epoch ...
    n = full + 10
    got = _take(seqio_mod.make_seqio_pipeline(name, shuffle=False, **kw, **P1), n)
    ref = _take(make_text_pipeline(corpus, shuffle=False, streaming=True, **kw, **P1), n)
    _same(got, ref)
    for b in got:
        assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (4, 16)
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    # ... and, within the first epoch, the default (map-mode) grain pipeline without shuffling.
    _same(got[:full], _take(grain_map, full))
    # Per-host sharding: process p of 2 reads seqio.ShardInfo(p, 2) == grain's document i -> host i mod 2.
    for p in range(2):
        sh = dict(process_index=p, process_count=2)
        _same(
            _take(seqio_mod.make_seqio_pipeline(name, shuffle=False, **kw, **sh), 12),
            _take(make_text_pipeline(corpus, shuffle=False, streaming=True, **kw, **sh), 12),
        )


def test_sentencepiece_task_gives_the_grain_token_arrays(seqio_mod, corpus, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(input=str(corpus / "a.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=48,
                                   model_type="bpe", eos_id=1, bos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    model = str(tmp_path / "sp.model")
    name = seqio_mod.register_text_task("t_sp", corpus, tokenizer=model)
    kw = dict(seq_len=16, batch_size=2, seed=0, shuffle=False, **P1)
    _same(_take(seqio_mod.make_seqio_pipeline(name, **kw), 20),
          _take(make_text_pipeline(corpus, tokenizer=model, streaming=True, **kw), 20))


def test_validation_split_matches_grain_streaming(seqio_mod, corpus):
    name = seqio_mod.register_text_task("t_val", corpus, val_fraction=0.25)
    kw = dict(seq_len=8, batch_size=2, seed=0, split="validation", **P1)
    got = list(seqio_mod.make_seqio_pipeline(name, **kw))
    ref = list(make_text_pipeline(corpus, val_fraction=0.25, streaming=True, **kw))
    assert len(got) == len(ref) > 0
    _same(got, ref)
    tr = seqio_mod.make_seqio_pipeline(name, seq_len=8, batch_size=2, seed=0, shuffle=False, **P1)
    _same(
        _take(tr, 5),
        _take(
            make_text_pipeline(
                corpus,
                val_fraction=0.25,
                streaming=True,
                shuffle=False,
                seq_len=8,
                batch_size=2,
                seed=0,
                **P1,
            ),
            5,
        ),
    )


def test_real_text_file(seqio_mod, shared_data):
    path = shared_data / "text" / "openshakespeare_sonnets_gut.txt"
    name = seqio_mod.register_text_task("sonnets", path)
    kw = dict(seq_len=64, batch_size=8, seed=0, shuffle=False, **P1)
    _same(
        _take(seqio_mod.make_seqio_pipeline(name, **kw), 30), _take(make_text_pipeline(path, **kw), 30)
    )  # the whole file is one document: map mode agrees too


def test_shuffled_stream_is_seeded_and_resumes_exactly(seqio_mod, corpus):
    import grain

    name = seqio_mod.register_text_task("t_shuf", corpus, shuffle_buffer_size=8)
    kw = dict(seq_len=12, batch_size=3, **P1)
    a = _take(seqio_mod.make_seqio_pipeline(name, seed=5, **kw), 30)
    _same(a, _take(seqio_mod.make_seqio_pipeline(name, seed=5, **kw), 30))
    other = _take(seqio_mod.make_seqio_pipeline(name, seed=6, **kw), 30)
    assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(a, other))
    plain = _take(seqio_mod.make_seqio_pipeline(name, seed=5, shuffle=False, **kw), 30)
    assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(a, plain))

    it = seqio_mod.make_seqio_pipeline(name, seed=5, **kw)
    assert isinstance(it, grain.DatasetIterator)
    _take(it, 17)
    state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as the orbax checkpoint stores it
    assert state["batches"] == 17 and state["examples"] > 0
    fresh = seqio_mod.make_seqio_pipeline(name, seed=5, **kw)
    fresh.set_state(state)
    _same(_take(fresh, 13), a[17:])
    with pytest.raises(ValueError, match="different seqio pipeline"):
        seqio_mod.make_seqio_pipeline(name, seed=6, **kw).set_state(state)


def test_mixture_of_text_tasks(seqio_mod, corpus, tmp_path):
    (tmp_path / "z.txt").write_text("Z" * 500)
    a = seqio_mod.register_text_task("mix_a", corpus / "a.txt")
    b = seqio_mod.register_text_task("mix_b", tmp_path / "z.txt")
    mix = seqio_mod.register_mixture("mix_ab", {a: 1.0, b: 1.0})
    assert mix == "attractor_jax.mix_ab"
    kw = dict(seq_len=16, batch_size=4, seed=1, **P1)
    x = _take(seqio_mod.make_seqio_pipeline(mix, **kw), 20)
    toks = np.concatenate([b_["inputs"].ravel() for b_ in x])
    assert (toks == ord("Z")).mean() > 0.1 and np.isin(
        toks, list(b"the cat")
    ).mean() > 0.1  # both tasks appear
    it = seqio_mod.make_seqio_pipeline(mix, **kw)
    _take(it, 7)
    fresh = seqio_mod.make_seqio_pipeline(mix, **kw)
    fresh.set_state(it.get_state())
    _same(_take(fresh, 5), x[7:12])  # seeded: a fresh mixture restored to batch 7 continues identically
    names = seqio_mod.register_tasks(text={"rt_a": corpus / "a.txt"}, mixtures={"rt_mix": ["rt_a", "mix_b"]})
    assert names == ["attractor_jax.rt_a", "attractor_jax.rt_mix"]
    import seqio

    assert {t.name for t in seqio.get_mixture_or_task("attractor_jax.rt_mix").tasks} == {
        "attractor_jax.rt_a",
        "attractor_jax.mix_b",
    }


def test_unknown_names_and_bad_specs(seqio_mod, corpus, monkeypatch):
    with pytest.raises(ValueError, match="ATTRACTOR_JAX_SEQIO_MODULES"):
        seqio_mod.make_seqio_pipeline("attractor_jax.nope", seq_len=8, batch_size=2, **P1)
    monkeypatch.setenv("ATTRACTOR_JAX_SEQIO_MODULES", "no_such_module_xyz")
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        seqio_mod.get_provider("attractor_jax.nope")
    monkeypatch.delenv("ATTRACTOR_JAX_SEQIO_MODULES")
    with pytest.raises(ValueError, match="has no split 'validation'"):
        seqio_mod.make_seqio_pipeline(
            seqio_mod.register_text_task("t_noval", corpus), split="validation", seq_len=8, batch_size=2, **P1
        )
    with pytest.raises(FileNotFoundError):
        seqio_mod.resolve_seqio_spec("seqio:attractor_jax.text:/no/such/file.txt")
    a = seqio_mod.resolve_seqio_spec(f"seqio:attractor_jax.text:{corpus}", val_fraction=0.1)
    assert a == seqio_mod.resolve_seqio_spec(
        f"seqio:attractor_jax.text:{corpus}", val_fraction=0.1
    )  # stable name
    assert a != seqio_mod.resolve_seqio_spec(f"seqio:attractor_jax.text:{corpus}", val_fraction=0.2)


# --------------------------------------------------------------------------------------------- puzzles


@pytest.fixture(scope="module")
def sudoku_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("seqio_sudoku")
    rows = pz.generate_sudoku(7, min_rating=0, seed=11)
    pz.write_puzzle_csv(d / "train.csv", rows[:4])
    pz.write_puzzle_csv(d / "test.csv", rows[4:])
    return pz.build_sudoku_dataset(d, d / "built", num_aug=2, seed=0)


def test_puzzle_task_gives_the_grain_examples(seqio_mod, sudoku_dataset):
    name = seqio_mod.register_puzzle_task("sudoku_t", sudoku_dataset)
    for split in ("train", "test"):
        ref = make_puzzle_pipeline(sudoku_dataset, split, batch_size=5, shuffle=False, num_epochs=1, **P1)
        grain_batches = list(ref)
        got = list(seqio_mod.make_seqio_puzzle_pipeline(name, split, batch_size=5, shuffle=False, **P1))
        _same(got, grain_batches)  # stored order, the final batch padded (mask False) in both
    # The raw seqio Task: features inputs/targets/puzzle_identifiers, stored order without shuffling.
    import seqio

    ds = seqio.get_mixture_or_task(name).get_dataset(None, split="test", shuffle=False)
    rows = list(ds.as_numpy_iterator())
    assert set(rows[0]) == {"inputs", "targets", "puzzle_identifiers"}
    split = pz.load_puzzle_split(sudoku_dataset, "test")
    np.testing.assert_array_equal(np.stack([r["inputs"] for r in rows]), split.inputs)
    labels = np.asarray(split.labels, np.int32)
    labels[labels == split.metadata.ignore_label_id] = pz.IGNORE_LABEL_ID
    np.testing.assert_array_equal(np.stack([r["targets"] for r in rows]), labels)
    # Shuffled training batches: seeded, resumable.
    kw = dict(batch_size=4, seed=2, **P1)
    a = _take(seqio_mod.make_seqio_puzzle_pipeline(name, **kw), 6)
    it = seqio_mod.make_seqio_puzzle_pipeline(name, **kw)
    _take(it, 3)
    fresh = seqio_mod.make_seqio_puzzle_pipeline(name, **kw)
    fresh.set_state(it.get_state())
    _same(_take(fresh, 3), a[3:])


def test_maze_and_arc_tasks_and_a_puzzle_mixture(seqio_mod, tmp_path):
    src = tmp_path / "maze_csv"
    src.mkdir()
    train = pz.generate_maze(2, seed=3)
    test = pz.generate_maze(1, seed=4, exclude={pz.maze_layout_key(r.question) for r in train})
    pz.write_puzzle_csv(src / "train.csv", train)
    pz.write_puzzle_csv(src / "test.csv", test)
    maze = pz.build_maze_dataset(src, tmp_path / "maze", aug=False)
    rng = np.random.default_rng(0)
    for subset, names in (("training", ["aaa", "bbb"]), ("evaluation", ["ccc"])):
        (tmp_path / "arc_src" / subset).mkdir(parents=True)
        for name in names:
            pairs = []
            for _ in range(3):
                g = rng.integers(0, 10, size=tuple(rng.integers(2, 5, size=2)))
                pairs.append({"input": g.tolist(), "output": np.flipud(g).tolist()})
            (tmp_path / "arc_src" / subset / f"{name}.json").write_text(
                json.dumps({"train": pairs[:2], "test": pairs[2:]})
            )
    arc = pz.build_arc_dataset(tmp_path / "arc_src", tmp_path / "arc", num_aug=1, seed=0)
    names = seqio_mod.register_tasks(puzzles={"maze_t": maze, "arc_t": arc})
    assert names == ["attractor_jax.maze_t", "attractor_jax.arc_t"]
    for name, path in zip(names, (maze, arc)):
        got = list(seqio_mod.make_seqio_puzzle_pipeline(name, "test", batch_size=2, shuffle=False, **P1))
        ref = list(make_puzzle_pipeline(path, "test", batch_size=2, shuffle=False, **P1))
        _same(got, ref)
    # A Mixture of two puzzle tasks with the same vocabulary and length (two views of the maze set).
    seqio_mod.register_puzzle_task("maze_t2", maze)
    mix = seqio_mod.register_mixture("maze_mix", ["maze_t", "maze_t2"])
    b = next(seqio_mod.make_seqio_puzzle_pipeline(mix, batch_size=3, seed=0, **P1))
    assert (
        b["inputs"].shape == (3, 900)
        and b["labels"].shape == (3, 900)
        and b["puzzle_identifiers"].shape == (3,)
    )


# --------------------------------------------------------------------------------------------- trainer


TASK_MODULE = """
import pathlib
from attractor_jax.data import seqio_tasks as st

st.register_text_task("user_corpus", pathlib.Path(__file__).with_name("corpus.txt"), val_fraction=0.2)
"""


def test_trainer_trains_and_resumes_from_a_seqio_task(seqio_mod, corpus, tmp_path, monkeypatch):
    import dataclasses

    from attractor_jax.models import get_config
    from attractor_jax.train.optim import OptimConfig
    from attractor_jax.train.tasks.lm import data_pipelines, validate_run
    from attractor_jax.train.trainer import DataConfig, RunConfig, TrainConfig, train

    # A user's module registers the task; ATTRACTOR_JAX_SEQIO_MODULES names it.
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "corpus.txt").write_text("<|endoftext|>".join(_docs(60, 3)))
    (mod / "my_seqio_tasks.py").write_text(TASK_MODULE)
    monkeypatch.syspath_prepend(str(mod))
    monkeypatch.setenv("ATTRACTOR_JAX_SEQIO_MODULES", "my_seqio_tasks")

    model = get_config("gpt-tiny", d_model=32, n_heads=2, mlp_dim=64, n_layers=1)
    run = RunConfig(
        model=model,
        train=TrainConfig(
            steps=4,
            batch_size=2,
            seq_len=16,
            log_every=1,
            save_every=2,
            eval_batches=1,
            tensorboard=False,
            async_checkpoint=False,
        ),
        optim=OptimConfig(lr=3e-3, muon_lr=3e-3),
        data=DataConfig(path="seqio:attractor_jax.user_corpus", val_fraction=0.0),
    )

    # Interrupted after step 2 (checkpoint), then resumed to step 4.
    wd = tmp_path / "run"
    first = train(run, wd, stop_after=2)
    assert (
        first["step"] == 2 and np.isfinite(first["loss"]) and "val_loss" in first
    )  # the task's validation split
    final = train(run, wd)
    assert final["step"] == 4 and np.isfinite(final["loss"])
    losses = [
        r["loss"] for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert len(losses) == 4 and all(np.isfinite(losses))

    # The trainer consumed exactly the bridge's stream: the iterator state checkpointed at steps 2 and 4 is
    # the state of one uninterrupted iterator after 2 and 4 batches, and the batches after the step-2 state
    # are those the uninterrupted iterator yields as its 3rd and 4th.
    it, val = data_pipelines(run, 0, 1)
    assert len(val()) == 1 and val()[0]["inputs"].shape == (2, 16)
    saved = {
        s: json.loads((wd / "checkpoints" / str(s) / "data" / "process_0-of-1.json").read_text())
        for s in (2, 4)
    }
    uninterrupted = _take(it, 2)
    assert saved[2] == json.loads(json.dumps(it.get_state())) and saved[2]["batches"] == 2
    uninterrupted += _take(it, 2)
    assert saved[4] == json.loads(json.dumps(it.get_state()))
    resumed, _ = data_pipelines(run, 0, 1)
    resumed.set_state(saved[2])
    _same(_take(resumed, 2), uninterrupted[2:])

    # The built-in text spec validates and feeds the trainer; a vocabulary larger than the model's is refused
    # before anything is written.
    spec_run = dataclasses.replace(
        run, data=DataConfig(path=f"seqio:attractor_jax.text:{corpus}", val_fraction=0.1)
    )
    validate_run(spec_run)
    spec_it, spec_val = data_pipelines(spec_run, 0, 1)
    assert next(spec_it)["inputs"].shape == (2, 16) and len(spec_val()) == 1
    small = dataclasses.replace(
        spec_run, model=get_config("gpt-tiny", d_model=32, n_heads=2, mlp_dim=64, n_layers=1, vocab_size=100)
    )
    with pytest.raises(ValueError, match="has 256 tokens but model.vocab_size is 100"):
        train(small, tmp_path / "never")
    assert not (tmp_path / "never").exists()
