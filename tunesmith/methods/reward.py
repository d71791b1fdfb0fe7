"""Reward model: a Bradley-Terry scorer (Ouyang et al. 2022, arXiv:2203.02155, sec. 3.5) trained on
preference pairs, so that log sigmoid(r(chosen) - r(rejected)) is maximised.

    tunesmith train recipes/reward_tickets.yaml
    tunesmith score runs/reward-tickets --data pairs.jsonl     # score pairs or prompt/response rows

The model is the base language model with its output head replaced by a scalar head read at the last
token of the conversation (transformers' ...ForSequenceClassification with one label). With LoRA or
QLoRA the new head is trained in full and saved with the adapter. The run logs pairwise accuracy
(`accuracy`, `eval_accuracy`): the share of pairs whose chosen reply out-scores the rejected one.

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize the
pairs and plan the batches; load the model with its scalar head and wrap it in adapters; check that it
keeps packed sequences apart; build TRL's RewardTrainer; train; save; write the report.

By default (`train.packing`) the pairs are packed, both conversations of many pairs in one row of up to
`train.max_tokens_per_batch` tokens, position_ids restarting at 0 for each (tunesmith.data.batching), no
pair split across rows; each conversation is scored at the token transformers' pooling reads (its last
token that is not the pad token), and the loss is averaged over the pairs of the whole optimiser step.
A model that fails the check trains on TRL's padded batches, and says so.

A reply is scored in the conversation the template renders, so `tunesmith score`, PPO and GRPO score
with the same template the reward model was trained on (see tunesmith.models.reward).
"""

from __future__ import annotations

import torch
from transformers import set_seed

from tunesmith.config import Recipe
from tunesmith.methods import dpo
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, console, describe, example_tokens, finish, first_last, fit, repeats_note, save_cpu_memory, start, write_data_report
from tunesmith.models import attention, logprobs
from tunesmith.models.lm_loss import base_of, no_dropout, to
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes, batching=plan)  # run directory, tokenizer and template, checked pairs, batches: before the model loads

    set_seed(recipe.train.seed)  # the new scalar head and the adapters draw from the global RNG
    model, _, _ = load_model(recipe.model, s.source, head="reward")
    model = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing, task_type="SEQ_CLS")
    parameters = count_parameters(model)
    describe(s.run, model, recipe, s.source, f"reward model, trainable {parameters[0]:,} / {parameters[1]:,} parameters")

    if s.plan.mode == "packed" and check_packing(recipe, s, model):
        trainer = build_packed_trainer(recipe, s, model, callbacks)
    else:
        trainer = build_trainer(recipe, s.run, model, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    save_cpu_memory(trainer.model, recipe)  # glibc heap trim between layers (TRL sets dropout to 0 here: disable_dropout)
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


def plan(recipe: Recipe, rows: list[dict]):
    """Packed rows of pairs as dpo plans them; without packing, batch_size pairs at random (TRL's padded batches)."""
    return dpo.plan_pairs(recipe, rows)


def check_packing(recipe: Recipe, s, model) -> bool:
    """Before step 1: whether a conversation's reward is the same alone and packed after two different ones. If not,
    False (TRL's padded batches), said on the terminal and in the data report."""
    switched = attention.use_packed_sdpa(base_of(model))
    collator = dpo.PairCollator(dpo.pad_token_id(s.tokenizer), packed=True, varlen=dpo.varlen(base_of(model)))
    sample = s.train_rows[0]
    conversation = sample["prompt_ids"] + sample["chosen_ids"]
    generator = torch.Generator().manual_seed(0)
    vocab = base_of(model).get_input_embeddings().weight.shape[0]  # the layer may be PEFT's LoRA wrapper, without num_embeddings
    contexts = [torch.randint(vocab, (24,), generator=generator).tolist() for _ in range(2)]
    device = next(model.parameters()).device
    with no_dropout(model), torch.no_grad():
        # a pair as the collator reads it: (context, conversation) as if chosen and rejected, with no prompt
        packed = [rewards(model, to(collator([{"prompt_ids": [[]], "chosen_ids": [c], "rejected_ids": [conversation]}]), device), 2)[1] for c in contexts]
        alone = rewards(model, to(collator([{"prompt_ids": [[]], "chosen_ids": [conversation], "rejected_ids": [contexts[0]]}]), device), 2)[0]  # first in its row
    close = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    why = None
    if (packed[0] - packed[1]).abs() > 1e-3:
        why = "a conversation's reward changes with the conversation packed before it: its attention ignores position_ids"
    elif (packed[0] - alone).abs() > close:
        why = "a conversation's reward differs packed and alone: it does not restart positions per conversation"
    if why is None:
        return True
    if switched:
        base_of(model).set_attn_implementation("sdpa")
    t = recipe.train
    s.plan = plan(recipe.model_copy(update={"train": t.model_copy(update={"packing": False})}), s.train_rows)
    s.data_report.batching = s.plan.summary([example_tokens(r) for r in s.train_rows], t.batch_size)
    repeats = repeats_note(len(s.train_rows), t.batch_size)
    s.data_report.batching["note"] = (f"packing is off: train.packing: {why}; TRL's padded batches instead (set train.packing: false to say so)"
                                      + (f"; {repeats}" if repeats else ""))
    write_data_report(s.run, s.data_report)
    console.print(f"train.packing: {why}; training on padded batches instead", markup=False, highlight=False)
    return False


def build_packed_trainer(recipe: Recipe, s, model, callbacks: list | None):
    """TRL's RewardTrainer on packed rows of pairs, with tunesmith's loss (PackedPairRewards)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    common = trainer_arguments(recipe, s.run, has_eval=bool(s.eval_rows))
    args = RewardConfig(
        **common | dict(per_device_train_batch_size=1, include_num_input_tokens_seen="all"),  # a packed row is one item, without padding
        center_rewards_coefficient=recipe.reward.center_rewards, max_length=None, remove_unused_columns=False, prediction_loss_only=True,
    )
    trainer = type("RewardTrainer", (PackedPairRewards, RewardTrainer), {"_prepare_dataset": dpo.keep_tokenized})(
        model=model,
        args=args,
        data_collator=dpo.PairCollator(dpo.pad_token_id(s.tokenizer), packed=True, varlen=dpo.varlen(base_of(model))),
        train_dataset=Dataset.from_list(dpo.planned_items(s.train_rows, s.plan.batches)),
        # eval_batch_size consecutive pairs in one row, one item each: the batches of TRL's padded evaluation
        eval_dataset=Dataset.from_list([dpo.pairs_item([row]) for row in s.eval_rows]) if s.eval_rows else None,
        processing_class=s.tokenizer,
        callbacks=callbacks_for(recipe, s.run, callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def rewards(model, inputs: dict, sequences: int) -> torch.Tensor:
    """(S,) the scalar reward of each sequence of a packed row, read where transformers' sequence classifiers read
    it: at the sequence's last token that is not the pad token (its first token if all are)."""
    base = base_of(logprobs.ddp_unwrapped(model))
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "position_ids") or k.startswith(("cu_seq_lens", "max_length"))}
    ids = inputs["input_ids"][0]                                                  # (T,)
    which = logprobs.sequence_index(inputs)[0]                                   # (T,) sequence of each token
    position = torch.arange(len(ids), device=ids.device)
    real = ids != base.config.get_text_config().pad_token_id
    first = torch.full((sequences,), len(ids), device=ids.device).scatter_reduce(0, which, position, "amin")
    last = torch.full((sequences,), -1, device=ids.device).scatter_reduce(0, which[real], position[real], "amax")
    at = torch.where(last >= 0, last, first)                                     # (S,)
    # the score head runs inside the decoder's forward: under DDP, so that its gradients are all-reduced with the rest
    return logprobs.last_hidden_state(model, model_inputs, then=lambda hidden: base.score(hidden[0, at]))[:, 0]


