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
pairs (the preflight shows each response's scored tokens) and plan the batches; load the model; load the
reference; check that the model keeps packed sequences apart and that the chunked log-probs are its own;
score the pairs with the reference (precompute_reference); build the trainer; train; save the adapter or
model with its template; write the report.

Pairs reach the trainers as token ids from tunesmith.data, so the scored tokens are the ones the
preflight showed and checked, not a second tokenisation of the text.

Speed and memory (sigmoid, ipo, hinge, robust): by default (`train.packing`) the pairs are packed, both
replies of many pairs in one row of up to `train.max_tokens_per_batch` tokens, each sequence (prompt +
reply) attending only to itself (position_ids restart at 0, tunesmith.data.batching), no pair ever split
across rows; the log-probs come from the last hidden states a chunk at a time, never the [tokens × vocab]
logits (tunesmith.models.logprobs), for the policy and the reference alike; the loss is averaged over the
pairs of the whole optimiser step, however many each packed row holds. A model that fails the checks
trains on padded batches (packing), or through TRL's own DPOTrainer (log-probs), and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import set_seed

from tunesmith import distributed
from tunesmith.config import REFERENCE_FREE, Recipe
from tunesmith.data.batching import BatchPlan, Collator, plan_batches
from tunesmith.errors import ConfigError
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.sft import EpochSeededPermutation
from tunesmith.methods.steps import (callbacks_for, console, describe, example_tokens, finish, first_last, fit, load_reference, reference_mode,
                                     repeats_note, save_cpu_memory, start, write_data_report)
from tunesmith.models import attention, lm_loss, logprobs
from tunesmith.models.load import load_model
from tunesmith.models.peft import count_parameters, original_reference, peft_config, prepare_base, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes, batching=plan)  # run directory, tokenizer and template, checked pairs, batches: before the model loads

    model, _, _ = load_model(recipe.model, s.source)
    reference = load_reference(recipe, s.source)
    describe(s.run, model, recipe, s.source, f"dpo loss {recipe.dpo.loss}, reference: {reference_mode(recipe)}")

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    if s.plan is not None and check_model(recipe, s, model, reference):
        trainer = build_pair_trainer(recipe, s, model, reference, callbacks)
    else:
        trainer = build_trainer(recipe, s.run, model, reference, s.tokenizer, s.train_rows, s.eval_rows, callbacks)
    save_cpu_memory(trainer.model, recipe)  # glibc heap trim between layers (TRL sets dropout to 0 here: disable_dropout)
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
    if "peft_config" in extra:  # TRL wrapped the model: under PiSSA/OLoRA its adapters-off self is not the original
        original_reference(trainer.model, recipe.peft)
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


def plan(recipe: Recipe, rows: list[dict]) -> BatchPlan | None:
    """The batches of every epoch: pairs packed into rows of up to the token budget, or batch_size pairs at random.
    None for simpo and orpo, whose trainers batch their own way."""
    return None if recipe.dpo.loss in REFERENCE_FREE else plan_pairs(recipe, rows)


def plan_pairs(recipe: Recipe, rows: list[dict]) -> BatchPlan:
    """Pairs packed into rows of up to train.max_tokens_per_batch tokens (default: batch_size pairs' worth), or
    batch_size pairs at random (train.packing: false)."""
    t = recipe.train
    if not t.packing:
        return plan_batches([example_tokens(r) for r in rows], "random", None, t.batch_size, t.seed)
    lengths = [example_tokens(r) for r in rows]
    budget = t.max_tokens_per_batch or max(math.ceil(t.batch_size * sum(lengths) / len(lengths)), max(lengths))
    if budget < max(lengths):
        raise ConfigError(
            f"train.max_tokens_per_batch: {budget} is less than the longest training pair ({max(lengths)} tokens: its prompt "
            f"twice and both replies), which would not fit in any row; raise it to at least {max(lengths)}, or lower data.max_length"
        )
    return plan_batches(lengths, "packed", budget, t.batch_size, t.seed)


