"""A batch of generations in flight: left-padded rows sharing one KV cache, which rows leave (finished,
cancelled) and join (new requests for the same weights) between decoding steps.

Every row keeps its own positions (`last`), so the padding a row gets when others join or when it joins
longer rows never shifts its rotary positions; the attention mask hides the padding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Batch:
    jobs: list                  # one per row
    cache: object               # transformers DynamicCache: per layer keys/values (B, H, T, D)
    mask: object                # (B, T) 1 for real tokens, 0 for padding
    last: object                # (B,) position of each row's last token
    logits: object              # (B, V) logits of each row's next token

    def __len__(self) -> int:
        return len(self.jobs)


def prefill(model, prompts: list[list[int]], pad_id: int, jobs: list, virtual=None) -> Batch:
    """Run the prompts, left-padded, through the model: a batch ready to sample its first tokens. `virtual`
    (tunesmith.models.peft.VirtualTokens): a prompt or prefix tuning adapter's tokens, put before every row
    (and its padding), as in training, where they came before each unpadded row."""
    import torch

    device = model.device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
    inputs = {"input_ids": ids}
    if virtual is not None:
        n = virtual.count
        mask = torch.cat([mask.new_ones(len(prompts), n), mask], dim=1)  # (B, n + T)
        positions = positions + n
        if virtual.cache is not None:  # prefix tuning: keys and values already in the cache
            inputs["past_key_values"] = virtual.cache
        else:  # prompt tuning: embeddings before the tokens'
            tokens = model.get_input_embeddings()(ids)
            inputs = {"inputs_embeds": torch.cat([virtual.embeddings.to(tokens.dtype), tokens], dim=1)}
            positions = torch.cat([torch.arange(n, device=device).expand(len(prompts), n), positions], dim=1)
    out = model(**inputs, attention_mask=mask, position_ids=positions, use_cache=True)
    return Batch(jobs, out.past_key_values, mask, positions[:, -1], out.logits[:, -1, :])


def step(model, batch: Batch, tokens: list[int]) -> None:
    """Feed one token per row; the batch then holds the logits of the token after it."""
    import torch

    batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
    batch.last = batch.last + 1
    ids = torch.tensor(tokens, device=batch.mask.device)[:, None]  # (B, 1)
    out = model(input_ids=ids, attention_mask=batch.mask, position_ids=batch.last[:, None], past_key_values=batch.cache, use_cache=True)
    batch.cache, batch.logits = out.past_key_values, out.logits[:, -1, :]


def select(batch: Batch, rows: list[int]) -> Batch | None:
    """The batch with only these rows (None when no row is left)."""
    import torch

    if not rows:
        return None
    if len(rows) < len(batch):
        index = torch.tensor(rows, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask, batch.last, batch.logits = batch.mask[index], batch.last[index], batch.logits[index]
        batch.jobs = [batch.jobs[r] for r in rows]
    return batch


def can_join(batch: Batch) -> bool:
    """Rows can join only a plain growing cache (not sliding-window, static or quantised ones)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in batch.cache.layers)


def concat(a: Batch | None, b: Batch) -> Batch:
    """Rows of b after the rows of a, in a's cache; the shorter side is left-padded to the longer."""
    import torch
    import torch.nn.functional as F

    if a is None:
        return b
    length = max(a.mask.shape[1], b.mask.shape[1])

    def left_pad(x, dim_from_end: int):
        missing = length - x.shape[-dim_from_end]
        if missing == 0:
            return x
        pad = [0, 0] * (dim_from_end - 1) + [missing, 0]  # F.pad lists dims from the last one backwards
        return F.pad(x, pad)

    for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
        layer_a.keys = torch.cat([left_pad(layer_a.keys, 2), left_pad(layer_b.keys, 2)])      # (B, H, T, D)
        layer_a.values = torch.cat([left_pad(layer_a.values, 2), left_pad(layer_b.values, 2)])
    a.mask = torch.cat([left_pad(a.mask, 1), left_pad(b.mask, 1)])
    a.last = torch.cat([a.last, b.last])
    a.logits = torch.cat([a.logits, b.logits])
    a.jobs = a.jobs + b.jobs
    return a