class PackedPairRewards(dpo.PlannedPairs):
    """What tunesmith's RewardTrainer does its own way: the planned rows (dpo.PlannedPairs), and the Bradley-Terry
    loss averaged over the pairs of the whole optimiser step."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        pairs = int(inputs["pairs"])
        scored = max(pairs, 1)  # a filler's stand-in pair is scored as any, then left out
        scores = rewards(model, inputs, 2 * scored).view(scored, 2).float()[:pairs]  # (P, 2): chosen, rejected
        chosen, rejected = scores[:, 0], scores[:, 1]
        losses = -torch.nn.functional.logsigmoid(chosen - rejected)
        if self.args.center_rewards_coefficient is not None:
            losses = losses + self.args.center_rewards_coefficient * (chosen + rejected) ** 2
        loss = losses.sum() / (scored if num_items_in_batch is None else num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counted every rank's pairs; DDP averages
        with torch.no_grad():
            metrics = self._metrics[mode]
            flat = scores.flatten()
            # each process's lowest and highest reward (none: +inf, -inf), gathered: processes hold different numbers of pairs
            extremes = torch.stack([flat.min() if pairs else flat.new_tensor(float("inf")), flat.max() if pairs else flat.new_tensor(float("-inf"))])
            lowest, highest = self.accelerator.gather(extremes).view(-1, 2).unbind(1)
            metrics["min_reward"].append(lowest.min().item())
            dpo.log_means(metrics, self.accelerator, {"mean_reward": flat, "accuracy": (chosen > rejected).float(), "margin": chosen - rejected})
            metrics["max_reward"].append(highest.max().item())
        return (loss, {"rewards": scores.detach()}) if return_outputs else loss  # the Trainer's evaluation reads a dict
