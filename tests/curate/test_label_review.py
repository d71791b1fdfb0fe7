import csv
import json

import pytest

from tests.curate.conftest import read, use_fake_ner, use_fake_translators, write
from tunesmith.cli import main

# The verb needs its extra (dev includes it); without it these are skipped, saying so.
pytest.importorskip("gliner", reason="pip install 'tunesmith[label]'")
pytest.importorskip("rapidfuzz", reason="pip install 'tunesmith[label]'")

TICKETS = [
    {"id": "t1", "prompt": "김민수입니다. 어제 갤럭시 S24를 주문했는데 아직 안 왔어요.", "completion": "shipping"},
    {"id": "t2", "prompt": 'Sarah Lee here: "Pixel 8" arrived broken, order A-1234, and A-1234 again.', "completion": "returns"},
    {"id": "t3", "prompt": "Kim Minsu wants a refund.", "completion": "billing"},
]
PLANTED = {"김민수": ("person", 0.93), "갤럭시 S24": ("product", 0.62), "Sarah Lee": ("person", 0.88), "Pixel 8": ("product", 0.81),
           "A-1234": ("order", 0.55), "Kim Minsu": ("person", 0.95)}
LABELS = "person,product,order"


@pytest.fixture
def labelled(tmp_path, monkeypatch):
    """The tickets labelled with a review sheet (t1 and t2 have an entity under 0.7; t3 does not)."""
    use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS)
    assert main(["data", "label", str(source), "--field", "prompt", "--labels", LABELS, "--review-sheet", str(tmp_path / "review.csv"),
                 "--out", str(tmp_path / "labelled.jsonl")]) == 0
    return tmp_path


def sheet(folder) -> list[dict]:
    with (folder / "review.csv").open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def save(folder, lines: list[dict]) -> None:
    with (folder / "review.csv").open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "entity", "label", "start", "end", "score", "keep", "note"])
        writer.writeheader()
        writer.writerows(lines)


def import_sheet(folder, *extra) -> int:
    return main(["data", "label", "import-sheet", str(folder / "review.csv"), "--out", str(folder / "reviewed.jsonl"), *map(str, extra)])


def test_the_sheet_holds_every_entity_of_the_doubtful_rows_and_opens_in_excel(labelled):
    raw = (labelled / "review.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,text,entity,label,start,end,score,keep,note\r\n")
    lines = sheet(labelled)
    assert [(line["id"], line["entity"], line["label"], line["start"], line["end"], line["keep"], line["note"]) for line in lines] == [
        ("t1", "김민수", "person", "0", "3", "yes", ""), ("t1", "갤럭시 S24", "product", "11", "18", "yes", "score under 0.7"),
        ("t2", "Sarah Lee", "person", "0", "9", "yes", ""), ("t2", "Pixel 8", "product", "17", "24", "yes", ""),
        ("t2", "A-1234", "order", "48", "54", "yes", "score under 0.7"), ("t2", "A-1234", "order", "60", "66", "yes", "score under 0.7")]
    assert lines[2]["text"] == TICKETS[1]["prompt"]  # quotes and commas survive
    key = json.loads((labelled / "review.key.json").read_text(encoding="utf-8"))
    assert key["rows"] == ["t1", "t2"] and key["labels"] == ["person", "product", "order"] and key["field"] == "prompt"