def check_model(recipe: Recipe, s, model, reference) -> bool:
    """Before step 1, on the first training pair: whether the chunked log-probs are the model's own (if not, False:
    TRL's DPOTrainer computes them from the full logits), and whether packed sequences stay apart (if not, padded
    batches); each refusal is said on the terminal and in the data report."""
    pad_id = pad_token_id(s.tokenizer)
    pair = s.train_rows[0]
    why = logprobs.check(model, PairCollator(pad_id, packed=False)([pairs_item([pair])]), 2)
    if why:
        refuse_packing(recipe, s, f"log-probs: computed by TRL's DPOTrainer from the full logits, since {why}",
                       repeats_note(len(s.train_rows), recipe.train.batch_size))
        return False
    if s.plan.mode == "packed":
        # sdpa one sequence at a time, not over the whole packed row (tunesmith.models.attention)
        switched = attention.use_packed_sdpa(model)
        found = lm_loss.check(model, Collator(pad_id, packed=True, varlen=varlen(model)), pair["prompt_ids"] + pair["chosen_ids"], chunked=False)
        if found.packing:
            if switched:
                model.set_attn_implementation("sdpa")
            refuse_packing(recipe, s, f"train.packing: {found.packing}; training on padded batches instead")
        elif reference is not None:
            attention.use_packed_sdpa(reference)
    return True


def refuse_packing(recipe: Recipe, s, why: str, repeats: str | None = None) -> None:
    """Batch_size pairs at random instead of packed rows, said on the terminal and in the data report (with what
    TRL's trainer repeats on several processes, `repeats`)."""
    t = recipe.train
    s.plan = plan(recipe.model_copy(update={"train": t.model_copy(update={"packing": False})}), s.train_rows)
    s.data_report.batching = s.plan.summary([example_tokens(r) for r in s.train_rows], t.batch_size)
    s.data_report.batching["note"] = f"packing is off: {why} (set train.packing: false to say so)" + (f"; {repeats}" if repeats else "")
    write_data_report(s.run, s.data_report)
    console.print(why, markup=False, highlight=False)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def varlen(model) -> bool:
    """Whether the model's attention reads the sequences' bounds from cu_seq_lens (FlashAttention's varlen kernels,
    tunesmith's packed sdpa)."""
    return model.config._attn_implementation in (attention.NAME, "flash_attention_2", "flash_attention_3")


