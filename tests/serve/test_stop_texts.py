"""The server cuts replies at the template's stop texts: turn-end markers that are no token never reach a client."""

import json

import httpx2

from tunesmith.config import ModelConfig
from tunesmith.data.templates import resolve_template
from tunesmith.serve.app import build_app
from tunesmith.serve.catalog import Catalog, ServedModel
from tunesmith.serve.engine import Step

from .conftest import LiveServer


class Scripted:
    """An engine that writes the same tokens, one step each, for every request."""

    name, context_length = "scripted", 512

    def __init__(self, written: list[int]):
        self.written = written

    async def start(self):
        pass

    async def stop(self):
        pass

    def stats(self) -> dict:
        return {}

    async def stream(self, request):
        for n, token in enumerate(self.written, 1):
            yield Step([token], None, n)
        yield Step([], "stop", len(self.written) + 1)


def test_a_turn_end_marker_that_is_no_token_is_cut_from_replies_and_streams(stories_tokenizer):
    tok = stories_tokenizer
    template = resolve_template("chatml", tok)  # no <|im_end|> token: the marker is text, then EOS
    written = tok("Paris<|im_end|>", add_special_tokens=False)["input_ids"]
    catalog = Catalog(ModelConfig(path="stories"), "stories", {"stories": ServedModel("stories", template)}, "stories")
    engine = Scripted(written)
    chat = {"model": "stories", "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 32}
    with LiveServer(build_app(engine, catalog, tok), engine, catalog) as live, httpx2.Client(base_url=live.url, timeout=30) as http:
        reply = http.post("/v1/chat/completions", json=chat).json()
        assert (reply["choices"][0]["message"]["content"], reply["choices"][0]["finish_reason"]) == ("Paris", "stop")
        events = http.post("/v1/chat/completions", json={**chat, "stream": True}).text.splitlines()
        chunks = [json.loads(line.removeprefix("data: ")) for line in events if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Paris"
