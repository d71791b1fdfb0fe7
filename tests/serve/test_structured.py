"""Constrained decoding and logprobs on the transformers engine, with a tiny random Llama: a schema such a model
would never satisfy by chance is satisfied by every seeded reply, and logprobs are a forward pass's log-softmax."""

import asyncio
import json
import re

import pytest
import torch

from tunesmith.data.templates import resolve_template
from tunesmith.serve.catalog import ServedModel
from tunesmith.serve.engine import Request, TransformersEngine
from tunesmith.serve.sampling import Sampling
from tunesmith.serve.structured import SchemaError

xgrammar = pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Seoul", "Lima"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 99},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["city", "count", "urgent", "tags", "note"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def setup(tiny_llama):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    served = ServedModel("tiny", resolve_template("model", tokenizer))
    prompt = tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    return TransformersEngine(model, tokenizer, {}, batch_wait=0.0), served, tokenizer, prompt


def generate(engine, requests):
    engine = TransformersEngine(engine.model, engine.tokenizer, {}, batch_wait=0.0)   # a stopped engine stays stopped

    async def main():
        await engine.start()
        try:
            async def one(request):
                tokens, scores, finish = [], [], None
                async for step in engine.stream(request):
                    tokens += step.token_ids
                    scores += step.logprobs
                    finish = step.finish_reason
                return tokens, scores, finish

            return await asyncio.gather(*(one(r) for r in requests))
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_every_constrained_reply_parses_and_validates(setup):
    engine, served, tokenizer, prompt = setup
    grammar = engine.constrain(served, SCHEMA)
    plain, *constrained = generate(engine, [Request(served, prompt, Sampling(60, temperature=1.0, seed=0))] + [
        Request(served, prompt, Sampling(200, temperature=1.0, seed=seed), None, grammar) for seed in range(4)
    ] + [Request(served, prompt, Sampling(200, temperature=0.0), None, grammar)])
    with pytest.raises(json.JSONDecodeError):  # unconstrained, the random model writes no JSON at all
        json.loads(tokenizer.decode(plain[0]))
    for tokens, _, finish in constrained:
        assert finish == "stop"
        jsonschema.validate(json.loads(tokenizer.decode(tokens)), SCHEMA)
    assert len({tokenizer.decode(t) for t, _, _ in constrained}) > 1   # sampled, not one fixed answer


def test_any_json_object_and_bad_schemas(setup):
    engine, served, tokenizer, prompt = setup
    [(tokens, _, finish)] = generate(engine, [Request(served, prompt, Sampling(300, temperature=0.0), None, engine.constrain(served, None))])
    if finish == "stop":
        assert isinstance(json.loads(tokenizer.decode(tokens)), dict)
    else:
        assert tokenizer.decode(tokens).startswith("{")
    with pytest.raises(SchemaError, match="cannot be used"):
        engine.constrain(served, {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})


def test_logprobs_equal_a_forward_pass_log_softmax(setup):
    engine, served, tokenizer, prompt = setup
    requests = [Request(served, prompt, Sampling(12, temperature=0.0), 5), Request(served, prompt[:4], Sampling(12, temperature=1.0, seed=3), 2)]
    results = generate(engine, requests)
    for request, (tokens, scores, _) in zip(requests, results):
        assert [s.token_id for s in scores] == tokens and len(tokens) == 12
        with torch.no_grad():
            logits = engine.model(torch.tensor([request.prompt_ids + tokens])).logits[0].float()
        expected = torch.log_softmax(logits, -1)[len(request.prompt_ids) - 1 : -1]   # (T, V): the scores of each generated token
        got = torch.tensor([s.logprob for s in scores])
        assert torch.allclose(got, expected[torch.arange(len(tokens)), tokens], atol=1e-4)
        for row, score in enumerate(scores):
            best = expected[row].topk(request.logprobs)
            assert [t for t, _ in score.top] == best.indices.tolist()
            assert torch.allclose(torch.tensor([lp for _, lp in score.top]), best.values, atol=1e-4)


@pytest.mark.parametrize("part, at, key", [
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "properties.tags", "uniqueItems"),
    ({"type": "integer", "not": {"const": 3}}, "properties.tags", "not"),
    ({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}, "properties.tags", "oneOf"),
    ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, "properties.tags", "allOf"),
    ({"type": "array", "prefixItems": [{"type": "object", "patternProperties": {"^x": {"type": "integer"}}}]}, "properties.tags.prefixItems[0]", "patternProperties"),
])
def test_a_keyword_the_grammar_would_not_enforce_is_refused_not_ignored(setup, part, at, key):
    # xgrammar compiles these as if they were not there: a reply could break the schema ({"tags": ["a", "a"]}).
    engine, served, _, _ = setup
    with pytest.raises(SchemaError, match=re.escape(f"{key!r} at {at} (") + r".*\) is not enforced"):
        engine.constrain(served, {"type": "object", "properties": {"tags": part}, "required": ["tags"]})
    # pydantic's shapes compile: one schema in an allOf (a $ref with a description), uniqueItems false.
    engine.constrain(served, {"type": "object", "properties": {"a": {"allOf": [{"$ref": "#/$defs/X"}], "description": "x"},
                                                               "b": {"type": "array", "uniqueItems": False, "items": {"type": "integer"}}},
                              "$defs": {"X": {"type": "object", "properties": {"n": {"type": "integer"}}}}})
