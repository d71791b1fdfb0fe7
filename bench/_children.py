"""Run each configuration of a benchmark in its own Python process, so its peak memory is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
