"""Text pipeline: sources, tokenizers, packing, shuffling, host sharding, validation, exact resumption."""

import gzip
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from attractor_jax.data import (
    ByteTokenizer,
    make_text_pipeline,
    make_tokenizer,
    resolve_text_files,
    text_corpus_stats,
)

P1 = dict(process_index=0, process_count=1)


def _docs(n=20, seed=0):
    """Documents of varied length with unique, readable content and no NUL bytes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [f"doc{i:03d}:" + "".join(rng.choice(letters, int(rng.integers(1, 40)))) for i in range(n)]


def _write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(batches):
    """The packed rows (seq_len + 1 tokens) of a list of batches, flattened in order."""
    return np.concatenate(
        [np.concatenate([b["inputs"], b["targets"][:, -1:]], 1).reshape(-1) for b in batches]
    )


def _doc_ids(batches):
    """The document ids ("docNNN:") readable in the batches' rows."""
    return set(re.findall(r"doc\d{3}:", bytes(_rows(batches).astype(np.uint8)).decode(errors="replace")))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


@pytest.fixture
def corpus(tmp_path):
    docs = _docs()
    return _write_jsonl(tmp_path / "c.jsonl", docs), docs


# ------------------------------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_roundtrip_eos_and_speed():
    tok = make_tokenizer("byte")
    assert (tok.vocab_size, tok.eos_id) == (256, 0)
    text = "héllo\0 wörld ✓"
    ids = tok.encode(text)
    assert 0 not in ids and all(0 < i < 256 for i in ids)  # NUL removed so id 0 only ever means EOS
    assert tok.decode(ids + [0]) == "héllo wörld ✓"
    big = "The quick brown fox jumps over the lazy dog. " * 23000  # ~1 MB
    t = time.perf_counter()
    flat = tok.encode_documents([big, big])
    assert time.perf_counter() - t < 0.5
    assert flat.shape[0] == 2 * len(big) + 2 and flat[len(big)] == 0 and flat[-1] == 0
    with pytest.raises(ValueError, match="300"):
        tok.decode([300])


