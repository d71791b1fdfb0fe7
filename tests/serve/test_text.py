"""Pure pieces of the server: incremental text with stop strings, nucleus filtering, per-request sampling."""

import pytest
import torch

from tunesmith.serve.engine import Sampling, sample, seeded, top_p_filter
from tunesmith.serve.text import TextStream, first_stop, held_back


def feed(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.add([i]) for i in ids]


def test_text_stream_sends_everything_without_stops(smol_tokenizer):
    ids = smol_tokenizer("Hello there, world!", add_special_tokens=False)["input_ids"]
    stream = TextStream(smol_tokenizer)
    pieces = feed(stream, ids)
    assert "".join(pieces) + stream.flush() == "Hello there, world!"
    assert all(pieces)  # plain ASCII: nothing needs holding back


def test_stop_string_is_cut_and_never_sent(smol_tokenizer):
    ids = smol_tokenizer("The answer is 42. END of story", add_special_tokens=False)["input_ids"]
    stream = TextStream(smol_tokenizer, stop=["END", "never"])
    sent = "".join(feed(stream, ids))
    assert stream.stopped
    assert sent + stream.flush() == "The answer is 42. "
    assert stream.add([ids[0]]) == ""  # nothing after the stop


def test_possible_stop_prefix_is_held_until_resolved(smol_tokenizer):
    stream = TextStream(smol_tokenizer, stop=["###"])
    first = smol_tokenizer("a #", add_special_tokens=False)["input_ids"]
    rest = smol_tokenizer("# b", add_special_tokens=False)["input_ids"]
    assert "".join(feed(stream, first)) == "a "  # '#' might start '###'
    assert "".join(feed(stream, rest)) == "## b"  # '## b' is not '###': released
    assert not stream.stopped


def test_split_multibyte_character_is_held(smol_tokenizer):
    ids = smol_tokenizer("서울", add_special_tokens=False)["input_ids"]
    stream = TextStream(smol_tokenizer)
    pieces = feed(stream, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.flush() == "서울"


def test_undecodable_bytes_at_the_end_are_still_sent_when_generation_ends(smol_tokenizer):
    first_byte = smol_tokenizer.convert_tokens_to_ids(["ì"])  # the first byte of a 3-byte character, alone
    stream = TextStream(smol_tokenizer)
    assert stream.add(smol_tokenizer("ok ", add_special_tokens=False)["input_ids"]) == "ok "
    assert stream.add(first_byte) == ""
    assert stream.flush() == "\ufffd"  # what a plain decode gives: nothing is lost


def test_stop_helpers():
    assert first_stop("abcabc", ["ca", "bc"]) == 1
    assert first_stop("abc", ["x"]) is None
    assert held_back("hello ##", ["###"]) == 2
    assert held_back("hello", ["###"]) == 0
    assert held_back("xab", ["abc", "b"]) == 2


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert torch.allclose(top_p_filter(probs.clone(), 0.7), torch.tensor([0.0, 0.625, 0.375, 0.0]))
    assert torch.allclose(top_p_filter(probs.clone(), 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.equal(top_p_filter(probs.clone(), 1.0), probs)


def test_sampling_is_per_row_seeded_and_greedy_at_temperature_zero():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).expand(3, -1)  # (B=3, V): same in every row
    params = [Sampling(8, temperature=0.0), Sampling(8, temperature=1.0, seed=5), Sampling(8, temperature=1.0, seed=5)]
    generators = [seeded(p.seed, "cpu") for p in params]
    draws = [sample(logits, params, generators) for _ in range(20)]
    assert [d[0] for d in draws] == [int(logits[0].argmax())] * 20
    assert [d[1] for d in draws] == [d[2] for d in draws]  # the same seed draws the same tokens, wherever its row is
    assert len({d[1] for d in draws}) > 1  # and really samples


@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_top_p_sampling_only_draws_from_the_nucleus(top_p):
    logits = torch.log(torch.tensor([[0.6, 0.25, 0.1, 0.05]]))
    allowed = {0} if top_p == 0.3 else {0, 1, 2}
    generator = [seeded(1, "cpu")]
    drawn = {sample(logits, [Sampling(1, temperature=1.0, top_p=top_p)], generator)[0] for _ in range(200)}
    assert drawn <= allowed and (len(drawn) > 1) == (top_p == 0.9)
