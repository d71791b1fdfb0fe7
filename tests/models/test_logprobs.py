"""The chunked per-token log-probs against the plain log_softmax of the full logits: values and gradients in float32,
with the output layer frozen (LoRA) or trained, with and without a soft cap, over several chunks."""

import pytest
import torch

from tunesmith.models import logprobs


def plain(hidden, weight, bias, targets, softcap=None, temperature=1.0):
    z = hidden @ weight.T + (0 if bias is None else bias)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return (z / temperature).log_softmax(-1).gather(-1, targets[:, None])[:, 0]


@pytest.mark.parametrize("trained", ["hidden", "all"])
@pytest.mark.parametrize("softcap,temperature", [(None, 1.0), (3.0, 1.0), (None, 0.7)])
def test_values_and_gradients_equal_the_plain_computation(monkeypatch, trained, softcap, temperature):
    monkeypatch.setattr(logprobs, "CHUNK_LOGITS", 7 * 50)  # 7 tokens per chunk: 23 tokens take 4 chunks
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=g)
    weight = torch.randn(50, 16, generator=g)
    bias = torch.randn(50, generator=g)
    targets = torch.randint(50, (23,), generator=g)
    upstream = torch.randn(23, generator=g)  # a different gradient for every token, as DPO's sums of log-ratios give

    def run(fn):
        leaves = [t.clone().requires_grad_(trained == "all" or t is hidden) for t in (hidden, weight, bias)]
        out = fn(*leaves, targets, softcap, temperature)
        (out * upstream).sum().backward()
        return out.detach(), [None if t.grad is None else t.grad for t in leaves]

    ours, our_grads = run(logprobs.token_logprobs)
    theirs, their_grads = run(plain)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for a, b in zip(our_grads, their_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_gradient_without_grad_mode():
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8)
    with torch.no_grad():
        out = logprobs.token_logprobs(hidden, weight, None, torch.tensor([1, 2, 3, 4]))
    assert not out.requires_grad
    torch.testing.assert_close(out, plain(hidden.detach(), weight, None, torch.tensor([1, 2, 3, 4])))


def test_sequence_index_restarts_with_the_positions_of_a_packed_row():
    packed = {"input_ids": torch.zeros(1, 7), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1]])}
    assert logprobs.sequence_index(packed).tolist() == [[0, 0, 0, 1, 1, 2, 2]]
    padded = {"input_ids": torch.zeros(2, 3), "attention_mask": torch.ones(2, 3)}
    assert logprobs.sequence_index(padded).tolist() == [[0, 0, 0], [1, 1, 1]]
