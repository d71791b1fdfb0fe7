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
    models, rated = read_ratings(sheet)
    assert models == ["tuned", "base"]
    assert rated == [{"tuned": 5, "base": 1}, {"tuned": 5, "base": 1}, {"tuned": 5, "base": 1}, {"tuned": 2, "base": 1}]
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
    assert read_ratings(sheet)[1] == [{"m": 4.0}]


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