def test_make_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'"):
        make_tokenizer("gpt2")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        make_tokenizer(str(tmp_path / "nope.model"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        make_tokenizer(str(tmp_path / "nope.json"))


def test_sentencepiece_tokenizer_pipeline(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece not installed (optional extra 'text')")
    train = tmp_path / "train.txt"
    train.write_text("\n".join(_docs(200)) + "\nthe cat sat on the mat\n" * 50)
    spm.SentencePieceTrainer.train(
        input=str(train),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=64,
        model_type="bpe",
        eos_id=1,
        bos_id=-1,
        pad_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    tok = make_tokenizer(str(tmp_path / "sp.model"))
    assert tok.vocab_size == 64 and tok.eos_id == 1
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"
    it = make_text_pipeline(train, tokenizer=tok, seq_len=16, batch_size=4, seed=0, **P1)
    b = next(it)
    assert b["inputs"].shape == (4, 16) and b["inputs"].max() < 64
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_hf_tokenizers_json_pipeline(tmp_path):
    tk = pytest.importorskip("tokenizers", reason="tokenizers not installed (optional extra 'text')")
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=100, special_tokens=["<unk>", "<|endoftext|>"], show_progress=False
    )
    tok.train_from_iterator(_docs(200) + ["the cat sat on the mat"] * 50, trainer=trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    t = make_tokenizer(str(path))
    assert t.eos_id == 1 and t.vocab_size <= 100
    assert t.decode(t.encode("the cat sat")) == "the cat sat"
    corpus = tmp_path / "c.txt"
    corpus.write_text("<|endoftext|>".join(["the cat sat on the mat"] * 40))
    it = make_text_pipeline(corpus, tokenizer=str(path), seq_len=8, batch_size=2, seed=0, shuffle=False, **P1)
    b = next(it)
    assert (b["inputs"] == t.eos_id).any()  # the separator became EOS between documents
    with pytest.raises(ValueError, match="no end-of-document token"):
        make_tokenizer(str(path), eos_token="</s>")


def test_missing_optional_packages_are_named(tmp_path, monkeypatch):
    for name in ("sentencepiece", "tokenizers", "pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "m.model").write_bytes(b"x")
    (tmp_path / "t.json").write_text("{}")
    pq_path = tmp_path / "d.parquet"
    pq_path.write_bytes(b"x")
    with pytest.raises(ImportError, match="install the 'sentencepiece' package"):
        make_tokenizer(str(tmp_path / "m.model"))
    with pytest.raises(ImportError, match="install the 'tokenizers' package"):
        make_tokenizer(str(tmp_path / "t.json"))
    with pytest.raises(ImportError, match="needs the 'pyarrow' package"):
        text_corpus_stats(pq_path, seq_len=8)


# ------------------------------------------------------------------------------------------ packing


def test_packing_is_the_eos_joined_stream(corpus):
    path, docs = corpus
    T, B = 8, 2
    stream = np.frombuffer(("\0".join(docs) + "\0").encode(), np.uint8).astype(np.int32)
    stats = text_corpus_stats(path, seq_len=T)
    assert (stats.num_documents, stats.num_tokens) == (len(docs), stream.size)
    assert stats.num_rows == -(-stream.size // (T + 1))
    it = make_text_pipeline(path, seq_len=T, batch_size=B, seed=0, shuffle=False, num_epochs=1, **P1)
    assert it.num_batches == stats.num_rows // B
    batches = list(it)
    assert len(batches) == it.num_batches
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in batches])
    for b in batches:
        assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (B, T)
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    # rows are consecutive, non-overlapping windows of the EOS-separated stream (wrapping at the epoch's end)
    full = np.concatenate([stream, stream])[: stats.num_rows * (T + 1)]
    np.testing.assert_array_equal(rows.reshape(-1), full[: rows.size])


def test_shuffled_epoch_loses_no_token(corpus):
    path, docs = corpus
    T = 8
    stats = text_corpus_stats(path, seq_len=T)
    R = stats.num_rows
    it = make_text_pipeline(
        path, seq_len=T, batch_size=R, seed=3, num_epochs=1, **P1
    )  # one batch = one epoch
    (b,) = list(it)
    rows = np.concatenate([b["inputs"], b["targets"][:, -1:]], 1)
    got = np.bincount(rows.reshape(-1), minlength=256)
    want = np.bincount(np.frombuffer(("\0".join(docs) + "\0").encode(), np.uint8), minlength=256)
    assert (got >= want).all() and got.sum() - want.sum() == R * (T + 1) - stats.num_tokens
    assert got[0] >= len(docs)  # an EOS after every document
    (plain,) = list(make_text_pipeline(path, seq_len=T, batch_size=R, shuffle=False, num_epochs=1, **P1))
    assert not np.array_equal(b["inputs"], plain["inputs"])  # the same tokens, in another order


def test_seed_determinism_and_epochs(corpus):
    path, _ = corpus
    kw = dict(seq_len=8, batch_size=4, **P1)
    a = _take(make_text_pipeline(path, seed=1, **kw), 12)
    _same(a, _take(make_text_pipeline(path, seed=1, **kw), 12))
    c = _take(make_text_pipeline(path, seed=2, **kw), 12)
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))
    # epoch 1 reshuffles: its first batch differs from epoch 0's
    it = make_text_pipeline(path, seed=1, **kw)
    per_epoch = it.stats.num_rows // 4
    e0 = next(it)
    _take(it, per_epoch - 1)
    assert not np.array_equal(next(it)["inputs"], e0["inputs"])


# ------------------------------------------------------------------------------------------ state


@pytest.mark.parametrize("prefetch", [0, 3])
def test_get_state_resume_is_exact(corpus, prefetch):
    path, _ = corpus
    kw = dict(seq_len=8, batch_size=4, seed=5, prefetch=prefetch, **P1)
    it = make_text_pipeline(path, **kw)
    _take(it, 7)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 30)  # crosses epoch boundaries
    it2 = make_text_pipeline(path, **kw)
    _take(it2, 2)
    it2.set_state(state)
    _same(expected, _take(it2, 30))


def test_state_from_another_pipeline_is_rejected(corpus):
    path, _ = corpus
    state = make_text_pipeline(path, seq_len=8, batch_size=4, seed=5, **P1).get_state()
    other = make_text_pipeline(path, seq_len=8, batch_size=4, seed=6, **P1)
    with pytest.raises(ValueError, match="seed: saved 5 vs now 6"):
        other.set_state(state)


def test_orbax_checkpoint_manager_roundtrip(corpus, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain
    import jax.numpy as jnp

    path, _ = corpus
    kw = dict(seq_len=8, batch_size=4, seed=7, **P1)
    it = make_text_pipeline(path, **kw)
    _take(it, 5)
    expected = _take(make_text_pipeline(path, **kw), 5 + 6)[5:]
    params = {"w": jnp.arange(4.0)}
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2))
    mngr.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(params), data=grain.checkpoint.CheckpointSave(it)
        ),
    )
    _take(it, 3)  # the trainer keeps going while the async save finishes
    mngr.wait_until_finished()
    mngr.close()

    mngr = ocp.CheckpointManager(tmp_path / "ckpt")
    assert mngr.latest_step() == 5
    fresh = make_text_pipeline(path, **kw)
    restored = mngr.restore(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(params), data=grain.checkpoint.CheckpointRestore(fresh)
        ),
    )
    mngr.close()
    np.testing.assert_array_equal(restored.state["w"], params["w"])
    assert restored.data is fresh
    _same(expected, _take(fresh, 6))


