import json
import re

import pytest

from tests.curate.conftest import read, use_fake_ner, use_fake_translators, write
from tunesmith.cli import main

# The verb needs its extra (dev includes it); without it these are skipped, saying so.
pytest.importorskip("gliner", reason="pip install 'tunesmith[label]'")
pytest.importorskip("rapidfuzz", reason="pip install 'tunesmith[label]'")

TICKETS = [
    {"id": "t1", "prompt": "김민수입니다. 어제 갤럭시 S24를 주문했는데 아직 안 왔어요.", "completion": "shipping"},
    {"id": "t2", "prompt": "Hi, this is Sarah Lee. My Pixel 8 arrived broken, order A-1234.", "completion": "returns"},
    {"id": "t3", "prompt": "No names here at all.", "completion": "other"},
]
PLANTED = {"김민수": ("person", 0.93), "갤럭시 S24": ("product", 0.62), "Sarah Lee": ("person", 0.88), "Pixel 8": ("product", 0.81),
           "A-1234": ("order", 0.55)}


def label(*args) -> int:
    return main(["data", "label", *map(str, args)])


def test_entities_index_the_text_exactly_and_every_column_is_kept(tmp_path, monkeypatch):
    fake = use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS)
    out = tmp_path / "labelled.jsonl"
    assert label(source, "--field", "prompt", "--labels", "person,product", "--out", out) == 0
    rows = read(out)
    assert [{k: v for k, v in r.items() if k != "entities"} for r in rows] == TICKETS
    assert rows[0]["entities"] == [{"start": 0, "end": 3, "text": "김민수", "label": "person", "score": 0.93},
                                   {"start": 11, "end": 18, "text": "갤럭시 S24", "label": "product", "score": 0.62}]
    assert [e["text"] for e in rows[1]["entities"]] == ["Sarah Lee", "Pixel 8"] and rows[2]["entities"] == []
    for row in rows:
        assert all(row["prompt"][e["start"] : e["end"]] == e["text"] for e in row["entities"])
    assert fake.calls == [[t["prompt"] for t in TICKETS]]
    report = json.loads((tmp_path / "labelled.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"] == {"rows labelled": 3, "rows with entities": 2, "entities": 4, "label person": 2, "label product": 2}
    assert report["extra"] == {"labels": {"person": 2, "product": 2}}
    assert "| person | 2 |" in (tmp_path / "labelled.jsonl.report.md").read_text(encoding="utf-8")


def test_labels_come_from_a_file_and_a_label_given_twice_is_refused(tmp_path, monkeypatch, capsys):
    use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS)
    labels = tmp_path / "labels.txt"
    labels.write_text("# what we look for\nperson\n\norder, product\n", encoding="utf-8")
    assert label(source, "--field", "prompt", "--labels-file", labels, "--out", tmp_path / "a.jsonl") == 0
    assert [e["label"] for e in read(tmp_path / "a.jsonl")[1]["entities"]] == ["person", "product", "order"]
    labels.write_text("person\nproduct\nperson\n", encoding="utf-8")
    capsys.readouterr()
    assert label(source, "--field", "prompt", "--labels-file", labels, "--out", tmp_path / "b.jsonl") == 2
    assert capsys.readouterr().err == f"error: {labels}:3: label 'person' given twice (first at {labels}:1)\n"


def test_refusals_name_the_flag_or_the_row(tmp_path, monkeypatch, capsys):
    use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS)
    out = tmp_path / "o.jsonl"
    assert label(source, "--field", "prompt", "--out", out) == 2
    assert "give the entity types with --labels" in capsys.readouterr().err
    assert label(source, "--field", "prompt", "--labels", "person", "--review-sheet", tmp_path / "r.csv", "--threshold", "0.7", "--out", out) == 2
    assert "--review-below: 0.7 must be above --threshold 0.7" in capsys.readouterr().err
    chats = write(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "김민수"}, {"role": "assistant", "content": "네"}]}])
    assert label(chats, "--labels", "person", "--out", out) == 2
    assert capsys.readouterr().err == (f"error: {chats}:1: data label reads one text column, and this row's text is in messages[0].content: "
                                       "name it with --field COLUMN\n")
    again = write(tmp_path / "again.jsonl", [{"prompt": "김민수", "entities": []}])
    assert label(again, "--field", "prompt", "--labels", "person", "--out", out) == 2
    assert "again.jsonl:1: entities: already there: this row was labelled before" in capsys.readouterr().err
    assert label(source, "--field", "prompt", "--labels", "person", "--translator-to", "x", "--out", out) == 2
    assert capsys.readouterr().err == "error: --translator-to: only with --via-translation SRC-PIVOT\n"


