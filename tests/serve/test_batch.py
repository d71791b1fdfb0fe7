"""Rows leaving and joining a batch in flight decode exactly as they would alone."""

import pytest
import torch

from tunesmith.serve.batch import can_join, concat, prefill, select, step

PROMPTS = [[1, 403, 261, 378, 504], [1, 300, 301], [1, 77, 88, 99, 111, 122, 133, 144]]


@pytest.fixture(scope="module")
def model(stories_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()


def greedy(batch):
    return batch.logits.argmax(-1).tolist()


def alone(model, prompt, n):
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("join_at", [0, 3])  # at 0 the joiner is longer than the batch's cache, at 3 shorter
def test_joining_and_leaving_rows_decode_as_if_alone(model, join_at):
    wanted = {0: 10, 1: 7, 2: 10}  # row 1 leaves early
    expected = [alone(model, p, 10) for p in PROMPTS]
    got = {0: [], 1: [], 2: []}
    with torch.inference_mode():
        batch = prefill(model, PROMPTS[:2], 0, jobs=[0, 1])
        for i in range(30):
            tokens = greedy(batch)
            for job, token in zip(batch.jobs, tokens):
                got[job].append(token)
            rows = [r for r, job in enumerate(batch.jobs) if len(got[job]) < wanted[job]]
            batch = select(batch, rows)
            if batch is None:
                break
            step(model, batch, [tokens[r] for r in rows])
            if i == join_at:
                assert can_join(batch)
                batch = concat(batch, prefill(model, PROMPTS[2:], 0, jobs=[2]))
    assert got == {0: expected[0], 1: expected[1][:7], 2: expected[2]}