# ------------------------------------------------------------------------------------------ sharding


def test_process_shards_are_disjoint_blocks_of_the_global_batch(corpus):
    path, _ = corpus
    kw = dict(seq_len=8, batch_size=4, seed=11)
    single = _take(make_text_pipeline(path, process_index=0, process_count=1, **kw), 6)
    shards = [_take(make_text_pipeline(path, process_index=p, process_count=2, **kw), 6) for p in range(2)]
    for k in range(6):
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(
                np.concatenate([shards[0][k][key], shards[1][k][key]]), single[k][key]
            )
    # within one epoch the two hosts' rows never coincide (rows are distinct windows of the stream)
    n_epoch = make_text_pipeline(path, process_index=0, process_count=2, **kw).stats.num_rows // 4
    seen = [set() for _ in range(2)]
    for p in range(2):
        for b in _take(make_text_pipeline(path, process_index=p, process_count=2, **kw), n_epoch):
            seen[p] |= {row.tobytes() for row in np.concatenate([b["inputs"], b["targets"][:, -1:]], 1)}
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    # a state saved on 2 hosts resumes on 1 host at the same global batch
    it = make_text_pipeline(path, process_index=1, process_count=2, **kw)
    _take(it, 4)
    one = make_text_pipeline(path, process_index=0, process_count=1, **kw)
    one.set_state(it.get_state())
    _same(single[4:6], _take(one, 2))
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        make_text_pipeline(path, process_index=0, process_count=3, **kw)


# ------------------------------------------------------------------------------------------ splits


def test_validation_split_by_fraction(corpus):
    path, docs = corpus
    kw = dict(seq_len=8, batch_size=2, seed=0, val_fraction=0.2, **P1)
    tr = text_corpus_stats(path, seq_len=8, val_fraction=0.2)
    va = text_corpus_stats(path, seq_len=8, val_fraction=0.2, split="validation")
    full = text_corpus_stats(path, seq_len=8)
    assert tr.num_tokens + va.num_tokens == full.num_tokens
    assert tr.num_documents + va.num_documents == len(docs)  # cut on a document boundary
    assert 0.1 < va.num_tokens / full.num_tokens < 0.3
    val = make_text_pipeline(path, split="validation", **kw)
    assert val.num_batches == va.num_rows // 2  # one pass by default, in order
    train = make_text_pipeline(path, num_epochs=1, **kw)
    held_out, seen = _doc_ids(list(val)), _doc_ids(list(train))
    assert held_out and seen and not (held_out & seen)
    with pytest.raises(ValueError, match="needs val_fraction > 0 or a val_path"):
        make_text_pipeline(path, split="validation", seq_len=8, batch_size=2, **P1)
    with pytest.raises(ValueError, match="split='test'"):
        make_text_pipeline(path, split="test", seq_len=8, batch_size=2, **P1)


