"""The helpers the data modules share: argument checks, the LRU cache, the unique-row generator loop, the
layout check of writer and reader."""

import dataclasses

import numpy as np
import pytest

from attractor_jax.data import puzzles as pz
from attractor_jax.data.common import LruCache, check_int, local_batch_size
from attractor_jax.data.puzzles.common import Draw, SplitArrays, draw_unique_rows, write_dataset


def test_check_int_and_local_batch_size():
    assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3), 1)) is int
    assert check_int("n", None, 1, allow_none=True) is None
    for bad in (True, 0, 1.0, None):
        with pytest.raises(ValueError, match=r"n=.* is invalid: expected an integer >= 1"):
            check_int("n", bad, 1)
    assert local_batch_size(8, 4) == 2
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        local_batch_size(8, 3)


def test_lru_cache_keeps_the_most_recently_used():
    made = []

    def make(key):
        made.append(key)
        return key * 10

    cache = LruCache(2)
    assert [cache.get(k, lambda k=k: make(k)) for k in (1, 2, 1, 3, 1, 2)] == [10, 20, 10, 30, 10, 20]
    assert made == [1, 2, 3, 2]  # 1 was used again before 3 came, so 2 was the one dropped


def _draw(job):
    """Row `index` keyed by keys[index][attempt] (the last key once they run out); None gives up."""
    seed, index, attempt, keys = job
    key = keys[index][min(attempt, len(keys[index]) - 1)]
    if key is None:
        return Draw(None, None, 7, None)
    return Draw(f"q{seed}-{index}-{attempt}", "a", attempt, key)


def _gave_up(reached, index, rating, repeated):
    return f"reached {reached}, row {index}, rating {rating}, repeated {repeated}"


def _draw_rows(keys, **kw):
    kw = {"exclude": (), "workers": 1, "progress": False, "gave_up": _gave_up, **kw}
    return draw_unique_rows(_draw, (keys,), len(keys), seed=5, source="src", what="rows", **kw)


def test_draw_unique_rows_redraws_taken_and_excluded_keys_in_index_order():
    rows = _draw_rows((("a",), ("a", "b"), ("c", "d")), exclude={"c"})
    assert [(r.source, r.question, r.rating) for r in rows] == [
        ("src", "q5-0-0", 0), ("src", "q5-1-1", 1), ("src", "q5-2-1", 1)
    ]


def test_draw_unique_rows_gives_up_with_one_message():
    with pytest.raises(ValueError, match="reached 0, row 0, rating 7, repeated False"):
        _draw_rows(((None,), ("b",)))
    with pytest.raises(ValueError, match="reached 2, row 1, rating 1, repeated True"):
        _draw_rows((("a",), ("a", "a", "b"), ("c",)), max_redraws=1)
    assert [r.question for r in _draw_rows((("a",), ("a", "a", "b")), max_redraws=2)] == ["q5-0-0", "q5-1-2"]


def test_one_layout_check_for_writer_and_reader(tmp_path):
    x = np.ones((3, 4), np.uint8)
    good = SplitArrays(x, x, np.zeros(3, np.int32), np.arange(4, dtype=np.int32), np.array([0, 3], np.int32))
    bad = dataclasses.replace(good, puzzle_indices=np.array([0, 2, 1, 3], np.int32))
    assert good.fault(4) is None
    assert bad.fault(4) == "puzzle_indices must rise strictly from 0 to 3 over 3 puzzles"
    assert good.fault(5) == "inputs (3, 4) / labels (3, 4) do not match seq_len=5"
    kw = dict(vocab_size=2, seq_len=4, identifiers=["<blank>"], builder={"builder": "test"})
    with pytest.raises(AssertionError, match="puzzle_indices"):
        write_dataset(tmp_path / "bad", {"train": bad}, **kw)
    assert not (tmp_path / "bad").exists()
    out = write_dataset(tmp_path / "ds", {"train": good}, **kw)
    np.save(out / "train" / "all__group_indices.npy", np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match=r"train: group_indices must rise strictly from 0 to 3"):
        pz.load_puzzle_split(out, "train")
