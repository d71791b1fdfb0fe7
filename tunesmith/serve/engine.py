"""Engines turn prompts into token ids; the HTTP layer does the rest (templates, text, stop strings).

An engine is small: `start()`, `stop()`, `stream(request)` (an async iterator of `Step`s; closing it
early cancels the generation) and `stats()`. Two implementations:

- `TransformersEngine` (here): any device. A background thread collects waiting requests and runs
  them as one left-padded batch per adapter, decoding step by step with a KV cache, so concurrent
  requests share forward passes instead of queueing behind each other. Finished and cancelled rows
  leave the batch at once.
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
        self.counts = {"completed": 0, "cancelled": 0, "batches": 0, "largest_batch": 0}
        self.running = 0
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
        """Up to max_batch waiting jobs for the adapter of the oldest one; cancelled ones are dropped here."""
        self.counts["cancelled"] += sum(job.cancelled for job in self._waiting)
        self._waiting = [job for job in self._waiting if not job.cancelled]
        if not self._waiting:
            return []
        adapter = self._waiting[0].request.model.adapter
        batch = [job for job in self._waiting if job.request.model.adapter == adapter][: self.max_batch]
        chosen = set(map(id, batch))
        self._waiting = [job for job in self._waiting if id(job) not in chosen]
        return batch

    def _run(self, batch: list[Job]) -> None:
        import torch

        self.running = len(batch)
        self.counts["batches"] += 1
        self.counts["largest_batch"] = max(self.counts["largest_batch"], len(batch))
        try:
            with torch.inference_mode(), self._weights_for(batch[0].request.model):
                self._decode(batch)
        except Exception as err:  # a failed batch fails its requests, not the server
            log.exception("generation failed")
            for job in batch:
                job.send(err)
        finally:
            self.running = 0

    def _weights_for(self, model: ServedModel):
        if not self.adapter_names:
            return contextlib.nullcontext()
        if model.adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(self.adapter_names[model.name])
        return contextlib.nullcontext()

    def _decode(self, jobs: list[Job]) -> None:
        import torch

        device = self.model.device
        pad = self.tokenizer.pad_token_id
        width = max(len(job.request.prompt_ids) for job in jobs)
        ids = torch.tensor([[pad] * (width - len(j.request.prompt_ids)) + j.request.prompt_ids for j in jobs], device=device)
        mask = torch.tensor([[0] * (width - len(j.request.prompt_ids)) + [1] * len(j.request.prompt_ids) for j in jobs], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]  # logits (B, V)
        last = positions[:, -1]                                      # (B,)
        generators = [seeded(job.request.sampling.seed, device) for job in jobs]
        while True:
            tokens = sample(logits, [job.request.sampling for job in jobs], generators)
            keep = [row for row, (job, token) in enumerate(zip(jobs, tokens)) if self._advance(job, token)]
            if not keep:
                return
            if len(keep) < len(jobs):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, last = mask[index], last[index]
                jobs, generators, tokens = [jobs[r] for r in keep], [generators[r] for r in keep], [tokens[r] for r in keep]
                self.running = len(jobs)
            mask = torch.cat([mask, mask.new_ones(len(jobs), 1)], dim=1)
            last = last + 1
            step = torch.tensor(tokens, device=device)[:, None]     # (B, 1)
            out = self.model(input_ids=step, attention_mask=mask, position_ids=last[:, None], past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]

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