def test_single_document_split_and_val_path(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("x" * 999)
    tr = text_corpus_stats(f, seq_len=4, val_fraction=0.1)
    va = text_corpus_stats(f, seq_len=4, val_fraction=0.1, split="validation")
    assert (tr.num_tokens, va.num_tokens) == (900, 100)  # cut inside the only document
    v = tmp_path / "v.txt"
    v.write_text("y" * 50)
    it = make_text_pipeline(f, val_path=v, split="validation", seq_len=4, batch_size=2, **P1)
    assert it.stats.num_tokens == 51 and set(np.unique(next(it)["inputs"])) <= {0, ord("y")}


# ------------------------------------------------------------------------------------------ sources


def test_sources_txt_dir_glob_gz_jsonl_field(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha<|endoftext|>\nbeta<|endoftext|>\n")
    (d / "sub" / "b.jsonl").write_text(
        json.dumps({"body": "gamma"}) + "\n\n" + json.dumps({"body": "delta"}) + "\n"
    )
    with gzip.open(d / "c.txt.gz", "wt") as fh:
        fh.write("epsilon")
    (d / "README.md").write_text("ignored")
    (d / ".hidden.txt").write_text("ignored")
    assert [p.name for p in resolve_text_files(d)] == ["a.txt", "c.txt.gz", "b.jsonl"]
    assert len(resolve_text_files(str(d / "**" / "*.jsonl"))) == 1
    with pytest.raises(ValueError, match="'text'"):
        text_corpus_stats(d, seq_len=4)  # the jsonl file has no 'text' field
    s = text_corpus_stats(d, seq_len=4, text_field="body")
    assert s.num_documents == 5 and s.num_tokens == len("alphabetagammadeltaepsilon") + 5
    it = make_text_pipeline(d, text_field="body", seq_len=4, batch_size=2, shuffle=False, **P1)
    assert ByteTokenizer().decode(next(it)["inputs"][0]) == "alph"
    s2 = text_corpus_stats(d / "a.txt", seq_len=4, doc_separator=None)  # whole file is one document
    assert s2.num_documents == 1


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed (optional extra 'text')")
    import pyarrow.parquet as pq

    docs = _docs(30)
    pq.write_table(pa.table({"text": docs, "n": list(range(30))}), tmp_path / "d.parquet", row_group_size=7)
    s = text_corpus_stats(tmp_path / "d.parquet", seq_len=8)
    assert s.num_documents == 30 and s.num_tokens == sum(len(x) + 1 for x in docs)
    _same(
        _take(make_text_pipeline(tmp_path / "d.parquet", seq_len=8, batch_size=2, seed=0, **P1), 3),
        _take(
            make_text_pipeline(
                _write_jsonl(tmp_path / "d.jsonl", docs), seq_len=8, batch_size=2, seed=0, **P1
            ),
            3,
        ),
    )
    with pytest.raises(ValueError, match="no column 'body'"):
        text_corpus_stats(tmp_path / "d.parquet", seq_len=8, text_field="body")


def test_clear_errors(tmp_path, corpus):
    path, _ = corpus
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        make_text_pipeline(tmp_path / "missing.txt", seq_len=8, batch_size=2, **P1)
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"unsupported text file .*data.csv.*\.jsonl"):
        make_text_pipeline(tmp_path / "data.csv", seq_len=8, batch_size=2, **P1)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="contains no documents"):
        make_text_pipeline(tmp_path / "empty.txt", seq_len=8, batch_size=2, **P1)
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing_here' contains no"):
        make_text_pipeline(tmp_path / "nothing_here", seq_len=8, batch_size=2, **P1)
    for bad in (0, -3, 2.5, "8"):
        with pytest.raises(ValueError, match=f"seq_len={bad!r} is invalid"):
            make_text_pipeline(path, seq_len=bad, batch_size=2, **P1)
    with pytest.raises(ValueError, match="seq_len=100000 is too long"):
        make_text_pipeline(path, seq_len=100_000, batch_size=2, **P1)
    with pytest.raises(ValueError, match="batch_size=10000 is too large"):
        make_text_pipeline(path, seq_len=8, batch_size=10_000, num_epochs=1, **P1)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        make_text_pipeline(tmp_path / "bad.jsonl", seq_len=8, batch_size=2, **P1)


