"""Human review sheet: blinded, shuffled, Excel-readable; filled in and read back to the right models."""

import csv
import json
import math

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval.sheet import import_sheet, key_path, mean_ci, read_ratings, summarize, t95, win_rate, write_sheet

IDS = ["t1", "t2", "t3", "t4"]
OUTPUTS = {"tuned": ["환불", "billing", "shipping", "account"], "base": ["잘 모르겠어요", "I can help", "hmm", "not sure"]}


def fill(sheet, score):
    """A reviewer's ratings: score(model's output) for every cell, found through the visible text only."""
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for letter in "AB":
            row[f"rating_{letter}"] = score(row[f"output_{letter}"])
    with sheet.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sheet_round_trip_unblinds_ratings(tmp_path):
    sheet = tmp_path / "review.csv"
    write_sheet(sheet, IDS, ["환불해 주세요", "p2", "p3", "p4"], ["refund", "billing", "shipping", "account"], OUTPUTS, seed=1)
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and "환불해 주세요".encode() in raw
    header = raw.decode("utf-8-sig").splitlines()[0].split(",")
    assert header == ["id", "prompt", "reference", "output_A", "output_B", "rating_A", "rating_B", "comment"]
    assert "tuned" not in raw.decode("utf-8-sig") and "base" not in header
    key = json.loads(key_path(sheet).read_text(encoding="utf-8"))
    assert {tuple(sorted(v.values())) for v in key["rows"].values()} == {("base", "tuned")}
    assert len({v["A"] for v in key["rows"].values()}) == 2  # the tuned model is not always column A

    tuned_texts = set(OUTPUTS["tuned"])
    fill(sheet, lambda text: "5" if text in tuned_texts and text != "account" else "2" if text in tuned_texts else "1")
    ratings = read_ratings(sheet)
    assert ratings.models == ["tuned", "base"]
    assert ratings.rated == [{"tuned": 5, "base": 1}, {"tuned": 5, "base": 1}, {"tuned": 5, "base": 1}, {"tuned": 2, "base": 1}]
    result = import_sheet(str(sheet))
    assert result["models"]["tuned"]["mean"] == pytest.approx(4.25)
    assert result["pairwise"]["tuned vs base"] == {"win_rate": 1.0, "n": 4}
    assert json.loads((tmp_path / "review.results.json").read_text())["rows"] == 4


