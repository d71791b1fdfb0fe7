"""Perplexity equals exp(mean NLL) computed independently with a plain forward pass."""

import math

import pytest
import torch

from tunesmith.data.formats import Example
from tunesmith.data.masks import tokenize_conversation
from tunesmith.eval.generate import load_for_inference
from tunesmith.eval.metrics import perplexity
from tunesmith.eval.perplexity import IGNORE, nll_sums, windows

TEXTS = ["Once upon a time there was a little girl named Lily.", "Tom liked to play with his big red ball in the park every day."]
CHAT = [{"role": "user", "content": "Tell me about Tom."}, {"role": "assistant", "content": "Tom had a dog."}]


@pytest.fixture(scope="module")
def stories(stories_path):
    return load_for_inference(str(stories_path), template="chatml", dtype="float32")


def plain_nll(model, ids, labels):
    """Sum and count of -log p(token) over labelled tokens, one unpadded forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    target = torch.tensor(labels[1:])
    keep = target != IGNORE
    losses = torch.nn.functional.cross_entropy(logits[:-1][keep], target[keep], reduction="sum")
    return losses.item(), int(keep.sum())


def test_text_perplexity_matches_a_plain_forward_pass(stories):
    examples = [Example(messages=None, text=t, where=f"t:{i}") for i, t in enumerate(TEXTS)]
    sums, counts = nll_sums(stories, examples, batch_size=2)  # padded together
    expected = []
    for text in TEXTS:
        ids = stories.tokenizer(stories.template.bos_text + text + stories.template.eos_text, add_special_tokens=False)["input_ids"]
        expected.append(plain_nll(stories.model, ids, ids))
    assert counts == [n for _, n in expected]
    assert sums == pytest.approx([s for s, _ in expected], rel=1e-4)
    total_nll, total_n = sum(s for s, _ in expected), sum(n for _, n in expected)
    assert perplexity(sums, counts) == pytest.approx(math.exp(total_nll / total_n), rel=1e-4)


def test_response_scope_scores_only_the_last_assistant_turn(stories):
    example = Example(messages=CHAT, text=None, where="c:1")
    tok = tokenize_conversation(stories.template, stories.tokenizer, CHAT)
    (response_sum,), (response_n,) = nll_sums(stories, [example], scope="response")
    assert (response_sum, response_n) == pytest.approx(plain_nll(stories.model, tok.input_ids, tok.labels), rel=1e-4)
    (_,), (text_n,) = nll_sums(stories, [example], scope="text")
    assert text_n == len(tok.input_ids) - 1 > response_n


def test_sliding_window_scores_each_token_once(stories):
    example = Example(messages=None, text=" ".join(TEXTS * 3), where="long")
    (full_sum,), (full_n,) = nll_sums(stories, [example], window=512)
    (win_sum,), (win_n,) = nll_sums(stories, [example], window=16, stride=8)
    assert win_n == full_n
    assert win_sum != pytest.approx(full_sum, rel=1e-6)  # less context per token
    assert win_sum == pytest.approx(full_sum, rel=0.5)


def test_windows_layout():
    ids = list(range(10))
    chunks = windows(ids, ids, window=4, stride=3)
    assert [c for c, _ in chunks] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [labels for _, labels in chunks] == [[0, 1, 2, 3], [IGNORE, 4, 5, 6], [IGNORE, 7, 8, 9]]
    assert windows([1, 2], [1, 2], window=4, stride=2) == [([1, 2], [1, 2])]