def test_via_translation_projects_entities_onto_the_korean_text(tmp_path, monkeypatch):
    text = "김민수입니다. 삼성전자에서 산 갤럭시S24가 고장났어요. 3월 18일에 샀어요."
    to = {"김민수입니다.": "This is Kim Minsu.", "삼성전자에서 산 갤럭시S24가 고장났어요.": "The Galaxy S24 I bought from Samsung Electronics broke.",
          "3월 18일에 샀어요.": "I bought it on March 18."}
    back = {"Kim Minsu": "김민수", "Galaxy S24": "갤럭시 S24", "Samsung Electronics": "삼성 전자", "March 18": "3월 18일", "bought": "샀다"}
    loaded = use_fake_translators(monkeypatch, to, back)
    fake = use_fake_ner(monkeypatch, {"Kim Minsu": ("person", 0.9), "Galaxy S24": ("product", 0.8), "Samsung Electronics": ("organization", 0.7),
                                      "March 18": ("date", 0.6), "bought": ("product", 0.51)})
    source = write(tmp_path / "ko.jsonl", [{"id": 1, "text": text}])
    out = tmp_path / "labelled.jsonl"
    assert label(source, "--field", "text", "--labels", "person,product,organization,date", "--via-translation", "ko-en", "--out", out) == 0
    assert loaded == [("Helsinki-NLP/opus-mt-ko-en", "ko", "en"), ("Helsinki-NLP/opus-mt-tc-big-en-ko", "en", "ko")]
    assert fake.calls == [list(to.values())]  # sentence by sentence
    row, = read(out)
    assert row["translated_text"] == " ".join(to.values())
    assert [(e["text"], e["label"]) for e in row["entities"]] == [("김민수", "person"), ("삼성전자", "organization"), ("갤럭시S24", "product"),
                                                                  ("3월 18일", "date")]
    assert all(text[e["start"] : e["end"]] == e["text"] and set(e) == {"start", "end", "text", "label", "score"} for e in row["entities"])
    # "bought" has no counterpart in the Korean: kept aside, with its offsets into the translation
    assert [(e["text"], e["label"]) for e in row["entities_unprojected"]] == [("bought", "product"), ("bought", "product")]
    assert all(row["translated_text"][e["start"] : e["end"]] == "bought" for e in row["entities_unprojected"])
    report = json.loads((tmp_path / "labelled.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["extra"]["projection"] == {"found": 6, "projected": 4, "not_projected": 2, "rate": 4 / 6}
    assert "4 of 6 entities found in the translation projected (66.7%)" in (tmp_path / "labelled.jsonl.report.md").read_text(encoding="utf-8")


def test_the_sft_set_trains_as_it_is(tmp_path, monkeypatch, tiny_llama):
    use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS * 3)
    sft = tmp_path / "ner_sft.jsonl"
    assert label(source, "--field", "prompt", "--labels", "person,product", "--to-sft", sft, "--out", tmp_path / "l.jsonl") == 0
    rows = read(sft)
    assert len(rows) == 9 and set(rows[0]) == {"prompt", "completion"}
    assert rows[0]["prompt"].startswith("Extract the entities of these types from the text: person, product.")
    assert rows[0]["prompt"].endswith("Text: " + TICKETS[0]["prompt"])
    assert json.loads(rows[0]["completion"]) == [{"text": "김민수", "label": "person"}, {"text": "갤럭시 S24", "label": "product"}]
    assert json.loads(rows[2]["completion"]) == []
    recipe = tmp_path / "ner.yaml"
    recipe.write_text(f"model:\n  path: {tiny_llama}\n  dtype: float32\ndata:\n  train: {sft}\n  max_length: 256\n"
                      f"train:\n  max_steps: 2\n  batch_size: 4\noutput_dir: {tmp_path / 'run'}\n", encoding="utf-8")
    assert main(["train", str(recipe)]) == 0
    data_report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert data_report["train"]["examples"] == 9 and not data_report["train"]["dropped"]


def test_a_killed_run_resumes_to_the_file_an_uninterrupted_run_writes(tmp_path, monkeypatch):
    fake = use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", [dict(t, id=f"{t['id']}-{k}") for k in range(4) for t in TICKETS])
    args = ["--field", "prompt", "--labels", "person,product,order", "--chunk-rows", "3", "--batch-size", "3", "--review-sheet"]
    assert label(source, *args, tmp_path / "whole.csv", "--to-sft", tmp_path / "whole-sft.jsonl", "--out", tmp_path / "whole.jsonl") == 0
    real = fake.__call__

    def dies_on_the_third_batch(texts, *rest):
        if len(fake.calls) == 2:
            raise KeyboardInterrupt
        return real(texts, *rest)

    monkeypatch.setattr(type(fake), "__call__", lambda self, *a: dies_on_the_third_batch(*a))
    fake.calls.clear()
    command = [*args, tmp_path / "r.csv", "--to-sft", tmp_path / "sft.jsonl", "--out", tmp_path / "out.jsonl"]
    assert label(source, *command) == 130
    assert not (tmp_path / "out.jsonl").exists()
    monkeypatch.setattr(type(fake), "__call__", lambda self, *a: real(*a))
    fake.calls.clear()
    assert label(source, *command) == 0
    assert len(fake.calls) == 2  # chunks 3 and 4 only
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert (tmp_path / "r.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert (tmp_path / "sft.jsonl").read_bytes() == (tmp_path / "whole-sft.jsonl").read_bytes()


def test_the_real_gliner_path_labels_every_window_of_a_long_text(tiny_gliner, tmp_path):
    from tunesmith.curate.ner import Gliner

    words = "김민수 고객님이 어제 갤럭시 S24 폰을 주문했는데 아직 안 왔어요 Kim Minsu ordered a Galaxy phone and it never arrived".split()
    long_text = " ".join(words * 2)
    ner = Gliner.load(str(tiny_gliner))
    windows = ner.windows(long_text, ["person", "product"])
    assert len(windows) > 3 and windows[0][0] == 0 and windows[-1][1] == len(long_text)
    assert all(len(long_text[s:e].split()) <= 8 for s, e in windows)
    assert all(b[0] < a[1] for a, b in zip(windows, windows[1:]))  # overlapping: no entity falls between two

    short = "Kim Minsu ordered a Galaxy phone"  # one window: the wrapper gives exactly what gliner gives
    direct = ner.model.inference([short], ["person", "product"], threshold=0.01)[0]
    assert ner([short], ["person", "product"], 0.01, 2)[0] == [{**e, "score": round(e["score"], 4)} for e in direct] != []
    bounds = {i for m in re.finditer(r"\S+", long_text) for i in m.span()}  # the long text's words, no punctuation

    rows = [{"id": "long", "text": long_text}, {"id": "ko", "text": "배송이 늦어요"}, {"id": "empty", "text": ""}]
    source = write(tmp_path / "t.jsonl", rows)
    out = tmp_path / "l.jsonl"
    assert label(source, "--field", "text", "--labels", "person,product", "--model", tiny_gliner, "--threshold", "0.01", "--batch-size", "2",
                 "--out", out) == 0
    labelled = read(out)
    for row in labelled:
        entities = row["entities"]
        assert all(row["text"][e["start"] : e["end"]] == e["text"] and e["label"] in ("person", "product") and 0.01 <= e["score"] <= 1 for e in entities)
        assert all(a["end"] <= b["start"] for a, b in zip(entities, entities[1:]))  # sorted, none overlapping
    assert labelled[0]["entities"][-1]["end"] > windows[0][1]  # entities past the first window: nothing cut
    assert all(e["start"] in bounds and e["end"] in bounds for e in labelled[0]["entities"])  # whole words, wherever the window
    assert labelled[2]["entities"] == []
    report = json.loads((tmp_path / "l.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"]["texts longer than the model's window (labelled in windows)"] == 1


def test_via_translation_with_real_models_keeps_every_offset_exact(tiny_gliner, tiny_seq2seq, tmp_path):
    text = "배송이 늦어요. 김민수입니다."
    source = write(tmp_path / "ko.jsonl", [{"text": text}])
    out = tmp_path / "l.jsonl"
    assert label(source, "--field", "text", "--labels", "person", "--model", tiny_gliner, "--threshold", "0.01", "--via-translation", "ko-en",
                 "--translator-to", tiny_seq2seq, "--translator-back", tiny_seq2seq, "--num-beams", "1", "--max-new-tokens", "5", "--match-threshold", "1",
                 "--out", out) == 0
    row, = read(out)
    assert all(text[e["start"] : e["end"]] == e["text"] for e in row["entities"])
    assert all(row["translated_text"][e["start"] : e["end"]] == e["text"] for e in row["entities_unprojected"])
    report = json.loads((tmp_path / "l.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["extra"]["projection"]["found"] == len(row["entities"]) + len(row["entities_unprojected"])


def test_a_model_not_cached_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = write(tmp_path / "t.jsonl", TICKETS)
    assert label(source, "--field", "prompt", "--labels", "person", "--model", "nobody/no-such-gliner", "--out", tmp_path / "o.jsonl") == 2
    assert capsys.readouterr().err == "error: nobody/no-such-gliner: not in the local cache, and the hub is offline (HF_HUB_OFFLINE): give a local model folder\n"


def test_a_killed_run_is_not_resumed_with_another_output_added(tmp_path, monkeypatch, capsys):
    fake = use_fake_ner(monkeypatch, PLANTED)
    source = write(tmp_path / "t.jsonl", TICKETS * 2)
    real = type(fake).__call__
    monkeypatch.setattr(type(fake), "__call__", lambda self, *a: (_ for _ in ()).throw(KeyboardInterrupt) if self.calls else real(self, *a))
    command = [source, "--field", "prompt", "--labels", "person", "--chunk-rows", "3", "--batch-size", "3", "--out", tmp_path / "o.jsonl"]
    assert label(*command) == 130
    monkeypatch.setattr(type(fake), "__call__", real)
    capsys.readouterr()
    assert label(*command, "--to-sft", tmp_path / "sft.jsonl") == 2
    assert "holds an unfinished run with other settings (outputs --out then, --out --to-sft now)" in capsys.readouterr().err
    assert label(*command) == 0 and len(read(tmp_path / "o.jsonl")) == 6


def test_without_the_label_extra_the_error_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gliner" else find(name, *a))
    source = write(tmp_path / "t.jsonl", TICKETS)
    assert label(source, "--field", "prompt", "--labels", "person", "--out", tmp_path / "o.jsonl") == 2
    assert capsys.readouterr().err == "error: data label needs gliner: pip install 'tunesmith[label]'\n"
