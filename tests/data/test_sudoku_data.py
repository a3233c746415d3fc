"""`attractor-jax data sudoku` / `data generate-sudoku` (and generate-maze's bar): every CSV row is checked, bad
rows are reported by CSV line in one `error:` line with nothing written, duplicates need --dedupe, and the
generator never runs unbounded.

The oracles are hand-made grids whose faults are visible by eye, not re-derivations of the checking code."""

import io
import json
import time

import numpy as np
import pytest

from attractor_jax.cli import main
from attractor_jax.data import puzzles as pz
from attractor_jax.progress import Progress

# The Wikipedia sudoku and its solution.
QUESTION = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLVED = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def _relabel(grid: str) -> str:
    """Digits d -> d % 9 + 1 (blanks kept): another valid puzzle/solution pair."""
    return "".join(ch if ch == "." else str(int(ch) % 9 + 1) for ch in grid)


def _set(grid: str, cell: int, ch: str) -> str:
    return grid[:cell] + ch + grid[cell + 1:]


Q2, A2 = _relabel(QUESTION), _relabel(SOLVED)
# Row 0 of SOLVED is 534678912; cell 2 (a 4, blank in QUESTION) becomes a second 5: it agrees with every given.
TWO_FIVES = _set(SOLVED, 2, "5")
ROWS_ONLY = "123456789" * 9  # every row is 1..9, every column a single digit repeated
# cyclic shifts: every row and column holds 1..9, the boxes do not
LATIN = "".join("".join(str((r + c) % 9 + 1) for c in range(9)) for r in range(9))


def _write(path, rows, blank_line_after=None):
    """A CSV in the official layout, written by hand (optionally with an empty line after data row k)."""
    lines = ["source,question,answer,rating"]
    for k, (q, a) in enumerate(rows):
        lines.append(f"hand,{q},{a},0")
        if blank_line_after == k:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    _write(d / "train.csv", [(QUESTION, SOLVED), (Q2, A2)])
    _write(d / "test.csv", [(QUESTION, SOLVED)])
    return d