def test_an_untouched_sheet_confirms_its_rows_and_leaves_the_others(labelled):
    assert import_sheet(labelled) == 0
    before, after = read(labelled / "labelled.jsonl"), read(labelled / "reviewed.jsonl")
    for old, new in zip(before[:2], after[:2]):
        assert new == {**old, "entities": [{**e, "score": 1.0} for e in old["entities"]], "reviewed": True}
    assert after[2] == before[2]
    report = json.loads((labelled / "reviewed.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"] == {"rows reviewed": 2, "entities kept as they were": 6}


def test_corrections_are_merged_back_with_offsets_that_index_the_text(labelled):
    lines = sheet(labelled)
    lines[1]["entity"] = "갤럭시"                        # shorter: the offsets follow it
    lines[3]["label"] = "order"                          # relabelled
    lines[5]["keep"] = "no"                              # dropped
    lines[4].update(start="", end="", entity="arrived broken", label="product")  # no offsets: found in the text
    lines[2].update(label="person", start="0", end="5", entity="")  # offsets only
    lines.append({"id": "t1", "text": TICKETS[0]["prompt"], "entity": "어제", "label": "product", "start": "", "end": "", "keep": ""})  # added
    save(labelled, [line for i, line in enumerate(lines) if i != 0])  # a deleted line drops its entity
    assert import_sheet(labelled, "--to-sft", labelled / "sft.jsonl") == 0
    t1, t2, t3 = read(labelled / "reviewed.jsonl")
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in t1["entities"]] == [("어제", "product", 8, 10), ("갤럭시", "product", 11, 14)]
    assert [(e["text"], e["label"]) for e in t2["entities"]] == [("Sarah", "person"), ("Pixel 8", "order"), ("arrived broken", "product")]
    for row in (t1, t2):
        assert all(row["prompt"][e["start"] : e["end"]] == e["text"] and e["score"] == 1.0 for e in row["entities"]) and row["reviewed"]
    assert "reviewed" not in t3
    sft = read(labelled / "sft.jsonl")
    assert json.loads(sft[0]["completion"]) == [{"text": "어제", "label": "product"}, {"text": "갤럭시", "label": "product"}]
    report = json.loads((labelled / "reviewed.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"] == {"rows reviewed": 2, "entities fixed or added in review": 5, "entities dropped in review": 1}


@pytest.mark.parametrize("line, change, message", [
    (1, {"label": "device"}, "review.csv:3: label 'device' is not one of this run's labels: person, product, order"),
    (1, {"entity": "아이폰"}, "review.csv:3: entity '아이폰' is not in the text (start 11, end 18 give '갤럭시 S24'); write it as it appears there"),
    (5, {"start": "", "end": ""}, "review.csv:7: entity 'A-1234' occurs 2 times in the text (at 48, 60): give start and end"),
    (0, {"start": "0", "end": "99"}, "review.csv:2: start 0, end 99: outside the text (0 to 35, start before end)"),
    (0, {"start": "zero"}, "review.csv:2: start 'zero', end '3': give both as whole numbers (characters of the text), or leave both empty"),
    (0, {"keep": "maybe"}, "review.csv:2: keep 'maybe': write yes or no"),
    (0, {"text": "김민수입니다."}, "review.csv:2: the text column was changed; it is for reading only"),
    (0, {"id": "t9"}, "review.csv:2: id 't9' is not a row of"),
    (0, {"entity": "김민수입니다. 어제 갤럭시", "start": "", "end": ""},
     "review.csv:3: '갤럭시 S24' (11-18) overlaps '김민수입니다. 어제 갤럭시' (0-14) of row 2; entities may not overlap"),
])
def test_a_wrong_edit_is_an_error_naming_the_sheet_row(labelled, capsys, line, change, message):
    lines = sheet(labelled)
    lines[line].update(change)
    save(labelled, lines)
    capsys.readouterr()
    assert import_sheet(labelled) == 2
    assert message in capsys.readouterr().err
    assert not (labelled / "reviewed.jsonl").exists()


def test_a_row_with_no_line_left_stays_as_labelled_and_is_counted(labelled, capsys):
    save(labelled, [line for line in sheet(labelled) if line["id"] != "t2"])
    assert import_sheet(labelled) == 0
    assert read(labelled / "reviewed.jsonl")[1] == read(labelled / "labelled.jsonl")[1]
    assert "1 sent for review have no line left in the sheet and stay as labelled: t2" in capsys.readouterr().err
    report = json.loads((labelled / "reviewed.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"]["rows sent for review with no line left (left as labelled)"] == 1


def test_an_entity_not_projected_is_placed_by_the_reviewer(tmp_path, monkeypatch):
    text = "3월 18일에 주문했어요."
    use_fake_translators(monkeypatch, {text: "I ordered on March 18."}, {"March 18": "18 March"})
    use_fake_ner(monkeypatch, {"March 18": ("date", 0.9)})
    source = write(tmp_path / "ko.jsonl", [{"id": "k1", "text": text}])
    assert main(["data", "label", str(source), "--field", "text", "--labels", "date", "--via-translation", "ko-en", "--match-threshold", "95",
                 "--review-sheet", str(tmp_path / "review.csv"), "--to-sft", str(tmp_path / "sft.jsonl"), "--out", str(tmp_path / "labelled.jsonl")]) == 0
    row, = read(tmp_path / "labelled.jsonl")
    assert row["entities"] == [] and [e["text"] for e in row["entities_unprojected"]] == ["March 18"]
    assert read(tmp_path / "sft.jsonl") == []  # its answer would miss the date
    line, = sheet(tmp_path)
    assert (line["entity"], line["start"], line["keep"]) == ("18 March", "", "no") and "in the translation: 'March 18'" in line["note"]
    line.update(entity="3월 18일", keep="yes")
    save(tmp_path, [line])
    assert import_sheet(tmp_path, "--to-sft", tmp_path / "sft2.jsonl") == 0
    reviewed, = read(tmp_path / "reviewed.jsonl")
    assert reviewed["entities"] == [{"start": 0, "end": 6, "text": "3월 18일", "label": "date", "score": 1.0}]
    assert reviewed["entities_unprojected"] == [] and reviewed["translated_text"] == "I ordered on March 18."
    assert json.loads(read(tmp_path / "sft2.jsonl")[0]["completion"]) == [{"text": "3월 18일", "label": "date"}]
