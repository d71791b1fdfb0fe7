"""The transformers engine's batch loop on the real (tiny) stories260K in float32: batched greedy decoding gives
exactly the tokens each request gets alone, whatever it is batched with and whenever it joins; a request whose
sampling, logits or forward pass fails fails alone, and its batch-mates finish with the right tokens."""

import asyncio
import math

import pytest
import torch

import tunesmith.serve.engine as engine_module
from tunesmith.data.templates import ChatTemplate
from tunesmith.serve.catalog import ServedModel
from tunesmith.serve.engine import Request, TransformersEngine
from tunesmith.serve.sampling import Sampling

SERVED = ServedModel("stories", ChatTemplate("none", "", stop_token_ids=[]))  # no stop token: every request runs to max_tokens
PROMPTS = [[1, 403, 261, 378, 504], [1, 300, 301], [1, 77, 88, 99, 111, 122, 133, 144], [1, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130],
           [1, 250], [1, 411, 412, 413, 414, 415, 416, 417, 418, 419, 420, 421, 422, 423, 424, 425, 426, 427, 428]]
GREEDY = Sampling(24, temperature=0.0)
KINDS = [GREEDY, Sampling(24, temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5),
         Sampling(24, temperature=0.8, top_k=20, top_p=0.9, seed=7)]


