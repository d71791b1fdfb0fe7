"""A real server on a free localhost port: uvicorn in a thread, serving a tiny base with two LoRA runs."""

import socket
import threading
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """With graceful_timeout, the server `tunesmith serve` runs (see serve.server.graceful_server)."""

    def __init__(self, app, engine, catalog, graceful_timeout: float | None = None):
        import uvicorn

        self.engine, self.catalog = engine, catalog
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if graceful_timeout is None:
            self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        else:
            from tunesmith.serve.server import ANSWER_TIME, graceful_server

            config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=graceful_timeout + ANSWER_TIME)
            self.server = graceful_server(config, graceful_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


# stories260K is a real (tiny) language model: unlike a random one, its greedy continuations differ from
# prompt to prompt, so comparing answers across requests means something.
STORY_RUN = dict(steps=2, data={"template": "chatml", "max_length": 256, "eval": []})


@pytest.fixture(scope="session")
def story_runs(lora_run_factory, stories_path, tmp_path_factory):
    """Two LoRA runs on stories260K; the second is trained harder, so the adapters answer differently."""
    folder = tmp_path_factory.mktemp("story_runs")
    first = lora_run_factory(folder / "first", stories_path, **STORY_RUN)
    second = lora_run_factory(folder / "second", stories_path, seed=1, train={"lr": 0.2}, **STORY_RUN)
    return first, second


@pytest.fixture(scope="session")
def start_server():
    """`with start_server(target, **options) as live:` a server for any run or model folder."""

    def start(target, graceful_timeout: float | None = None, **options) -> LiveServer:
        from tunesmith.serve.server import create_app

        app, catalog, engine = create_app(str(target), engine="transformers", **options)
        return LiveServer(app, engine, catalog, graceful_timeout)

    return start


@pytest.fixture(scope="session")
def live(story_runs, start_server):
    first, second = story_runs
    with start_server(first, adapters=[f"second={second}"], api_key="sk-test", max_tokens=16) as server:
        yield server


@pytest.fixture
def port() -> int:
    return free_port()
