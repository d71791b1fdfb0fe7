"""The one executor every data verb runs on: outputs checked before any work, rows processed in batches under a
progress bar, results written in chunks that a killed run picks up again, and the report.

    job = Job("augment", args.input, {"out": Output(args.out)}, settings={...})
    rows, read = job.read(on_bad_row, limit)
    report = job.run_chunked(rows, read, process, batch_size)   # per-row verbs: resumable
    report = job.finish({"out": kept}, counts)                  # whole-set verbs (dedup, cluster): atomic

Resuming: while a per-row verb runs, each chunk of input rows is written whole to `<out>.parts/part-<n>.<name>.jsonl`
and recorded in `<out>.parts/manifest.json` with its counts. Started again with the same arguments, the run skips
the recorded chunks; at the end the parts are joined into the outputs, which are then equal to an uninterrupted
run's, because each row draws its randomness from the seed and its own position, never from what ran before.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.curate.report import render_markdown
from tunesmith.curate.rows import Counts, Row, iter_batches, read_input
from tunesmith.data.load import hub_dataset
from tunesmith.errors import TunesmithError

CHUNK_ROWS = 256    # input rows per resumable chunk
KINDS = {".jsonl": "jsonl", ".csv": "csv"}

# process(batch, counts) -> rows for each output name
Process = Callable[[list[Row], Counts], dict[str, list[dict]]]


@dataclass
class Output:
    path: Path
    kind: str = "jsonl"     # jsonl, or csv (UTF-8 with a byte-order mark, so Excel reads Korean right)
    columns: list[str] | None = None    # csv: the header, written even when no row comes (default: the rows' keys)

    def __post_init__(self):
        self.path = Path(self.path).expanduser()


@dataclass
class Job:
    verb: str
    input: str
    outputs: dict[str, Output]          # name -> file; the first is the main output, next to which the report goes
    settings: dict                      # every argument that decides the output (seed, limit, ...): fingerprinted, reported
    overwrite: bool = False
    report: Path | None = None          # where the report goes; default: next to the main output, OUT.report.json
    sections: Callable[[dict], list[str]] = lambda extra: []   # the verb's own report sections (Markdown lines)
    started: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> Path:
        return next(iter(self.outputs.values())).path

    @property
    def parts(self) -> Path:
        return self.main.with_name(self.main.name + ".parts")

    @property
    def report_path(self) -> Path:
        return self.report or self.main.with_name(self.main.name + ".report.json")

    def fingerprint(self) -> str:
        # The outputs' names too: a run resumed with another output added would find no parts for it.
        identity = [self.verb, input_identity(self.input), self.settings, list(self.outputs)]
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check(self) -> None:
        """Every output is new (or --overwrite, or the run being resumed), none is the input, none twice."""
        from tunesmith.checks import check_output_file

        source = None if hub_dataset(self.input) else Path(self.input.split("::")[0]).expanduser()
        seen = {}
        for name, out in self.outputs.items():
            flag = flag_of(name)
            check_output_file(str(out.path), flag)
            if KINDS.get(out.path.suffix.lower()) != out.kind:
                raise TunesmithError(f"{flag} {out.path}: write a .{out.kind} file (this output is {out.kind})")
            if source is not None and (out.path.resolve() == source.resolve() or (out.path.exists() and source.exists() and out.path.samefile(source))):
                raise TunesmithError(f"{flag} {out.path}: is the input; write the result to a new file")
            if source is not None and source.is_dir() and source in out.path.resolve().parents:
                raise TunesmithError(f"{flag} {out.path}: inside the input folder {source}; write the result elsewhere")
            if out.path.resolve() in seen:
                raise TunesmithError(f"{flag} {out.path}: also given as {seen[out.path.resolve()]}")
            seen[out.path.resolve()] = flag
            if out.path.exists() and not self.overwrite and not self.resuming():
                raise TunesmithError(f"{flag} {out.path} already exists: choose another file, or pass --overwrite")
        if source is not None and self.report_path.resolve() == source.resolve():
            raise TunesmithError(f"--report {self.report_path}: is the input; write the report to a new file")
        check_output_file(str(self.report_path), "--report")
        manifest = self._manifest() if self.outputs else None
        if manifest is not None and manifest["fingerprint"] != self.fingerprint():
            if not self.overwrite:
                changed = [k for k in {**manifest["settings"], **self.settings} if manifest["settings"].get(k) != self.settings.get(k)]
                if manifest.get("outputs", list(self.outputs)) != list(self.outputs):
                    changed.append(f"outputs {' '.join(map(flag_of, manifest['outputs']))} then, {' '.join(map(flag_of, self.outputs))} now")
                changed = ", ".join(changed)
                raise TunesmithError(
                    f"{self.parts} holds an unfinished run with other settings ({changed or 'the input changed'}): "
                    "run it again with the same arguments to finish it, or pass --overwrite to start afresh"
                )
            shutil.rmtree(self.parts)

    def resuming(self) -> bool:
        manifest = self._manifest() if self.outputs else None
        return manifest is not None and manifest["fingerprint"] == self.fingerprint()

    def read(self, on_bad_row: str, limit: int | None) -> tuple[list[Row], Counts]:
        """Outputs checked first (cheap), then every row read: a bad row stops here, before any model loads."""
        self.check()
        counts = Counts()
        rows = read_input(self.input, on_bad_row, counts, limit)
        counts.add("read", len(rows) + sum(counts.dropped.values()))
        if not counts.counters["read"]:
            raise TunesmithError(f"{self.input}: no rows")
        return rows, counts

    def run_chunked(self, rows: list[Row], read: Counts, process: Process, batch_size: int, chunk_rows: int = CHUNK_ROWS,
                    summary: Callable[[Counts], dict] | None = None) -> dict:
        """Process rows chunk by chunk (batches of batch_size within a chunk), each chunk saved before the next starts.
        `summary` makes the report's `extra` from the counts of every chunk (rates, tables)."""
        from tqdm.auto import tqdm

        manifest = self._manifest() if self.resuming() else None
        done = manifest["chunks"] if manifest else {}
        if manifest is None:
            self.parts.mkdir(parents=True, exist_ok=True)
            manifest = {"fingerprint": self.fingerprint(), "verb": self.verb, "settings": self.settings, "outputs": list(self.outputs), "chunks": done}
            _write_atomically(self.parts / "manifest.json", json.dumps(manifest, indent=1, default=str))
        chunks = [rows[i : i + chunk_rows] for i in range(0, len(rows), chunk_rows)]
        skipped = sum(len(chunk) for n, chunk in enumerate(chunks) if str(n) in done)
        if skipped:
            print(f"resuming: {len(done)} of {len(chunks)} chunks already written in {self.parts}", file=sys.stderr)
        with tqdm(total=len(rows), initial=skipped, desc=f"data {self.verb}", unit="row", dynamic_ncols=True) as bar, self._resumable(len(chunks), done):
            for n, chunk in enumerate(chunks):
                if str(n) in done:
                    continue
                counts, written = Counts(), {name: [] for name in self.outputs}
                for batch in iter_batches(chunk, batch_size):
                    for name, out_rows in process(batch, counts).items():
                        written[name] += out_rows
                    bar.update(len(batch))
                for name, out_rows in written.items():
                    _write_atomically(self.parts / f"part-{n:05d}.{name}.jsonl", "".join(json_line(r) for r in out_rows))
                done[str(n)] = counts.to_dict()
                _write_atomically(self.parts / "manifest.json", json.dumps(manifest, indent=1, default=str))
        total = Counts()
        total.merge(read)
        for n in range(len(chunks)):
            total.merge(Counts.from_dict(done[str(n)]))
        outputs = {name: [] for name in self.outputs}
        for n in range(len(chunks)):
            for name in self.outputs:
                outputs[name] += read_jsonl(self.parts / f"part-{n:05d}.{name}.jsonl")
        report = self.finish(outputs, total, summary(total) if summary else None)
        shutil.rmtree(self.parts)
        return report

    def finish(self, outputs: dict[str, list[dict]], counts: Counts, extra: dict | None = None) -> dict:
        """Write every output whole (a temporary file renamed), then the report next to the main one."""
        for name, out in self.outputs.items():
            write_rows(out, outputs[name])
        seconds = time.perf_counter() - self.started
        read = counts.counters.get("read", 0)
        report = {
            "verb": self.verb,
            "input": self.input,
            "outputs": {name: str(out.path) for name, out in self.outputs.items()},
            "report": str(self.report_path.with_suffix(".md")),
            "settings": self.settings,
            "read": read,
            "written": {name: len(outputs[name]) for name in self.outputs},
            "dropped": counts.dropped,
            "first_errors": counts.first_errors,
            "counters": {k: v for k, v in counts.counters.items() if k != "read"},
            "examples": counts.examples,
            "extra": extra or {},
            "seconds": round(seconds, 2),
            "rows_per_s": round(read / seconds, 1) if seconds > 0 else None,
        }
        _write_atomically(self.report_path, json.dumps(report, indent=2, ensure_ascii=False, default=str))
        _write_atomically(self.report_path.with_suffix(".md"), render_markdown(report, self.sections(report["extra"])))
        return report

    @contextmanager
    def _resumable(self, chunks: int, done: dict):
        """Ctrl-C stops between batches; what was written is said, and how to go on."""
        try:
            yield
        except KeyboardInterrupt:
            print(f"\ninterrupted: {len(done)} of {chunks} chunks written in {self.parts}; run the same command again to continue", file=sys.stderr)
            raise

    def _manifest(self) -> dict | None:
        file = self.parts / "manifest.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def flag_of(output: str) -> str:
    """The flag that names an output: 'to_sft' -> '--to-sft'."""
    return f"--{output.replace('_', '-')}"


def input_identity(path: str) -> list:
    """What the fingerprint knows of the input: its path, size and modification time (a hub dataset: its name)."""
    local = Path(path.split("::")[0]).expanduser()
    if hub_dataset(path) is not None or not local.exists():
        return [path]
    stat = local.stat()
    return [str(local.resolve()), path.partition("::")[2], stat.st_size, stat.st_mtime_ns]


def json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_rows(out: Output, rows: list[dict]) -> None:
    if out.kind == "jsonl":
        _write_atomically(out.path, "".join(json_line(r) for r in rows))
        return
    columns = out.columns or list(dict.fromkeys(key for row in rows for key in row))
    tmp = out.path.with_name(f".{out.path.name}.tmp")
    with tmp.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
    os.replace(tmp, out.path)


def cell(value) -> str:
    """A CSV cell: text as it is, nothing as empty, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_atomically(path: Path, text: str) -> None:
    """A reader (or a resumed run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
