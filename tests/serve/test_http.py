"""Raw HTTP against the live server: the OpenAI error shape for every error class, auth, /generate, /health,
and a client that disconnects mid-stream."""

import json
import time

import httpx2
import pytest

AUTH = {"Authorization": "Bearer sk-test"}
CHAT = {"model": "first", "messages": [{"role": "user", "content": "Once upon a time"}], "temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def http(live):
    with httpx2.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        yield client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b'{"model": "first", "messages": [', headers={"Content-Type": "application/json"})
    assert error_of(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    "change, param, words",
    [
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'system', 'developer', 'user', 'assistant' or 'tool'"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        # Strict types, as OpenAI's: nothing is coerced.
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"max_tokens": "10"}, "max_tokens", "valid integer"),
        ({"max_tokens": 10.0}, "max_tokens", "valid integer"),
        ({"n": True}, "n", "valid integer"),
        ({"temperature": True}, "temperature", "valid number"),
        ({"seed": "1"}, "seed", "valid integer"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid string"),
        # Ranges the engine could not decode with.
        ({"seed": 2**64}, "seed", "less than or equal to 9223372036854775807"),
        ({"temperature": 1e-40}, "temperature", "must be 0 (greedy) or at least 0.01"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"presence_penalty": 2.5}, "presence_penalty", "less than or equal to 2"),
        ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
        ({"top_k": -2}, "top_k", "greater than or equal to -1"),
        # Accepted-and-ignored would be a lie: unknown and unimplemented fields are refused.
        ({"min_p": 1.5}, "min_p", "less than or equal to 1"),
        ({"mirostat": 1}, "mirostat", "unknown parameter: this server does not implement it"),
        ({"logit_bias": {"5": 10}}, "logit_bias", "not supported by this server"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required with type json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "'text', 'json_object' or 'json_schema'"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name", "should match pattern"),
        ({"tool_choice": "required"}, "tool_choice", "'required' needs tools"),
        # Misbehaving tool and schema definitions are refused at the edge, whichever tool_choice.
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strng"}}}]},
         "tools.0.function.parameters", "not a valid JSON schema at type: 'strng'"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"minLength": "2"}}}}}]},
         "tools.0.function.parameters", "not a valid JSON schema at properties.a.minLength"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
         "tools.0.function.parameters", "must describe a JSON object"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools.0.function.parameters", "valid dictionary"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "a"}}}},
         "response_format.json_schema.schema", "not a valid JSON schema at required"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}},
         "response_format", "together with tools is not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice", "no tool named 'g'"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id", "required in tool messages"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "call_2", "content": "42"}]},
         "messages.2.tool_call_id", "'call_2' is not the id of a call made by an earlier assistant message (calls made: call_1)"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages.0.tool_calls.0.function.arguments", "not valid JSON"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
         "messages.0.tool_calls.0.function.arguments", "must be the JSON text of the arguments object (a string, as OpenAI sends it), not an object"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": NaN}'}}]}]},
         "messages.0.tool_calls.0.function.arguments", "not valid JSON (NaN is not JSON"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content", "required (null only for an assistant message with tool_calls)"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name", "not supported by this server"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream is true"),
    ],
)
def test_bad_fields_are_422_naming_the_field(http, change, param, words):
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, **change}), 422)
    assert error["param"] == param and words in error["message"]


def test_non_finite_numbers_are_422(http):
    body = json.dumps(CHAT).replace('"temperature": 0', '"temperature": NaN')  # Python's json reads NaN; OpenAI's does not
    error = error_of(http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}), 422)
    assert error["param"] == "temperature" and "finite number" in error["message"]


def test_completions_refuse_their_unimplemented_fields(http):
    completion = {"model": "first", "prompt": "Once", "max_tokens": 2}
    for change, param in (({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"logprobs": 21}, "logprobs"), ({"suffix": "x"}, "suffix")):
        assert error_of(http.post("/v1/completions", json={**completion, **change}), 422)["param"] == param
    assert http.post("/v1/completions", json={**completion, "echo": False, "best_of": 1, "logprobs": None}).status_code == 200


def test_metadata_and_off_values_are_accepted(http):
    off = {"user": "u1", "metadata": {"team": "a"}, "store": False, "logprobs": False, "tools": [], "tool_choice": "none",
           "response_format": {"type": "text"}, "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0, "top_k": -1}
    reply = http.post("/v1/chat/completions", json={**CHAT, **off})
    assert reply.status_code == 200, reply.text
    plain = http.post("/v1/chat/completions", json=CHAT).json()
    assert reply.json()["choices"][0]["message"] == plain["choices"][0]["message"]


def test_penalties_and_top_k_change_the_answer(http):
    """Accepted fields are implemented: a repetition penalty turns greedy decoding away from its loops."""
    long = {**CHAT, "max_tokens": 40}
    plain = http.post("/v1/chat/completions", json=long).json()["choices"][0]["message"]["content"]
    for change in ({"repetition_penalty": 1.5}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        reply = http.post("/v1/chat/completions", json={**long, **change})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] != plain, change
    sampled = {**long, "temperature": 1.0, "seed": 3}
    assert http.post("/v1/chat/completions", json={**sampled, "top_k": 1}).json()["choices"][0]["message"]["content"] == plain


def test_an_empty_model_name_is_404_not_the_default(http):
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, "model": ""}), 404)
    assert error["code"] == "model_not_found"


