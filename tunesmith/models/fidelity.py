"""How far a merged model is from the adapter model it came from: logit differences and KL.

A LoRA merge is exact in real arithmetic (W + s·BA); what breaks it in practice is rounding into a
16-bit dtype (a small update s·BA is partly rounded away when added to W), merging into quantised
weights, tied embeddings or modules_to_save handled wrongly. The gate compares both models on the
same token sequences, position by position, in one dtype, and puts the drift next to the adapter's own
effect (KL of the adapter model from its base): a merge may not undo more than a small share of it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per merged dtype: (max |logit difference|, mean KL in nats/token). Measured on the demo model's
# LoRA: a float32 merge differs by ~1e-4 in logits and ~4e-8 in KL; a bfloat16 merge by ~2.3 and ~5e-3,
# of which running the adapter in bfloat16 at all (instead of float32) already accounts for ~2.2 and ~3e-3.
DEFAULT_THRESHOLDS = {
    "float32": (1e-2, 1e-4),
    "bfloat16": (4.0, 2e-2),
    "float16": (2.0, 1e-2),
}
# The merge may move the model by at most this share of the adapter's own effect, KL(adapter || base).
DEFAULT_MAX_SHARE = 0.05
# Below this KL (nats/token) a share of the adapter's effect means nothing: that is rounding noise.
KL_FLOOR = 1e-6


@dataclass
class Fidelity:
    max_abs_logit_diff: float
    mean_kl: float          # KL(adapter || merged), nats per token, averaged over real (unpadded) positions
    adapter_kl: float       # KL(adapter || base): how far training moved the model, the scale for mean_kl
    tokens: int             # positions compared
    sequences: int

    @property
    def share(self) -> float:
        """mean_kl as a share of the adapter's effect."""
        return self.mean_kl / self.adapter_kl if self.adapter_kl > 0 else float("inf")

    def problems(self, max_logit_diff: float, max_kl: float, max_share: float) -> list[str]:
        """Why the merge fails the gate; empty when it passes."""
        found = []
        if self.max_abs_logit_diff > max_logit_diff:
            found.append(f"max |logit diff| {self.max_abs_logit_diff:.3g} > {max_logit_diff:g}")
        if self.mean_kl > max_kl:
            found.append(f"mean KL {self.mean_kl:.3g} > {max_kl:g} nats/token")
        if self.mean_kl > KL_FLOOR and self.share > max_share:
            found.append(
                f"mean KL is {self.share:.1%} of the adapter's own effect (KL adapter||base {self.adapter_kl:.3g}), "
                f"over {max_share:.0%}: the merge loses part of what training learned"
            )
        return found


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


def batches(sequences: list[list[int]], pad_id: int, batch_size: int = 4, progress: str | None = None):
    """(sequences of the batch, input_ids, attention_mask), right-padded so positions match the unpadded run.
    `progress`: the label of a progress bar over the sequences (none without it)."""
    import torch
    from tqdm.auto import tqdm

    with tqdm(total=len(sequences), desc=progress, unit="seq", disable=progress is None) as bar:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            yield chunk, ids, mask
            bar.update(len(chunk))


def forward(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.cpu()  # (B, T, V)


def model_logits(model, sequences: list[list[int]], pad_id: int, progress: str | None = None) -> list:
    """Logits on CPU, one (T_i, V) tensor per sequence (padding cut off), in input order."""
    out = []
    for chunk, ids, mask in batches(sequences, pad_id, progress=progress):
        logits = forward(model, ids, mask)
        out += [logits[row, : len(seq)] for row, seq in enumerate(chunk)]
    return out


def adapter_logits(peft_model, sequences: list[list[int]], pad_id: int, progress: str | None = None) -> tuple[list, float]:
    """The adapter model's logits per sequence, and its mean KL from the base (the adapter switched off)."""
    out, kl_sum, tokens = [], 0.0, 0
    for chunk, ids, mask in batches(sequences, pad_id, progress=progress):
        logits = forward(peft_model, ids, mask)
        with peft_model.disable_adapter():
            base = forward(peft_model, ids, mask)
        _, kl, n = logit_gap(logits, base, mask)
        kl_sum, tokens = kl_sum + kl, tokens + n
        out += [logits[row, : len(seq)] for row, seq in enumerate(chunk)]
    return out, kl_sum / max(tokens, 1)


def compare(reference: list, candidate: list, adapter_kl: float = 0.0) -> Fidelity:
    """Fidelity of per-sequence logits `candidate` to `reference` (lists of (T_i, V) tensors)."""
    import torch

    max_diff, kl_sum, tokens = 0.0, 0.0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff, kl, n = logit_gap(ref[None], cand[None], torch.ones(1, ref.shape[0]))
        max_diff, kl_sum, tokens = max(max_diff, diff), kl_sum + kl, tokens + n
    return Fidelity(max_diff, kl_sum / max(tokens, 1), adapter_kl, tokens, len(reference))
