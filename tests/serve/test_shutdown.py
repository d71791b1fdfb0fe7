"""Shutting down: on SIGTERM `tunesmith serve` (its own process) finishes the request it is running, stops the
engine and exits; requests still running when the graceful timeout ends are answered in the OpenAI error shape."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx2
import pytest

import tunesmith.serve.engine as engine_module


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not come up")


@pytest.mark.slow  # a fresh process imports torch and loads the model: tens of seconds on a busy CPU
def test_sigterm_finishes_the_running_request_then_exits(story_runs, port):
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "serve", str(story_runs[0]), "--port", str(port), "--engine", "transformers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_until_up(url, process)
        reply = {}
        body = {"model": "first", "messages": [{"role": "user", "content": "Once upon a time"}], "temperature": 0, "max_tokens": 300}
        worker = threading.Thread(target=lambda: reply.update(r=httpx2.post(url + "/v1/chat/completions", json=body, timeout=120)))
        worker.start()
        deadline = time.monotonic() + 60
        while httpx2.get(url + "/health", timeout=5).json()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert reply["r"].status_code == 200
    assert reply["r"].json()["usage"]["completion_tokens"] == 300  # the running request was finished, not cut
    assert "on http://127.0.0.1:" in out  # localhost unless told otherwise
    assert "Shutting down" in err and "engine stopped" in err
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down


def test_requests_running_past_the_graceful_timeout_get_503_and_streams_an_error_event(story_runs, start_server, monkeypatch):
    real_step = engine_module.step
    monkeypatch.setattr(engine_module, "step", lambda *args: time.sleep(0.02) or real_step(*args))  # 400 tokens: 8 s
    body = {"model": "first", "messages": [{"role": "user", "content": "Once upon a time"}], "temperature": 0, "max_tokens": 400}
    got = {}

    def plain(url):
        got["plain"] = httpx2.post(url + "/v1/chat/completions", json=body, timeout=60)

    def streamed(url):
        with httpx2.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
            got["events"] = [line for line in response.iter_lines() if line.startswith("data: ")]

    with start_server(story_runs[0], graceful_timeout=1) as live:
        clients = [threading.Thread(target=work, args=(live.url,)) for work in (plain, streamed)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while live.engine.stats()["running"] < 2:
            assert time.monotonic() < deadline, "the requests did not start"
            time.sleep(0.01)
        started = time.monotonic()
        live.server.should_exit = True  # what SIGTERM does
        for client in clients:
            client.join(timeout=30)
        cut_after = time.monotonic() - started
    assert 1 <= cut_after < 5  # cut at the graceful timeout, not run to the end
    assert got["plain"].status_code == 503
    error = got["plain"].json()["error"]
    assert error["type"] == "server_error" and "shut down before this request finished" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    events = got["events"]
    assert json.loads(events[1][6:])["object"] == "chat.completion.chunk"  # it was streaming
    assert events[-1] == "data: [DONE]"
    assert "shut down before this request finished" in json.loads(events[-2][6:])["error"]["message"]
    assert live.engine.stats()["running"] == 0 and not live.engine._thread.is_alive()  # the engine stopped
