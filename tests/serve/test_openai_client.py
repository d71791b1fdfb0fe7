"""The official `openai` client against a real server on localhost: chat, streaming, completions, models, errors,
and answers equal to what `tunesmith generate` gives for the same run."""

import asyncio
import time

import openai
import pytest

from tunesmith.eval.generate import generate, load_for_inference

PROMPTS = ["Once upon a time", "The little dog", "Lily went to the park", "Tom had a red ball", "The sun was hot",
           "A cat sat on the mat", "Mom said no", "The bird sang", "Ben found a box", "It was raining"]


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="sk-test", max_retries=0)


def ask(client, model, prompt, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 20, **kwargs}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


def expected(target, prompts, max_new_tokens=20, **load):
    """Greedy answers from the inference path `tunesmith generate` uses (HF generate, one batch)."""
    loaded = load_for_inference(str(target), **load)
    system = [{"role": "system", "content": loaded.system_prompt}] if loaded.system_prompt else []
    return generate(loaded, [system + [{"role": "user", "content": p}] for p in prompts], max_new_tokens=max_new_tokens, progress=False)


def test_models_lists_the_base_and_every_adapter_by_name_never_by_local_path(client, live, stories_path):
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == ["stories260K", "first", "second"]  # the base's folder name, not its path
    assert all(m.owned_by == "tunesmith" for m in models.values())


def test_chat_answers_like_generate_for_each_adapter_and_the_base(client, story_runs, stories_path):
    first, second = story_runs
    for model, target, load in (("first", first, {}), ("second", second, {}), ("stories260K", stories_path, {"template": "chatml", "dtype": "float32"})):
        answers = [ask(client, model, p).choices[0].message.content for p in PROMPTS[:3]]
        assert answers == expected(target, PROMPTS[:3], **load), model
    # The adapters really are different weights, picked by the model field.
    answers = {model: [ask(client, model, p).choices[0].message.content for p in PROMPTS] for model in ("first", "second")}
    assert answers["first"] != answers["second"]


def test_chat_reply_shape_and_usage(client):
    reply = ask(client, "first", "Once upon a time", max_tokens=7)
    assert reply.object == "chat.completion" and reply.model == "first"
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 7 and reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_streaming_chat_joins_to_the_plain_answer(client):
    plain = ask(client, "second", "The bird sang").choices[0].message.content
    chunks = list(ask(client, "second", "The bird sang", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 20


def test_completions_continue_raw_text(client, live):
    reply = client.completions.create(model="first", prompt=["Once upon a time", "The dog"], max_tokens=6, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason == "length" and c.text for c in reply.choices)
    streamed = client.completions.create(model="first", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_stop_strings_cut_the_answer(client):
    full = ask(client, str(client.models.list().data[0].id), "Once upon a time").choices[0].message.content
    stop = full[6:9]
    cut = ask(client, str(client.models.list().data[0].id), "Once upon a time", stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable_and_n_gives_distinct_choices(client):
    sampled = dict(temperature=1.0, top_p=0.95, max_tokens=16, seed=11)
    base = "stories260K"  # the pretrained base writes varied text when sampled
    a = ask(client, base, "Once upon a time", **sampled)
    b = ask(client, base, "Once upon a time", **sampled)
    assert a.choices[0].message.content == b.choices[0].message.content
    several = ask(client, base, "Once upon a time", n=3, **sampled)
    texts = [c.message.content for c in several.choices]
    assert texts[0] == a.choices[0].message.content and len(set(texts)) == 3


def test_many_concurrent_requests_are_batched_and_all_correct(live):
    client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="sk-test", max_retries=0)
    jobs = [(model, p) for p in PROMPTS for model in ("first", "second")]
    single = {job: ask(openai.OpenAI(base_url=live.url + "/v1", api_key="sk-test"), *job).choices[0].message.content for job in jobs}
    largest_before = live.engine.stats()["largest_batch"]
    live.engine.counts["largest_batch"] = 0

    async def all_at_once():
        replies = await asyncio.gather(*(
            client.chat.completions.create(model=m, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=20)
            for m, p in jobs
        ))
        await client.close()
        return replies

    replies = asyncio.run(all_at_once())
    assert [r.choices[0].message.content for r in replies] == [single[job] for job in jobs]
    assert live.engine.stats()["largest_batch"] > 1  # they shared forward passes
    live.engine.counts["largest_batch"] = max(largest_before, live.engine.counts["largest_batch"])


def test_requests_arriving_mid_generation_join_the_running_batch(live):
    import threading

    sync = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-test", max_retries=0)
    expected = {p: ask(sync, "second", p).choices[0].message.content for p in PROMPTS[:4]}
    joined_before = live.engine.stats()["joined"]
    long = {}
    runner = threading.Thread(target=lambda: long.update(r=ask(sync, "second", "It was raining", max_tokens=300)))
    runner.start()
    deadline = time.monotonic() + 60
    while live.engine.stats()["running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)

    async def newcomers():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="sk-test", max_retries=0)
        replies = await asyncio.gather(*(
            client.chat.completions.create(model="second", messages=[{"role": "user", "content": p}], temperature=0, max_tokens=20)
            for p in PROMPTS[:4]
        ))
        await client.close()
        return replies

    replies = asyncio.run(newcomers())
    runner.join()
    assert [r.choices[0].message.content for r in replies] == list(expected.values())
    assert long["r"].usage.completion_tokens == 300
    assert live.engine.stats()["joined"] - joined_before == 4  # none waited for the long one to finish


def test_client_sees_openai_errors(client, live):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(client, "nope", "hi")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512 tokens"):
        ask(client, "first", "hi", max_tokens=1000)
    with pytest.raises(openai.AuthenticationError):
        ask(openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0), "first", "hi")
