"""`tunesmith train --nproc N` waits on torchrun: a SIGTERM sent to it (by `kill`, a scheduler, a queue worker) must
reach the ranks, so that they save and stop, instead of killing the launcher and leaving torchrun training on."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid")]

# Stands in for torchrun: says it is ready, then waits; a SIGTERM is written down and ends it with code 7.
CHILD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1], "w").write("SIGTERM"), sys.exit(7)))
    signal.signal(signal.SIGINT, lambda *_: (open(sys.argv[1], "w").write("SIGINT"), sys.exit(8)))
    open(sys.argv[1] + ".ready", "w").close()
    time.sleep(60)
""")
LAUNCHER = "import sys; from tunesmith.distributed import run_launcher; sys.exit(run_launcher([sys.executable, '-c', sys.argv[1], sys.argv[2]]))"


def start(tmp_path):
    seen = tmp_path / "seen"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD, str(seen)])
    deadline = time.monotonic() + 60
    while not (tmp_path / "seen.ready").exists():
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.05)
    return launcher, seen


def test_a_sigterm_to_the_launcher_reaches_torchrun_and_the_launcher_exits_with_its_code(tmp_path):
    launcher, seen = start(tmp_path)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 7
    assert seen.read_text() == "SIGTERM"


def test_a_ctrl_c_is_left_to_the_terminal_which_sends_it_to_torchrun_itself(tmp_path):
    launcher, seen = start(tmp_path)
    launcher.send_signal(signal.SIGINT)  # not passed on: from a terminal, torchrun gets this one directly
    time.sleep(1)
    assert launcher.poll() is None and not seen.exists()
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 7


@pytest.mark.slow  # two ranks under torchrun, started twice: about a minute on 2 cores
def test_a_sigterm_to_train_nproc_saves_on_every_rank_and_says_to_resume_with_nproc(stories_path, tmp_path):
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in CAPITALS))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": str(tmp_path / "capitals.jsonl"), "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 100000, "batch_size": 1, "logging_steps": 1, "save_steps": 2, "save_total_limit": 2},
        "output_dir": str(tmp_path / "run"),
    }))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(recipe), "--nproc", "2"]
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir():
        assert time.monotonic() < deadline and launcher.poll() is None, launcher.stdout.read() if launcher.poll() is not None else "no checkpoint yet"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 130, output  # as one process stopped by a signal: a queue worker re-queues it to resume
    last = re.search(r"interrupted at step (\d+): checkpoint saved to (\S+); continue with: (.*)$", output, re.M)
    assert last, output
    step, checkpoint, resume = last.groups()
    assert Path(checkpoint).name == f"checkpoint-{step}" and (Path(checkpoint) / "rng_state_1.pth").is_file()  # both ranks saved
    assert resume == f"tunesmith train {recipe} --nproc 2 --resume"
    assert not (tmp_path / "run" / "adapter").exists()