@pytest.fixture(scope="module")
def model(stories_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()


def engine_for(model, stories_tokenizer, batch_wait=0.0) -> TransformersEngine:
    return TransformersEngine(model, stories_tokenizer, {}, max_batch=32, batch_wait=batch_wait)


async def tokens_of(engine, prompt, sampling, progress: asyncio.Event | None = None, after: int = 0) -> list[int]:
    tokens = []
    async for step in engine.stream(Request(SERVED, prompt, sampling)):
        tokens += step.token_ids
        if progress is not None and len(tokens) >= after:
            progress.set()
    return tokens


def serve(engine, work):
    async def main():
        await engine.start()
        try:
            return await work()
        finally:
            await engine.stop()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def alone(model, stories_tokenizer):
    """Every prompt with every kind of decoding, each request on its own."""
    engine = engine_for(model, stories_tokenizer)

    async def one_by_one():
        return {(p, k): await tokens_of(engine, PROMPTS[p], KINDS[k]) for p in range(len(PROMPTS)) for k in range(len(KINDS))}

    threads = torch.get_num_threads()  # module fixtures run before the one-thread fixture of each test
    torch.set_num_threads(1)
    try:
        results = serve(engine, one_by_one)
    finally:
        torch.set_num_threads(threads)
    assert engine.counts["largest_batch"] == 1
    return results


def test_batched_decoding_gives_the_tokens_of_each_request_alone(model, stories_tokenizer, alone):
    engine = engine_for(model, stories_tokenizer, batch_wait=0.5)  # all arrive within the first one's wait

    async def together():
        keys = list(alone)
        return dict(zip(keys, await asyncio.gather(*(tokens_of(engine, PROMPTS[p], KINDS[k]) for p, k in keys))))

    assert serve(engine, together) == alone
    assert engine.counts["largest_batch"] == len(alone)  # mixed prompt lengths in one left-padded batch


def test_requests_joining_a_running_batch_decode_as_if_alone(model, stories_tokenizer, alone):
    engine = engine_for(model, stories_tokenizer)
    long = Sampling(300, temperature=0.0)

    async def joining():
        started = asyncio.Event()
        first = asyncio.create_task(tokens_of(engine, PROMPTS[0], long, started, after=3))
        await started.wait()  # the first request is decoding: the others join its batch between two steps
        keys = [(p, k) for p in range(1, len(PROMPTS)) for k in range(len(KINDS))]
        rest = await asyncio.gather(*(tokens_of(engine, PROMPTS[p], KINDS[k]) for p, k in keys))
        return await first, dict(zip(keys, rest))

    first, rest = serve(engine, joining)
    assert engine.counts["joined"] > 0
    assert rest == {key: alone[key] for key in rest}
    assert first[:24] == alone[0, 0] and len(first) == 300


VICTIM = [1, 99, 98, 97]


def run_with_victim(engine, victim: Sampling):
    """The victim and three greedy batch-mates, all in one batch: (what the victim raised, the mates' tokens)."""

    async def batch():
        mates = [tokens_of(engine, PROMPTS[p], GREEDY) for p in range(3)]
        results = await asyncio.gather(tokens_of(engine, VICTIM, victim), *mates, return_exceptions=True)
        return results[0], results[1:]

    return serve(engine, batch)


def test_a_failing_sampler_fails_only_its_request(model, stories_tokenizer, alone, monkeypatch):
    real = engine_module.next_token

    def broken_for_seed_666(logits, sampling, *args):
        if sampling.seed == 666:
            raise RuntimeError("sampling blew up (planted)")
        return real(logits, sampling, *args)

    monkeypatch.setattr(engine_module, "next_token", broken_for_seed_666)
    engine = engine_for(model, stories_tokenizer, batch_wait=0.3)
    error, mates = run_with_victim(engine, Sampling(24, temperature=1.0, seed=666))
    assert isinstance(error, RuntimeError) and "planted" in str(error)
    assert mates == [alone[p, 0] for p in range(3)]
    assert engine.counts["failed"] == 1 and engine.counts["largest_batch"] == 4


@pytest.mark.parametrize("victim", [Sampling(24, temperature=1.0, seed=2**64), Sampling(24, temperature=1e-40)])
def test_settings_the_edge_would_refuse_fail_only_their_request(model, stories_tokenizer, alone, victim):
    """The issue's two triggers, handed to the engine directly (HTTP refuses them with a 422)."""
    engine = engine_for(model, stories_tokenizer, batch_wait=0.3)
    error, mates = run_with_victim(engine, victim)
    assert isinstance(error, (ValueError, RuntimeError))  # torch's "Overflow when unpacking long", "probability tensor contains inf"
    assert mates == [alone[p, 0] for p in range(3)]


def test_nan_logits_in_one_row_fail_only_that_request(model, stories_tokenizer, alone, monkeypatch):
    real = engine_module.step

    def poisoned(model, batch, tokens):
        real(model, batch, tokens)
        for row, job in enumerate(batch.jobs):
            if job.request.prompt_ids == VICTIM and len(job.tokens) == 3:
                batch.logits[row] = math.nan

    monkeypatch.setattr(engine_module, "step", poisoned)
    engine = engine_for(model, stories_tokenizer, batch_wait=0.3)
    error, mates = run_with_victim(engine, GREEDY)
    assert isinstance(error, FloatingPointError) and "NaN" in str(error)
    assert mates == [alone[p, 0] for p in range(3)]


def test_a_forward_pass_failing_for_one_row_is_rerun_row_by_row(model, stories_tokenizer, alone, monkeypatch):
    """A forward pass over a batch cannot say which row broke it: the rows are run again one by one."""

    def check(jobs):
        if any(job.request.prompt_ids == VICTIM and len(job.tokens) >= 5 for job in jobs):
            raise RuntimeError("forward pass failed (planted)")

    real_step, real_prefill = engine_module.step, engine_module.prefill
    monkeypatch.setattr(engine_module, "step", lambda model, batch, tokens: check(batch.jobs) or real_step(model, batch, tokens))
    monkeypatch.setattr(engine_module, "prefill", lambda model, prompts, pad, jobs, virtual: check(jobs) or real_prefill(model, prompts, pad, jobs, virtual))
    engine = engine_for(model, stories_tokenizer, batch_wait=0.3)
    error, mates = run_with_victim(engine, GREEDY)
    assert isinstance(error, RuntimeError) and "planted" in str(error)
    assert mates == [alone[p, 0] for p in range(3)]  # rebuilt from their prompts and tokens, they go on unchanged
    assert engine.counts["failed"] == 1
