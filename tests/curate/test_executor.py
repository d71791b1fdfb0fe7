import json

import pytest

from tunesmith.curate.executor import Job, Output, read_jsonl
from tunesmith.curate.rows import Counts, TextFields, replaced
from tunesmith.errors import TunesmithError


def write(path, rows, bad_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for i in bad_lines:
        lines[i] = "{not json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shout(batch, counts: Counts) -> dict:
    """Upper-cases the prompt; drops rows whose prompt says 'drop' (reason planted)."""
    fields, out = TextFields(["prompt"], {}), []
    for row in batch:
        (path, text), = fields.slots(row.data, row.where)
        if "drop" in text:
            counts.drop("planted", f"{row.where}: planted")
            continue
        counts.add("changed")
        out.append(replaced(row.data, {path: text.upper()}))
    return {"out": out}


def job(tmp_path, source, name="out.jsonl", **settings):
    return Job("shout", str(source), {"out": Output(tmp_path / name)}, settings={"seed": 0, **settings})


def test_a_run_writes_rows_and_a_report_that_counts_every_drop(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": f"row {i}" + (" drop" if i == 3 else ""), "completion": "x"} for i in range(10)], bad_lines=[5])
    j = job(tmp_path, source)
    rows, read = j.read("drop", None)
    report = j.run_chunked(rows, read, shout, batch_size=3, chunk_rows=4)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["prompt"] for r in out] == [f"ROW {i}" for i in range(10) if i not in (3, 5)]
    assert out[0]["completion"] == "x"
    assert report["read"] == 10 and report["written"] == {"out": 8}
    assert report["dropped"] == {"invalid_json": 1, "planted": 1} and report["counters"] == {"changed": 8}
    assert json.loads((tmp_path / "out.jsonl.report.json").read_text(encoding="utf-8")) == report
    md = (tmp_path / "out.jsonl.report.md").read_text(encoding="utf-8")
    assert "10 rows read" in md and "invalid_json 1, planted 1" in md and f"{source}:6: invalid JSON" in md
    assert not (tmp_path / "out.jsonl.parts").exists()


def test_a_killed_run_resumes_and_ends_equal_to_an_uninterrupted_one(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(20)])
    whole = job(tmp_path, source, "whole.jsonl")
    whole.run_chunked(*whole.read("error", None), shout, batch_size=2, chunk_rows=4)

    calls = []

    def dies_in_chunk_three(batch, counts):
        calls.append(batch[0].index)
        if batch[0].index >= 12:
            raise KeyboardInterrupt
        return shout(batch, counts)

    first = job(tmp_path, source)
    with pytest.raises(KeyboardInterrupt):
        first.run_chunked(*first.read("error", None), dies_in_chunk_three, batch_size=2, chunk_rows=4)
    assert not (tmp_path / "out.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "out.jsonl.parts").iterdir()) == [
        "manifest.json", "part-00000.out.jsonl", "part-00001.out.jsonl", "part-00002.out.jsonl"]

    calls.clear()
    again = job(tmp_path, source)
    report = again.run_chunked(*again.read("error", None), lambda b, c: (calls.append(b[0].index), shout(b, c))[1], batch_size=2, chunk_rows=4)
    assert calls == [12, 14, 16, 18]  # only the chunks not written before
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert report["counters"] == {"changed": 20} and report["read"] == 20


def test_an_unfinished_run_with_other_settings_is_not_mixed_in(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(8)])
    first = job(tmp_path, source, seed=1)

    def dies(batch, counts):
        if batch[0].index >= 4:
            raise KeyboardInterrupt
        return shout(batch, counts)

    with pytest.raises(KeyboardInterrupt):
        first.run_chunked(*first.read("error", None), dies, batch_size=4, chunk_rows=4)
    with pytest.raises(TunesmithError, match=r"out.jsonl.parts holds an unfinished run with other settings \(seed\)"):
        job(tmp_path, source, seed=2).read("error", None)
    fresh = job(tmp_path, source, seed=2)
    fresh.overwrite = True
    assert fresh.run_chunked(*fresh.read("error", None), shout, batch_size=4, chunk_rows=4)["written"] == {"out": 8}


