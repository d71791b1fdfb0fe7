"""How far a merged model is from the adapter model it came from: logit differences and KL.

A LoRA merge is exact in real arithmetic (W + s·BA); what breaks it in practice is rounding into a
16-bit dtype, merging into quantised weights, tied embeddings or modules_to_save handled wrongly.
The gate compares both models on the same token sequences, position by position, in one dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per merged dtype: (max |logit difference|, mean KL in nats per token). fp32 merges agree to rounding
# noise; a 16-bit merge rounds W + s·BA once more than the adapter path does, which moves logits by
# up to a few tenths while leaving the distributions almost identical (KL stays far below 1e-3).
DEFAULT_THRESHOLDS = {
    "float32": (1e-3, 1e-6),
    "bfloat16": (1.0, 1e-3),
    "float16": (0.5, 1e-3),
}


@dataclass
class Fidelity:
    max_abs_logit_diff: float
    mean_kl: float          # KL(adapter || merged), nats per token, averaged over real (unpadded) positions
    tokens: int             # positions compared
    sequences: int

    def passes(self, max_logit_diff: float, max_kl: float) -> bool:
        return self.max_abs_logit_diff <= max_logit_diff and self.mean_kl <= max_kl


def logit_gap(reference, candidate, mask) -> tuple[float, float, int]:
    """(max |difference|, summed KL(reference || candidate), positions) over the positions where mask is 1.

    reference, candidate: (B, T, V) logits; mask: (B, T) of 0/1. Computed in float32.
    """
    import torch

    keep = mask.bool()
    ref = reference.float()[keep]             # (N, V)
    cand = candidate.float()[keep]            # (N, V)
    if ref.numel() == 0:
        return 0.0, 0.0, 0
    max_diff = (ref - cand).abs().max().item()
    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(cand, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # (N,); rounding can make a zero KL slightly negative
    return max_diff, kl.sum().item(), ref.shape[0]


def pad_right(sequences: list[list[int]], pad_id: int):
    """(input_ids, attention_mask), both (B, T), right-padded: positions line up with the unpadded run."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


def model_logits(model, sequences: list[list[int]], pad_id: int, batch_size: int = 4) -> list:
    """Logits (on CPU, one (T_i, V) tensor per sequence, padding cut off) in input order."""
    import torch

    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        ids, mask = pad_right(chunk, pad_id)
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.cpu()
        out += [logits[row, : len(seq)] for row, seq in enumerate(chunk)]
    return out


def compare(reference: list, candidate: list) -> Fidelity:
    """Fidelity of per-sequence logits `candidate` to `reference` (lists of (T_i, V) tensors)."""
    import torch

    max_diff, kl_sum, tokens = 0.0, 0.0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff, kl, n = logit_gap(ref[None], cand[None], torch.ones(1, ref.shape[0]))
        max_diff, kl_sum, tokens = max(max_diff, diff), kl_sum + kl, tokens + n
    return Fidelity(max_abs_logit_diff=max_diff, mean_kl=kl_sum / max(tokens, 1), tokens=tokens, sequences=len(reference))
