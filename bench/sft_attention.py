"""What attention over packed rows costs: tunesmith's packed sdpa against the alternatives, on the rows and the
tiny Llama of bench/sft_vs_trl.py (LoRA r16), in one process, the variants alternated on the same batches.

    .venv/bin/python bench/sft_attention.py [--rounds 4] [--threads 1]

Variants: `split` (tunesmith.models.attention: one causal sdpa call per example, the row cut with torch.split),
`slices` (the same calls on q[:, :, a:b] slices, as before), `row_mask` (transformers' sdpa over the whole row
with its block-diagonal mask) and `grouped` (length-grouped padded batches under the same token budget). Each
round trains one step of each (learning rate 0, so every round sees the same weights) and first checks that the
packed variants give the same loss. Prints non-padding tokens per second of the thread's CPU time, which on one
thread (the default) is the work done, steady on a shared machine; with --threads 2 also wall-clock tokens/s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sft_vs_trl  # noqa: E402


def slices_sdpa(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = cu_seq_lens_q.tolist()
    kwargs.pop("is_causal", None)
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True, **kwargs)[0]
             for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts, dim=1), None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    from tunesmith.data.batching import Collator, plan_batches
    from tunesmith.data.prepare import prepare_data
    from tunesmith.methods.steps import load_tokenizer_and_template
    from tunesmith.models import attention, lm_loss
    from tunesmith.models.load import load_model
    from tunesmith.models.peft import wrap_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    AttentionInterface.register("slices", slices_sdpa)
    AttentionMaskInterface.register("slices", sdpa_mask)
    folder = Path(tempfile.mkdtemp())
    data, model_path = sft_vs_trl.build(folder, "tiny")
    r = sft_vs_trl.recipe(data, model_path, "lora", 1, folder / "out", {})
    source, tokenizer, template = load_tokenizer_and_template(r)
    rows, _, _ = prepare_data(r.data, tokenizer, template, r.train.seed)
    lengths = [len(x["input_ids"]) for x in rows]
    budget = max(-(-8 * sum(lengths) // len(lengths)), max(lengths))  # as sft.plan: batch_size times the mean length
    model = wrap_model(load_model(r.model, source)[0], r.peft, False)
    lm_loss.add_chunked_loss(model)
    base = lm_loss.base_of(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    plans = {mode: plan_batches(lengths, mode, budget, 8, 0).batches for mode in ("packed", "grouped")}
    variants = {"split": ("packed", attention.NAME), "slices": ("packed", "slices"), "row_mask": ("packed", "sdpa"), "grouped": ("grouped", "sdpa")}

    def step(name: str, batch_rows: list[int]) -> tuple[int, float, float, float]:
        mode, implementation = variants[name]
        base.set_attn_implementation(implementation)
        collate = Collator(0, packed=mode == "packed", varlen=mode == "packed")
        batch = collate([{key: [rows[i][key] for i in batch_rows] for key in ("input_ids", "labels")}])
        cpu, wall = time.thread_time(), time.perf_counter()
        loss = model(**batch, use_cache=False, chunked_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return tokens, time.thread_time() - cpu, time.perf_counter() - wall, loss.item()

    losses = {name: step(name, plans["packed"][0])[3] for name in variants if variants[name][0] == "packed"}
    assert max(losses.values()) - min(losses.values()) < 1e-5, losses
    rng = random.Random(0)
    per_round: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for k in range(args.rounds):
        picked = {"packed": rng.choice(plans["packed"]), "grouped": rng.choice(plans["grouped"])}
        for name in (list(variants) if k % 2 == 0 else list(variants)[::-1]):
            tokens, cpu, wall, _ = step(name, picked[variants[name][0]])
            per_round[name].append((tokens / cpu, tokens / wall))
        print(f"round {k + 1}: " + ", ".join(f"{n} {v[-1][0]:.0f}" for n, v in per_round.items()), file=sys.stderr)
    print(f"tiny Llama, LoRA, rows of up to {budget} tokens, {args.threads} thread(s), {args.rounds} rounds: median tokens/s")
    print(f"{'variant':10} {'per CPU-s':>10} {'vs split':>9} {'wall':>8}")
    split = statistics.median(v[0] for v in per_round["split"])
    for name, values in per_round.items():
        cpu = statistics.median(v[0] for v in values)
        print(f"{name:10} {cpu:10.0f} {cpu / split:8.2f}x {statistics.median(v[1] for v in values):8.0f}")
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
