"""What the training benchmarks share: each configuration runs in its own Python process, so its peak
memory is its own, and training is timed from the end of its first step (which pays for warm-up)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmark(script: str, method: str, recipe: str, configs: dict[str, list[str]], default_steps: int) -> list[dict] | None:
    """The benchmark's command line. In the parent: run every chosen config in a child and return their results.
    In a child (`--child NAME`): train `recipe` with `method` and that config's overrides, print the result, return None."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=default_steps)
    parser.add_argument("--configs", default=",".join(configs))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(method, recipe, args.child, configs[args.child], args.steps)))
        return None
    return run_each(script, args.configs.split(","), args.steps)


def measure(method: str, recipe: str, name: str, overrides: list[str], steps: int) -> dict:
    """A few training steps of `recipe`: tokens/s after step 1, wall time, peak resident memory."""
    import importlib

    from tunesmith.config import load_recipe

    train = importlib.import_module(f"tunesmith.methods.{method}").train
    clock = step_clock()
    out = Path(tempfile.mkdtemp()) / name
    base = [f"output_dir={out}", f"train.max_steps={steps}", f"train.save_steps={steps}", "data.eval=[]", "train.eval_steps=null"]
    started = time.perf_counter()
    train(load_recipe(ROOT / "recipes" / recipe, [*base, *overrides]), callbacks=[clock])
    return {
        "config": name,
        "tokens_per_s": clock.tokens_per_s(),
        "seconds": time.perf_counter() - started,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


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
