"""README's commands, walked in README's order after its quick start, on a tiny model, so the new user's path
(quickstart, generate, eval, review sheet, runs, merge, push, serve with curl and the OpenAI client, chat,
constitution) cannot rot unnoticed.

Every command of the ```bash blocks runs as written (an examples/ script too), in a folder holding the checkout's recipes/ and examples/,
with four substitutions that keep it fast: the demo model's hub id names a tiny random Llama (SmolLM2's
tokenizer), the example data files hold their first rows only, `make quickstart` is `tunesmith quickstart`
with a few training steps, and the server listens on a free port. Left out, each for a stated reason: training from the shipped recipes (minutes on SmolLM2: the
quickstart trains, and tests/methods train every method), runs that only those recipes make, and what is not a
tunesmith command (make test, pytest, benchmarks, docker).
"""

import glob
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.quickstart import point_link

ROOT = Path(__file__).resolve().parents[1]
DEMO = "HuggingFaceTB/SmolLM2-135M-Instruct"
TUNESMITH = ".venv/bin/tunesmith"


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """A bash block's commands as argument lists: continuation lines joined, `# comments` dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in (re.sub(r"(^|\s)#.*$", "", line) for line in lines) if line.strip()]


def left_out(words: list[str]) -> str | None:
    """Why a command is not walked, or None."""
    if words[0] == "make":
        return None if words[1:] == ["quickstart"] else "the test suite and installer themselves"
    if words[0] == ".venv/bin/python" and words[1].startswith("examples/"):
        return None  # an example script that makes what the next commands read (a tiny model)
    if words[0] in ("docker", "bash", "python3", ".venv/bin/pytest", ".venv/bin/python"):  # bash, python3: bench/gpu, for a GPU machine
        return "not a tunesmith command"
    if words[0] == TUNESMITH and words[1] == "train" and "--keys" not in words:
        return "trains a shipped recipe on SmolLM2 (minutes)"
    if words[1:3] == ["queue", "add"]:
        return None  # the runs a queued command reads are made by the jobs queued before it
    outputs = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--out", "--output")}
    needed = [w for w in words if re.match(r"runs/(?!quickstart)", w) and w not in outputs and not Path(w).exists()]
    return f"needs {needed[0]}, which only its recipe makes" if needed else None


def example_data(target: Path, rows: int = 8) -> None:
    """examples/ with every data file cut to its first `rows` rows (twice that for training files)."""
    for file in (ROOT / "examples").rglob("*"):
        copy = target / file.relative_to(ROOT / "examples")
        if file.is_dir() or file.suffix == ".py":
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
        copy.write_text("".join(lines[: 2 * rows if file.stem == "train" else rows]) if file.suffix == ".jsonl" else "".join(lines), encoding="utf-8")


def tiny_sweep(path: Path, folder: Path, overrides: list[str]) -> str:
    """A copy of a shipped sweep with two trials and `overrides` last (they win over the sweep's own)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["overrides"], raw["n_trials"] = [*raw.get("overrides", []), *overrides], 2
    copy = folder / f"tiny-{path.name}"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return str(copy)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_ratings(sheet: Path) -> None:
    """What README asks of the reviewer: a rating in every rating_* cell."""
    import csv

    with sheet.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        for column in row:
            if column.startswith("rating_"):
                row[column] = str(3 + (i + ord(column[-1])) % 3)
    with sheet.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class Server:
    """`tunesmith serve ...` as README runs it, in its own process (it stays up while the next commands talk to it)."""

    def __init__(self, args: list[str], port: int):
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "tunesmith", *args, "--port", str(port)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, f"serve exited:\n{self.process.stdout.read()}"
            assert time.monotonic() < deadline, "serve did not come up"
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
            except OSError:
                time.sleep(0.5)
                continue
            assert self.process.poll() is None, "another server answers on this port"
            return

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def curl(words: list[str], port: int) -> dict:
    """README's curl: its URL (on our port), -H headers and -d body, sent as curl would send it."""
    url = next(w for w in words if w.startswith("http")).replace(":8000", f":{port}")
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    body = next(words[i + 1] for i, w in enumerate(words) if w == "-d").encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


@pytest.mark.slow  # a minute on 2 CPU cores: every command loads a model, and the server starts in its own process
def test_readme_commands_work_in_order_after_the_quickstart(tmp_path, monkeypatch, capsys, tiny_llama):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # queued jobs run in processes of their own
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    example_data(tmp_path / "examples")
    port = free_port()
    walked, skipped, server = [], [], None
    try:
        for language, block in readme_blocks():
            if language == "python" and "OpenAI(" in block:
                assert server is not None, "README's OpenAI client example comes before its serve command"
                namespace = {}
                exec(block.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), namespace)
                assert namespace["reply"].model == "quickstart" and isinstance(namespace["reply"].choices[0].message.content, str)
                walked.append("openai client")
            if language != "bash":
                continue
            for words in commands(block):
                reason = left_out(words)
                if reason:
                    skipped.append((" ".join(words[:3]), reason))
                    continue
                if words[0] == ".venv/bin/python":  # the checkout's script, run here
                    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
                    subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], env=env, check=True, capture_output=True)
                    walked.append(words[1])
                    continue
                if words[0] == "curl":
                    assert server is not None, "README's curl comes before its serve command"
                    answer = curl(words, port)
                    assert answer["model"] == "quickstart" and isinstance(answer["choices"][0]["message"]["content"], str)
                    walked.append("curl")
                    continue
                tiny = [f"model.path={tiny_llama}", "model.dtype=float32", "train.max_steps=3", "train.lr=0.05"]
                if words[0] == "make":  # make quickstart
                    args = ["quickstart", *tiny]
                else:
                    args = [w.replace(DEMO, str(tiny_llama)) for w in words[1:]]
                    args = [m for w in args for m in (sorted(glob.glob(w)) if "*" in w else [w])]
                if args[:2] == ["queue", "add"] and args[2].startswith("recipes/"):  # a shipped recipe, queued: on the tiny model
                    args += tiny
                if args[0] == "sweep":  # two trials of four steps, on the tiny model
                    args[1] = tiny_sweep(Path(args[1]), tmp_path, [*tiny, "train.max_steps=4", "train.eval_steps=2", "train.save_steps=2"])
                grouped = {"eval": ("select", "import-sheet"), "runs": ("list", "compare"), "queue": ("add", "work", "ls", "logs")}
                verb = " ".join(args[:2]) if args[1:2] and args[1] in grouped.get(args[0], ()) else args[0]
                if verb == "serve":  # README serves twice (plain, then with a key): one server at a time
                    if server is not None:
                        server.stop()
                    server = Server(args, port)
                    walked.append(verb)
                    continue
                if verb == "eval import-sheet":
                    fill_ratings(Path(args[2]))
                if verb == "chat":
                    monkeypatch.setattr(sys, "stdin", io.StringIO("My parcel never arrived\n/exit\n"))
                capsys.readouterr()
                code = main(args)
                out, err = capsys.readouterr()
                assert code == 0, f"README command failed: {' '.join(words)}\n{out}\n{err}"
                if verb == "runs list":  # runs/quickstart links to the run: listed once, under its own name
                    assert len([line for line in out.splitlines() if "quickstart" in line]) == 1, out
                if verb == "queue work":  # every queued variant trained, and the evaluation after them ran
                    assert "failed" not in err and err.count(": done after") == 4, err
                walked.append(verb)
    finally:
        if server is not None:
            server.stop()

    assert os.readlink("runs/quickstart").startswith("quickstart-")
    expected = {"quickstart", "train", "generate", "eval", "eval import-sheet", "eval select", "runs list", "runs compare",
                "constitution", "merge", "push", "serve", "curl", "openai client", "chat", "queue add", "queue work", "queue ls", "queue logs", "sweep"}
    assert expected <= set(walked), f"README lost commands the walk expects: {sorted(expected - set(walked))}"
    reasons = {reason.split(",")[0] for _, reason in skipped}
    assert reasons <= {"the test suite and installer themselves", "not a tunesmith command", "trains a shipped recipe on SmolLM2 (minutes)",
                       "needs runs/sft-qlora", "needs runs/restore-ko"}, skipped


