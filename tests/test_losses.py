"""PPO's pure parts against values computed by hand."""

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
