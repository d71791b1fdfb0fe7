"""Engines turn prompts into token ids; the HTTP layer does the rest (templates, text, stop strings).

An engine is small: `start()`, `stop()`, `stream(request)` (an async iterator of `Step`s; closing it
early cancels the generation) and `stats()`. Two implementations:

- `TransformersEngine` (here): any device. A background thread collects waiting requests and runs
  them as one left-padded batch per adapter, decoding step by step with a KV cache, so concurrent
  requests share forward passes instead of queueing behind each other. Between steps, finished and
  cancelled rows leave the batch and newly arrived requests for the same adapter join it (batch.py).
- `VLLMEngine` (vllm_engine.py): vLLM's AsyncLLMEngine with LoRARequest per adapter, when vLLM and
  a GPU are present.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from tunesmith.serve.batch import Batch, can_join, concat, prefill, select, step
from tunesmith.serve.catalog import Catalog, ServedModel

log = logging.getLogger(__name__)


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0        # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Request:
    model: ServedModel
    prompt_ids: list[int]
    sampling: Sampling


@dataclass
class Step:
    token_ids: list[int]            # new tokens, stop token excluded
    finish_reason: str | None       # 'stop' (a stop token), 'length' (max_tokens), None while running
    completion_tokens: int = 0      # generated so far, a final stop token included


class Engine(Protocol):
    name: str
    context_length: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stream(self, request: Request) -> AsyncIterator[Step]: ...

    def stats(self) -> dict: ...


class EngineStopped(RuntimeError):
    """The server is shutting down: the request was not run."""


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False         # set from the event loop when the client goes away; read by the worker
    generated: int = 0

    def send(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop already closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TransformersEngine:
    name = "transformers"

    def __init__(self, model, tokenizer, adapter_names: dict[str, str], max_batch: int = 16, batch_wait: float = 0.01):
        self.model = model
        self.tokenizer = tokenizer
        self.adapter_names = adapter_names   # served name -> PEFT adapter name, for models with an adapter
        self.max_batch = max_batch
        self.batch_wait = batch_wait         # seconds the first waiting request waits for others to join it
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.counts = {"completed": 0, "cancelled": 0, "batches": 0, "joined": 0, "largest_batch": 0}
        self.running = 0
        self._in_flight: list[Job] = []
        self._waiting: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @classmethod
    def load(cls, catalog: Catalog, max_batch: int = 16, batch_wait: float = 0.01) -> TransformersEngine:
        import torch

        from tunesmith.models.load import load_model

        model, tokenizer, _ = load_model(catalog.base)
        adapters = [m for m in catalog.models.values() if m.adapter]
        names = {m.name: f"adapter{i}" for i, m in enumerate(adapters)}  # PEFT names cannot hold dots
        if adapters:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapters[0].adapter, adapter_name=names[adapters[0].name])
            for m in adapters[1:]:
                model.load_adapter(m.adapter, adapter_name=names[m.name])
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

    async def stream(self, request: Request) -> AsyncIterator[Step]:
        job = Job(request, asyncio.get_running_loop())
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
        except Exception as err:  # a failed batch fails its requests, not the server
            log.exception("generation failed")
            for job in self._in_flight:
                job.send(err)
        finally:
            self.running, self._in_flight = 0, []

    def _weights_for(self, model: ServedModel):
        if not self.adapter_names:
            return contextlib.nullcontext()
        if model.adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(self.adapter_names[model.name])
        return contextlib.nullcontext()

    def _prefill(self, jobs: list[Job]) -> Batch:
        self.counts["batches"] += 1
        generators = [seeded(job.request.sampling.seed, self.model.device) for job in jobs]
        return prefill(self.model, [job.request.prompt_ids for job in jobs], self.tokenizer.pad_token_id, jobs, generators)

    def _decode(self, jobs: list[Job]) -> None:
        """Decode until every row is done; between steps, finished rows leave and waiting ones join."""
        adapter = jobs[0].request.model.adapter
        batch = self._prefill(jobs)
        while batch is not None:
            self._in_flight, self.running = batch.jobs, len(batch)
            self.counts["largest_batch"] = max(self.counts["largest_batch"], len(batch))
            tokens = sample(batch.logits, [job.request.sampling for job in batch.jobs], batch.generators)
            rows = [row for row, (job, token) in enumerate(zip(batch.jobs, tokens)) if self._advance(job, token)]
            batch = select(batch, rows)
            if batch is not None:
                step(self.model, batch, [tokens[row] for row in rows])
            if batch is None or can_join(batch):
                joiners = self._joiners(adapter, self.max_batch - (len(batch) if batch else 0))
                if joiners:
                    self._in_flight = (batch.jobs if batch is not None else []) + joiners  # failures reach them too
                    self.counts["joined"] += len(joiners) if batch is not None else 0
                    batch = concat(batch, self._prefill(joiners))

    def _advance(self, job: Job, token: int) -> bool:
        """Hand the token to the job's client; whether the job goes on generating."""
        if job.cancelled:
            self.counts["cancelled"] += 1
            return False
        job.generated += 1
        request = job.request
        if token in request.model.template.stop_token_ids:
            job.send(Step([], "stop", job.generated))
        elif job.generated >= request.sampling.max_tokens:
            job.send(Step([token], "length", job.generated))
        else:
            job.send(Step([token], None, job.generated))
            return True
        self.counts["completed"] += 1
        return False


_seed_counter = itertools.count()


def seeded(seed: int | None, device):
    """A generator per request: a seeded request samples the same tokens whatever it is batched with."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(time.time_ns()) + next(_seed_counter))
    return generator


def top_p_filter(probs, top_p: float):
    """Nucleus filtering (Holtzman et al. 2019, arXiv:1904.09751): keep the smallest set of most likely tokens
    whose probability reaches top_p, renormalised. probs: (V,)."""
    import torch

    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(0) - sorted_probs    # probability mass of the tokens ranked above each one
    sorted_probs[before >= top_p] = 0.0               # the top token always stays (its `before` is 0)
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return kept / kept.sum()


def sample(logits, params: list[Sampling], generators: list) -> list[int]:
    """One token per row: argmax for temperature 0, else temperature + top-p sampling. logits: (B, V)."""
    import torch

    tokens = logits.argmax(-1).tolist()
    for row, p in enumerate(params):
        if p.temperature > 0:
            probs = top_p_filter(torch.softmax(logits[row].float() / p.temperature, -1), p.top_p)
            tokens[row] = int(torch.multinomial(probs, 1, generator=generators[row]).item())
    return tokens
