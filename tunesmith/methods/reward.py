"""Reward model: a Bradley-Terry scorer (Ouyang et al. 2022, arXiv:2203.02155, sec. 3.5) trained on
preference pairs, so that log sigmoid(r(chosen) - r(rejected)) is maximised.

    tunesmith train recipes/reward_tickets.yaml
    tunesmith score runs/reward-tickets --data pairs.jsonl     # score pairs or prompt/response rows

The model is the base language model with its output head replaced by a scalar head read at the last
token of the conversation (transformers' ...ForSequenceClassification with one label). With LoRA or
QLoRA the new head is trained in full and saved with the adapter. The run logs pairwise accuracy
(`accuracy`, `eval_accuracy`): the share of pairs whose chosen reply out-scores the rejected one.

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize the
pairs; load the model with its scalar head and wrap it in adapters; build TRL's RewardTrainer; train;
save; write the report.

A reply is scored in the conversation the template renders, so `tunesmith score`, PPO and GRPO score
with the same template the reward model was trained on (see tunesmith.models.reward).
"""

from __future__ import annotations

from transformers import set_seed

from tunesmith.config import Recipe
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, describe, finish, first_last, fit, start
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked pairs: before the model loads

    set_seed(recipe.train.seed)  # the new scalar head and the adapters draw from the global RNG
    model, _, _ = load_model(recipe.model, s.source, head="reward")
    model = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing, task_type="SEQ_CLS")
    parameters = count_parameters(model)
    describe(s.run, model, recipe, s.source, f"reward model, trainable {parameters[0]:,} / {parameters[1]:,} parameters")

    trainer = build_trainer(recipe, s.run, model, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters, lambda records: [
        f"- pairwise accuracy (train): {first_last(records, 'accuracy') or '-'}",
        f"- pairwise accuracy (eval): {first_last(records, 'eval_accuracy') or 'no eval data'}",
        f"- reward margin (train): {first_last(records, 'margin') or '-'}",
        f"- score pairs or replies with it: `tunesmith score {s.run.path} --data pairs.jsonl`",
    ])


def build_trainer(recipe: Recipe, run: RunDir, model, tokenizer, train_rows, eval_rows, callbacks: list | None):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **trainer_arguments(recipe, run, has_eval=bool(eval_rows)),
        center_rewards_coefficient=recipe.reward.center_rewards,
        max_length=None,  # lengths were enforced, and counted, in prepare_data
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([whole_pair(r) for r in train_rows]),
        eval_dataset=Dataset.from_list([whole_pair(r) for r in eval_rows]) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks_for(recipe, run, callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def whole_pair(row: dict) -> dict:
    """The reward model reads each conversation whole: prompt followed by the reply (TRL's processed layout)."""
    return {"chosen_ids": row["prompt_ids"] + row["chosen_ids"], "rejected_ids": row["prompt_ids"] + row["rejected_ids"]}
