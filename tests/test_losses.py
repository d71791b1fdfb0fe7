"""The losses' pure parts: PPO's against values computed by hand, the chunked cross-entropy against the plain one."""

import pytest
import torch

from tunesmith import losses


def test_masked_mean_and_whiten_ignore_padding():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert losses.masked_mean(values, mask).item() == 2.0
    white = losses.whiten(values, mask)
    assert white[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-4) and white[0, 2].item() == 100.0


def test_token_rewards_charge_the_kl_on_every_token_and_pay_the_score_on_the_last():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second reply ended after 2 tokens
    rewards = losses.token_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.0, 0.1 + 2.0], [-0.1, 0.0 - 1.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 0.75]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.5
    # deltas: t2 = 1 - 0.75 = 0.25; t1 = 0 + 0.9*0.75 - 0.25 = 0.425; t0 = 0 + 0.9*0.25 - 0.5 = -0.275
    a2 = 0.25
    a1 = 0.425 + 0.45 * a2
    a0 = -0.275 + 0.45 * a1
    advantages, returns = losses.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 0.25, a2 + 0.75]]))


def test_gae_stops_at_the_end_of_a_reply():
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[0.0, 0.0, 5.0]])
    advantages, _ = losses.gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[1.0, 1.0, 0.0]]  # the padding token's reward and value are not seen


def test_policy_loss_clips_the_ratio_in_the_direction_of_the_advantage():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    loss, clipped = losses.policy_loss(new, old, adv, torch.ones(1, 2), clip=0.2)
    # A > 0: ratio 1.5 is clipped to 1.2 (-1.2); ratio 0.5 is not (min of -0.5 and -0.8 taken as max of negatives: -0.5)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipped.item() == pytest.approx(0.5)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    loss = losses.value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), clip=0.5)
    # unclipped (2 - 1)^2 = 1; clipped 0.5 -> (0.5 - 1)^2 = 0.25; max = 1; times 0.5
    assert loss.item() == pytest.approx(0.5)


@pytest.mark.parametrize("bias, softcap", [(False, None), (True, None), (False, 30.0)])
def test_linear_cross_entropy_equals_the_plain_loss_and_gradients_in_chunks(monkeypatch, bias, softcap):
    monkeypatch.setattr(losses, "CHUNK_LOGITS", 7 * 300)  # chunks of 7 tokens: 43 of them, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = (0.5 * torch.randn(300, 16)).requires_grad_()
    b = torch.randn(300, requires_grad=True) if bias else None
    targets = torch.randint(300, (300,))

    def plain():
        z = hidden @ weight.T + (b if bias else 0)
        z = softcap * torch.tanh(z / softcap) if softcap else z
        return torch.nn.functional.cross_entropy(z, targets, reduction="sum")

    params = [p for p in (hidden, weight, b) if p is not None]
    expected, expected_grads = plain(), torch.autograd.grad(0.3 * plain(), params)
    got = losses.linear_cross_entropy(hidden, weight, b, targets, softcap)
    grads = torch.autograd.grad(0.3 * got, params)  # the incoming gradient scales them: a loss divided by a token count
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_linear_cross_entropy_computes_no_gradient_it_is_not_asked_for():
    hidden, weight, targets = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4), torch.randint(9, (5,))
    with torch.no_grad():
        loss = losses.linear_cross_entropy(hidden, weight, None, targets)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum").item(), abs=1e-5)
    empty = losses.linear_cross_entropy(hidden[:0], weight.requires_grad_(), None, targets[:0])
    empty.backward()  # a micro-batch with no trained token: a zero loss that still backpropagates
    assert empty.item() == 0.0 and weight.grad.abs().sum().item() == 0.0
