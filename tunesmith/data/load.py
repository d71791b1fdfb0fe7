"""Read a training file into normalised examples; every row is either kept or counted as dropped.

File kinds: JSON Lines (.jsonl, .ndjson), JSON (.json: a list of rows, or an object holding one
list such as {"data": [...]}), CSV/TSV with a header row (no column named twice), Parquet, folders
written by `datasets`' save_to_disk (`folder::split` picks a split of a DatasetDict), and hub
datasets read with `datasets.load_dataset` (`org/name`, `hf://org/name`, `org/name::split`,
`org/name@subset::split`; the split defaults to train). The text kinds may be gzipped (.jsonl.gz, ...).
Rows are named in errors the way an editor can jump to them: `train.jsonl:12` (file line),
`train.csv:7` (line where the row starts), `train.json:item 3`, `train.parquet:row 3`,
`folder::train:row 3`, `org/name[train]:row 3` (all 1-based).

Text files are decoded line by line: a row holding bytes that are not UTF-8 is a bad row like any
other (`not_utf8`, dropped with `data.on_bad_row: drop`), not the end of the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import FIELDS, FORMATS, REQUIRED, DataError, detect_format, to_example, type_name
from tunesmith.data.preference import PAIR_CONVERTERS
from tunesmith.errors import TunesmithError

ON_BAD_ROW_HINT = "set data.on_bad_row: drop to skip such rows (they are counted in the report)"
SHOWN_ERRORS = 5
SUPPORTED = ".jsonl, .ndjson, .json, .csv, .tsv (each also .gz), .parquet, a datasets save_to_disk folder, or a hub dataset org/name"
HUB_FORMS = "org/name, hf://org/name, org/name::split or org/name@subset::split"

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


@dataclass
class HubDataset:
    repo: str               # org/name
    subset: str | None      # the dataset's configuration, e.g. a language
    split: str

    @property
    def label(self) -> str:
        """How its rows are named: 'org/name[train]' (+ ':row 3'), 'org/name@subset[train]'."""
        return self.repo + (f"@{self.subset}" if self.subset else "") + f"[{self.split}]"


_HUB_ENTRY = re.compile(r"(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?:@(?P<subset>[A-Za-z0-9_.-]+))?(?:::(?P<split>[A-Za-z0-9_.-]+))?")


def hub_dataset(entry: str) -> HubDataset | None:
    """The hub dataset a data entry names, or None for a local file or folder. `hf://org/name` always names
    one; plain `org/name` does when no such local path exists and it does not end like a data file."""
    explicit = entry.startswith("hf://")
    spec = entry.removeprefix("hf://").removeprefix("datasets/") if explicit else entry
    match = _HUB_ENTRY.fullmatch(spec)
    if not explicit:
        local = Path(entry.split("::")[0])
        if match is None or local.exists() or local.suffix.lower() in (*READERS, ".gz"):
            return None
    elif match is None:
        raise DataFileError(f"{entry}: not a hub dataset; the forms are {HUB_FORMS}")
    return HubDataset(match["repo"], match["subset"], match["split"] or "train")


def read_rows(path: str | Path) -> Rows:
    """(where, row) for every row of the file; rows that cannot be read come as DataError instead."""
    name = str(path)
    hub = hub_dataset(name)
    if hub is not None:
        return _checked(_read_dataset(_open_hub(hub, name), hub.label), name)
    folder, _, split = name.rpartition("::")
    if Path(name).exists() or not folder:
        folder, split = name, None
    target = Path(folder)
    if not target.exists():
        raise FileNotFoundError(f"{folder}: no such file or folder")
    if target.is_dir():
        if not (target / "dataset_dict.json").exists() and not (target / "state.json").exists():
            raise DataFileError(f"{folder}: a folder must be one written by datasets' save_to_disk; supported: {SUPPORTED}")
        return _checked(_read_dataset(*_open_saved(target, split or None, folder)), folder)
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
    where = None
    try:
        for where, row in rows:
            if not isinstance(row, (dict, DataError)):
                row = DataError(where, None, f"expected an object, found {type_name(row)}", "wrong_type")
            elif isinstance(row, dict) and (bad := _undecodable_field(row)):
                field, byte = bad
                row = DataError(where, field or None, f"not UTF-8 text ({byte}); save the file as UTF-8", "not_utf8")
            yield where, row
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        after = f" after {where}" if where else ""
        raise DataFileError(f"{name}: corrupt or truncated gzip data{after} ({err})") from None


# Text is decoded with errors="surrogateescape": each byte that is not UTF-8 becomes one of these characters.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _undecodable(text: str) -> tuple[int, int] | None:
    """(byte, 0-based position) of the first byte in `text` that was not UTF-8."""
    found = _UNDECODABLE.search(text)
    return None if found is None else (ord(found.group()) - 0xDC00, found.start())


def _undecodable_field(value, path: str = "") -> tuple[str, str] | None:
    """(field path, 'byte 0xff') of the first text in a row, keys included, that held bytes that are not UTF-8."""
    if isinstance(value, str):
        bad = _undecodable(value)
        return None if bad is None else (path, f"byte 0x{bad[0]:02x}")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (bad := _undecodable(key)):
                return path, f"byte 0x{bad[0]:02x} in a key"  # the key itself cannot be printed
            if found := _undecodable_field(item, f"{path}.{key}" if path else str(key)):
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if found := _undecodable_field(item, f"{path}[{i}]"):
                return found
    return None


def _open_text(path: Path, gzipped: bool, newline: str | None = None):
    # utf-8-sig drops the byte-order mark that Excel and Notepad put first; surrogateescape keeps a bad byte
    # in place (see _UNDECODABLE) so that only its row is rejected, by line.
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=newline)
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook for json.loads: a key given twice is an error, not the last value silently kept."""
    row = {}
    for key, value in pairs:
        if key in row:
            raise _DuplicateKey(key)
        row[key] = value
    return row


