"""The paper's evaluations: perplexity per token and per byte by solver depth, and LAMBADA, checked against a
dense oracle (the model's plain forward, log-softmax in float64 by numpy, summed by hand); the CLI's results
files and its bad-input errors."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attractor_jax.cli import main as cli_main
from attractor_jax.data.tokenizers import ByteTokenizer
from attractor_jax.eval.lambada import _rows, lambada, read_lambada, split_last_word, target_split
from attractor_jax.eval.perplexity import perplexity
from attractor_jax.models import check_depths, get_config

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "lambada_tiny.jsonl"
TINY = dict(d_model=32, n_heads=2, mlp_dim=64, n_backbone_layers=1)
L = 16  # context window of the perplexity tests


ROWS = 12  # the oracle scores every sequence in one [ROWS, L] call per depth


def write_run(wd: pathlib.Path, preset: str, data: pathlib.Path, checkpoint: bool = True, edit=None,
              **model) -> pathlib.Path:
    """A run directory of ``preset``: config.json and, when asked, a step-0 checkpoint whose parameters
    ``edit(params)`` may change. Nothing is trained: only the evaluation path is under test."""
    import dataclasses

    from attractor_jax.train.checkpoint import Checkpointer
    from attractor_jax.train.config import DataConfig, RunConfig, TrainConfig
    from attractor_jax.train.rundir import RunDirectory
    from attractor_jax.train.tasks import make_task

    run = RunConfig.for_model(get_config(preset, **model), data=DataConfig(path=str(data), val_fraction=0.1),
                              train=TrainConfig(seq_len=L, batch_size=4, eval_depths=(0,), tensorboard=False))
    with RunDirectory(wd).session(run.to_dict()):
        if checkpoint:
            state = jax.jit(make_task(run, validate=False).init)()
            if edit is not None:
                state = dataclasses.replace(state, params=edit(state.params))
            ck = Checkpointer(wd, async_save=False)
            ck.save(0, state, None, {"step": 0}, force=True)
            ck.close()
    return wd


def perturb(params):
    """Every parameter moved off its initial value (the head's zero-initialised output projections would
    otherwise make every depth read out the same state). Such a model mostly predicts its input byte again;
    with the tied embedding of " " set to that of "e" (and "e" scaled up) it predicts "e" after a space and
    after an "e", so last-word accuracy has hits to count."""
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    table = params["embed"]["embedding"][...]
    params["embed"]["embedding"][...] = table.at[ord(" ")].set(table[ord("e")]).at[ord("e")].multiply(2.0)
    return params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An attractor run (whose model the oracle tests score, so the CLI reuses their compiled scorer) and a
    GPT's config alone: its cases fail before any checkpoint is read."""
    root = tmp_path_factory.mktemp("runs")
    text = root / "text.txt"
    text.write_text("To be, or not to be, that is the question. " * 4)
    return {"attractor": write_run(root / "att", "attractor-tiny", text, edit=perturb, **TINY),
            "gpt": write_run(root / "gpt", "gpt-tiny", text, checkpoint=False, n_layers=1),
            "text": text, "root": root}


@pytest.fixture(scope="module")
def model(runs):
    from attractor_jax.train.trainer import load_model

    return load_model(runs["attractor"])[0]