def test_the_link_follows_the_newest_quickstart_and_leaves_a_run_folder_alone(tmp_path):
    runs = tmp_path / "runs"
    first, second = runs / "quickstart-1", runs / "quickstart-2"
    first.mkdir(parents=True)
    second.mkdir()
    link = runs / "quickstart"
    assert point_link(link, first) == f"{link} -> quickstart-1: the commands in README use {link}"
    point_link(link, second)
    assert os.readlink(link) == "quickstart-2" and first.is_dir()  # the earlier run is kept
    second.rmdir()
    point_link(link, first)  # a link whose run was deleted is replaced too
    assert os.readlink(link) == "quickstart-1"
    link.unlink()
    link.mkdir()  # `tunesmith train recipes/quickstart.yaml` writes runs/quickstart itself
    assert "run folder of its own" in point_link(link, first) and not link.is_symlink()
    assert sorted(p.name for p in runs.iterdir()) == ["quickstart", "quickstart-1"]  # no temporary link left behind


@pytest.mark.parametrize("target", ["runs/quickstart", "./quickstart", "runs/missing/adapter"])
def test_a_missing_run_folder_is_named_as_such(tmp_path, monkeypatch, capsys, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["generate", target, "hello"]) == 2
    assert capsys.readouterr().err == f"error: {target}: no such run folder or model folder\n"


def test_without_a_runs_folder_the_error_says_both_readings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "runs/quickstart", "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.path: 'runs/quickstart' is not a folder here and cannot be downloaded from the hub: ")
