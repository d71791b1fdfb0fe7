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
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'system', 'developer', 'user' or 'assistant'"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"logprobs": True}, None, "logprobs is not supported"),
    ],
)
def test_bad_fields_are_422_naming_the_field(http, change, param, words):
    error = error_of(http.post("/v1/chat/completions", json={**CHAT, **change}), 422)
    assert error["param"] == param and words in error["message"]


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


def test_a_failing_generation_is_a_500_in_the_error_shape_and_the_server_goes_on(story_runs, start_server, monkeypatch):
    import tunesmith.serve.engine as engine_module

    real_prefill = engine_module.prefill
    calls = []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real_prefill(*args, **kwargs)

    monkeypatch.setattr(engine_module, "prefill", broken_once)
    with start_server(story_runs[0]) as server, httpx2.Client(base_url=server.url, timeout=60) as client:
        error = error_of(client.post("/v1/chat/completions", json=CHAT), 500)
        assert error["type"] == "server_error" and "out of memory (simulated)" in error["message"]
        assert client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["finish_reason"] == "length"
