"""Run each configuration of a benchmark in its own Python process, so its peak memory is its own; and
time training from the end of its first step (which pays for warm-up), in tokens per second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_each(script: str, configs: list[str], steps: int) -> list[dict]:
    """Calls `script --child NAME --steps N` per config; each prints one `RESULT {json}` line."""
    os.chdir(ROOT)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    results = []
    for name in configs:
        proc = subprocess.run([sys.executable, script, "--child", name, "--steps", str(steps)], env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][7:]))
        print(f"done: {name}", file=sys.stderr)
    return results


def step_clock():
    """A trainer callback that times the steps after the first: `.tokens_per_s()` once training ended."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen
            self.t1, self.tokens1 = time.perf_counter(), state.num_input_tokens_seen

        def tokens_per_s(self) -> float:
            return (self.tokens1 - self.tokens0) / (self.t1 - self.t0)

    return Clock()
