"""KTO: Kahneman-Tversky optimisation (Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired replies
labelled desirable or undesirable, with full fine-tuning, LoRA or QLoRA.

    tunesmith train recipes/kto_tickets.yaml [kto.beta=0.2 ...] [--resume]

Reads `unpaired` rows (prompt, completion, label) or preference pairs, each pair giving a desirable
and an undesirable example. Each reply's implied reward (its log-probability ratio to the reference)
is pushed above a reference point for desirable replies and below it for undesirable ones; the
reference point is the KL divergence between policy and reference, estimated on mismatched
prompt/reply pairs of the same batch (TRL's KTOTrainer, which does the loss). The reference is held
as for DPO: `kto.reference` adapters_off, copy, or `kto.precompute_reference`.

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize
the examples; load the model; load the reference; build the trainer; train; save; write the report.
"""

from __future__ import annotations

import random

from transformers import set_seed

from tunesmith.config import Recipe
from tunesmith.data.batching import plan_batches
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import (
    callbacks_for,
    console,
    describe,
    finish,
    first_last,
    fit,
    load_reference,
    reference_mode,
    repeats_note,
    save_cpu_memory,
    start,
    write_data_report,
)
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, original_reference, peft_config, prepare_base
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked examples: before the model loads
    report_batching(recipe, s)

    model, _, _ = load_model(recipe.model, s.source)
    reference = load_reference(recipe, s.source)
    describe(s.run, model, recipe, s.source, f"kto, reference: {reference_mode(recipe)}")

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    trainer = build_trainer(recipe, s.run, model, reference, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    save_cpu_memory(trainer.model, recipe)  # glibc heap trim between layers (TRL sets dropout to 0 here: disable_dropout)
    parameters = count_parameters(trainer.model)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters, lambda records: [
        f"- reference: {reference_mode(recipe)}",
        f"- reward of desirable replies (train): {first_last(records, 'rewards/chosen') or '-'}",
        f"- reward of undesirable replies (train): {first_last(records, 'rewards/rejected') or '-'}",
        f"- KL estimate (train): {first_last(records, 'kl') or '-'}",
        f"- reward margin, desirable minus undesirable (eval): {first_last(records, 'eval_rewards/margins') or 'no eval data'}",
    ])


def report_batching(recipe: Recipe, s) -> None:
    """KTO batches batch_size examples at random, padded, never packed; with train.packing on (the default) that is
    said on the terminal and in the data report. TRL's KTOTrainer computes the KL estimate in a forward pass of its
    own over mismatched prompt/reply pairs of the batch, padded, and the losses from padded batches: a packed row
    would need another trainer, not a collator."""
    t = recipe.train
    lengths = [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in s.train_rows]
    s.data_report.batching = plan_batches(lengths, "random", None, t.batch_size, t.seed).summary(lengths, t.batch_size)
    if t.packing:
        why = ("kto trains unpacked: TRL's KTOTrainer pairs each example's prompt with another example's reply of the "
               "same batch for its KL estimate, and pads both")
        s.data_report.batching["note"] = f"packing is off: {why} (set train.packing: false to say so)"
        console.print(f"train.packing: {why}; training on padded batches of {t.batch_size}", markup=False, highlight=False)
    if repeats := repeats_note(len(s.train_rows), t.batch_size):
        s.data_report.batching["note"] = "; ".join(filter(None, [s.data_report.batching.get("note"), repeats]))
    write_data_report(s.run, s.data_report)


def build_trainer(recipe: Recipe, run: RunDir, model, reference, tokenizer, train_rows, eval_rows, callbacks: list | None):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import KTOConfig, KTOTrainer

    cfg = recipe.kto
    common = trainer_arguments(recipe, run, has_eval=bool(eval_rows))
    # The KL estimate pairs each example with its neighbour's reply: batches must keep the order built below.
    common["train_sampling_strategy"] = "sequential"
    args = KTOConfig(**common, beta=cfg.beta, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
                     precompute_ref_log_probs=cfg.precompute_reference, max_length=None)
    extra = {"ref_model": reference}
    if recipe.peft.method != "none":
        extra["peft_config"] = peft_config(recipe.peft, model)  # TRL wraps; its reference is then the adapters-off policy
    trainer = type("KTOTrainer", (KTOTrainer,), {"_prepare_dataset": keep_tokenized})(
        model=prepare_base(model, recipe.peft, recipe.train.gradient_checkpointing),
        args=args,
        train_dataset=Dataset.from_list(with_kl_replies(train_rows, recipe.train.batch_size, recipe.train.seed)),
        eval_dataset=Dataset.from_list(with_kl_replies(eval_rows, recipe.train.eval_batch_size or recipe.train.batch_size, recipe.train.seed)) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks_for(recipe, run, callbacks),
        **extra,
    )
    original_reference(trainer.model, recipe.peft)  # TRL wrapped the model: under PiSSA/OLoRA its adapters-off self is not the original
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def keep_tokenized(self, dataset, *args, **kwargs):
    """KTOTrainer._prepare_dataset for rows tunesmith already tokenized and paired for the KL term."""
    return dataset


def with_kl_replies(rows: list[dict], batch_size: int, seed: int) -> list[dict]:
    """Rows in a fixed shuffled order, each with the reply of the row before it in its batch (the first takes
    the last's) as `KL_completion_ids`: mismatched prompt/reply pairs for the KL estimate, as TRL builds them.
    Shuffling first keeps the two halves of one preference pair (same prompt) apart."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    out = []
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        replies = [batch[-1]["completion_ids"]] + [r["completion_ids"] for r in batch[:-1]]
        out += [{**row, "KL_completion_ids": reply} for row, reply in zip(batch, replies)]
    return out
