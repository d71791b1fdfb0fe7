"""Generation: batched (left-padded) equals one-by-one greedy, stop strings cut and stop early, decoding checks."""

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval.engines import Decoding, TransformersEngine, open_engine
from tunesmith.eval.generate import cut_at_stop, generate, load_for_inference

PROMPTS = [
    "Once upon a time",
    "Tom had a big red ball and he wanted to play with his friend in the park",
    "Lily",
    "The sun was shining and the birds were singing. A little girl named Sue went outside",
]


def conversations(texts):
    return [[{"role": "user", "content": t}] for t in texts]


@pytest.fixture(scope="module")
def stories(stories_path):
    return load_for_inference(str(stories_path), template="chatml", dtype="float32")


def test_batched_generation_equals_one_by_one_greedy(stories):
    convs = conversations(PROMPTS)
    batched = generate(stories, convs, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate(stories, [c], max_new_tokens=12, batch_size=1, progress=False)[0] for c in convs]
    assert batched == single
    assert len(set(batched)) > 1 and all(batched)


def test_engine_counts_tokens_and_matches_generate(stories):
    engine = TransformersEngine(stories)
    completions = engine.complete(conversations(PROMPTS), Decoding(max_new_tokens=12), batch_size=2, progress=False)
    assert [c.text for c in completions] == generate(stories, conversations(PROMPTS), max_new_tokens=12, progress=False)
    assert all(0 < c.tokens <= 12 for c in completions)


def test_stop_strings_cut_the_output_and_end_the_batch_early(stories):
    convs = conversations(PROMPTS[:2])
    plain = generate(stories, convs, max_new_tokens=20, progress=False)
    # Stop at the second word of each output: those words are certain to occur.
    stops = [p.split()[1] for p in plain]
    cut = generate(stories, convs, max_new_tokens=20, progress=False, stop=stops)
    for full, short in zip(plain, cut):
        assert short == cut_at_stop(full, stops)
        assert len(short) < len(full)
    completions = TransformersEngine(stories).complete(convs, Decoding(max_new_tokens=20, stop=stops), progress=False)
    full_tokens = TransformersEngine(stories).complete(convs, Decoding(max_new_tokens=20), progress=False)
    assert max(c.tokens for c in completions) < max(c.tokens for c in full_tokens)


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("refund\n\nbecause ###", ["###", "\n"]) == "refund"
    assert cut_at_stop("no stop here", ["###", ""]) == "no stop here"


def test_sampling_is_seeded_and_decoding_options_reach_the_model(stories):
    convs = conversations(PROMPTS[:2])
    engine = TransformersEngine(stories)
    sample = Decoding(max_new_tokens=10, temperature=1.5, top_k=50, seed=3)
    assert [c.text for c in engine.complete(convs, sample, progress=False)] == [c.text for c in engine.complete(convs, sample, progress=False)]
    greedy = [c.text for c in engine.complete(convs, Decoding(max_new_tokens=10), progress=False)]
    no_repeat = [c.text for c in engine.complete(convs, Decoding(max_new_tokens=10, no_repeat_ngram_size=1, num_beams=2), progress=False)]
    assert no_repeat != greedy
    for text in no_repeat:
        words = stories.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(words) == len(set(words))


def test_decoding_errors_name_the_flag():
    with pytest.raises(TunesmithError, match="--top-p: 1.5 must be in"):
        Decoding(temperature=1.0, top_p=1.5)
    with pytest.raises(TunesmithError, match="set --temperature above 0"):
        Decoding(top_k=5)
    assert Decoding().hf_kwargs() == {"do_sample": False}
    # top_k 0 is passed as 0 (off), not left to the generation config's default of 50.
    assert Decoding(temperature=0.7).hf_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0}


def test_open_engine_falls_back_to_transformers_without_vllm(stories_path):
    engine = open_engine(str(stories_path), template="chatml", dtype="float32")
    assert engine.name_of_engine == "transformers"
    with pytest.raises(TunesmithError, match="--engine: 'x'"):
        open_engine(str(stories_path), engine="x")


class Scripted:
    """A model whose generate writes the same continuation after every prompt."""

    device = "cpu"

    def __init__(self, continuation: list[int]):
        self.continuation = continuation

    def generate(self, input_ids, **kwargs):
        import torch

        return torch.cat([input_ids, torch.tensor([self.continuation] * len(input_ids))], dim=1)


def test_chatml_without_an_im_end_token_never_shows_the_marker(stories_tokenizer):
    # The built-in ChatML on a tokenizer without <|im_end|> ends turns with the text <|im_end|> and then EOS:
    # a model trained on it writes both, and the reply is cut at the marker text.
    from tunesmith.data.templates import resolve_template
    from tunesmith.eval.generate import Loaded

    tok = stories_tokenizer
    template = resolve_template("chatml", tok)
    written = tok("Paris<|im_end|>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    loaded = Loaded(Scripted(written), tok, template, "scripted")
    assert generate(loaded, conversations(["Capital of France?"]), max_new_tokens=len(written), progress=False) == ["Paris"]
    [completion] = TransformersEngine(loaded).complete(conversations(["Capital of France?"]), Decoding(max_new_tokens=len(written)), progress=False)
    assert (completion.text, completion.tokens) == ("Paris", len(written))
