"""Engines turn prompts into token ids; the HTTP layer does the rest (templates, text, stop strings).

An engine is small: `start()`, `stop()`, `stream(request)` (an async iterator of `Step`s; closing it
early cancels the generation), `constrain(model, schema)` (a JSON schema made ready to decode under) and
`stats()`. Two implementations:

- `TransformersEngine` (here): any device. A background thread collects waiting requests and runs
  them as one left-padded batch per adapter, decoding step by step with a KV cache, so concurrent
  requests share forward passes instead of queueing behind each other. Between steps, finished and
  cancelled rows leave the batch and newly arrived requests for the same adapter join it (batch.py).
  A request whose sampling fails (or whose logits turn NaN) fails alone; when a forward pass over
  several rows fails, each row is run again on its own, so only the row that fails alone fails.
  Constrained rows (structured.py) sample from their logits with what the grammar forbids masked out;
  logprobs are the log-softmax of the model's raw logits (before penalties, temperature or masks), as vLLM's.
- `VLLMEngine` (vllm_engine.py): vLLM's AsyncLLMEngine with LoRARequest per adapter, when vLLM and
  a GPU are present.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from tunesmith.models.peft import load_adapters, use_adapter, virtual_tokens
from tunesmith.serve.batch import Batch, can_join, concat, prefill, select, step
from tunesmith.serve.catalog import Catalog, ServedModel
from tunesmith.serve.sampling import Sampling, next_token, seeded
from tunesmith.serve.structured import Grammars, masked, matcher

log = logging.getLogger(__name__)


@dataclass
class Request:
    model: ServedModel
    prompt_ids: list[int]
    sampling: Sampling
    logprobs: int | None = None     # None: none; n: each token's logprob and the n most likely alternatives
    constraint: object = None       # what the engine's constrain() returned: decode under that schema


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]    # the most likely tokens at this step, best first


@dataclass
class Step:
    token_ids: list[int]            # new tokens, stop token excluded
    finish_reason: str | None       # 'stop' (a stop token), 'length' (max_tokens), None while running
    completion_tokens: int = 0      # generated so far, a final stop token included
    logprobs: list[TokenLogprob] = field(default_factory=list)   # one per token in token_ids, when asked


class Engine(Protocol):
    name: str
    context_length: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stream(self, request: Request) -> AsyncIterator[Step]: ...

    def constrain(self, model: ServedModel, schema: dict | None) -> object:
        """`schema` ready for Request.constraint (None: any JSON object); raises SchemaError when it cannot be."""

    def stats(self) -> dict: ...


class EngineStopped(RuntimeError):
    """The server is shutting down: the request was not run."""


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    generator: object               # the request's torch.Generator
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False         # set from the event loop when the client goes away; read by the worker
    tokens: list[int] = field(default_factory=list)   # generated so far, a final stop token included
    grammar: object = None          # the request's grammar state (structured.matcher), when constrained

    def context(self) -> list[int]:
        """What the model has read or must read next: the prompt and every token generated so far."""
        return self.request.prompt_ids + self.tokens

    def send(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop already closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TransformersEngine:
    name = "transformers"

    def __init__(self, model, tokenizer, adapter_names: dict[str, str], max_batch: int = 16, batch_wait: float = 0.01):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter_names = adapter_names   # served name -> PEFT adapter name, for models with an adapter
        # What the decoding loop runs: the transformers model, with PEFT's layers in it but not its wrapper, whose
        # forward would put prompt or prefix tuning's virtual tokens before every single decoded token.
        from tunesmith.models.lm_loss import base_of

        self.decoder = base_of(model)
        self.max_batch = max_batch
        self.batch_wait = batch_wait         # seconds the first waiting request waits for others to join it
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "batches": 0, "joined": 0, "largest_batch": 0}
        self.running = 0
        self._in_flight: list[Job] = []
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.grammars = Grammars(tokenizer, int(model.config.vocab_size))

    @classmethod
    def load(cls, catalog: Catalog, max_batch: int = 16, batch_wait: float = 0.01) -> TransformersEngine:
        import torch

        from tunesmith.models.load import load_model

        model, tokenizer, _ = load_model(catalog.base, catalog.source)
        adapters = [m for m in catalog.models.values() if m.adapter]
        names = {m.name: f"adapter{i}" for i, m in enumerate(adapters)}  # PEFT names cannot hold dots
        if adapters:
            model = load_adapters(model, {names[m.name]: m.adapter for m in adapters})
        if torch.cuda.is_available() and catalog.base.quantization in (None, "none"):
            model = model.to("cuda")
        model.eval()
        return cls(model, tokenizer, names, max_batch, batch_wait)

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunesmith-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def stats(self) -> dict:
        return {"engine": self.name, "waiting": len(self._waiting), "running": self.running, **self.counts}

    def constrain(self, model: ServedModel, schema: dict | None) -> object:
        return self.grammars.compile(schema, model.template.stop_token_ids)

    async def stream(self, request: Request) -> AsyncIterator[Step]:
        job = Job(request, asyncio.get_running_loop(), seeded(request.sampling.seed, self.model.device))
        if request.constraint is not None:
            job.grammar = matcher(request.constraint)
        with self._cond:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            self._waiting.append(job)
            self._cond.notify_all()
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            job.cancelled = True  # a no-op once finished; otherwise the worker drops the row at its next step

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                # Requests that arrive together share the batch: the oldest waits batch_wait for company.
                deadline = self._waiting[0].arrived + self.batch_wait
                while len(self._waiting) < self.max_batch and not self._stopping and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                batch = self._take_batch()
            if batch:
                self._run(batch)
        with self._cond:
            for job in self._waiting:
                job.send(EngineStopped("the server is shutting down"))
            self._waiting.clear()

    def _take_batch(self) -> list[Job]:
        """Up to max_batch waiting jobs for the adapter of the oldest one. Call with the lock held."""
        self._prune()
        if not self._waiting:
            return []
        return self._take(self._waiting[0].request.model.adapter, self.max_batch)

    def _joiners(self, adapter, room: int) -> list[Job]:
        """Waiting jobs that can join a running batch for `adapter` between two steps."""
        with self._cond:
            self._prune()
            if room <= 0 or self._stopping or any(job.request.model.adapter != adapter for job in self._waiting):
                return []  # another adapter is waiting: let this batch drain, so that it gets its turn
            return self._take(adapter, room)

    def _prune(self) -> None:
        self.counts["cancelled"] += sum(job.cancelled for job in self._waiting)
        self._waiting = [job for job in self._waiting if not job.cancelled]

    def _take(self, adapter, room: int) -> list[Job]:
        taken = [job for job in self._waiting if job.request.model.adapter == adapter][:room]
        chosen = set(map(id, taken))
        self._waiting = [job for job in self._waiting if id(job) not in chosen]
        return taken

    def _run(self, jobs: list[Job]) -> None:
        import torch

        self._in_flight = jobs
        try:
            with torch.inference_mode(), self._weights_for(jobs[0].request.model):
                self._decode(jobs)
        except Exception as err:  # what _forward and _sample cannot pin on one row fails every row in flight, not the server
            log.exception("generation failed")
            for job in self._in_flight:
                job.send(err)
        finally:
            self.running, self._in_flight = 0, []

    def _weights_for(self, model: ServedModel):
        if not self.adapter_names:
            return contextlib.nullcontext()
        return use_adapter(self.model, self.adapter_names[model.name] if model.adapter else None)

    def _prefill(self, jobs: list[Job]) -> Batch:
        self.counts["batches"] += 1
        contexts = [job.context() for job in jobs]
        served = jobs[0].request.model
        name = self.adapter_names[served.name] if served.adapter else None
        virtual = virtual_tokens(self.model, name, len(jobs), max(map(len, contexts)))
        return prefill(self.decoder, contexts, self.tokenizer.pad_token_id, jobs, virtual)

    def _decode(self, jobs: list[Job]) -> None:
        """Decode until every row is done; between steps, finished rows leave and waiting ones join."""
        adapter = jobs[0].request.model.adapter
        batch = self._forward(None, jobs)
        while batch is not None:
            self._in_flight, self.running = batch.jobs, len(batch)
            self.counts["largest_batch"] = max(self.counts["largest_batch"], len(batch))
            tokens, scores = self._sample(batch)
            going = [row for row, job in enumerate(batch.jobs) if self._advance(job, tokens[row], scores[row])]
            batch = select(batch, going)
            joiners = []
            if batch is None or can_join(batch):
                joiners = self._joiners(adapter, self.max_batch - (len(batch) if batch else 0))
                self.counts["joined"] += len(joiners) if batch is not None else 0
            batch = self._forward(batch, joiners)

    def _forward(self, batch: Batch | None, joiners: list[Job]) -> Batch | None:
        """Feed every row its newest token and prefill the joiners into the batch.

        A failed forward pass over several rows cannot say which row broke it: each row is then run again on
        its own from its context (prompt + tokens so far), the row that fails alone fails, and the others
        go on together. A failure that only comes with the rows together (memory at this batch size) still
        moves on: each rebuild has given every row its next token."""
        jobs = (batch.jobs if batch is not None else []) + joiners
        self._in_flight = jobs  # whatever fails beyond this reaches them all
        try:
            if batch is not None:
                step(self.decoder, batch, [job.tokens[-1] for job in batch.jobs])
            return concat(batch, self._prefill(joiners)) if joiners else batch
        except Exception as err:
            if len(jobs) == 1:
                self._fail(jobs[0], err)
                return None
            log.warning("a forward pass over %d requests failed (%s: %s); running each again on its own", len(jobs), err.__class__.__name__, err)
        alone = []
        for job in jobs:
            if job.cancelled:
                self.counts["cancelled"] += 1
                continue
            try:
                alone.append(self._prefill([job]))
            except Exception as err:
                self._fail(job, err)
        batch = None
        for single in alone:
            batch = concat(batch, single)
        return batch

    def _sample(self, batch: Batch) -> tuple[list[int | None], list[TokenLogprob | None]]:
        """Every row's next token (None for a row whose sampling failed: that job is failed, the others go on),
        and its logprobs for the rows that asked."""
        import torch

        greedy = batch.logits.argmax(-1).tolist()  # one device sync for every plain greedy row
        broken = (torch.isnan(batch.logits) | torch.isposinf(batch.logits)).any(-1).tolist()
        tokens: list[int | None] = []
        scores: list[TokenLogprob | None] = []
        for row, job in enumerate(batch.jobs):
            sampling, logits = job.request.sampling, batch.logits[row]
            try:
                if broken[row]:
                    raise FloatingPointError("the model's next-token scores for this request are NaN or infinite")
                if job.grammar is not None:
                    logits = masked(logits, job.grammar)
                    if torch.isneginf(logits).all():
                        raise RuntimeError("the grammar allows no token here (does the template have a stop token?)")
                if sampling.plain_greedy() and job.grammar is None:
                    token = greedy[row]
                else:
                    token = next_token(logits, sampling, job.request.prompt_ids, job.tokens, job.generator)
                if job.grammar is not None and not job.grammar.accept_token(token):
                    raise RuntimeError(f"the grammar refused token {token}, which its own mask allowed")
                tokens.append(token)
                scores.append(None if job.request.logprobs is None else logprob_of(batch.logits[row], token, job.request.logprobs))
            except Exception as err:
                self._fail(job, err)
                tokens.append(None)
                scores.append(None)
        return tokens, scores

    def _fail(self, job: Job, err: Exception) -> None:
        log.error("a request failed alone: %s: %s", err.__class__.__name__, err, exc_info=err)
        self.counts["failed"] += 1
        job.send(err)

    def _advance(self, job: Job, token: int | None, score: TokenLogprob | None) -> bool:
        """Hand the token to the job's client; whether the job goes on generating."""
        if token is None:
            return False
        if job.cancelled:
            self.counts["cancelled"] += 1
            return False
        job.tokens.append(token)
        request, generated = job.request, len(job.tokens)
        scores = [] if score is None else [score]
        if token in request.model.template.stop_token_ids:
            job.send(Step([], "stop", generated))
        elif generated >= request.sampling.max_tokens:
            job.send(Step([token], "length", generated, scores))
        else:
            job.send(Step([token], None, generated, scores))
            return True
        self.counts["completed"] += 1
        return False


def logprob_of(logits, token: int, top: int) -> TokenLogprob:
    """The token's log-probability under the raw logits (V,), and the `top` most likely tokens'."""
    import torch

    logprobs = torch.log_softmax(logits.float(), -1)
    best = logprobs.topk(top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return TokenLogprob(token, float(logprobs[token]), pairs)
