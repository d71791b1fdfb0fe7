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

transformers builds the mask before the first layer, from position_ids: for a packed row a (1, 1, T, T) boolean
block-diagonal mask (three of them at once while building it: 768 MiB at T = 16,384), which the calls one example
at a time never read. `packed_mask` skips it when the forward pass carries the bounds (a hook on the decoder sees
cu_seq_lens_q) and every call will run one example at a time; a call that must hand a packed row on to sdpa after
all builds the row's mask itself (`row_mask`).
"""

from __future__ import annotations

import contextvars
import weakref

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (causal_mask_function, packed_sequence_compatibility_function, sdpa_mask,
                                        sliding_window_causal_mask_function)

from tunesmith.models import lm_loss

NAME = "tunesmith_packed_sdpa"

# (tokens, longest example) of the packed row the decoder's forward pass is running, from its cu_seq_lens_q, or
# None when the inputs carry no bounds: set by the hooks use_packed_sdpa puts on the decoder, read by packed_mask.
_row: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("tunesmith_packed_row", default=None)
_tokens: list[contextvars.Token] = []  # to restore _row when each (possibly nested) forward pass ends
_hooked: weakref.WeakSet = weakref.WeakSet()


def packed_sdpa(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """query (1, heads, T, d), key and value (1, kv_heads, T, d) -> ((1, T, heads, d), None), as sdpa_attention_forward."""
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None and query.shape[0] == 1 else None
    window = kwargs.get("sliding_window")
    if (bounds is None or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
            or (window is not None and max(b - a for a, b in zip(bounds, bounds[1:])) > window)):
        if bounds is not None and attention_mask is None:  # packed_mask skipped the row's mask
            attention_mask = row_mask(bounds, window, query.device)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    parts = [sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
             for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(parts, dim=1), None


def packed_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0, attention_mask=None,
                local_size: int | None = None, **kwargs):
    """No mask for a packed row whose bounds the forward pass carries, when every attention call will run one
    example at a time (one row, no padding, no cache, no sliding window shorter than its longest example); the mask
    of plain sdpa (transformers.masking_utils.sdpa_mask) otherwise, for the inputs packed_sdpa hands on to sdpa."""
    row = _row.get()
    if (row is not None and batch_size == 1 and attention_mask is None and q_length == kv_length == row[0]
            and isinstance(q_offset, int) and q_offset == 0 and isinstance(kv_offset, int) and kv_offset == 0
            and (local_size is None or row[1] <= local_size)):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     attention_mask=attention_mask, local_size=local_size, **kwargs)


def row_mask(bounds: list[int], window: int | None, device) -> torch.Tensor:
    """(1, 1, T, T) boolean mask of a packed row with examples at `bounds` (cu_seq_lens): causal within each
    example (within `window` tokens, if given), nothing across; as transformers builds it from position_ids."""
    lengths = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])])
    example = torch.repeat_interleave(torch.arange(len(lengths)), lengths)[None]                    # (1, T)
    positions = (torch.arange(bounds[-1]) - torch.tensor(bounds[:-1]).repeat_interleave(lengths))[None]  # (1, T)
    causal = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    return sdpa_mask(batch_size=1, q_length=bounds[-1], kv_length=bounds[-1], allow_is_causal_skip=False, device=device,
                     mask_function=packed_sequence_compatibility_function(causal, positions.to(device), example.to(device)))


AttentionInterface.register(NAME, packed_sdpa)
AttentionMaskInterface.register(NAME, packed_mask)


def use_packed_sdpa(model) -> bool:
    """Switch a model that runs sdpa through the attention interface to packed_sdpa; False when it does not."""
    if model.config._attn_implementation != "sdpa" or not model._can_set_attn_implementation():
        return False
    model.set_attn_implementation(NAME)
    decoder = lm_loss.base_of(model).base_model  # the module whose forward builds the mask (LlamaModel under LlamaForCausalLM)
    if decoder not in _hooked:
        _hooked.add(decoder)
        decoder.register_forward_pre_hook(_bounds_given, with_kwargs=True)
        decoder.register_forward_hook(_forward_done, always_call=True)
    return True


def _bounds_given(module, args, kwargs):
    cu = kwargs.get("cu_seq_lens_q")
    _tokens.append(_row.set(None if cu is None or len(cu) < 2 else (int(cu[-1]), int((cu[1:] - cu[:-1]).max()))))


def _forward_done(module, args, output):
    _row.reset(_tokens.pop())