def test_import_sheet_command(tmp_path, capsys):
    from tunesmith.cli import main

    sheet = tmp_path / "review.csv"
    write_sheet(sheet, IDS, ["p1", "p2", "p3", "p4"], ["refund", "billing", "shipping", "account"], OUTPUTS, seed=2)
    fill(sheet, lambda text: "4" if text in set(OUTPUTS["tuned"]) else "3")
    assert main(["eval", "import-sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "| tuned | 4 | 4.00 |" in out and "| tuned vs base | 100.0% | 4 |" in out


def test_cp949_and_semicolon_sheets_are_read(tmp_path):
    sheet = tmp_path / "s.csv"
    write_sheet(sheet, ["a"], ["질문"], ["답"], {"m": ["출력"]})
    text = sheet.read_text(encoding="utf-8-sig").replace(",", ";").replace("rating_A;comment\na;질문;답;출력;;", "rating_A;comment\na;질문;답;출력;4;")
    sheet.write_bytes(text.encode("cp949"))
    assert read_ratings(sheet).rated == [{"m": 4.0}]


def test_bad_rating_names_row_and_column(tmp_path):
    sheet = tmp_path / "s.csv"
    write_sheet(sheet, ["a"], ["p"], ["r"], {"m": ["o"]})
    sheet.write_text(sheet.read_text(encoding="utf-8-sig").replace("o,,", "o,good,"), encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"s.csv:2: rating_A: 'good' is not a number"):
        read_ratings(sheet)


def test_confidence_interval_and_win_rate_hand_computed():
    mean, low, high = mean_ci([3.0, 4.0, 5.0])  # sd 1, n 3: half width 4.303 / sqrt(3)
    assert (mean, high - mean) == pytest.approx((4.0, 4.303 / math.sqrt(3)))
    assert mean == pytest.approx((low + high) / 2)
    assert math.isnan(mean_ci([2.0])[1]) and math.isnan(mean_ci([])[0])
    assert t95(1000) == pytest.approx(1.962, abs=1e-3)
    rated = [{"a": 5, "b": 3}, {"a": 2, "b": 2}, {"a": 1, "b": 4}, {"a": 5}]
    assert win_rate(rated, "a", "b") == (0.5, 3)
    assert summarize(["a", "b"], rated)["models"]["a"]["n"] == 4


def test_a_sheet_with_no_rating_yet_is_an_error_not_a_table_of_nan(tmp_path, capsys):
    from tunesmith.cli import main

    sheet = tmp_path / "review.csv"
    write_sheet(sheet, IDS, ["p1", "p2", "p3", "p4"], ["refund", "billing", "shipping", "account"], OUTPUTS, seed=2)
    assert main(["eval", "import-sheet", str(sheet)]) == 2
    assert "no rating filled in yet" in capsys.readouterr().err
    assert not (tmp_path / "review.results.json").exists()


def rated_sheet(tmp_path, cells: dict[tuple[str, str], str]):
    """A sheet of IDS with both outputs rated 3, except `cells`: {(id, column): text}."""
    sheet = tmp_path / "review.csv"
    write_sheet(sheet, IDS, ["p1", "p2", "p3", "p4"], ["refund", "billing", "shipping", "account"], OUTPUTS, seed=2)
    with sheet.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for column in ("rating_A", "rating_B"):
            row[column] = cells.get((row["id"], column), "3")
    with sheet.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return sheet


@pytest.mark.parametrize("cell", ["0", "6", "-1", "5.5", "nan", "inf", "10"])
def test_a_rating_outside_1_to_5_is_an_error_naming_row_and_column(tmp_path, cell, capsys):
    from tunesmith.cli import main

    sheet = rated_sheet(tmp_path, {("t3", "rating_B"): cell})
    assert main(["eval", "import-sheet", str(sheet)]) == 2
    err = capsys.readouterr().err
    assert f"review.csv:4: rating_B: {cell!r} is outside 1-5" in err
    assert not (tmp_path / "review.results.json").exists()


def test_decimal_ratings_within_the_scale_are_kept(tmp_path):
    sheet = rated_sheet(tmp_path, {("t1", "rating_A"): "4,5", ("t2", "rating_A"): "1", ("t2", "rating_B"): "5"})
    values = sorted(v for row in read_ratings(sheet).rated for v in row.values())
    assert values == [1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.5, 5.0]


def test_a_partly_filled_sheet_says_which_rows_and_columns_are_empty(tmp_path, capsys):
    from tunesmith.cli import main

    empty = {("t1", "rating_B"): "", ("t2", "rating_B"): "", ("t3", "rating_B"): "", ("t4", "rating_A"): ""}
    sheet = rated_sheet(tmp_path, empty)
    assert main(["eval", "import-sheet", str(sheet)]) == 0
    captured = capsys.readouterr()
    assert "note: 4 of 8 rating cells filled; not rated:" in captured.err
    assert "  rating_A empty in row 5" in captured.err and "  rating_B empty in rows 2-4" in captured.err
    results = json.loads((tmp_path / "review.results.json").read_text())
    assert results["not_rated"] == {"cells": 4, "lines": {"rating_A": [5], "rating_B": [2, 3, 4]}, "rows_not_in_sheet": []}
    assert sum(m["n"] for m in results["models"].values()) == 4


def test_a_model_left_unrated_shows_dashes_and_valid_json_not_nan(tmp_path, capsys):
    from tunesmith.cli import main

    key = json.loads(key_path(rated_sheet(tmp_path, {})).read_text())
    # Every cell of the base model's outputs empty, wherever the shuffle put them.
    cells = {(row_id, f"rating_{letter}"): "" for row_id, order in key["rows"].items() for letter, m in order.items() if m == "base"}
    sheet = rated_sheet(tmp_path, cells)
    assert main(["eval", "import-sheet", str(sheet)]) == 0
    captured = capsys.readouterr()
    assert "| base | 0 | - | - – - |" in captured.out and "| tuned vs base | - | 0 |" in captured.out
    assert "note: base has no rating at all" in captured.err
    text = (tmp_path / "review.results.json").read_text()
    assert "NaN" not in text and json.loads(text)["models"]["base"]["mean"] is None


def test_a_deleted_rating_column_or_duplicated_row_is_an_error(tmp_path):
    sheet = rated_sheet(tmp_path, {})
    text = sheet.read_text(encoding="utf-8-sig")
    sheet.write_text(text.replace("rating_B", "score_B", 1), encoding="utf-8")
    with pytest.raises(TunesmithError, match="column rating_B missing from the header row"):
        read_ratings(sheet)
    lines = text.splitlines()
    sheet.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"review.csv:6: id 't1' again \(first in row 2\)"):
        read_ratings(sheet)


def test_rows_missing_from_the_sheet_are_reported(tmp_path, capsys):
    sheet = rated_sheet(tmp_path, {})
    lines = sheet.read_text(encoding="utf-8-sig").splitlines()
    sheet.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")  # rows t3 and t4 deleted
    import_sheet(str(sheet))
    assert "2 row(s) of the key file not in the sheet: t3, t4" in capsys.readouterr().err


def test_a_missing_sheet_is_named_before_its_key_file(tmp_path):
    with pytest.raises(TunesmithError, match=r"absent.csv: no such file"):
        read_ratings(tmp_path / "absent.csv")
