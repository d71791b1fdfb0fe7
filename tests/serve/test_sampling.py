"""Choosing the next token from one row's logits: greedy, seeded temperature sampling, top-k, top-p and the penalties."""

import pytest
import torch

from tunesmith.serve.sampling import Sampling, next_token, penalized, seeded, top_k_filter, top_p_filter

LOGITS = torch.randn(50, generator=torch.Generator().manual_seed(0))  # (V,)


def draw(sampling: Sampling, logits=LOGITS, times: int = 20, generated=()) -> list[int]:
    generator = seeded(sampling.seed, "cpu")
    return [next_token(logits, sampling, [1, 2], list(generated), generator) for _ in range(times)]


def test_greedy_at_temperature_zero_and_a_seed_repeats_its_draws():
    assert draw(Sampling(8, temperature=0.0)) == [int(LOGITS.argmax())] * 20
    seeded_draws = draw(Sampling(8, temperature=1.0, seed=5))
    assert seeded_draws == draw(Sampling(8, temperature=1.0, seed=5))  # the same seed draws the same tokens
    assert len(set(seeded_draws)) > 1  # and really samples
    assert seeded_draws != draw(Sampling(8, temperature=1.0, seed=6))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert torch.allclose(top_p_filter(probs.clone(), 0.7), torch.tensor([0.0, 0.625, 0.375, 0.0]))
    assert torch.allclose(top_p_filter(probs.clone(), 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.equal(top_p_filter(probs.clone(), 1.0), probs)


@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_top_p_sampling_only_draws_from_the_nucleus(top_p):
    logits = torch.log(torch.tensor([0.6, 0.25, 0.1, 0.05]))
    allowed = {0} if top_p == 0.3 else {0, 1, 2}
    drawn = set(draw(Sampling(1, temperature=1.0, top_p=top_p, seed=1), logits, times=200))
    assert drawn <= allowed and (len(drawn) > 1) == (top_p == 0.9)


def test_top_k_keeps_the_k_most_likely():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    assert top_k_filter(logits, 2).tolist() == [float("-inf"), 3.0, float("-inf"), 2.0]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 4), logits)
    assert set(draw(Sampling(1, temperature=2.0, top_k=2, seed=3), logits, times=200)) == {1, 3}


def test_penalties_follow_openai_and_ctrl():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([2.0, -1.0, 0.5, 4.0, -3.0])
    # OpenAI: logit - count * frequency_penalty - (count > 0) * presence_penalty, over the generated tokens only.
    got = penalized(logits, Sampling(1, presence_penalty=0.5, frequency_penalty=0.25), prompt_ids=[0], generated=[3, 3, 1])
    assert got.tolist() == [2.0, -1.0 - 0.25 - 0.5, 0.5, 4.0 - 2 * 0.25 - 0.5, -3.0]
    # CTRL's repetition penalty, on prompt and generated tokens alike: as transformers applies it.
    got = penalized(logits, Sampling(1, repetition_penalty=1.3), prompt_ids=[0, 4], generated=[1])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([[0, 4, 1]]), logits[None].clone())[0]
    assert torch.allclose(got, expected) and not torch.equal(got, logits)
    assert torch.equal(logits, torch.tensor([2.0, -1.0, 0.5, 4.0, -3.0]))  # the batch's logits are left alone
    # A penalty turns greedy away from a token it has repeated.
    assert draw(Sampling(1, temperature=0.0, frequency_penalty=2.0), logits, times=1, generated=[3, 3]) == [0]
