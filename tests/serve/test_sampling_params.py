"""Every sampling field changes a seeded reply where it should, sent as the openai client sends it (vLLM's
top_k, min_p and repetition_penalty through extra_body), against the live stories260K server."""

import openai
import pytest
import torch

from tunesmith.serve.sampling import Sampling, min_p_filter, next_token, seeded


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="sk-test", max_retries=0)


def story(client, **kwargs):
    kwargs = {"temperature": 1.0, "max_tokens": 64, "seed": 5, **kwargs}
    reply = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Once upon a time"}], **kwargs)
    return reply.choices[0].message.content


@pytest.mark.parametrize("change", [
    {"presence_penalty": 2.0}, {"frequency_penalty": 2.0},
    {"extra_body": {"top_k": 1}}, {"extra_body": {"min_p": 0.5}}, {"extra_body": {"repetition_penalty": 2.0}},
])
def test_each_sampling_field_changes_a_seeded_reply(client, change):
    plain = story(client)
    assert story(client) == plain   # seeded: the same without the field
    assert story(client, **change) != plain, change


def test_min_p_keeps_tokens_near_the_most_likely():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(min_p_filter(logits, 0.4)).tolist() == [False, False, True, True]   # 0.15 < 0.4 * 0.5
    generator = seeded(1, "cpu")
    drawn = {next_token(logits, Sampling(1, temperature=1.0, min_p=0.4), [], [], generator) for _ in range(100)}
    assert drawn == {0, 1}