def test_outputs_never_replace_the_input_or_an_existing_file(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": "a"}])
    with pytest.raises(TunesmithError, match="is the input; write the result to a new file"):
        Job("shout", str(source), {"out": Output(source)}, {}).check()
    with pytest.raises(TunesmithError, match="is the input"):
        Job("shout", str(source), {"out": Output(tmp_path / "." / "in.jsonl")}, {}).check()
    (tmp_path / "old.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match="old.jsonl already exists: choose another file, or pass --overwrite"):
        Job("shout", str(source), {"out": Output(tmp_path / "old.jsonl")}, {}).check()
    Job("shout", str(source), {"out": Output(tmp_path / "old.jsonl")}, {}, overwrite=True).check()
    with pytest.raises(TunesmithError, match=r"write a \.jsonl file"):
        Job("shout", str(source), {"out": Output(tmp_path / "x.csv")}, {}).check()
    with pytest.raises(TunesmithError, match="also given as --out"):
        Job("shout", str(source), {"out": Output(tmp_path / "a.jsonl"), "eval_out": Output(tmp_path / "a.jsonl")}, {}).check()


def test_csv_outputs_open_in_excel(tmp_path):
    source = write(tmp_path / "in.jsonl", [{"prompt": "배송이 늦어요", "tags": ["a"], "note": None}])
    j = Job("copy", str(source), {"out": Output(tmp_path / "sheet.csv", "csv")}, {})
    j.run_chunked(*j.read("error", None), lambda batch, counts: {"out": [r.data for r in batch]}, batch_size=1)
    assert (tmp_path / "sheet.csv").read_bytes().startswith(b"\xef\xbb\xbfprompt,tags,note\r\n")
    assert (tmp_path / "sheet.csv").read_bytes().decode("utf-8-sig").splitlines()[1] == "배송이 늦어요,\"[\"\"a\"\"]\","


def test_text_fields_follow_the_format_or_the_named_columns():
    conversation = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
    assert TextFields([], {}).text(conversation, "f:1") == "U\nA"
    assert TextFields([], {}, "input").slots(conversation, "f:1") == [(("messages", 1, "content"), "U")]
    pair = {"ticket": "where is it", "label": "shipping"}
    assert TextFields([], {"prompt": "ticket", "completion": "label"}).text(pair, "f:1") == "where is it\nshipping"
    assert TextFields(["ticket"], {}).text(pair, "f:1") == "where is it"
    with pytest.raises(Exception, match=r"f:1: body: missing \(the row has: ticket, label\)"):
        TextFields(["body"], {}).slots(pair, "f:1")
    changed = replaced(conversation, {("messages", 1, "content"): "u2"})
    assert changed["messages"][1]["content"] == "u2" and conversation["messages"][1]["content"] == "U"
    alpaca = {"instruction": "I", "output": "O"}
    assert TextFields([], {}).text(alpaca, "f:1") == "I\nO"


def test_an_empty_input_is_an_error_and_ctrl_c_says_how_to_go_on(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"empty.jsonl: no rows"):
        job(tmp_path, tmp_path / "empty.jsonl").read("error", None)
    source = write(tmp_path / "in.jsonl", [{"prompt": f"row {i}"} for i in range(8)])

    def stops(batch, counts):
        if batch[0].index >= 4:
            raise KeyboardInterrupt
        return shout(batch, counts)

    j = job(tmp_path, source)
    with pytest.raises(KeyboardInterrupt):
        j.run_chunked(*j.read("error", None), stops, batch_size=2, chunk_rows=4)
    assert f"interrupted: 1 of 2 chunks written in {tmp_path / 'out.jsonl.parts'}; run the same command again to continue" in capsys.readouterr().err
