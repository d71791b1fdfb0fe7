"""Choosing each request's next token from its row of logits: penalties, then greedy or temperature, min-p, top-k
and top-p sampling, with a generator per request so that a seeded request draws the same tokens whatever it is
batched with. Pure functions on (V,) tensors; the engine calls them once per row and step.

The order is vLLM's: penalties on the raw logits, then temperature, then min-p, then top-k, then top-p.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0          # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0: off
    min_p: float = 0.0                # 0: off; tokens less likely than min_p times the most likely one are dropped
    presence_penalty: float = 0.0     # OpenAI's: subtracted from every token generated so far
    frequency_penalty: float = 0.0    # OpenAI's: subtracted once per time a token was generated so far
    repetition_penalty: float = 1.0   # 1: off; CTRL's (arXiv:1909.05858), on prompt and generated tokens alike
    seed: int | None = None

    def penalises(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty != 1.0

    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: what the engine can take for a whole batch at once."""
        return self.temperature == 0 and not self.penalises()


_seed_counter = itertools.count()


def seeded(seed: int | None, device):
    """A generator per request: a seeded request samples the same tokens whatever it is batched with."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(time.time_ns()) + next(_seed_counter))
    return generator


def penalized(logits, sampling: Sampling, prompt_ids: list[int], generated: list[int]):
    """The logits (V,) with the repetition, presence and frequency penalties applied (a new tensor)."""
    import torch

    logits = logits.float().clone()
    if sampling.repetition_penalty != 1.0:
        # Like transformers and vLLM: a positive score is divided by the penalty, a negative one multiplied.
        seen = torch.tensor(sorted(set(prompt_ids) | set(generated)), device=logits.device)
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / sampling.repetition_penalty, scores * sampling.repetition_penalty)
    if (sampling.presence_penalty or sampling.frequency_penalty) and generated:
        ids, counts = torch.tensor(generated, device=logits.device).unique(return_counts=True)
        logits[ids] -= sampling.frequency_penalty * counts + sampling.presence_penalty
    return logits


def top_k_filter(logits, top_k: int):
    """Only the top_k highest logits (V,) keep their value; the others become -inf. Ties at the k-th value stay."""
    if not 0 < top_k < logits.shape[-1]:
        return logits
    kth = logits.topk(top_k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def min_p_filter(logits, min_p: float):
    """Min-p sampling (Nguyen et al. 2024, arXiv:2407.01082): tokens whose probability is below min_p times the
    most likely token's become -inf. On logits (V,): p_i / p_max = exp(l_i - l_max)."""
    import math

    if min_p <= 0.0:
        return logits
    return logits.masked_fill(logits < logits.max() + math.log(min_p), float("-inf"))


def top_p_filter(probs, top_p: float):
    """Nucleus filtering (Holtzman et al. 2019, arXiv:1904.09751): keep the smallest set of most likely tokens
    whose probability reaches top_p, renormalised. probs: (V,)."""
    import torch

    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(0) - sorted_probs    # probability mass of the tokens ranked above each one
    sorted_probs[before >= top_p] = 0.0               # the top token always stays (its `before` is 0)
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return kept / kept.sum()


def next_token(logits, sampling: Sampling, prompt_ids: list[int], generated: list[int], generator) -> int:
    """One row's next token. logits: (V,) for the token after prompt_ids + generated."""
    import torch

    if sampling.penalises():
        logits = penalized(logits, sampling, prompt_ids, generated)
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = min_p_filter(logits.float() / sampling.temperature, sampling.min_p)
    logits = top_k_filter(logits, sampling.top_k)
    probs = top_p_filter(torch.softmax(logits, -1), sampling.top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())
