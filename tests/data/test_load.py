import gzip
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tunesmith.data.formats import DataError, Example
from tunesmith.data.load import ON_BAD_ROW_HINT, DataFileError, HubDataset, hub_dataset, load_examples, read_rows

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
BAD = FIXTURES / "bad.jsonl"

QA_ROWS = [
    {"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)]
]


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def qa_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(QA_ROWS), path)
    return path


@pytest.fixture
def saved(tmp_path):
    """Folders written by datasets' save_to_disk: a Dataset, a one-split and a two-split DatasetDict."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(QA_ROWS)
    datasets.Dataset.from_list(QA_ROWS).save_to_disk(tmp_path / "plain")
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(tmp_path / "two")
    return tmp_path


@pytest.mark.parametrize(
    "name, fmt, count",
    [
        ("alpaca.jsonl", "alpaca", 12),
        ("messages.jsonl", "messages", 12),
        ("sharegpt.json", "sharegpt", 10),
        ("prompt_completion.csv", "prompt_completion", 10),
        ("text.jsonl", "text", 10),
    ],
)
def test_fixture_files_load_and_detect_their_format(name, fmt, count):
    path = FIXTURES / name
    examples, report = load_examples(path)
    assert (report.file, report.format, report.read, report.kept) == (str(path), fmt, count, count)
    assert not report.dropped and report.first_errors == []
    assert len(examples) == count
    # The same file with its format given explicitly gives the same examples.
    assert load_examples(path, fmt=fmt)[0] == examples


def test_alpaca_file_examples():
    examples, _ = load_examples(FIXTURES / "alpaca.jsonl")
    where = f"{FIXTURES / 'alpaca.jsonl'}:"
    assert examples[1] == Example([user("Translate to French.\n\nGood morning"), assistant("Bonjour")], None, where + "2")
    assert examples[3].messages[0] == {"role": "system", "content": "You are a geography tutor."}
    assert examples[4].messages == [
        user("What is the capital of France?"),
        assistant("Paris."),
        user("And of Germany?"),
        assistant("Berlin."),
    ]


def test_messages_file_keeps_korean_and_system_prompts():
    examples, _ = load_examples(FIXTURES / "messages.jsonl", system_prompt="Default.")
    assert examples[2].messages == [
        {"role": "system", "content": "당신은 친절한 한국어 도우미입니다."},
        user("안녕하세요?"),
        assistant("안녕하세요! 무엇을 도와드릴까요?"),
    ]
    assert examples[3].messages[0] == {"role": "system", "content": "Default."}
    assert examples[6].messages == [{"role": "system", "content": "Default."}, user("  leading and trailing spaces  "), assistant("kept as given\n")]


def test_sharegpt_json_list():
    examples, _ = load_examples(FIXTURES / "sharegpt.json")
    where = f"{FIXTURES / 'sharegpt.json'}:item "
    assert [e.where for e in examples[:2]] == [where + "1", where + "2"]
    assert examples[1].messages == [{"role": "system", "content": "You are a math tutor."}, user("2*3?"), assistant("6")]
    assert examples[7].messages == [user("Empty system is ignored?"), assistant("Yes.")]


def test_text_file():
    examples, _ = load_examples(FIXTURES / "text.jsonl", system_prompt="ignored for text")
    assert examples[6] == Example(None, "Line one\nline two\n", f"{FIXTURES / 'text.jsonl'}:7")


def test_csv_line_numbers_follow_quoted_newlines():
    path = FIXTURES / "prompt_completion.csv"
    examples, _ = load_examples(path)
    assert [e.where for e in examples] == [f"{path}:{n}" for n in (2, 3, 6, 7, 8, 9, 10, 11, 12, 14)]
    assert examples[1].messages == [user("Classify: the app crashes\nwhen I open settings\non Android"), assistant("bug")]
    assert examples[5].messages[0] == user('Classify: he said "hi" then left')
    assert examples[8].messages[1] == assistant("billing\n(double charge)")


def test_csv_error_after_multiline_cell_names_the_row_start(tmp_path):
    path = write(tmp_path / "t.csv", 'prompt,completion\n"a\nb",x\nonly one cell\n"c",\n')
    _, report = load_examples(path, on_bad_row="drop")
    assert report.first_errors == [f"{path}:4: 1 cells, but the header has 2", f"{path}:5: completion: empty assistant reply"]
    assert report.dropped == {"invalid_csv": 1, "empty_content": 1}


def test_csv_unclosed_quote_is_an_error_not_a_swallowed_file(tmp_path):
    path = write(tmp_path / "t.csv", 'prompt,completion\na,b\n"c,d\ne,f\n')
    with pytest.raises(DataError, match=r"t\.csv:3: invalid CSV: unexpected end of data"):
        load_examples(path, on_bad_row="drop")


def test_tsv_and_column_mapping(tmp_path):
    path = write(tmp_path / "tickets.tsv", "id\tticket\tcategory\n1\tcard charged twice\tbilling\n2\tapp crashes\tbug\n")
    examples, report = load_examples(path, columns={"prompt": "ticket", "completion": "category"})
    assert report.format == "prompt_completion"
    assert [e.messages for e in examples] == [
        [user("card charged twice"), assistant("billing")],
        [user("app crashes"), assistant("bug")],
    ]


def test_unknown_column_field_is_rejected():
    with pytest.raises(ValueError, match="data.columns: unknown field\\(s\\) ticket; fields are: instruction, output"):
        load_examples(FIXTURES / "alpaca.jsonl", columns={"ticket": "prompt"})


def test_qa_parquet(qa_parquet):
    examples, report = load_examples(qa_parquet)
    assert (report.format, report.kept) == ("question_answer", 10)
    assert examples[2] == Example([user("What is 4 + 5?"), assistant("9")], None, f"{qa_parquet}:row 3")


def test_json_object_holding_one_list(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"version": 2, "data": QA_ROWS[:3]}))
    examples, report = load_examples(path)
    assert (report.format, report.kept, examples[2].where) == ("question_answer", 3, f"{path}:item 3")


def test_json_object_without_a_single_list(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"train": QA_ROWS, "test": QA_ROWS}))
    with pytest.raises(DataFileError, match="d.json: expected a list of rows or an object holding one list .*found an object with keys train, test"):
        load_examples(path)


def test_json_lines_saved_as_json_are_read_as_lines(tmp_path):
    path = write(tmp_path / "d.json", "".join(json.dumps(r) + "\n" for r in QA_ROWS[:2]))
    examples, _ = load_examples(path)
    assert [e.where for e in examples] == [f"{path}:1", f"{path}:2"]


def test_malformed_json_file(tmp_path):
    path = write(tmp_path / "d.json", '[\n  {"question": "q", "answer": "a"},\n  {"question": \n]')
    with pytest.raises(DataError, match=r"d\.json:4: invalid JSON: Expecting value \(column 1\)"):
        load_examples(path)


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "qa.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in QA_ROWS)
    examples, report = load_examples(path)
    assert (report.format, report.kept, examples[0].where) == ("question_answer", 10, f"{path}:1")


def test_save_to_disk_dataset(saved):
    examples, report = load_examples(saved / "plain")
    assert (report.format, report.kept, examples[0].where) == ("question_answer", 10, f"{saved / 'plain'}:row 1")


def test_save_to_disk_single_split_is_used(saved):
    examples, report = load_examples(saved / "single")
    assert (report.kept, examples[0].where) == (10, f"{saved / 'single'}::train:row 1")


def test_save_to_disk_named_split(saved):
    examples, report = load_examples(f"{saved / 'two'}::test")
    assert (report.kept, examples[-1].where) == (3, f"{saved / 'two'}::test:row 3")
    assert examples[-1].messages == [user("What is 4 + 5?"), assistant("9")]


def test_save_to_disk_split_errors(saved):
    folder = saved / "two"
    with pytest.raises(DataFileError, match=f"{folder}: holds several splits \\(train, test\\); pick one as {folder}::train"):
        load_examples(folder)
    with pytest.raises(DataFileError, match=f"{folder}: no split 'dev'; splits: train, test"):
        load_examples(f"{folder}::dev")
    with pytest.raises(DataFileError, match="holds a single dataset without splits; drop '::train'"):
        load_examples(f"{saved / 'plain'}::train")


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(DataFileError, match="a folder must be one written by datasets' save_to_disk"):
        load_examples(tmp_path)


def test_unsupported_extension(tmp_path):
    path = write(tmp_path / "train.xlsx", "")
    with pytest.raises(ValueError) as info:
        load_examples(path)
    assert str(info.value) == (
        f"{path}: unsupported file kind .xlsx; supported: .jsonl, .ndjson, .json, .csv, .tsv (each also .gz), "
        ".parquet, a datasets save_to_disk folder, or a hub dataset org/name"
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        load_examples(path)
    assert str(info.value) == f"{path}: no such file or folder"


def test_empty_file(tmp_path):
    with pytest.raises(DataFileError, match="no rows"):
        load_examples(write(tmp_path / "e.jsonl", "\n\n"))


def test_read_rows_yields_errors_in_place():
    rows = list(read_rows(BAD))
    assert [where.rsplit(":", 1)[1] for where, _ in rows] == [str(n) for n in (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14)]
    assert rows[2][1].reason == "invalid_json" and isinstance(rows[3][1], dict)
    assert rows[11][1].reason == "wrong_type" and rows[11][1].problem == "expected an object, found a list"


def test_bad_row_stops_the_load_by_default():
    with pytest.raises(DataError) as info:
        load_examples(BAD)
    err = info.value
    assert (err.where, err.reason) == (f"{BAD}:3", "invalid_json")
    assert str(err) == f"{BAD}:3: invalid JSON: Expecting ',' delimiter (column 94)\n  hint: {ON_BAD_ROW_HINT}"


# Planted in bad.jsonl: line -> (reason, message after 'bad.jsonl:LINE: ').
PLANTED = {
    3: ("invalid_json", "invalid JSON: Expecting ',' delimiter (column 94)"),
    5: ("missing_field", "messages: missing (the row has: msgs); format messages was detected from {bad}:1"),
    6: ("wrong_type", "messages[1].content: expected a string, found a list"),
    8: ("unmatched_tool_result", "messages[2].role: a tool message without a matching call: it must follow an assistant message with tool_calls"),
    9: ("empty_content", "messages[1].content: empty assistant reply"),
    11: ("no_assistant_turn", "messages: no assistant turn to train on"),
    12: ("bad_turn_order", "messages[1].role: two user turns in a row"),
    13: ("wrong_type", "expected an object, found a list"),
}


def test_drop_mode_counts_each_reason_and_keeps_the_good_rows():
    examples, report = load_examples(BAD, on_bad_row="drop")
    assert [e.where for e in examples] == [f"{BAD}:{n}" for n in (1, 2, 4, 10, 14)]
    assert examples[3].messages == [user("Capital of Italy?"), assistant("Rome.")]
    assert (report.format, report.read, report.kept) == ("messages", 13, 5)
    assert report.dropped == {
        "invalid_json": 1,
        "missing_field": 1,
        "wrong_type": 2,
        "unmatched_tool_result": 1,
        "empty_content": 1,
        "no_assistant_turn": 1,
        "bad_turn_order": 1,
    }
    assert report.read == report.kept + sum(report.dropped.values())
    # The run report stores LoadReports with asdict and as JSON: the counts must survive both.
    assert json.loads(json.dumps(asdict(report)))["dropped"] == report.dropped
    expected = [f"{BAD}:{line}: {message.format(bad=BAD)}" for line, (_, message) in PLANTED.items()]
    assert report.first_errors == expected[:5]


@pytest.mark.parametrize("line", sorted(PLANTED))
def test_each_planted_error_names_its_line_and_field(tmp_path, line):
    # The good first line, then only the planted one: in error mode the planted error is raised.
    lines = BAD.read_text(encoding="utf-8").splitlines()
    path = write(tmp_path / "bad.jsonl", lines[0] + "\n" + "\n" * (line - 2) + lines[line - 1] + "\n")
    reason, message = PLANTED[line]
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert info.value.reason == reason
    assert str(info.value) == f"{path}:{line}: {message.format(bad=path)}\n  hint: {ON_BAD_ROW_HINT}"


def test_auto_detection_skips_unreadable_first_rows(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"oops"\n{"question": "q", "answer": "a"}\n')
    examples, report = load_examples(path, on_bad_row="drop")
    assert (report.format, report.kept, dict(report.dropped)) == ("question_answer", 1, {"invalid_json": 1})


def test_no_row_fits_any_format_even_in_drop_mode(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"ticket": "a", "label": "b"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:1: cannot tell the format from the keys \[ticket, label\]") as info:
        load_examples(path, on_bad_row="drop")
    assert info.value.reason == "unknown_format"


def test_zero_kept_examples_is_an_error_with_the_counts():
    with pytest.raises(ValueError) as info:
        load_examples(FIXTURES / "alpaca.jsonl", fmt="messages", on_bad_row="drop")
    message = str(info.value)
    assert message.startswith(f"{FIXTURES / 'alpaca.jsonl'}: no usable examples: all 12 rows were dropped (missing_field: 12)")
    assert message.count("\n  ") == 5


def test_invalid_arguments():
    with pytest.raises(ValueError, match="data.format: 'chatml' is not one of auto, alpaca"):
        load_examples(FIXTURES / "alpaca.jsonl", fmt="chatml")
    with pytest.raises(ValueError, match="data.on_bad_row: 'skip' is not one of error, drop"):
        load_examples(FIXTURES / "alpaca.jsonl", on_bad_row="skip")


# --- Text that is not UTF-8: one bad row, named by line, dropped when allowed ---


def qa_lines(n: int = 4) -> list[bytes]:
    return [json.dumps(row).encode() for row in QA_ROWS[:n]]


def test_jsonl_line_that_is_not_utf8_is_named(tmp_path):
    lines = qa_lines()
    lines[2] = b'{"question": "caf\xe9?", "answer": "x"}'
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert (info.value.where, info.value.reason) == (f"{path}:3", "not_utf8")
    assert str(info.value).startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at column 18); save the file as UTF-8")
    examples, report = load_examples(path, on_bad_row="drop")
    assert [e.where for e in examples] == [f"{path}:{n}" for n in (1, 2, 4)]
    assert report.dropped == {"not_utf8": 1} and report.read == 4


def test_gzipped_jsonl_line_that_is_not_utf8(tmp_path):
    lines = qa_lines()
    lines[1] = lines[1].replace(b"What", b"Wh\xffat")
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    examples, report = load_examples(path, on_bad_row="drop")
    assert report.dropped == {"not_utf8": 1} and len(examples) == 3
    assert report.first_errors == [f"{path}:2: not UTF-8 text (byte 0xff at column 17); save the file as UTF-8"]


def test_csv_cell_that_is_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'prompt,completion\nhi,a\n"multi\nline",b\nok,caf\xe9\nyo,c\n')
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert str(info.value).startswith(f"{path}:5: completion: not UTF-8 text (byte 0xe9); save the file as UTF-8")
    examples, report = load_examples(path, on_bad_row="drop")
    assert [e.where for e in examples] == [f"{path}:{n}" for n in (2, 3, 6)] and report.dropped == {"not_utf8": 1}


def test_json_item_that_is_not_utf8_is_dropped_alone(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b'[{"question": "a", "answer": "b"},\n {"messages": [{"role": "user", "content": "\xff"}]},\n {"question": "c", "answer": "d"}]')
    examples, report = load_examples(path, on_bad_row="drop")
    assert len(examples) == 2
    assert report.first_errors == [f"{path}:item 2: messages[0].content: not UTF-8 text (byte 0xff); save the file as UTF-8"]


def test_json_file_broken_by_a_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b'[\n {"question": "a", "answer": "b"},\n \xff\n]')
    with pytest.raises(DataFileError, match=rf"^{path}:3: not UTF-8 text \(byte 0xff\); save the file as UTF-8$"):
        load_examples(path, on_bad_row="drop")


# --- Columns and keys given twice ---


def test_csv_with_a_column_named_twice(tmp_path):
    path = write(tmp_path / "t.csv", "prompt,completion,completion\nhi,a,b\n")
    with pytest.raises(DataFileError) as info:
        load_examples(path, on_bad_row="drop")
    assert str(info.value) == f"{path}:1: column(s) 'completion' named twice in the header; rename or remove the copies"


def test_tsv_with_columns_named_twice(tmp_path):
    path = write(tmp_path / "t.tsv", "a\tprompt\tb\tprompt\tcompletion\ta\n1\t2\t3\t4\t5\t6\n")
    with pytest.raises(DataFileError, match="column\\(s\\) 'a', 'prompt' named twice"):
        load_examples(path)


def test_jsonl_object_with_a_key_given_twice(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"question": "q", "answer": "a", "answer": "b"}\n{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert (info.value.reason, str(info.value).splitlines()[0]) == ("duplicate_key", f"{path}:1: answer: given twice in one object (only one value can be used)")
    examples, report = load_examples(path, on_bad_row="drop")
    assert len(examples) == 1 and report.dropped == {"duplicate_key": 1}


def test_json_file_with_a_key_given_twice(tmp_path):
    path = write(tmp_path / "t.json", '[{"question": "q", "question": "r", "answer": "a"}]')
    with pytest.raises(DataFileError, match="key 'question' is given twice in one object"):
        load_examples(path)


# --- Files that are broken as a whole: one line naming the file ---


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b"".join(line + b"\n" for line in qa_lines(10)) * 20)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError) as info:
        load_examples(path, on_bad_row="drop")
    message = str(info.value)
    assert message.startswith(f"{path}: corrupt or truncated gzip data after {path}:")
    assert message.endswith("(Compressed file ended before the end-of-stream marker was reached)")


@pytest.mark.parametrize("name", ["t.jsonl.gz", "t.csv.gz", "t.json.gz"])
def test_gzip_file_that_is_not_gzip(tmp_path, name):
    path = write(tmp_path / name, "plain text, not gzip\n")
    with pytest.raises(DataFileError, match=rf"^{tmp_path / name}: corrupt or truncated gzip data \(Not a gzipped file"):
        load_examples(path)


@pytest.mark.parametrize("content", [b"", b"PAR1 garbage, not parquet", b"PAR1" + b"\0" * 64 + b"PAR1"])
def test_corrupt_parquet(tmp_path, content):
    path = tmp_path / "t.parquet"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=rf"^{path}: not a readable Parquet file \("):
        load_examples(path)


def test_truncated_parquet(qa_parquet, tmp_path):
    path = tmp_path / "cut.parquet"
    path.write_bytes(qa_parquet.read_bytes()[:-20])
    with pytest.raises(DataFileError, match=rf"^{path}: not a readable Parquet file"):
        load_examples(path)


def test_corrupt_save_to_disk_folder(saved):
    (saved / "plain" / "state.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(DataFileError, match=f"^{saved / 'plain'}: not a readable save_to_disk folder"):
        load_examples(saved / "plain")


# --- Hub datasets: datasets.load_dataset, the same row checks, positions org/name[split]:row N ---


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("tatsu-lab/alpaca", HubDataset("tatsu-lab/alpaca", None, "train")),
        ("hf://tatsu-lab/alpaca", HubDataset("tatsu-lab/alpaca", None, "train")),
        ("hf://datasets/tatsu-lab/alpaca", HubDataset("tatsu-lab/alpaca", None, "train")),
        ("org/name::test", HubDataset("org/name", None, "test")),
        ("org/name@ko::validation", HubDataset("org/name", "ko", "validation")),
        ("hf://org/my.data-set_2@sub", HubDataset("org/my.data-set_2", "sub", "train")),
        ("data/train.jsonl", None),
        ("data/train.CSV", None),
        ("data/train.jsonl.gz", None),
        ("train.jsonl", None),
        ("./org/name", None),
        ("a/b/c", None),
    ],
)
def test_hub_dataset_entries(entry, expected):
    assert hub_dataset(entry) == expected


def test_an_existing_local_path_is_never_a_hub_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    write(tmp_path / "org" / "name", "")
    assert hub_dataset("org/name") is None
    assert hub_dataset("hf://org/name") == HubDataset("org/name", None, "train")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub dataset 'someorg/tiny' (splits train and test) in a private datasets cache, laid out as
    load_dataset leaves a download: offline, load_dataset finds it there."""
    import datasets

    datasets.disable_progress_bars()
    rows = [*QA_ROWS[:3], {"question": "  ", "answer": "empty question"}, QA_ROWS[4]]
    source = write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    datasets.load_dataset("json", data_files={"train": str(source), "test": str(source)}, cache_dir=str(cache))
    folder = (cache / "json").rename(cache / "someorg___tiny")
    next(folder.iterdir()).rename(folder / "default")
    for arrow in folder.rglob("json-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("json-", "tiny-")))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.mark.parametrize("entry, label", [("someorg/tiny", "someorg/tiny[train]"), ("hf://someorg/tiny::test", "someorg/tiny[test]")])
def test_hub_dataset_rows_get_the_same_checks_and_positions(hub_cache, entry, label):
    with pytest.raises(DataError) as info:
        load_examples(entry)
    assert str(info.value).splitlines()[0] == f"{label}:row 4: question: empty user message"
    examples, report = load_examples(entry, on_bad_row="drop")
    assert (report.file, report.format, report.read, report.kept, report.dropped) == (entry, "question_answer", 5, 4, {"empty_content": 1})
    assert [e.where for e in examples] == [f"{label}:row {n}" for n in (1, 2, 3, 5)]
    assert examples[2].messages == [user("What is 4 + 5?"), assistant("9")]


def test_hub_dataset_unknown_split(hub_cache):
    with pytest.raises(DataFileError) as info:
        load_examples("someorg/tiny::dev")
    assert str(info.value) == (
        "someorg/tiny::dev: cannot load hub dataset someorg/tiny (and no local file or folder has this name): "
        "Unknown split \"dev\". Should be one of ['train', 'test']."
    )


def test_hub_dataset_passes_subset_and_split(monkeypatch):
    import datasets

    calls = []

    def load_dataset(repo, subset, split):
        calls.append((repo, subset, split))
        return datasets.Dataset.from_list(QA_ROWS[:2])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    examples, _ = load_examples("hf://org/name@ko::validation")
    assert calls == [("org/name", "ko", "validation")]
    assert [e.where for e in examples] == ["org/name@ko[validation]:row 1", "org/name@ko[validation]:row 2"]


def test_hub_dataset_offline_and_not_cached(tmp_path, monkeypatch):
    import datasets

    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    # Both libraries read the offline switch once, at import.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataFileError) as info:
        load_examples("someorg/not-downloaded@ko::test")
    assert str(info.value) == (
        "someorg/not-downloaded@ko::test: hub dataset someorg/not-downloaded is not in the local cache and the hub is "
        "offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE). Use a local copy: where the hub is reachable, "
        "datasets.load_dataset('someorg/not-downloaded', 'ko').save_to_disk('folder') and give folder::test, "
        "or export the rows to a JSONL file"
    )
