"""Read a training file into normalised examples; every row is either kept or counted as dropped.

File kinds: JSON Lines (.jsonl, .ndjson), JSON (.json: a list of rows, or an object holding one
list such as {"data": [...]}), CSV/TSV with a header row, Parquet, and folders written by
`datasets`' save_to_disk (`folder::split` picks a split of a DatasetDict). The text kinds may
be gzipped (.jsonl.gz, ...). Rows are named in errors the way an editor can jump to them:
`train.jsonl:12` (file line), `train.csv:7` (line where the row starts), `train.json:item 3`,
`train.parquet:row 3`, `folder::train:row 3` (all 1-based).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import FIELDS, FORMATS, REQUIRED, DataError, detect_format, to_example, type_name
from tunesmith.data.preference import PAIR_CONVERTERS
from tunesmith.errors import TunesmithError

ON_BAD_ROW_HINT = "set data.on_bad_row: drop to skip such rows (they are counted in the report)"
SHOWN_ERRORS = 5
SUPPORTED = ".jsonl, .ndjson, .json, .csv, .tsv (each also .gz), .parquet, or a datasets save_to_disk folder"

Rows = Iterator[tuple[str, "dict | DataError"]]


class DataFileError(TunesmithError, ValueError):
    """The file as a whole cannot be used: unsupported kind, unreadable layout, or no usable rows."""


@dataclass
class LoadReport:
    file: str
    format: str                 # the format used (detected or given)
    read: int = 0               # rows read, including the dropped ones
    kept: int = 0
    # reason -> count. A plain dict, not a Counter: dataclasses.asdict rebuilds a Counter from
    # (key, value) pairs and so counts the pairs instead of copying the counts.
    dropped: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)    # up to SHOWN_ERRORS messages of dropped rows


def load_examples(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    on_bad_row: str = "error",
    formats: tuple[str, ...] = FORMATS,
) -> tuple[list, LoadReport]:
    """Examples of one file: `Example` for the SFT formats, the types of tunesmith.data.preference for the
    alignment formats. `formats` are those the caller's method reads; `auto` detects among them."""
    if fmt not in ("auto", *formats):
        raise ValueError(f"data.format: {fmt!r} is not one of auto, {', '.join(formats)}")
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"data.on_bad_row: {on_bad_row!r} is not one of error, drop")
    columns = dict(columns or {})
    unknown = [name for name in columns if name not in FIELDS]
    if unknown:
        raise ValueError(f"data.columns: unknown field(s) {', '.join(unknown)}; fields are: {', '.join(FIELDS)}")

    # Files are small: reading all rows first lets auto-detection skip past a bad first row.
    rows = list(read_rows(path))
    if not rows:
        raise DataFileError(f"{path}: no rows")
    detected_from = None
    if fmt == "auto":
        fmt, detected_from = _detect(rows, columns, formats)

    report = LoadReport(file=str(path), format=fmt)
    examples = []
    for where, row in rows:
        report.read += 1
        result = row if isinstance(row, DataError) else _convert(row, fmt, columns, where, system_prompt, detected_from)
        if not isinstance(result, DataError):
            examples.append(result)
        elif on_bad_row == "error":
            raise DataError(result.where, result.field, result.problem, result.reason, hint=ON_BAD_ROW_HINT) from None
        else:
            report.dropped[result.reason] = report.dropped.get(result.reason, 0) + 1
            if len(report.first_errors) < SHOWN_ERRORS:
                report.first_errors.append(str(result))
    report.kept = len(examples)
    if not examples:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.dropped.items(), key=lambda item: -item[1]))
        shown = "".join(f"\n  {message}" for message in report.first_errors)
        raise DataFileError(f"{path}: no usable examples: all {report.read} rows were dropped ({counts}){shown}")
    return examples, report


def read_rows(path: str | Path) -> Rows:
    """(where, row) for every row of the file; rows that cannot be read come as DataError instead."""
    name = str(path)
    folder, _, split = name.rpartition("::")
    if Path(name).exists() or not folder:
        folder, split = name, None
    target = Path(folder)
    if not target.exists():
        raise FileNotFoundError(f"{folder}: no such file or folder")
    if target.is_dir():
        if not (target / "dataset_dict.json").exists() and not (target / "state.json").exists():
            raise DataFileError(f"{folder}: a folder must be one written by datasets' save_to_disk; supported: {SUPPORTED}")
        return _checked(_read_saved(*_open_saved(target, split or None, folder)), folder)
    suffixes = [s.lower() for s in target.suffixes]
    gzipped = suffixes[-1:] == [".gz"]
    kind = (suffixes[-2] if len(suffixes) > 1 else "") if gzipped else (suffixes[-1] if suffixes else "")
    if kind not in READERS or (gzipped and kind == ".parquet"):
        shown = kind + ".gz" if gzipped else kind
        raise DataFileError(f"{name}: unsupported file kind {shown or '(no extension)'}; supported: {SUPPORTED}")
    return _checked(READERS[kind](target, name, gzipped), name)