def build_pair_trainer(recipe: Recipe, s, model, reference, callbacks: list | None):
    """TRL's DPOTrainer on the planned batches, with tunesmith's loss (PairBatches), the reference log-probs
    computed first when precompute_reference asks for them."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    cfg, plan = recipe.dpo, s.plan
    packed = plan.mode == "packed"
    collator = PairCollator(pad_token_id(s.tokenizer), packed=packed, varlen=varlen(model))
    train_rows, eval_rows = s.train_rows, s.eval_rows
    common = trainer_arguments(recipe, s.run, has_eval=bool(eval_rows))
    # Eval batches hold eval_batch_size consecutive pairs (one item each, packed into one row or padded), as TRL's
    # padded ones do: the Trainer averages the batches' losses, so eval_loss is the same packed or not.
    eval_size = common["per_device_eval_batch_size"]
    if cfg.precompute_reference:  # the starting policy: LoRA's B is still zero, full fine-tuning has not stepped
        train_rows = with_reference_logps(model, collator, train_rows, plan.batches)
        eval_rows = with_reference_logps(model, collator, eval_rows, [list(range(i, min(i + eval_size, len(eval_rows)))) for i in range(0, len(eval_rows), eval_size)])
    args = DPOConfig(
        **common | dict(
            per_device_train_batch_size=1 if packed else recipe.train.batch_size,  # a packed row is one item
            include_num_input_tokens_seen="all" if packed else "non_padding",  # packed rows have no padding, and no attention mask to count it by
        ),
        loss_type=[cfg.loss], beta=cfg.beta, label_smoothing=cfg.label_smoothing,
        precompute_ref_log_probs=False,  # done above, on packed rows
        max_length=None, remove_unused_columns=False, prediction_loss_only=True,
    )
    extra = {"ref_model": reference}
    if recipe.peft.method != "none":
        extra["peft_config"] = peft_config(recipe.peft, model)  # TRL wraps; its reference is then the adapters-off policy
    trainer = type("DPOTrainer", (PairBatches, DPOTrainer), {"_prepare_dataset": keep_tokenized})(
        model=prepare_base(model, recipe.peft, recipe.train.gradient_checkpointing),
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(planned_items(train_rows, plan.batches)),
        eval_dataset=Dataset.from_list([pairs_item([row]) for row in eval_rows]) if eval_rows else None,
        processing_class=s.tokenizer,
        callbacks=callbacks_for(recipe, s.run, callbacks),
        **extra,
    )
    original_reference(trainer.model, recipe.peft)  # TRL wrapped the model: under PiSSA/OLoRA its adapters-off self is not the original
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def pairs_item(rows: list[dict]) -> dict:
    """The pairs of one planned batch as one dataset item: {"prompt_ids": [[...], ...], "chosen_ids": ..., ...}."""
    keys = ["prompt_ids", "chosen_ids", "rejected_ids"] + (["ref_logps"] if "ref_logps" in rows[0] else [])
    return {k: [r[k] for r in rows] for k in keys}


def planned_items(rows: list[dict], batches: list[list[int]]) -> list[dict]:
    """One item per planned batch; on several processes followed by the filler, an item of no pairs, with which
    PlannedPairs' sampler tops up an epoch's last step, so that no process trains a batch a second time."""
    items = [pairs_item([rows[i] for i in b]) for b in batches]
    if distributed.world_size() > 1:
        items.append({k: [] for k in items[0]})
    return items


@dataclass
class PairCollator:
    """Items of pairs_item to model inputs: each pair's prompt + chosen and prompt + rejected as sequences 2i and
    2i + 1, labels -100 on the prompt, packed into one row (tunesmith.data.batching.Collator: position_ids restart
    per sequence) or padded rows; `pairs` counts the pairs, `ref_logps` (2P,) holds precomputed reference log-probs."""

    pad_token_id: int
    packed: bool
    varlen: bool = False

    def __call__(self, items: list[dict]) -> dict:
        pairs = [pair for item in items for pair in zip(item["prompt_ids"], item["chosen_ids"], item["rejected_ids"])]
        count = len(pairs)
        if not pairs:  # fillers only (planned_items): a stand-in pair, so this process runs the forward passes the others run
            pairs = [([self.pad_token_id], [self.pad_token_id], [self.pad_token_id])]
        ids = [prompt + reply for prompt, *replies in pairs for reply in replies]
        labels = [[-100] * len(prompt) + reply for prompt, *replies in pairs for reply in replies]
        batch = Collator(self.pad_token_id, self.packed, self.varlen)([{"input_ids": ids, "labels": labels}])
        batch["pairs"] = torch.tensor(count)
        if "ref_logps" in items[0]:
            batch["ref_logps"] = torch.tensor([x for item in items for pair in item["ref_logps"] for x in pair] or [0.0, 0.0])
        return batch


def with_reference_logps(model, collator: PairCollator, rows: list[dict], batches: list[list[int]]) -> list[dict]:
    """The rows, each with `ref_logps`: [chosen, rejected] log-probs under `model` as it is now, scored in the
    planned batches."""
    out = [dict(r) for r in rows]
    device = next(model.parameters()).device
    with lm_loss.no_dropout(model), torch.no_grad():
        for b in batches:
            batch = lm_loss.to(collator([pairs_item([rows[i] for i in b])]), device)
            sums, _ = logprobs.sequence_logprobs(model, batch, 2 * len(b))
            for k, i in enumerate(b):
                out[i]["ref_logps"] = sums[2 * k : 2 * k + 2].tolist()
    return out


class PlannedPairs:
    """A trainer on planned batches of pairs (dpo, reward): their order, drawn from seed + epoch, and the count of
    pairs of the whole optimiser step (num_items_in_batch, counted by the Trainer before its first micro-batch), by
    which compute_loss divides the summed per-pair losses: gradient accumulation over packed rows of different pair
    counts then gives the gradient of the whole step's pairs, not a mean of micro-batch means. On several processes
    an epoch's last step is topped up with the filler (planned_items), whose stand-in pair counts for nothing."""

    loss_is_scaled_for_ga = True

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.world_size == 1:
            return EpochSeededPermutation(len(dataset), self.args.data_seed)
        # the last item is the filler; every step deals world_size micro-batches of _train_batch_size items each
        return EpochSeededPermutation(len(dataset) - 1, self.args.data_seed, self.args.world_size * self._train_batch_size)

    def _get_num_items_in_batch(self, batch_samples: list, device):
        pairs = torch.tensor(sum(int(batch["pairs"]) for batch in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            pairs = self.accelerator.gather(pairs).sum()  # every rank's pairs: compute_loss scales back by the ranks
        return pairs


class PairBatches(PlannedPairs):
    """What tunesmith's DPOTrainer does its own way: the planned batches (PlannedPairs), the log-probs (summed per
    sequence from the hidden states, tunesmith.models.logprobs) and the loss, averaged over the step's pairs."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        mode = "train" if self.model.training else "eval"
        pairs = int(inputs["pairs"])
        scored = max(pairs, 1)  # a filler's stand-in pair is scored as any, then left out
        policy, counts = logprobs.sequence_logprobs(model, inputs, 2 * scored)  # (2P,): chosen, rejected, chosen, ...
        if "ref_logps" in inputs:
            ref = inputs["ref_logps"].to(policy.dtype)
        else:
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                if self.ref_model is None:  # the policy with its adapters off ("ref": the starting adapter, when re-training one)
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                        ref, _ = logprobs.sequence_logprobs(model, inputs, 2 * scored)
                else:
                    ref, _ = logprobs.sequence_logprobs(self.ref_model, inputs, 2 * scored)
        ratios = (policy - ref).view(scored, 2)[:pairs]                              # (P, 2): log pi/pi_ref of chosen, rejected
        losses = pair_losses(self.loss_types[0], self.beta, self.label_smoothing, ratios, counts.view(scored, 2)[:pairs])
        loss = losses.sum() / (max(pairs, 1) if num_items_in_batch is None else num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counted every rank's pairs; DDP averages

        rewards = self.beta * ratios.detach()
        logps = policy.detach().view(scored, 2)[:pairs]
        log_means(self._metrics[mode], self.accelerator, {
            "rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1], "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).float(),
            "rewards/margins": rewards[:, 0] - rewards[:, 1], "logps/chosen": logps[:, 0], "logps/rejected": logps[:, 1],
        })
        return (loss, None) if return_outputs else loss


def log_means(metrics: dict, accelerator, values: dict[str, torch.Tensor]) -> None:
    """Append to `metrics` the mean of each (P,) tensor of `values` over every process's pairs. The processes hold
    different numbers of pairs (a packed row's, or none: the filler), so sums and counts are reduced, not the values."""
    device = next(iter(values.values())).device
    totals = torch.stack([torch.stack([v.float().sum(), torch.tensor(float(v.numel()), device=device)]) for v in values.values()])  # (M, 2)
    totals = accelerator.reduce(totals, "sum")
    for name, (total, count) in zip(values, totals.tolist()):
        if count:
            metrics[name].append(total / count)


def pair_losses(loss: str, beta: float, label_smoothing: float, ratios: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(P,) each pair's loss from its log-ratios (P, 2) to the reference, chosen then rejected, and its replies'
    token counts (P, 2), as TRL's DPOTrainer computes them: sigmoid (DPO eq. 7), hinge (SLiC), ipo (IPO eq. 17 on
    per-token averages), robust (rDPO eq. 8)."""
    import torch.nn.functional as F

    h = beta * (ratios[:, 0] - ratios[:, 1])
    if loss == "sigmoid":
        return -F.logsigmoid(h)
    if loss == "hinge":
        return torch.relu(1 - h)
    if loss == "robust":
        return (-(1 - label_smoothing) * F.logsigmoid(h) + label_smoothing * F.logsigmoid(-h)) / (1 - 2 * label_smoothing)
    averaged = ratios / counts.clamp(min=1)
    return (averaged[:, 0] - averaged[:, 1] - 1 / (2 * beta)) ** 2
