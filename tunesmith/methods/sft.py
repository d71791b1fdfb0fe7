"""Supervised fine-tuning (SFT): full fine-tuning, LoRA (Hu et al. 2021, arXiv:2106.09685) or
QLoRA (Dettmers et al. 2023, arXiv:2305.14314) on conversations or plain text.

    tunesmith train recipes/quickstart.yaml [train.lr=1e-4 ...] [--resume]

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize
the data (so data problems surface before the model loads); load the model and wrap it in adapters;
build TRL's SFTTrainer on the tokenized rows; train; save the adapter or model with its template;
write the report.

We tokenize ourselves (tunesmith.data.templates) and hand TRL rows that already carry `labels`,
so the loss mask is the one the preflight showed and checked, not one rebuilt later.
"""

from __future__ import annotations

import torch
from transformers import set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from tunesmith.config import Recipe
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, describe, finish, fit, start
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked data: before the model loads

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    model, _, _ = load_model(recipe.model, s.source)
    model = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing)
    parameters = count_parameters(model)
    describe(s.run, model, recipe, s.source, f"sft, trainable {parameters[0]:,} / {parameters[1]:,} parameters")

    trainer = build_trainer(recipe, s.run, model, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters)


def build_trainer(recipe: Recipe, run: RunDir, model, tokenizer, train_rows, eval_rows, callbacks: list | None):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(recipe, run, has_eval=bool(eval_rows)),
        max_length=None,  # lengths were enforced, and counted, in prepare_data
        packing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    trainer_class = SFTTrainer
    if recipe.train.group_by_length:
        trainer_class = type("SFTTrainer", (SFTTrainer,), {"_get_train_sampler": length_grouped_sampler})
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks_for(recipe, run, callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def length_grouped_sampler(self, train_dataset=None) -> LengthGroupedSampler:
    """SFTTrainer._get_train_sampler for train.group_by_length (see EpochSeededLengthSampler)."""
    dataset = self.train_dataset if train_dataset is None else train_dataset
    return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    [len(ids) for ids in dataset["input_ids"]], self.args.data_seed)


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Batches of similar length, shuffled from seed + epoch. transformers' own LengthGroupedSampler shuffles with
    the global RNG as it stands when an epoch begins, which a run resumed in the middle of a later epoch cannot
    reproduce: it would train on other batches than the run it continues."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's dataloader at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=torch.Generator().manual_seed(self.seed + self.epoch)))
