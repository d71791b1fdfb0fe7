"""Preference optimisation on prompt/chosen/rejected pairs: DPO (Rafailov et al. 2023,
arXiv:2305.18290) and its relatives, with full fine-tuning, LoRA or QLoRA.

    tunesmith train recipes/dpo_tickets.yaml [dpo.loss=ipo dpo.beta=0.5 ...] [--resume]

`dpo.loss` picks the objective:
- sigmoid (DPO), ipo, hinge, robust score each reply by how much more likely the policy makes it than a
  frozen reference does, through TRL's DPOTrainer;
- simpo (TRL's CPOTrainer with loss simpo, no SFT term) and orpo (TRL's ORPOTrainer) need no
  reference. Both trainers live in trl.experimental, which may change without notice: their imports
  stay inside `build_trainer`. Note that ORPO's SFT term, as TRL computes it, covers the prompt tokens
  as well as the chosen reply; the odds-ratio term scores the replies only.

The reference (`dpo.reference`): adapters_off is the policy itself with its LoRA adapters disabled, so no
second model sits in memory; copy is a second frozen model; `dpo.precompute_reference` scores every pair
with the starting policy once, before training, and keeps no reference at all.

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize the
pairs (the preflight shows each response's scored tokens); load the model; load the reference; build
the trainer; train; save the adapter or model with its template; write the report.

Pairs reach the trainers as token ids from tunesmith.data, so the scored tokens are the ones the
preflight showed and checked, not a second tokenisation of the text.
"""

from __future__ import annotations

from transformers import set_seed

from tunesmith.config import REFERENCE_FREE, Recipe
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, describe, finish, first_last, fit, load_reference, reference_mode, start
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, peft_config, prepare_base, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked pairs: before the model loads

    model, _, _ = load_model(recipe.model, s.source)
    reference = load_reference(recipe, s.source)
    describe(s.run, model, recipe, s.source, f"dpo loss {recipe.dpo.loss}, reference: {reference_mode(recipe)}")

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    trainer = build_trainer(recipe, s.run, model, reference, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    parameters = count_parameters(trainer.model)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters, report_lines(recipe))


def report_lines(recipe: Recipe):
    """What report.md says of a preference run beyond the loss: how well the implied rewards separate the pairs."""

    def lines(records: list[dict]) -> list[str]:
        out = [
            f"- reference: {reference_mode(recipe)}",
            f"- reward accuracy (train): {first_last(records, 'rewards/accuracies') or '-'}",
            f"- reward margin (train): {first_last(records, 'rewards/margins') or '-'}",
        ]
        if first_last(records, "eval_rewards/accuracies"):
            out.append(f"- reward accuracy (eval): {first_last(records, 'eval_rewards/accuracies')}")
        return out

    return lines


def build_trainer(recipe: Recipe, run: RunDir, model, reference, tokenizer, train_rows, eval_rows, callbacks: list | None):
    from datasets import Dataset
    from transformers import PrinterCallback

    cfg = recipe.dpo
    common = trainer_arguments(recipe, run, has_eval=bool(eval_rows))
    if cfg.loss in REFERENCE_FREE:
        # Legacy trainers: they read the older column layout (see legacy_pair_row) and re-tokenize text
        # unless told otherwise, hence the small subclasses.
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        if cfg.loss == "simpo":
            # cpo_alpha 0: SimPO alone, without CPO's extra SFT term.
            args = CPOConfig(**common, loss_type="simpo", beta=cfg.beta, simpo_gamma=cfg.simpo_gamma, cpo_alpha=0.0,
                             max_length=recipe.data.max_length, remove_unused_columns=False)
            trainer_class = type("SimPOTrainer", (CPOTrainer,), {"tokenize_row": legacy_pair_row})
        else:
            args = ORPOConfig(**common, beta=cfg.beta, max_length=recipe.data.max_length, remove_unused_columns=False)
            trainer_class = type("ORPOTrainer", (ORPOTrainer,), {"tokenize_row": legacy_pair_row})
        policy, extra = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing), {}
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, loss_type=[cfg.loss], beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                         precompute_ref_log_probs=cfg.precompute_reference, max_length=None)
        trainer_class = type("DPOTrainer", (DPOTrainer,), {"_prepare_dataset": keep_tokenized})
        # With a peft_config TRL wraps the model itself, and then takes the reference from the policy
        # with adapters disabled; given a ref_model, it uses that instead.
        policy = prepare_base(model, recipe.peft, recipe.train.gradient_checkpointing)
        extra = {"ref_model": reference}
        if recipe.peft.method != "none":
            extra["peft_config"] = peft_config(recipe.peft, model)
    trainer = trainer_class(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks_for(recipe, run, callbacks),
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def keep_tokenized(self, dataset, *args, **kwargs):
    """DPOTrainer._prepare_dataset for rows tunesmith already tokenized (prompt_ids, chosen_ids, rejected_ids)."""
    return dataset


def legacy_pair_row(self, row: dict, model=None) -> dict:
    """Our pair as the columns CPOTrainer and ORPOTrainer read: each response with its prompt, and labels
    that score only the response (-100 on the prompt)."""
    prompt = row["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for key in ("chosen", "rejected"):
        response = row[f"{key}_ids"]
        out[f"{key}_input_ids"] = prompt + response
        out[f"{key}_attention_mask"] = [1] * (len(prompt) + len(response))
        out[f"{key}_labels"] = [-100] * len(prompt) + response
    return out
