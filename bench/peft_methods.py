"""Trainable parameters and peak memory of every peft.method, each trained in its own process on the same rows.

    .venv/bin/python bench/peft_methods.py [--model stories260K|smollm2] [--steps 5] [--methods adapter,ia3,...]

Each method runs `tunesmith train` (sft, float32, batch 8, max_length 256) for --steps steps in a fresh process, so
peak resident memory (model load included) is that method's alone. Models: stories260K (../shared/models; 260K
parameters) or SmolLM2-135M-Instruct (offline, from the hub cache, as bench/sft_vs_trl.py loads it). On a GPU the
peak is torch.cuda.max_memory_allocated; on CPU the process's peak RSS. Prints a Markdown table (the README's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"stories260K": str(ROOT.parent / "shared" / "models" / "stories260K"), "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
METHODS = {
    "none": {"method": "none"},
    "lora": {"method": "lora", "r": 16},
    "lora (dora)": {"method": "lora", "r": 16, "dora": True},
    "lora (pissa)": {"method": "lora", "r": 16, "init": "pissa"},
    "adapter (pfeiffer)": {"method": "adapter"},
    "adapter (houlsby)": {"method": "adapter", "placement": "houlsby"},
    "ia3": {"method": "ia3"},
    "prefix": {"method": "prefix"},
    "prompt": {"method": "prompt"},
    "loha": {"method": "loha", "r": 16},
    "lokr": {"method": "lokr", "r": 16},
    "vera": {"method": "vera", "r": 256},
    "oft": {"method": "oft", "block_size": 16},
}
# OFT's block size must divide every adapted layer's input size: stories260K's MLP is 172 wide.
MODEL_METHODS = {"stories260K": {"oft": {"method": "oft", "block_size": 4}}}


def child(model: str, peft: dict, steps: int, folder: str) -> None:
    """Train once and print one JSON line: trainable/total parameters, peak memory, seconds per step."""
    import resource

    import torch

    from tunesmith.config import validate
    from tunesmith.methods.sft import train

    rows = [{"question": f"Tell me about item {i}.", "answer": " ".join(["word"] * (5 + i % 40))} for i in range(64)]
    data = Path(folder) / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = validate({
        "model": {"path": model, "dtype": "float32"},
        "data": {"train": str(data), "template": "chatml", "max_length": 256},
        "peft": peft,
        "train": {"max_steps": steps, "batch_size": 8, "lr": 1e-4, "warmup": 0},
        "output_dir": str(Path(folder) / "run"),
    })
    started = time.perf_counter()
    run = train(recipe)
    seconds = time.perf_counter() - started
    report = (run.path / "report.md").read_text(encoding="utf-8")
    trainable, total = (int(x.replace(",", "")) for x in re.search(r"trainable parameters: ([\d,]+) of ([\d,]+)", report).groups())
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"trainable": trainable, "total": total, "peak": peak, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="stories260K")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated names from: " + ", ".join(METHODS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(MODELS[args.model], json.loads(args.child), args.steps, os.environ["BENCH_FOLDER"])
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    print(f"model {args.model}, {args.steps} steps, batch 8, float32; peak = {'GPU allocated' if gpu() else 'process RSS'}\n")
    print("| peft.method | trainable parameters | share | peak memory | seconds (load + train) |")
    print("|---|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        with tempfile.TemporaryDirectory() as folder:
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--child", json.dumps(MODEL_METHODS.get(args.model, {}).get(name, METHODS[name]))],
                env={**env, "BENCH_FOLDER": folder}, capture_output=True, text=True,
            )
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {r['peak'] / 2**20:,.0f} MiB | {r['seconds']:.1f} |")


def gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