def _read_jsonl(path: Path, name: str, gzipped: bool) -> Rows:
    with _open_text(path, gzipped) as lines:
        yield from _json_lines(lines, name)


def _json_lines(lines, name: str) -> Rows:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        bad = _undecodable(line)
        if bad is not None:
            problem = f"not UTF-8 text (byte 0x{bad[0]:02x} at column {bad[1] + 1}); save the file as UTF-8"
            yield where, DataError(where, None, problem, "not_utf8")
            continue
        try:
            yield where, json.loads(line.rstrip("\r\n"), object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            yield where, DataError(where, None, f"invalid JSON: {err.msg} (column {err.colno})", "invalid_json")
        except _DuplicateKey as err:
            yield where, DataError(where, str(err), "given twice in one object (only one value can be used)", "duplicate_key")


def _read_json(path: Path, name: str, gzipped: bool) -> Rows:
    with _open_text(path, gzipped) as f:
        text = f.read()
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved as .json, a common mix-up
            yield from _json_lines(io.StringIO(text), name)
            return
        bad = _undecodable(text)
        if bad is not None:  # a byte that is not UTF-8 outside a string breaks the JSON itself
            line = text.count("\n", 0, bad[1]) + 1
            raise DataFileError(f"{name}:{line}: not UTF-8 text (byte 0x{bad[0]:02x}); save the file as UTF-8") from None
        raise DataError(f"{name}:{err.lineno}", None, f"invalid JSON: {err.msg} (column {err.colno})", "invalid_json") from None
    except _DuplicateKey as err:
        raise DataFileError(f"{name}: key {str(err)!r} is given twice in one object (only one value can be used)") from None
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
            _check_header(header or [], f"{name}:{end}")
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


def _check_header(header: list[str], where: str) -> None:
    """A column named twice would silently give its last cell (dict(zip(...)) keeps one): refuse it."""
    twice = [column for column in dict.fromkeys(header) if header.count(column) > 1]
    if twice:
        raise DataFileError(f"{where}: column(s) {', '.join(map(repr, twice))} named twice in the header; rename or remove the copies")
    if any(_undecodable(column) for column in header):
        raise DataFileError(f"{where}: the header is not UTF-8 text; save the file as UTF-8")


def _read_tsv(path: Path, name: str, gzipped: bool) -> Rows:
    return _read_csv(path, name, gzipped, delimiter="\t")


def _read_parquet(path: Path, name: str, gzipped: bool) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield f"{name}:row {number}", row
    except (pa.ArrowException, OSError) as err:
        after = f" after row {number}" if number else ""
        raise DataFileError(f"{name}: not a readable Parquet file{after} ({err})") from None


def _open_saved(folder: Path, split: str | None, name: str):
    """The dataset in a save_to_disk folder (the split of a DatasetDict), and the label its rows get."""
    import datasets

    try:
        data = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:
        raise DataFileError(f"{name}: not a readable save_to_disk folder ({err.__class__.__name__}: {err})") from None
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


def _open_hub(hub: HubDataset, entry: str):
    import datasets

    try:
        return datasets.load_dataset(hub.repo, hub.subset, split=hub.split)
    except Exception as err:  # offline, not found, gated, unknown split or subset: all one-line user errors
        if datasets.config.HF_HUB_OFFLINE and isinstance(err, ConnectionError):
            args = ", ".join(repr(a) for a in (hub.repo, hub.subset) if a)
            raise DataFileError(
                f"{entry}: hub dataset {hub.repo} is not in the local cache and the hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE). "
                f"Use a local copy: where the hub is reachable, datasets.load_dataset({args}).save_to_disk('folder') "
                f"and give folder::{hub.split}, or export the rows to a JSONL file"
            ) from None
        local = " (and no local file or folder has this name)" if not entry.startswith("hf://") else ""
        raise DataFileError(f"{entry}: cannot load hub dataset {hub.repo}{local}: {' '.join(str(err).split())}") from None


def _read_dataset(data, label: str) -> Rows:
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