def test_missing_field_is_422(http):
    body = {k: v for k, v in CHAT.items() if k != "messages"}
    error = error_of(http.post("/v1/chat/completions", json=body), 422)
    assert error["param"] == "messages" and "required" in error["message"].lower()


def test_unknown_model_is_404(http):
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-5"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "first" in error["message"] and "second" in error["message"]


def test_prompt_longer_than_the_context_is_400_with_the_numbers(http):
    long = " ".join(["story"] * 600)
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": long}]}), 400)
    assert error["code"] == "context_length_exceeded"
    prompt_tokens = int(error["message"].split("(")[1].split(" in the messages")[0])
    assert prompt_tokens > 512
    assert f"maximum context length is 512 tokens. However, you requested {prompt_tokens + 8} tokens" in error["message"]
    error = error_of(http.post("/v1/completions", json={"model": "first", "prompt": "Once", "max_tokens": 600}), 400)
    assert "(2 in the prompt, 600 in the completion)" in error["message"]


def test_api_key_is_required_except_for_health(live):
    with httpx2.Client(base_url=live.url, timeout=30) as anonymous:
        assert error_of(anonymous.post("/v1/chat/completions", json=CHAT), 401)["code"] == "invalid_api_key"
        assert error_of(anonymous.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}), 401)["code"] == "invalid_api_key"
        assert error_of(anonymous.get("/v1/models", headers={"Authorization": "sk-test"}), 401)  # not a Bearer header
        # A bad key is refused before the body is even looked at.
        assert error_of(anonymous.post("/v1/chat/completions", content=b"{"), 401)
        assert anonymous.get("/health").status_code == 200


def test_unknown_route_is_404_in_the_error_shape(http):
    assert error_of(http.get("/v1/nothing"), 404)["message"] == "Not Found"


def test_generate_uses_the_run_template_and_system_prompt(http, live, story_runs):
    from tunesmith.eval.generate import generate, load_for_inference

    reply = http.post("/generate", json={"model": "second", "prompt": "The bird sang", "max_tokens": 12})
    assert reply.status_code == 200, reply.text
    expected = generate(load_for_inference(str(story_runs[1])), [[{"role": "system", "content": "Name the capital."},
                                                                  {"role": "user", "content": "The bird sang"}]], max_new_tokens=12, progress=False)
    assert reply.json()["text"] == expected[0] and reply.json()["model"] == "second"
    default = http.post("/generate", json={"messages": [{"role": "user", "content": "The bird sang"}], "max_tokens": 4}).json()
    assert default["model"] == "first" and default["usage"]["completion_tokens"] == 4
    assert error_of(http.post("/generate", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]}), 422)


def test_health_reports_the_engine(http):
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["engine"] == "transformers"
    assert health["models"] == [m["id"] for m in http.get("/v1/models").json()["data"]]


def test_a_client_leaving_mid_stream_cancels_its_generation(http, live):
    before = live.engine.stats()
    body = {**CHAT, "model": "second", "max_tokens": 380, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = response.iter_lines()
        received = [line for line, _ in zip(events, range(6)) if line.startswith("data: ")]
    assert len(received) >= 2 and json.loads(received[0][6:])["object"] == "chat.completion.chunk"
    deadline = time.monotonic() + 20
    while live.engine.stats()["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, "the generation kept running after the client left"
        time.sleep(0.05)
    after = live.engine.stats()
    assert after["running"] == 0 and after["completed"] == before["completed"]  # stopped, not run to its 380 tokens
    # The server goes on serving.
    assert http.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["finish_reason"] == "length"


def test_a_failing_generation_is_a_500_in_the_error_shape_without_local_paths_and_the_server_goes_on(story_runs, start_server, stories_path, monkeypatch):
    import tunesmith.serve.engine as engine_module

    real_prefill = engine_module.prefill
    calls = []

    def broken_twice(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError(f"out of memory (simulated) in {stories_path.resolve()}/model.safetensors")
        return real_prefill(*args, **kwargs)

    monkeypatch.setattr(engine_module, "prefill", broken_twice)
    with start_server(story_runs[0]) as server, httpx2.Client(base_url=server.url, timeout=60) as client:
        error = error_of(client.post("/v1/chat/completions", json=CHAT), 500)
        assert error["type"] == "server_error"
        assert "out of memory (simulated) in <stories260K>/model.safetensors" in error["message"]  # not the folder's path
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        streamed = json.loads(events[-2][6:])["error"]
        assert streamed["type"] == "server_error" and "<stories260K>" in streamed["message"] and str(stories_path) not in streamed["message"]
        assert client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["finish_reason"] == "length"