@pytest.fixture(scope="module")
def forward(model):
    """The oracle: the model's plain forward on up to ROWS unpadded sequences of at most L tokens, right-filled
    with an arbitrary byte (the solve is causal, so the fill cannot reach them), giving float64
    log-probabilities and per-token f-evaluations per sequence."""
    fn = jax.jit(lambda x, d: model(x, max_iter=d), static_argnums=1)

    def run(seqs, depth):
        x = np.full((ROWS, L), 7, np.int32)
        for i, s in enumerate(seqs):
            x[i, :len(s)] = s
        logits, aux = fn(jnp.asarray(x), depth)
        logits = np.asarray(logits, np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        it = np.asarray(aux["iterations"], np.float64)
        return [(logp[i, :len(s)], it[i, :len(s)]) for i, s in enumerate(seqs)]

    return run


def test_perplexity_per_token_and_byte_matches_a_dense_oracle(model, forward, tmp_path):
    short = "héllo wö"  # 10 UTF-8 bytes: one partial window
    long = ("The quick brown fox jumps over a lazy dog " * 2)[:48]  # 48 bytes: three full windows
    (tmp_path / "a.txt").write_text(short)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": long}) + "\n")
    depths = [0, None]
    res = perplexity(model, ByteTokenizer(), str(tmp_path), seq_len=L, depths=depths, batch_size=4,
                     progress=False)
    assert (res["documents"], res["tokens"], res["bytes"]) == (2, 58, 58)
    windows = []  # (inputs, targets): each document after one EOS, cut every L tokens
    for text in (short, long):
        seq = [0, *text.encode("utf-8")]
        windows += [(seq[s:s + L], seq[s + 1:s + L + 1]) for s in range(0, len(seq) - 1, L)]
    for depth, label in zip(depths, ("0", "full")):
        scored = forward([x for x, _ in windows], depth)
        nats = -sum(logp[i, t] for (logp, _), (_, y) in zip(scored, windows) for i, t in enumerate(y))
        evals = sum(it[:len(y)].sum() for (_, it), (_, y) in zip(scored, windows))
        r = res["depths"][label]
        np.testing.assert_allclose(r["nats"], nats, rtol=1e-5)
        np.testing.assert_allclose(r["loss"], nats / 58, rtol=1e-5)
        np.testing.assert_allclose(r["ppl"], math.exp(nats / 58), rtol=1e-5)
        np.testing.assert_allclose(r["bits_per_byte"], nats / 58 / math.log(2), rtol=1e-5)
        np.testing.assert_allclose(r["byte_ppl"], math.exp(nats / 58), rtol=1e-5)
        np.testing.assert_allclose(r["f_evals_per_token"], evals / 58, rtol=1e-6)
    assert res["depths"]["0"]["f_evals_per_token"] == 0.0 < res["depths"]["full"]["f_evals_per_token"]
    assert res["depths"]["0"]["loss"] != res["depths"]["full"]["loss"]  # the depths really differ


def test_lambada_target_is_the_last_word():
    assert split_last_word("the cat sat\ton the  mat \n") == ("the cat sat\ton the  ", "mat")
    tok = ByteTokenizer()
    ids, k = target_split(tok, "Ein Wort über Bäume ")
    assert tok.decode(ids[k:]) == "Bäume" and len(ids) - k == 6
    with pytest.raises(ValueError, match="last word"):
        split_last_word("   lonely  ")
    (row_x, row_y), n = _rows(tok, ["a " * 20 + "end"], seq_len=8)[0]  # a long context loses its oldest tokens
    assert n == 3 and bytes(row_x.tolist()) == b"a a a en" and bytes(row_y.tolist()) == b" a a end"


def test_lambada_target_of_a_tokenizer_that_merges_the_space(tmp_path):
    """A byte-level BPE puts the space into the word's first token: the target is " word", as lm-eval splits."""
    tokenizers = pytest.importorskip("tokenizers")
    from attractor_jax.data.tokenizers import HFTokenizer

    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the lamp and the harbour lamp glow"] * 20, trainer)
    tk.save(str(tmp_path / "tok.json"))
    tok = HFTokenizer(tmp_path / "tok.json")
    ids, k = target_split(tok, "by the glow of the lamp")
    assert tok.decode(ids[k:]) == " lamp" and tok.decode(ids[:k]) == "by the glow of the"


def test_lambada_matches_a_dense_oracle(model, forward):
    texts = read_lambada(FIXTURE)
    assert len(texts) == 12
    # Our sentences (misses) and some whose last word is "e" or "ee", which the model predicts (hits).
    texts = texts[:6] + [split_last_word(t)[0] + w for t in texts[6:] for w in ("e", "ee")][:ROWS - 6]
    res = lambada(model, ByteTokenizer(), texts, seq_len=L, depths=[0, None], batch_size=4, progress=False)
    # Each example: the last L tokens of EOS + text as inputs; the word's bytes are the last targets.
    seqs = [[0, *t.encode("utf-8")][-(L + 1):] for t in texts]
    words = [split_last_word(t)[1].encode("utf-8") for t in texts]
    for depth, label in ((0, "0"), (None, "full")):
        word_nats, hits = [], []
        scored = forward([s[:-1] for s in seqs], depth)
        for (logp, _), s, w in zip(scored, seqs, words):
            pos = range(L - len(w), L)  # the positions that predict the word's bytes
            word_nats.append(-sum(logp[p, s[p + 1]] for p in pos))
            hits.append(all(np.argmax(logp[p]) == s[p + 1] for p in pos))
        evals = np.mean(np.concatenate([it for _, it in scored]))
        r = res["depths"][label]
        np.testing.assert_allclose(r["ppl"], math.exp(np.mean(word_nats)), rtol=1e-5)
        np.testing.assert_allclose(r["ppl_per_token"], math.exp(np.sum(word_nats) / sum(map(len, words))), rtol=1e-5)
        assert r["acc"] == pytest.approx(np.mean(hits))
        np.testing.assert_allclose(r["f_evals_per_token"], evals, rtol=1e-6)
    assert res["target_tokens"] == sum(map(len, words))
    assert 0 < res["depths"]["full"]["acc"] < 1, "the examples must include hits and misses"


def test_gpt_has_no_depth_to_vary():
    gpt = get_config("gpt-tiny", n_layers=1)
    assert check_depths(gpt, [None]) == [None]
    with pytest.raises(ValueError, match="gpt model has no solver"):
        check_depths(gpt, [0, None])


def test_cli_writes_results_and_one_table(runs, capsys):
    wd = runs["attractor"]
    assert cli_main(["eval", "--workdir", str(wd), "--task", "lambada", "--data", str(FIXTURE),
                     "--max-iter", "0,full", "--max-docs", "4"]) == 0
    out = capsys.readouterr().out
    res = json.loads((wd / "eval" / "lambada-lambada_tiny.json").read_text())
    assert res["examples"] == 4 and list(res["depths"]) == ["0", "full"] and res["step"] == 0
    assert "LAMBADA" in out and out.count("\n  ") == 3  # header + one row per depth
    r = res["depths"]["full"]
    assert r["ppl"] == pytest.approx(math.exp(r["nats_per_word"]))
    assert cli_main(["eval", "--workdir", str(wd), "--data", str(runs["text"]), "--max-iter", "full"]) == 0
    res = json.loads((wd / "eval" / "perplexity-text.json").read_text())
    assert list(res["depths"]) == ["full"] and res["depths"]["full"]["f_evals_per_token"] > 0
    assert res["tokens"] == res["bytes"] == len(runs["text"].read_text()) and res["documents"] == 1


def test_cli_bad_input_is_one_error_and_writes_nothing(runs, capsys):
    root, att, gpt = runs["root"], runs["attractor"], runs["gpt"]
    (root / "empty.txt").write_text("  \n")
    (root / "notext.jsonl").write_text('{"text": "a fine line"}\n{"txt": "oops"}\n')
    (root / "oneword.jsonl").write_text('{"text": "alone"}\n')
    cases = [
        (att, ["--data", str(root / "missing.txt")], "does not exist"),
        (att, ["--data", str(root / "empty.txt")], "no text to score"),
        (att, ["--task", "lambada", "--data", str(root / "notext.jsonl")], "notext.jsonl:2"),
        (att, ["--task", "lambada", "--data", str(root / "oneword.jsonl")], "last word"),
        (att, ["--task", "lambada"], "needs --data"),
        (att, ["--data", str(runs["text"]), "--max-iter", "0,x"], "--max-iter"),
        (gpt, ["--data", str(runs["text"]), "--max-iter", "0,full"], "no solver"),
        (gpt, ["--max-iter", "1"], "no solver"),  # the validation-loss evaluation refuses it too
    ]
    for wd, extra, message in cases:
        before = sorted(p.name for p in wd.rglob("*"))
        assert cli_main(["eval", "--workdir", str(wd), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
        assert sorted(p.name for p in wd.rglob("*")) == before
