"""GRPO: group relative policy optimisation (Shao et al. 2024, arXiv:2402.03300), with full
fine-tuning, LoRA or QLoRA.

    tunesmith train recipes/grpo_tickets.yaml [grpo.num_generations=8 ...] [--resume]

For each prompt the policy samples a group of `grpo.num_generations` replies; each reply's reward is the
weighted sum of the recipe's reward functions (tunesmith.rewards: exact match against a data column,
regex, length, a reward-model run, or your own Python function); a reply's advantage is its reward
relative to its group, and the policy is pushed towards the better replies with a clipped objective
(TRL's GRPOTrainer, which does the sampling and the loss). With `grpo.beta` > 0 a KL penalty ties the
policy to the reference: the adapters-off policy with LoRA, a frozen copy otherwise.

Steps, in order: open the run directory; load the tokenizer and template; load and check the prompts;
build the reward functions; load the model; build the trainer; train; save; write the report.

The policy generates with the run's template: TRL renders the prompts with the tokenizer's chat
template, which is set to the run's template first, and generation stops at the template's stop tokens.
"""

from __future__ import annotations

from transformers import set_seed

from tunesmith import rewards
from tunesmith.config import Recipe
from tunesmith.data.templates import install_template
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, describe, finish, first_last, fit, start
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, original_reference, peft_config, prepare_base
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked prompts: before the model loads
    reward_funcs = [rewards.for_trl(rewards.build(spec), s.template.stop_texts) for spec in recipe.grpo.rewards]

    model, _, _ = load_model(recipe.model, s.source)
    model.generation_config.eos_token_id = s.template.stop_token_ids  # replies end where the template ends a turn
    install_template(s.template, s.tokenizer)
    weighted = ", ".join(f"{fn.__name__} x{spec.weight}" for fn, spec in zip(reward_funcs, recipe.grpo.rewards))
    describe(s.run, model, recipe, s.source, f"grpo with rewards {weighted}")

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    trainer = build_trainer(recipe, s.run, model, reward_funcs, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    parameters = count_parameters(trainer.model)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters, lambda records: [
        f"- reward (train, mean over each step's replies): {first_last(records, 'reward') or '-'}",
        *[f"  - {fn.__name__}: {first_last(records, f'rewards/{fn.__name__}/mean') or '-'}" for fn in reward_funcs],
        f"- reply length in tokens: {first_last(records, 'completions/mean_length') or '-'}",
    ])


def build_trainer(recipe: Recipe, run: RunDir, model, reward_funcs: list, tokenizer, train_rows, eval_rows, callbacks: list | None):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg = recipe.grpo
    args = GRPOConfig(
        **trainer_arguments(recipe, run, has_eval=bool(eval_rows)),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=[spec.weight for spec in cfg.rewards],
        remove_unused_columns=False,  # reward functions read the rows' other columns
    )
    extra = {"peft_config": peft_config(recipe.peft, model)} if recipe.peft.method != "none" else {}
    trainer = GRPOTrainer(
        model=prepare_base(model, recipe.peft, recipe.train.gradient_checkpointing),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rewards.rows_for_trl(train_rows)),
        eval_dataset=Dataset.from_list(rewards.rows_for_trl(eval_rows)) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks_for(recipe, run, callbacks),
        **extra,
    )
    original_reference(trainer.model, recipe.peft)  # TRL wrapped the model: under PiSSA/OLoRA its adapters-off self is not the original
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer
