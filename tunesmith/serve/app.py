"""The OpenAI-compatible HTTP API over an engine.

    POST /v1/chat/completions   messages rendered with the model's own chat template; SSE with stream=true;
                                tools, response_format and logprobs (chat.py)
    POST /v1/completions        raw text prompts; response_format and logprobs too
    GET  /v1/models[/{id}]      the base and every adapter
    GET  /health                liveness and engine counters (no API key needed)
    POST /generate              {"prompt" or "messages", "model"?} -> {"text", ...}

Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}: malformed JSON 400,
invalid, mistyped or unknown fields 422, unknown model 404, prompt + max_tokens over the context 400, bad
API key 401, a failed generation 500, shutting down 503; mid-stream, an error is one `data: {"error": ...}`
event before `[DONE]`. Messages never show the local folders behind the models.
A client that goes away mid-stream cancels its generation (the engine drops its row at the next step).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tunesmith.data.templates import TemplateError, prompt_ids
from tunesmith.eval.generate import require_conversation
from tunesmith.serve.catalog import Catalog, ServedModel
from tunesmith.serve.chat import Choice, Plan, completion_logprobs, plan, text_plan
from tunesmith.serve.engine import Engine, EngineStopped, Request
from tunesmith.serve.protocol import APIError, ChatRequest, CompletionRequest, GenerateRequest, Sampled, conversation
from tunesmith.serve.sampling import Sampling
from tunesmith.serve.structured import SchemaError
from tunesmith.serve.text import TextStream
from tunesmith.serve.tools import Family, ToolFormatError, marker_tokens, template_family

log = logging.getLogger(__name__)


@dataclass
class Delta:
    text: str
    finish_reason: str | None
    completion_tokens: int
    logprobs: list = field(default_factory=list)   # engine.TokenLogprob of the tokens since the last delta


class Shutdown:
    """The end of the graceful-shutdown time. Requests still generating then are cut here, in the OpenAI error
    shape (503; a stream gets an error event and [DONE]), rather than cancelled by uvicorn into a plain 500."""

    def __init__(self):
        self.passed = False
        self._listening: set[asyncio.Queue] = set()

    def begin(self, seconds: float) -> None:
        """Called on the server's event loop when shutting down starts."""
        asyncio.get_running_loop().call_later(seconds, self._cut, seconds)

    @contextlib.contextmanager
    def watching(self, queue: asyncio.Queue):
        """While inside, the cut puts None into `queue`."""
        self._listening.add(queue)
        try:
            yield
        finally:
            self._listening.discard(queue)

    def _cut(self, seconds: float) -> None:
        self.passed = True
        if self._listening:
            log.warning("cutting %d response(s) still generating after the %g s graceful-shutdown timeout", len(self._listening), seconds)
        for queue in self._listening:
            queue.put_nowait(None)

    def stopped(self) -> EngineStopped:
        return EngineStopped("the server shut down before this request finished (its graceful-shutdown timeout passed)")


