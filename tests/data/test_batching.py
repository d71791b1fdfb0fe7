"""Batch plans (packed rows, length-grouped and random batches) and the collator, without a model."""

import random

import pytest
import torch

from tunesmith.data.batching import BatchPlan, Collator, batches_dataset, group_by_length, pack, plan_batches
from tunesmith.data.preflight import batching_lines

RNG = random.Random(3)
LENGTHS = [RNG.randint(1, 60) for _ in range(200)]


def test_packing_puts_every_example_in_exactly_one_row_whole_and_within_capacity():
    rows = pack(LENGTHS, 100, seed=1)
    assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))
    assert max(sum(LENGTHS[i] for i in row) for row in rows) <= 100
    # Best-fit decreasing leaves little room: within a row of the fewest the total allows.
    assert len(rows) <= -(-sum(LENGTHS) // 100) + 1


def test_best_fit_decreasing_by_hand():
    # Longest first, each into the row it fills most tightly: 6 -> A; 5 -> B; 4 -> A (room 4 of A beats 5 of B);
    # 3 -> B (A is full); 2 -> B, exactly filling it; 1 -> C.
    assert pack([2, 5, 4, 6, 3, 1], 10, seed=0) == [[3, 2], [1, 4, 0], [5]]


def test_plans_are_fixed_by_the_seed():
    assert pack(LENGTHS, 100, seed=1) == pack(LENGTHS, 100, seed=1)
    assert pack(LENGTHS, 100, seed=1) != pack(LENGTHS, 100, seed=2)  # ties between equal lengths fall otherwise
    assert group_by_length(LENGTHS, 200, seed=1) == group_by_length(LENGTHS, 200, seed=1)


def test_length_groups_fit_the_budget_once_padded_and_hold_every_example_once():
    batches = group_by_length(LENGTHS, 200, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(len(b) * max(LENGTHS[i] for i in b) <= 200 for b in batches)
    assert len(batches[0]) == 3 and len(batches[-1]) > 20  # the longest few at a time, the shortest many


def test_summary_counts_rows_fill_and_padding():
    lengths = [4, 3, 2, 1]
    packed = BatchPlan("packed", [[0], [1, 2], [3]], 5).summary(lengths, batch_size=2)
    assert packed == {"mode": "packed", "batches": 3, "budget": 5, "tokens": 10, "fill": round(10 / 15, 4),
                      "padding_share": 0.0, "examples_per_batch": 1.3}
    grouped = BatchPlan("grouped", [[0], [1, 2], [3]], 6).summary(lengths, batch_size=2)
    assert grouped["padding_share"] == round(1 / 11, 4)  # example 2 padded to 3 tokens: 11 slots, 10 tokens
    assert plan_batches(lengths, "random", None, 2, 0).summary(lengths, 2)["batches"] == 2
    assert batching_lines(packed) == ["  - batches: 3 packed rows per epoch of up to 5 tokens (about 1.3 examples each, none split): fill 66.7%, padding 0.0%"]


def test_packed_collation_restarts_positions_and_masks_only_each_first_label():
    # pad == eos (SmolLM2): nothing is masked by token id, so the trained EOS (id 2) keeps its label.
    rows = [{"input_ids": [1, 7, 8, 2], "labels": [-100, -100, 8, 2]}, {"input_ids": [1, 9, 2], "labels": [1, 9, 2]}]
    batch = Collator(pad_token_id=2, packed=True, varlen=True)(batches_dataset(rows, [[0, 1]]))
    assert batch["input_ids"].tolist() == [[1, 7, 8, 2, 1, 9, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 2, -100, 9, 2]]  # the second example's first token is predicted by nothing
    assert "attention_mask" not in batch  # with one, transformers would not read the examples' bounds from position_ids
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 7] and batch["max_length_k"] == 4


def test_padded_collation_masks_padding_by_position():
    rows = [{"input_ids": [1, 7, 2], "labels": [-100, 7, 2]}, {"input_ids": [1, 2], "labels": [1, 2]}]
    batch = Collator(pad_token_id=2, packed=False)([{"input_ids": [r["input_ids"]], "labels": [r["labels"]]} for r in rows])
    assert batch["input_ids"].tolist() == [[1, 7, 2], [1, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 7, 2], [-100, 2, -100]]
    assert batch["labels"].dtype == torch.long


@pytest.mark.parametrize("mode", ["packed", "grouped"])
def test_a_plan_keeps_its_examples_whole(mode):
    plan = plan_batches(LENGTHS, mode, 120, batch_size=4, seed=0)
    rows = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in LENGTHS]
    dataset = batches_dataset(rows, plan.batches)
    assert sorted(len(ids) for item in dataset for ids in item["input_ids"]) == sorted(LENGTHS)
