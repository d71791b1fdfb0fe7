"""How SFT rows become training batches, and the collator that turns a batch into tensors.

Three plans, fixed for the run from the seed; the sampler (tunesmith.methods.sft) shuffles the order of the
batches again every epoch, so every example is seen exactly once per epoch and a resumed run can replay any epoch:

  packed   examples concatenated into rows of up to `budget` tokens by best-fit decreasing (Johnson 1974), never
           split. The collator restarts position_ids at 0 for every example and passes no attention mask:
           transformers then builds a block-diagonal causal mask (sdpa, eager: masking_utils'
           find_packed_sequence_indices) or runs the varlen kernels (FlashAttention, from cu_seq_lens), so no
           example attends to another. No padding at all.
  grouped  padded batches of similar length under the same token budget (padding included): long examples come
           a few at a time, short ones many at a time.
  random   batches of batch_size examples in a new random order every epoch, padded to their longest.

Labels keep the masks of tunesmith.data.masks exactly, with one addition: the label of every example's first token
is -100. Nothing predicts it (in a packed row, the token before it belongs to another example), and it is then not
counted among the tokens the loss is normalised by.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass


@dataclass
class BatchPlan:
    mode: str                    # packed, grouped or random
    batches: list[list[int]]     # row indices of each batch (random: one row each; the sampler groups them)
    budget: int | None           # tokens per batch, padding included (packed, grouped)

    def summary(self, lengths: list[int], batch_size: int) -> dict:
        """What the data report shows: batches per epoch, how full they are, how much of them is padding."""
        tokens = sum(lengths)
        if self.mode == "random":
            return {"mode": "random", "batches": -(-len(lengths) // batch_size), "batch_size": batch_size, "tokens": tokens}
        slots = sum(len(b) * max(lengths[i] for i in b) for b in self.batches) if self.mode == "grouped" else tokens
        return {
            "mode": self.mode,
            "batches": len(self.batches),
            "budget": self.budget,
            "tokens": tokens,
            "fill": round(tokens / (len(self.batches) * self.budget), 4),
            "padding_share": round((slots - tokens) / slots, 4),
            "examples_per_batch": round(len(lengths) / len(self.batches), 1),
        }


def plan_batches(lengths: list[int], mode: str, budget: int | None, batch_size: int, seed: int) -> BatchPlan:
    if mode == "random":
        return BatchPlan("random", [[i] for i in range(len(lengths))], None)
    planner = pack if mode == "packed" else group_by_length
    return BatchPlan(mode, planner(lengths, budget, seed), budget)


def longest_first(lengths: list[int], seed: int) -> list[int]:
    """Indices from the longest example to the shortest; equal lengths in an order drawn from the seed."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: the shuffle decides among equal lengths
    return order


def pack(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Best-fit decreasing: each example, longest first, goes into the open row it fills most tightly."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row number) of the rows with room, in ascending order
    for i in longest_first(lengths, seed):
        at = bisect.bisect_left(room, (lengths[i], -1))  # the row with the least room that still fits it
        if at == len(room):
            rows.append([i])
            left, row = capacity - lengths[i], len(rows) - 1
        else:
            left, row = room.pop(at)
            rows[row].append(i)
            left -= lengths[i]
        if left:
            bisect.insort(room, (left, row))
    return rows


def group_by_length(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Consecutive examples of the longest-first order, as many per batch as fit the budget once padded."""
    batches: list[list[int]] = []
    for i in longest_first(lengths, seed):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)  # the batch's first example is its longest
        else:
            batches.append([i])
    return batches


def batches_dataset(rows: list[dict], batches: list[list[int]]):
    """The planned batches as a dataset whose item k holds the rows of batch k: {"input_ids": [[...], ...], "labels": [[...], ...]},
    and "weights" when the rows carry token weights (tunesmith.data.token_weights)."""
    from datasets import Dataset

    keys = [key for key in ("input_ids", "labels", "weights") if rows and key in rows[0]]
    return Dataset.from_list([{key: [rows[i][key] for i in b] for key in keys} for b in batches])


@dataclass
class Collator:
    """Items of batches_dataset to model inputs: one packed row, or padded rows."""

    pad_token_id: int
    packed: bool
    varlen: bool = False  # pass sequence boundaries as FlashAttention's varlen kernels read them

    def __call__(self, items: list[dict]) -> dict:
        keys = [key for key in ("input_ids", "labels", "weights") if key in items[0]]
        rows = [dict(zip(keys, values)) for item in items for values in zip(*(item[key] for key in keys))]
        return self.pack(rows) if self.packed else self.pad(rows)

    def pack(self, rows: list[dict]) -> dict:
        import torch

        ids = torch.tensor([t for row in rows for t in row["input_ids"]])[None]                  # (1, T)
        labels = torch.tensor([t for row in rows for t in first_masked(row["labels"])])[None]  # (1, T)
        positions = torch.cat([torch.arange(len(row["input_ids"])) for row in rows])[None]     # (1, T)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
        if "weights" in rows[0]:
            batch["weights"] = torch.tensor([w for row in rows for w in first_masked(row["weights"], 0.0)])[None]  # (1, T)
        if self.varlen:
            lengths = torch.tensor([len(row["input_ids"]) for row in rows])
            cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            batch |= {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": int(lengths.max()), "max_length_k": int(lengths.max())}
        return batch

    def pad(self, rows: list[dict]) -> dict:
        """Right padding; padding is masked by position (attention_mask, labels -100), never by token id."""
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        weights = torch.zeros((len(rows), width)) if "weights" in rows[0] else None
        for k, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[k, :n] = torch.tensor(row["input_ids"])
            labels[k, :n] = torch.tensor(first_masked(row["labels"]))
            mask[k, :n] = 1
            if weights is not None:
                weights[k, :n] = torch.tensor(first_masked(row["weights"], 0.0))
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        return batch if weights is None else batch | {"weights": weights}


def first_masked(labels: list, masked=-100) -> list:
    return [masked, *labels[1:]]