class ApiKeyMiddleware:
    """Bearer-token check before anything else runs (so a bad key is 401 even for a malformed body)."""

    OPEN = ("/health",)

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                from fastapi.responses import JSONResponse

                error = APIError(401, "Incorrect or missing API key: send Authorization: Bearer <key>.", code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    engine: Engine, catalog: Catalog, tokenizer, api_key: str | None = None, default_max_tokens: int = 256, tool_parser: str | None = None
):
    """`tool_parser`: the tool-call format of every model's replies (tools.FAMILIES); None: read from each template."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    started = int(time.time())
    shutdown = Shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await engine.start()
        yield
        await engine.stop()
        log.info("engine stopped")

    app = FastAPI(title="tunesmith", lifespan=lifespan)
    app.state.shutdown = shutdown
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return JSONResponse(catalog.public(err.body()), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, err: RequestValidationError):
        return validation_error(err.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):
        log.exception("request failed")
        error = APIError(500, f"internal error: {err.__class__.__name__}: {err}", type="server_error")
        return JSONResponse(catalog.public(error.body()), status_code=500)

    def find(name: str | None) -> ServedModel:
        served = catalog.models.get(catalog.default if name is None else name)
        if served is None:
            known = ", ".join(catalog.models)
            raise APIError(404, f"The model `{name}` does not exist. Served models: {known}.", param="model", code="model_not_found")
        return served

    def budget(prompt_tokens: int, asked: int | None, param: str) -> int:
        context = engine.context_length
        max_tokens = asked if asked is not None else max(1, min(default_max_tokens, context - prompt_tokens))
        if prompt_tokens + max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {param} or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens

    def chat_ids(served: ServedModel, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        if served.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": served.system_prompt}, *messages]
        try:
            return prompt_ids(served.template, tokenizer, messages, tools)
        except TemplateError as err:
            raise APIError(400, str(err), param="messages") from None

    def reply_family(served: ServedModel) -> Family | ToolFormatError:
        try:
            return template_family(served.template, tokenizer, tool_parser)
        except ToolFormatError as err:
            return ToolFormatError(f"model {served.name!r}: {err}")

    async def constraint(served: ServedModel, chat: Plan):
        if not chat.constrained:
            return None
        try:  # compiling a schema (and, the first time, reading the vocabulary) takes a while: not on the event loop
            return await asyncio.to_thread(engine.constrain, served, chat.schema)
        except SchemaError as err:
            raise APIError(400, str(err), param=chat.param) from None

    def requests_for(
        served: ServedModel, prompts: list[list[int]], body: Sampled, max_tokens: list[int], logprobs: int | None = None, constrained=None
    ) -> list[Request]:
        """n choices per prompt; choice i of a seeded request samples with seed + i, so choices differ."""
        return [
            Request(served, ids, sampling(body, limit, None if body.seed is None else body.seed + i), logprobs, constrained)
            for ids, limit in zip(prompts, max_tokens)
            for i in range(body.n)
        ]

    async def deltas(request: Request, stop: list[str], keep: dict[int, str] | None = None) -> AsyncIterator[Delta]:
        # The template's stop texts too: turn-end markers that are no token never reach a client.
        text = TextStream(tokenizer, [*stop, *request.model.template.stop_texts], keep)
        scores = []
        async with contextlib.aclosing(engine.stream(request)) as steps:
            async for step in steps:
                delta = text.add(step.token_ids)
                scores += step.logprobs
                if text.stopped:
                    yield Delta(delta, "stop", step.completion_tokens, scores)
                    return  # leaving the `async with` closes the engine stream: generation stops
                if step.finish_reason:
                    yield Delta(delta + text.flush(), step.finish_reason, step.completion_tokens, scores)
                    return
                if delta or scores:
                    yield Delta(delta, None, step.completion_tokens, scores)
                    scores = []

    async def collect(requests: list[Request], stop: list[str]) -> list[Delta]:
        out = [Delta("", None, 0) for _ in requests]
        async with contextlib.aclosing(merged([deltas(r, stop) for r in requests], shutdown)) as items:
            async for i, d in items:
                out[i] = Delta(out[i].text + d.text, d.finish_reason, d.completion_tokens, out[i].logprobs + d.logprobs)
        return out

    async def choice_deltas(request: Request, stop: list[str], choice: Choice) -> AsyncIterator[tuple[list[dict], str | None, int]]:
        """A chat choice's chunk deltas, its finish reason at the end, and its completion tokens so far."""
        keep = marker_tokens(tokenizer, choice.plan.family) if choice.plan.family is not None else None
        async with contextlib.aclosing(deltas(request, stop, keep)) as items:
            async for d in items:
                pieces = choice.add(d.text, d.logprobs)
                if d.finish_reason or choice.done:  # done: its one allowed call is out, so generating stops
                    last, reason = choice.finish(d.finish_reason or "stop")
                    yield pieces + last, reason, d.completion_tokens
                    return
                yield pieces, None, d.completion_tokens

    def usage(prompts: list[list[int]], results: list[Delta]) -> dict:
        prompt = sum(len(p) for p in prompts)
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(catalog.models), **engine.stats()}

    def model_entry(name: str, served: ServedModel) -> dict:
        base = next((n for n, m in catalog.models.items() if m.adapter is None), None)
        root, parent = (name, None) if served.adapter is None else (base, base)
        return {"id": name, "object": "model", "created": started, "owned_by": "tunesmith", "root": root, "parent": parent}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_entry(name, m) for name, m in catalog.models.items()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return model_entry(name, find(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        served = find(body.model)
        chat = plan(body, reply_family(served) if body.calls_tools() else None)
        ids = chat_ids(served, conversation(body.messages), chat.tools)
        limit = budget(len(ids), body.max_completion_tokens or body.max_tokens, "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        requests = requests_for(served, [ids], body, [limit], logprobs, await constraint(served, chat))
        choices = [Choice(chat, tokenizer, logprobs) for _ in requests]
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": reply_id, "created": created, "model": served.name}
        if body.stream:
            return sse(chat_chunks(head, requests, choices, body, [ids]), catalog.public)
        finals = await run(finish_chat(requests, choices, body))
        replies = [
            {"index": i, "message": c.message(), "logprobs": c.logprobs_body(), "finish_reason": reason}
            for i, (c, (reason, _)) in enumerate(zip(choices, finals))
        ]
        return {**head, "object": "chat.completion", "choices": replies, "usage": usage([ids], [Delta("", None, n) for _, n in finals])}

    async def finish_chat(requests: list[Request], choices: list[Choice], body: ChatRequest) -> list[tuple[str | None, int]]:
        finals = [(None, 0)] * len(requests)
        streams = [choice_deltas(r, body.stop_list(), c) for r, c in zip(requests, choices)]
        async with contextlib.aclosing(merged(streams, shutdown)) as items:
            async for i, (_, reason, tokens) in items:
                finals[i] = (reason, tokens)
        return finals

    async def chat_chunks(head: dict, requests: list[Request], choices: list[Choice], body: ChatRequest, prompts) -> AsyncIterator[dict]:
        chunk = {**head, "object": "chat.completion.chunk"}
        for i in range(len(requests)):
            yield {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        finals = [Delta("", None, 0)] * len(requests)
        streams = [choice_deltas(r, body.stop_list(), c) for r, c in zip(requests, choices)]
        async with contextlib.aclosing(merged(streams, shutdown)) as items:
            async for i, (pieces, reason, tokens) in items:
                finals[i] = Delta("", reason, tokens)
                for piece in pieces:
                    logprobs = piece.pop("logprobs", None)
                    yield {**chunk, "choices": [{"index": i, "delta": piece, "logprobs": logprobs, "finish_reason": None}]}
                if reason:
                    yield {**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}]}
        if body.include_usage():
            yield {**chunk, "choices": [], "usage": usage(prompts, finals)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        served = find(body.model)
        prompts = [tokenizer(text)["input_ids"] for text in body.prompts()]
        limits = [budget(len(ids), body.max_tokens, "prompt") for ids in prompts]
        requests = requests_for(served, prompts, body, limits, body.logprobs, await constraint(served, text_plan(body)))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if body.stream:
            return sse(completion_chunks(head, requests, body, prompts), catalog.public)
        results = await run(collect(requests, body.stop_list()))
        choices = [
            {"index": i, "text": r.text, "logprobs": scored(r.logprobs, body), "finish_reason": r.finish_reason}
            for i, r in enumerate(results)
        ]
        return {**head, "object": "text_completion", "choices": choices, "usage": usage(prompts, results)}

    def scored(scores: list, body: CompletionRequest, offset: int = 0) -> dict | None:
        return None if body.logprobs is None else completion_logprobs(tokenizer, scores, offset)

    async def completion_chunks(head: dict, requests: list[Request], body: CompletionRequest, prompts) -> AsyncIterator[dict]:
        chunk = {**head, "object": "text_completion"}
        finals = [Delta("", None, 0)] * len(requests)
        offsets = [0] * len(requests)
        async with contextlib.aclosing(merged([deltas(r, body.stop_list()) for r in requests], shutdown)) as items:
            async for i, d in items:
                finals[i] = d
                logprobs = scored(d.logprobs, body, offsets[i])
                offsets[i] += len(d.text)
                yield {**chunk, "choices": [{"index": i, "text": d.text, "logprobs": logprobs, "finish_reason": d.finish_reason}]}
        if body.include_usage():
            yield {**chunk, "choices": [], "usage": usage(prompts, finals)}

    @app.post("/generate")
    async def generate(body: GenerateRequest):
        served = find(body.model)
        messages = conversation(body.messages) if body.messages else require_conversation(body.prompt)
        ids = chat_ids(served, messages)
        requests = requests_for(served, [ids], body, [budget(len(ids), body.max_tokens, "messages")])
        [result] = await run(collect(requests, body.stop_list()))
        return {"model": served.name, "text": result.text, "finish_reason": result.finish_reason, "usage": usage([ids], [result])}

    return app


def sampling(body: Sampled, max_tokens: int, seed: int | None) -> Sampling:
    return Sampling(
        max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k or 0, 0),  # vLLM's -1 is off, like 0
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        seed=seed,
    )


async def run(work):
    """Engine failures as OpenAI errors: 503 while shutting down, 500 otherwise."""
    try:
        return await work
    except EngineStopped as err:
        raise APIError(503, str(err), type="server_error") from None
    except APIError:
        raise
    except Exception as err:
        log.exception("generation failed")
        raise APIError(500, f"generation failed: {err.__class__.__name__}: {err}", type="server_error") from None


async def merged(streams: list[AsyncIterator], shutdown: Shutdown) -> AsyncIterator[tuple[int, object]]:
    """(index, item) from several async iterators as items arrive. Leaving early closes them all; so does the end
    of the graceful-shutdown time, which raises EngineStopped."""
    if shutdown.passed:
        raise shutdown.stopped()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    await queue.put((i, item))
        except Exception as err:  # handed to the consumer, which raises it
            await queue.put((i, err))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        with shutdown.watching(queue):
            remaining = len(tasks)
            while remaining:
                got = await queue.get()
                if got is None:
                    raise shutdown.stopped()
                i, item = got
                if item is done:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse(chunks: AsyncIterator[dict], public):
    """Server-sent events: one `data: {json}` per chunk, then `data: [DONE]`; an error mid-stream becomes an error
    event (its body passed through `public`, which hides local paths)."""
    from fastapi.responses import StreamingResponse

    async def events():
        try:
            async with contextlib.aclosing(chunks) as items:
                async for chunk in items:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except APIError as err:
            yield f"data: {json.dumps(public(err.body()), ensure_ascii=False)}\n\n"
        except EngineStopped as err:
            yield f"data: {json.dumps(APIError(503, str(err), type='server_error').body())}\n\n"
        except Exception as err:
            log.exception("generation failed")
            body = APIError(500, f"generation failed: {err.__class__.__name__}: {err}", type="server_error").body()
            yield f"data: {json.dumps(public(body), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    class ClosingStreamingResponse(StreamingResponse):
        # Starlette leaves the body iterator to the garbage collector when a client disconnects;
        # closing it here ends the generation at once.
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()

    return ClosingStreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def validation_error(errors: list[dict]):
    from fastapi.responses import JSONResponse

    if any(e["type"] == "json_invalid" for e in errors):
        error = APIError(400, "The request body is not valid JSON.", code="invalid_json")
        return JSONResponse(error.body(), status_code=400)
    lines, param = [], None
    for e in errors:
        loc = [str(p) for p in e["loc"] if p != "body"]
        # A union field fails once per branch (str | list[...]), named by the branch's type: one line per field is enough.
        loc = [p for p in loc if p not in ("str", "int", "float", "bool", "dict", "list") and "[" not in p]
        message = e["msg"].removeprefix("Value error, ")
        # A check across fields (protocol's model validators) names its field first: "tool_choice: ...".
        named = re.match(r"([a-z_]+(?:\.[a-z0-9_]+)*): ", message) if e["type"] == "value_error" else None
        if named:
            loc, message = [*loc, named.group(1)], message[named.end():]
        param = param or (".".join(loc) or None)
        if e["type"] == "extra_forbidden":
            message = "unknown parameter: this server does not implement it"
        lines.append(f"{'.'.join(loc)}: {message}" if loc else message)
    error = APIError(422, "; ".join(dict.fromkeys(lines)), param=param, code="invalid_value")
    return JSONResponse(error.body(), status_code=422)