# ------------------------------------------------------------------------------------------ streaming


def test_streaming_local_resume_shards_and_split(tmp_path):
    docs = _docs(60)
    files = [_write_jsonl(tmp_path / f"part{i}.jsonl", docs[i * 20 : (i + 1) * 20]) for i in range(3)]
    kw = dict(seq_len=8, batch_size=4, seed=3, streaming=True, shuffle_buffer=8)
    it = make_text_pipeline(files, **P1, **kw)
    _take(it, 9)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 40)  # crosses an epoch boundary
    it2 = make_text_pipeline(files, **P1, **kw)
    it2.set_state(state)
    _same(expected, _take(it2, 40))
    for b in expected:
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    # one epoch, two hosts: disjoint documents that together cover the corpus
    host = [
        _doc_ids(list(make_text_pipeline(files, process_index=p, process_count=2, num_epochs=1, **kw)))
        for p in range(2)
    ]
    assert not (host[0] & host[1]) and len(host[0] | host[1]) >= len(docs) - 4  # less a dropped partial batch
    # validation by document index: disjoint from train
    vdocs = _doc_ids(list(make_text_pipeline(files, split="validation", val_fraction=0.25, **P1, **kw)))
    tdocs = _doc_ids(list(make_text_pipeline(files, val_fraction=0.25, num_epochs=1, **P1, **kw)))
    assert vdocs and tdocs and not (vdocs & tdocs)


# ------------------------------------------------------------------------------------------ Hugging Face


def test_hf_source_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="install the 'datasets' package"):
        make_text_pipeline("hf://HuggingFaceFW/fineweb-edu/sample-10BT", seq_len=8, batch_size=2, **P1)
    with pytest.raises(ValueError, match="bad Hugging Face dataset spec"):
        make_text_pipeline("hf://justonename", seq_len=8, batch_size=2, **P1)
    with pytest.raises(ValueError, match="can only be streamed"):
        make_text_pipeline("hf://a/b", streaming=False, seq_len=8, batch_size=2, **P1)
    assert text_corpus_stats("hf://a/b", seq_len=8).num_tokens is None


def test_hf_source_unreachable_hub_fails_fast():
    pytest.importorskip("datasets", reason="datasets not installed (optional extra 'hf')")
    code = (
        "from attractor_jax.data import make_text_pipeline\n"
        "try:\n"
        "    make_text_pipeline('hf://HuggingFaceFW/fineweb-edu/sample-10BT', seq_len=8, batch_size=2,"
        " process_index=0, process_count=1)\n"
        "except ConnectionError as e:\n"
        "    print('CLEAR:', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (
        "CLEAR: could not open Hugging Face dataset 'hf://HuggingFaceFW/fineweb-edu/sample-10BT'"
        in out.stdout
    ), (out.stdout + out.stderr)


# ------------------------------------------------------------------------------------------ real data


def test_real_corpora(shared_data):
    text = shared_data / "text"
    s = text_corpus_stats(text / "tinystories_sample.txt", seq_len=64)
    assert s.num_documents > 1  # split on <|endoftext|>
    shakespeare = text / "tinyshakespeare_input.txt"
    tr = text_corpus_stats(shakespeare, seq_len=256, val_fraction=0.1)
    assert tr.num_documents == 1 and tr.num_tokens == 1003856
    it = make_text_pipeline(shakespeare, seq_len=256, batch_size=8, seed=0, val_fraction=0.1, **P1)
    t = time.perf_counter()
    batches = _take(it, 200)
    assert time.perf_counter() - t < 5.0
    assert "the" in ByteTokenizer().decode(batches[0]["inputs"][0])
    val = make_text_pipeline(
        shakespeare, seq_len=256, batch_size=8, val_fraction=0.1, split="validation", **P1
    )
    assert next(val)["inputs"].shape == (8, 256) and val.num_batches == -(-(1115395 - 1003856) // 257) // 8