def _fails(capsys, tmp_path, args):
    """Run the CLI; expect status 2, exactly one `error:` line on stderr, and nothing new under tmp_path."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no output, no temp left
    return err


# ----------------------------------------------------------------------------------------------------
# The hand-made oracles themselves
# ----------------------------------------------------------------------------------------------------


def test_the_hand_made_grids_are_what_they_claim():
    digits = set("123456789")
    solved = np.array(list(SOLVED)).reshape(9, 9)
    for units in (solved, solved.T, solved.reshape(3, 3, 3, 3).swapaxes(1, 2).reshape(9, 9)):
        assert all(set(u) == digits for u in units)
    assert all(q in (".", a) for q, a in zip(QUESTION, SOLVED))  # SOLVED extends QUESTION
    assert TWO_FIVES[:9] == "535678912" and QUESTION[2] == "."
    assert all(q in (".", a) for q, a in zip(QUESTION, TWO_FIVES))  # ... and so does TWO_FIVES
    latin = np.array(list(LATIN)).reshape(9, 9)
    assert all(set(u) == digits for u in latin) and all(set(u) == digits for u in latin.T)
    assert set(latin[:3, :3].reshape(-1)) != digits


# ----------------------------------------------------------------------------------------------------
# Library: check_sudoku_rows / check_sudoku_csv
# ----------------------------------------------------------------------------------------------------


def test_check_accepts_valid_rows_and_returns_digits():
    rows = [pz.PuzzleRow("h", QUESTION, SOLVED, 3), pz.PuzzleRow("h", Q2, A2, 7)]
    data = pz.check_sudoku_rows(rows)
    assert data.dropped_duplicates == 0 and list(data.ratings) == [3, 7]
    assert "".join(map(str, data.answers[0])) == SOLVED
    assert "".join("." if v == 0 else str(v) for v in data.questions[1]) == Q2


@pytest.mark.parametrize("answer, fault", [
    (TWO_FIVES, "row 1 of 9 holds 5 more than once and lacks 4"),
    (ROWS_ONLY, "column 1 of 9 holds 1 more than once"),
    (LATIN, "box 1 of 9 holds"),
], ids=["two-5s-in-a-row", "columns-repeat", "boxes-repeat"])
def test_check_rejects_an_unsolved_answer_that_agrees_with_the_givens(answer, fault):
    question = QUESTION if answer == TWO_FIVES else "." * 81
    rows = [pz.PuzzleRow("h", Q2, A2, 0), pz.PuzzleRow("h", question, answer, 0)]
    with pytest.raises(ValueError) as e:
        pz.check_sudoku_rows(rows, where="f.csv")
    msg = str(e.value)
    assert msg.startswith("f.csv: 1 of 2 rows fail") and "\n" not in msg
    assert "not a solved sudoku" in msg and "(CSV line 3)" in msg and fault in msg
    assert "disagrees" not in msg


def test_check_rejects_an_answer_that_contradicts_a_given():
    rows = [pz.PuzzleRow("h", QUESTION, SOLVED, 0), pz.PuzzleRow("h", QUESTION, A2, 0)]  # A2 is solved
    with pytest.raises(ValueError, match=r"disagrees with a given of the question: 1 row \(CSV line 3\)") as e:
        pz.check_sudoku_rows(rows)
    assert "not a solved sudoku" not in str(e.value)


def test_check_lists_the_first_lines_and_the_count():
    rows = [pz.PuzzleRow("h", QUESTION, TWO_FIVES, 0)] * 7 + [pz.PuzzleRow("h", "x" * 81, SOLVED[:80], 0)]
    with pytest.raises(ValueError) as e:
        pz.check_sudoku_rows(rows, dedupe=True)
    msg = str(e.value)
    assert "8 of 8 rows fail" in msg
    assert "7 rows (CSV lines 2, 3, 4, 5, 6, ... (2 more))" in msg
    assert "question is not 81 characters" in msg and "answer is not 81 characters" in msg


def test_check_duplicates_are_an_error_unless_dedupe():
    rows = [pz.PuzzleRow("h", q, a, 0) for q, a in
            [(QUESTION, SOLVED), (Q2, A2), (QUESTION.replace(".", "0"), SOLVED), (Q2, A2)]]
    with pytest.raises(ValueError) as e:
        pz.check_sudoku_rows(rows)
    msg = str(e.value)  # '.' and '0' blanks are the same question
    assert "question repeats an earlier one" in msg and "2 rows (CSV lines 4, 5)" in msg
    assert "first: line 4 repeats line 2" in msg and "--dedupe" in msg
    data = pz.check_sudoku_rows(rows, dedupe=True)
    assert data.dropped_duplicates == 2 and len(data.questions) == 2
    assert ["".join(map(str, a)) for a in data.answers] == [SOLVED, A2]


def test_check_same_question_with_two_answers_is_an_error_even_with_dedupe():
    blank = "." * 81  # both answers are solved grids that extend it: the "puzzle" has several solutions
    rows = [pz.PuzzleRow("h", blank, SOLVED, 0), pz.PuzzleRow("h", blank, A2, 0)]
    with pytest.raises(ValueError, match=r"different answer \(several solutions\): 1 row \(CSV line 3\)"):
        pz.check_sudoku_rows(rows, dedupe=True)


def test_check_csv_cites_file_lines_past_empty_lines(tmp_path):
    f = _write(tmp_path / "t.csv", [(QUESTION, SOLVED), (Q2, A2), (QUESTION, TWO_FIVES)], blank_line_after=0)
    assert f.read_text().splitlines()[4].endswith(TWO_FIVES + ",0")  # the bad row is on line 5
    with pytest.raises(ValueError, match=r"t\.csv: .*\(CSV line 5\), first: line 5 row 1 of 9"):
        pz.check_sudoku_csv(f)


# ----------------------------------------------------------------------------------------------------
# CLI: data sudoku
# ----------------------------------------------------------------------------------------------------


def test_cli_builds_a_valid_csv(src, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "sudoku", "--source", str(src), "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    tr = np.load(out / "train" / "all__labels.npy")
    assert [pz.sudoku_to_string(x, encoded=True) for x in tr] == [SOLVED, A2]
    assert json.loads((out / "builder.json").read_text())["dropped_duplicates"] == {"train": 0, "test": 0}


def test_cli_rejects_a_repeated_digit_in_an_answer_row(src, tmp_path, capsys):
    # the bad row blanks the first given (a 5) so that its question is not a repeat of line 2
    _write(src / "test.csv", [(QUESTION, SOLVED), (Q2, A2), (QUESTION.replace("5", ".", 1), TWO_FIVES)])
    err = _fails(capsys, tmp_path, ["data", "sudoku", "--source", str(src), "--output", str(tmp_path / "o")])
    assert "test.csv: 1 of 3 rows fail validation, nothing written" in err
    assert "answer is not a solved sudoku" in err and "(CSV line 4)" in err and "row 1 of 9" in err


def test_cli_rejects_an_answer_that_contradicts_a_given(src, tmp_path, capsys):
    _write(src / "train.csv", [(QUESTION, SOLVED), (Q2, SOLVED)])
    err = _fails(capsys, tmp_path, ["data", "sudoku", "--source", str(src), "--output", str(tmp_path / "o")])
    assert "train.csv" in err and "disagrees with a given of the question: 1 row (CSV line 3)" in err


def test_cli_duplicates_fail_or_are_dropped_with_dedupe(src, tmp_path, capsys):
    _write(src / "train.csv", [(QUESTION, SOLVED), (Q2, A2), (QUESTION, SOLVED), (QUESTION, SOLVED)])
    out = tmp_path / "o"
    err = _fails(capsys, tmp_path, ["data", "sudoku", "--source", str(src), "--output", str(out)])
    assert "question repeats an earlier one" in err and "(CSV lines 4, 5)" in err and "--dedupe" in err
    assert main(["data", "sudoku", "--source", str(src), "--output", str(out), "--dedupe"]) == 0
    assert "dropped 2 later duplicate puzzle(s) (train 2, test 0)" in capsys.readouterr().out
    assert pz.load_puzzle_metadata(out, "train").total_puzzles == 2


# ----------------------------------------------------------------------------------------------------
# Generators: bounded, with a progress bar
# ----------------------------------------------------------------------------------------------------


def test_generator_rejects_an_unreachable_rating_up_front():
    t0 = time.time()
    with pytest.raises(ValueError, match="min_rating=1 is unreachable with blanks=4"):
        pz.generate_sudoku(2, blanks=4, min_rating=1)
    assert time.time() - t0 < 1
    assert all(r.rating == 0 for r in pz.generate_sudoku(2, blanks=4, min_rating=0))
    with pytest.raises(ValueError, match="max_attempts"):
        pz.generate_sudoku(1, max_attempts=0)


def test_generator_gives_up_after_max_attempts():
    t0 = time.time()
    with pytest.raises(ValueError) as e:
        pz.generate_sudoku(2, blanks=30, min_rating=10, max_attempts=20)
    msg = str(e.value)
    assert "reached 0 of 2 puzzles with 30 blanks rated >= 10" in msg and "none of 20 random grids" in msg
    assert "highest rating seen: 0" in msg and "--max-attempts" in msg
    assert time.time() - t0 < 10


def test_generator_with_workers_gives_up_and_reports_the_count_reached():
    t0 = time.time()
    with pytest.raises(ValueError, match=r"reached \d of 3 puzzles with 30 blanks rated >= 10"):
        pz.generate_sudoku(3, blanks=30, min_rating=10, max_attempts=10, workers=2)
    assert time.time() - t0 < 60  # spawning two interpreters dominates; the draws take well under a second


def test_cli_generator_fails_quickly_with_a_clear_message(tmp_path, capsys):
    t0 = time.time()
    args = ["data", "generate-sudoku", "--count", "2", "--blanks", "30", "--workers", "1",
            "--max-attempts", "20"]
    err = _fails(capsys, tmp_path, args + ["--output", str(tmp_path / "g.csv")])
    assert time.time() - t0 < 10
    assert "gave up generating sudokus: reached 0 of 2 puzzles with 30 blanks rated >= 10" in err
    err = _fails(capsys, tmp_path, ["data", "generate-sudoku", "--count", "2", "--blanks", "3",
                                    "--min-rating", "2", "--output", str(tmp_path / "g.csv")])
    assert "unreachable with blanks=3" in err


@pytest.mark.slow
def test_cli_generator_default_attempts_end_the_once_endless_command(tmp_path, capsys):
    t0 = time.time()  # `--count 2 --blanks 30` with the default --min-rating 10 used to run forever
    err = _fails(capsys, tmp_path, ["data", "generate-sudoku", "--count", "2", "--blanks", "30",
                                    "--workers", "1", "--output", str(tmp_path / "g.csv")])
    assert "none of 1000 random grids" in err and time.time() - t0 < 120


def test_generators_show_a_progress_bar(tmp_path, capsys):
    sd = tmp_path / "s.csv"
    assert main(["data", "generate-sudoku", "--count", "2", "--blanks", "20", "--min-rating", "0",
                 "--workers", "1", "--output", str(sd)]) == 0
    out = capsys.readouterr().out
    assert "[........................] 0/2 sudokus" in out and "[########################] 2/2 sudokus" in out
    assert len(pz.read_puzzle_csv(sd)) == 2
    mz = tmp_path / "m.csv"
    assert main(["data", "generate-maze", "--count", "2", "--size", "8", "--min-path", "8", "--workers", "1",
                 "--output", str(mz)]) == 0
    assert "2/2 mazes" in capsys.readouterr().out
    assert main(["data", "generate-sudoku", "--count", "1", "--blanks", "20", "--min-rating", "0",
                 "--workers", "1", "--no-progress", "--output", str(tmp_path / "q.csv")]) == 0
    assert "[" not in capsys.readouterr().out


def test_progress_bar_rewrites_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    bar = Progress(3, "things", stream=s)
    for _ in range(3):
        bar.update()
    bar.close()
    text = s.getvalue()
    assert text.startswith("\r[") and "3/3 things" in text and text.endswith("\n") and text.count("\n") == 1
    quiet = io.StringIO()
    bar = Progress(3, "things", stream=quiet, enabled=False)
    bar.update()
    bar.close()
    assert quiet.getvalue() == ""
