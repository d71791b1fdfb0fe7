"""The model half of perplexity: summed negative log-likelihood of the scored tokens of each example.
tunesmith.eval.metrics.perplexity turns the sums into a number.

Scope: "response" scores only the reference answer (the last assistant turn, its end-of-turn token
included), the way SFT trains it; "text" scores every token of the rendered conversation or text row.

Texts longer than the window are scored by a sliding window (as in transformers' perplexity guide):
windows of `window` tokens start every `stride` tokens, and each token is scored once, in the first
window that reaches it, with up to window - stride tokens of context before it. The first token of a
text has no context and is never scored.
"""

from __future__ import annotations

from tunesmith.data.formats import Example
from tunesmith.data.masks import tokenize_conversation, tokenize_text
from tunesmith.data.templates import TemplateError

IGNORE = -100


def scored_tokens(example: Example, template, tokenizer, scope: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels IGNORE where a token is context, not scored."""
    if scope not in ("response", "text"):
        raise ValueError(f"perplexity scope: {scope!r} is not one of 'response', 'text'")
    if example.text is not None:
        tok = tokenize_text(template, tokenizer, example.text)
        return tok.input_ids, tok.labels
    last = len(example.messages) - 1
    tok = tokenize_conversation(template, tokenizer, example.messages, trained_from=last, tools=example.tools)
    if tok.problem:
        raise TemplateError(f"{example.where}: {tok.problem.detail}")
    return tok.input_ids, (list(tok.input_ids) if scope == "text" else tok.labels)


def windows(ids: list[int], labels: list[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """Chunks of at most `window` tokens; labels of tokens an earlier chunk already scored are IGNORE."""
    if not 0 < stride <= window:
        raise ValueError(f"perplexity stride {stride} must be in 1..window ({window})")
    chunks, scored_until = [], 0
    for begin in range(0, max(len(ids), 1), stride):
        end = min(begin + window, len(ids))
        chunk_labels = [IGNORE if begin + k < scored_until else label for k, label in enumerate(labels[begin:end])]
        chunks.append((ids[begin:end], chunk_labels))
        scored_until = end
        if end == len(ids):
            break
    return chunks


def nll_sums(
    loaded, examples: list[Example], scope: str = "response", window: int | None = None, stride: int | None = None, batch_size: int = 8,
    progress: str | None = None,
) -> tuple[list[float], list[int]]:
    """Per example: summed NLL (nats) of its scored tokens, and how many tokens were scored. `progress`: the label of
    a progress bar over the windows scored (none without it)."""
    import torch
    from tqdm.auto import tqdm

    model, tokenizer = loaded.model, loaded.tokenizer
    window = window or min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 4096)
    stride = stride or max(1, window // 2)
    chunks = []   # (example index, ids, labels)
    for i, example in enumerate(examples):
        ids, labels = scored_tokens(example, loaded.template, tokenizer, scope)
        chunks += [(i, c_ids, c_labels) for c_ids, c_labels in windows(ids, labels, window, stride)]
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    chunks.sort(key=lambda c: -len(c[1]))
    bar = tqdm(total=len(chunks), desc=progress, unit="seq", disable=progress is None)
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        width = max(len(c[1]) for c in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([c[1] + [pad] * (width - len(c[1])) for c in batch])               # (B, T), right padded
        attention = torch.tensor([[1] * len(c[1]) + [0] * (width - len(c[1])) for c in batch])
        labels = torch.tensor([c[2] + [IGNORE] * (width - len(c[2])) for c in batch])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits.float()
        logits = logits[:, -width:]  # prompt tuning's logits begin with those of its virtual tokens
        # Token t is predicted by the logits at t - 1.
        targets = labels[:, 1:].to(logits.device)                                                        # (B, T-1)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)                                             # (B, T-1, V)
        mask = targets != IGNORE
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)                     # (B, T-1)
        nll = -(picked * mask).sum(dim=1)
        for (i, _, _), value, n in zip(batch, nll.tolist(), mask.sum(dim=1).tolist()):
            sums[i] += value
            counts[i] += n
        bar.update(len(batch))
    bar.close()
    return sums, counts
