"""Incremental text with stop strings: what a client sees of the token ids an engine produces."""

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
