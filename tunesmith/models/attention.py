"""SDPA over a packed row one example at a time, for models that run sdpa (CPU, or GPUs without FlashAttention).

Given a packed row, transformers' sdpa attends with a block-diagonal mask over the whole row: T² scores for T
tokens, most of them masked away. One causal sdpa call per example computes only the Σ l² that count, exactly
as each example alone. bench/sft_attention.py measures it on the tiny Llama of bench/sft_vs_trl.py (rows of
1,089 tokens, one thread, CPU time per token): as fast as length-grouped padded batches (0.97x), 1.47x the whole-row
mask. The row is cut with torch.split, whose backward is one concatenation of the gradients, rather than slices,
whose backward fills a zero tensor of the whole row per example (no faster on one thread, less memory traffic).
The collator passes the examples' bounds as cu_seq_lens_q (FlashAttention's varlen
argument, which reaches every attention call); inputs without them (padded batches, generation) and attention
this does not cover (sliding windows shorter than an example, logit soft-capping, attention sinks) go to
transformers' own sdpa with its mask, which is exact too.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "tunesmith_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """query (1, heads, T, d), key and value (1, kv_heads, T, d) -> ((1, T, heads, d), None), as sdpa_attention_forward."""
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None and query.shape[0] == 1 else None
    window = kwargs.get("sliding_window")
    if (bounds is None or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
            or (window is not None and max(b - a for a, b in zip(bounds, bounds[1:])) > window)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    parts = [sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
             for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(parts, dim=1), None


AttentionInterface.register(NAME, packed_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the mask of plain sdpa, for the inputs handed on to it


def use_packed_sdpa(model) -> bool:
    """Switch a model that runs sdpa through the attention interface to packed_sdpa; False when it does not."""
    if model.config._attn_implementation != "sdpa" or not model._can_set_attn_implementation():
        return False
    model.set_attn_implementation(NAME)
    return True
