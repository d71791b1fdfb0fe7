"""`tunesmith serve` as its own process: it binds to localhost, and on SIGTERM finishes the request it is
running, stops the engine and exits."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx2
import pytest


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
