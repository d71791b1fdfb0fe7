"""The vLLM engines without vLLM (tests/serve/fake_vllm.py): a tool-call marker that is a special token
([TOOL_CALLS]) reaches the reply's text in serve and in eval alike, although vLLM's own text drops it."""

import asyncio

import pytest

from tests.serve import fake_vllm
from tunesmith.serve.tools import FAMILIES, marker_tokens

MISTRAL_REPLY = '[TOOL_CALLS] [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}]'


@pytest.fixture
def mistral(smol_tokenizer):
    """A Mistral v0.3 tokenizer and tool template, and the ids of a reply that calls a tool, then ends the turn."""
    from tests.eval.test_tool_calls import family_engine

    engine, ids = family_engine(smol_tokenizer, "mistral-v0.3", ["[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
                                                                  "[/TOOL_RESULTS]"], "mistral-v0.3-tools.jinja", MISTRAL_REPLY + "</s>")
    return engine.tokenizer, engine.template, ids


def test_serve_decodes_vllm_s_token_ids_itself_keeping_the_marker(monkeypatch, mistral):
    from tunesmith.serve.catalog import ServedModel
    from tunesmith.serve.engine import Request
    from tunesmith.serve.sampling import Sampling
    from tunesmith.serve.text import TextStream
    from tunesmith.serve.vllm_engine import VLLMEngine

    fake_vllm.install(monkeypatch)
    tokenizer, template, ids = mistral
    fake = fake_vllm.AsyncEngine(tokenizer, ids)
    assert "[TOOL_CALLS]" not in tokenizer.decode(ids, skip_special_tokens=True)   # what vLLM's own text would say

    async def steps():
        request = Request(ServedModel("m", template), [1, 2, 3], Sampling(max_tokens=64, temperature=0.0))
        return [step async for step in VLLMEngine(fake, {}, 4096).stream(request)]

    done = asyncio.run(steps())
    assert done[-1].finish_reason == "stop" and done[-1].completion_tokens == len(ids)
    text = TextStream(tokenizer, keep=marker_tokens(tokenizer, FAMILIES["mistral"]))
    assert "".join(text.add(step.token_ids) for step in done) + text.flush() == MISTRAL_REPLY
    assert fake.params[0].kwargs["stop_token_ids"] == template.stop_token_ids


def test_serve_takes_the_context_vllm_allows_from_its_v1_engine_and_from_older_ones(smol_tokenizer):
    from tunesmith.serve.vllm_engine import VLLMEngine

    v1 = fake_vllm.AsyncEngine(smol_tokenizer, [], model_config=fake_vllm.ModelConfig(1536))
    engine = VLLMEngine(v1, {}, 8192)
    asyncio.run(engine.start())
    assert engine.context_length == 1536  # AsyncLLM (vLLM 0.10 and later) has no get_model_config

    class Older:
        async def get_model_config(self):
            return fake_vllm.ModelConfig(1024)

    engine = VLLMEngine(Older(), {}, 8192)
    asyncio.run(engine.start())
    assert engine.context_length == 1024


def test_eval_s_vllm_engine_scores_what_the_transformers_engine_scores(monkeypatch, mistral, tmp_path):
    from tests.conftest import write_jsonl
    from tests.eval.test_tool_calls import tool_rows
    from tunesmith.eval.engines import Decoding, TargetFiles, VLLMEngine
    from tunesmith.eval.evaluate import evaluate_model, load_eval_data, plan_scoring

    fake_vllm.install(monkeypatch)
    tokenizer, template, ids = mistral
    engine = object.__new__(VLLMEngine)   # its __init__ loads vllm.LLM; the fake stands in for it
    engine.files = TargetFiles("m", "base", None, tokenizer, template, None)
    engine.name, engine.template, engine.tokenizer, engine.system_prompt = "m", template, tokenizer, None
    engine.llm = fake_vllm.LLM(tokenizer, ids)
    data = load_eval_data(str(write_jsonl(tmp_path / "tools.jsonl", tool_rows()[:2])))
    decoding = Decoding(max_new_tokens=64, stop=["\n\n"])
    result = evaluate_model(engine, data, plan_scoring(data, ["tool_calls"], None, None, None, "lenient", "response"), decoding, 2, None)
    assert result.outputs == [MISTRAL_REPLY, MISTRAL_REPLY] and result.details["tool_parser"] == "mistral"
    assert result.metrics == {"tool_call_valid": 1.0, "tool_call_name": 1.0, "tool_call_exact": 1.0}
    assert result.details["generated_tokens"] == 2 * len(ids)   # the stop token counted, as the transformers engine counts it
    params = engine.llm.params[0].kwargs
    assert params == engine.sampling_params(decoding) and params["stop"] == ["\n\n", *template.stop_texts]
    assert params["stop_token_ids"] == template.stop_token_ids and params["max_tokens"] == 64
