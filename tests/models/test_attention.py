"""tunesmith.models.attention: a packed row's (T x T) mask is built only where something reads it, and the row
attends exactly as each example alone with it or without it."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tunesmith.data.batching import Collator
from tunesmith.models import attention, lm_loss


def ids_of(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture
def masks_built(monkeypatch):
    """The (batch, T) of every mask sdpa_mask builds through tunesmith's mask function."""
    built = []
    real = attention.sdpa_mask

    def spy(**kwargs):
        mask = real(**kwargs)
        if mask is not None:
            built.append((kwargs["batch_size"], kwargs["q_length"]))
        return mask

    monkeypatch.setattr(attention, "sdpa_mask", spy)
    return built


def test_a_packed_row_with_bounds_builds_no_mask_and_scores_as_alone(stories_path, masks_built):
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32, attn_implementation="sdpa")
    assert attention.use_packed_sdpa(model)
    model.set_attn_implementation("sdpa")  # switched back and again (as sft does when a check fails): one pair of hooks
    assert attention.use_packed_sdpa(model) and len(model.model._forward_pre_hooks) == len(model.model._forward_hooks) == 1
    examples = ids_of(9, 17, 5, 30)
    with torch.no_grad():
        packed = lm_loss.token_logprobs(model, Collator(0, packed=True, varlen=True)([lm_loss.item(*examples)]))[0]
        assert masks_built == []
        # the same row without its bounds (position_ids only): packed_sdpa hands it to sdpa, with the row's mask
        unbounded = lm_loss.token_logprobs(model, Collator(0, packed=True)([lm_loss.item(*examples)]))[0]
        assert masks_built == [(1, 61)]
        padded = lm_loss.token_logprobs(model, Collator(0, packed=False)([lm_loss.item(*examples)]))
        assert masks_built[1:] == [(4, 30)]
    torch.testing.assert_close(unbounded, packed, atol=1e-5, rtol=1e-5)
    at = 0
    for k, ids in enumerate(examples):
        torch.testing.assert_close(packed[at : at + len(ids) - 1], padded[k, : len(ids) - 1], atol=1e-5, rtol=1e-5)
        at += len(ids)
    assert attention._row.get() is None and attention._tokens == []  # the forward pass's bounds were forgotten
    # gradients flow as before: the skipped mask was never part of the graph
    model.train()
    loss = model(**Collator(0, packed=True, varlen=True)([lm_loss.item(*examples)]), use_cache=False).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_window_shorter_than_an_example_keeps_its_mask(masks_built):
    """Sliding-window layers: the mask is built when a packed example is longer than the window (the call goes
    to sdpa), and skipped when every example fits in it; so is the mask of a row the bounds do not describe."""
    attention._tokens.append(attention._row.set((26, 17)))  # what the decoder's hook sets for examples of 9 and 17 tokens
    try:
        kwargs = dict(batch_size=1, q_length=26, kv_length=26, mask_function=attention.causal_mask_function,
                      allow_is_causal_skip=False, device="cpu")
        assert attention.packed_mask(**kwargs, local_size=20) is None
        assert attention.packed_mask(**kwargs, local_size=16).shape == (1, 1, 26, 26)
        assert attention.packed_mask(**kwargs | {"q_length": 25, "kv_length": 25}).shape == (1, 1, 25, 25)
    finally:
        attention._row.reset(attention._tokens.pop())
    assert attention.packed_mask(**kwargs).shape == (1, 1, 26, 26)  # outside a forward pass with bounds
    assert masks_built == [(1, 26), (1, 25), (1, 26)]


def test_a_call_handed_to_sdpa_without_the_mask_builds_the_rows_own():
    """packed_sdpa hands a packed row on to sdpa (here: a sliding window shorter than an example) after the mask
    was skipped: it builds the row's block-diagonal windowed mask itself; each example as it attends alone."""
    g = torch.Generator().manual_seed(0)
    bounds, window = [0, 5, 12, 14], 3
    q, k, v = (torch.randn(1, 2, 14, 8, generator=g) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = attention.packed_sdpa(module, q, k, v, None, cu_seq_lens_q=torch.tensor(bounds, dtype=torch.int32), sliding_window=window)
    for a, b in zip(bounds, bounds[1:]):
        n = b - a
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = (j <= i) & (i - j < window)
        scores = (q[:, :, a:b] @ k[:, :, a:b].transpose(-1, -2) / 8**0.5).masked_fill(~allowed, float("-inf"))
        expected = (scores.softmax(-1) @ v[:, :, a:b]).transpose(1, 2)  # (1, n, heads, d)
        torch.testing.assert_close(out[:, a:b], expected, atol=1e-6, rtol=1e-5)
    whole, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True)  # the leak the mask prevents
    assert (whole[:, 5:12] - out[:, 5:12]).abs().max() > 1e-3