def _detect(rows: list, columns: dict[str, str], formats: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The format of the first row that fits one, and where that row is."""
    first_error = None
    for where, row in rows:
        if isinstance(row, DataError):
            continue
        try:
            return detect_format(row, columns, where, formats), where
        except DataError as err:
            first_error = first_error or err
    if first_error:
        raise first_error  # no row fits any format: dropping rows cannot help
    return None, None  # no readable row at all: the loop reports them


def _convert(
    row: dict, fmt: str, columns: dict[str, str], where: str, system_prompt: str | None, detected_from: str | None
) -> object:
    """The row as an example of `fmt`, or the DataError that rejects it."""
    try:
        if fmt in PAIR_CONVERTERS:
            if not isinstance(row, dict):
                raise DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
            return PAIR_CONVERTERS[fmt](row, columns, where, system_prompt)
        return to_example(row, fmt, columns, where, system_prompt)
    except DataError as err:
        # A row of another format fails on a required field: say where the format came from.
        if detected_from and err.reason == "missing_field" and err.field in [columns.get(f, f) for f in REQUIRED[fmt]]:
            problem = f"{err.problem}; format {fmt} was detected from {detected_from}"
            return DataError(err.where, err.field, problem, err.reason)
        return err


def _checked(rows: Rows, name: str) -> Rows:
    try:
        for where, row in rows:
            if not isinstance(row, (dict, DataError)):
                row = DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
            yield where, row
    except UnicodeDecodeError:
        raise DataFileError(f"{name}: not UTF-8 text; save it as UTF-8") from None


def _open_text(path: Path, gzipped: bool, newline: str | None = None):
    # utf-8-sig drops the byte-order mark that Excel and Notepad put first.
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _read_jsonl(path: Path, name: str, gzipped: bool) -> Rows:
    with _open_text(path, gzipped) as lines:
        yield from _json_lines(lines, name)


def _json_lines(lines, name: str) -> Rows:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            yield where, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            yield where, DataError(where, None, f"invalid JSON: {err.msg} (column {err.colno})", "invalid_json")


def _read_json(path: Path, name: str, gzipped: bool) -> Rows:
    with _open_text(path, gzipped) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved as .json, a common mix-up
            yield from _json_lines(io.StringIO(text), name)
            return
        raise DataError(f"{name}:{err.lineno}", None, f"invalid JSON: {err.msg} (column {err.colno})", "invalid_json") from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataFileError(
                f"{name}: expected a list of rows or an object holding one list (like {{\"data\": [...]}}); "
                f"found an object with keys {', '.join(data) or 'none'}"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataFileError(f"{name}: expected a list of rows, found {type_name(data)}")
    for number, row in enumerate(data, 1):
        yield f"{name}:item {number}", row


def _read_csv(path: Path, name: str, gzipped: bool, delimiter: str = ",") -> Rows:
    with _open_text(path, gzipped, newline="") as f:
        # strict: an unclosed quote is an error, not the rest of the file swallowed into one cell.
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        end = 0
        try:
            header = next(reader, None)
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines: name the first
                if not cells:
                    continue
                where = f"{name}:{start}"
                if len(cells) != len(header):
                    yield where, DataError(where, None, f"{len(cells)} cells, but the header has {len(header)}", "invalid_csv")
                else:
                    yield where, dict(zip(header, cells))
        except csv.Error as err:
            raise DataError(f"{name}:{end + 1}", None, f"invalid CSV: {err} (an unclosed quote?)", "invalid_csv") from None


def _read_tsv(path: Path, name: str, gzipped: bool) -> Rows:
    return _read_csv(path, name, gzipped, delimiter="\t")


def _read_parquet(path: Path, name: str, gzipped: bool) -> Rows:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            number += 1
            yield f"{name}:row {number}", row


def _open_saved(folder: Path, split: str | None, name: str):
    """The dataset in a save_to_disk folder (the split of a DatasetDict), and the label its rows get."""
    import datasets

    data = datasets.load_from_disk(str(folder))
    if not isinstance(data, datasets.DatasetDict):
        if split is not None:
            raise DataFileError(f"{name}: holds a single dataset without splits; drop '::{split}'")
        return data, name
    splits = ", ".join(data)
    if split is None and len(data) != 1:
        raise DataFileError(f"{name}: holds several splits ({splits}); pick one as {name}::{next(iter(data))}")
    if split is not None and split not in data:
        raise DataFileError(f"{name}: no split {split!r}; splits: {splits}")
    split = split or next(iter(data))
    return data[split], f"{name}::{split}"


def _read_saved(data, label: str) -> Rows:
    for number, row in enumerate(data, 1):
        yield f"{label}:row {number}", row


READERS = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".tsv": _read_tsv,
    ".parquet": _read_parquet,
}
