"""Supervised fine-tuning (SFT): full fine-tuning, LoRA (Hu et al. 2021, arXiv:2106.09685) or
QLoRA (Dettmers et al. 2023, arXiv:2305.14314) on conversations or plain text.

    tunesmith train recipes/quickstart.yaml [train.lr=1e-4 ...] [--resume]

Steps, in order: open the run directory; load the tokenizer and template; load, check and tokenize
the data and plan the batches (so data problems surface before the model loads); load the model and
wrap it in adapters; check that it keeps packed examples apart and that the chunked loss is its own;
build TRL's SFTTrainer on the planned batches; train; save the adapter or model with its template;
write the report.

We tokenize ourselves (tunesmith.data.templates) and hand TRL batches that already carry `labels`,
so the loss mask is the one the preflight showed and checked, not one rebuilt later. The batches are
packed rows by default (tunesmith.data.batching), and the loss is computed without the logits tensor
(tunesmith.models.lm_loss), normalised over the trained tokens of the whole optimiser step.
"""

from __future__ import annotations

import math

import torch
from transformers import set_seed

from tunesmith import distributed
from tunesmith import losses
from tunesmith.config import Recipe
from tunesmith.data.batching import BatchPlan, Collator, batches_dataset, plan_batches
from tunesmith.errors import ConfigError
from tunesmith.methods.common import trainer_arguments
from tunesmith.methods.steps import callbacks_for, console, describe, finish, fit, save_cpu_memory, start, write_data_report
from tunesmith.models import attention, bottleneck, lm_loss
from tunesmith.models.load import load_model
from tunesmith.models.peft import VIRTUAL_TOKENS, count_parameters, wrap_model
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    s = start(recipe, resume, allow_changes, batching=plan)  # run directory, tokenizer and template, checked data: before the model loads

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    model, _, _ = load_model(recipe.model, s.source)
    model = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing)
    parameters = count_parameters(model)
    describe(s.run, model, recipe, s.source, f"sft, trainable {parameters[0]:,} / {parameters[1]:,} parameters")

    trainer = build_trainer(recipe, s, model, callbacks)
    result, seconds = fit(trainer, s)
    return finish(recipe, s, trainer.model, result.global_step, seconds, parameters)


def plan(recipe: Recipe, rows: list[dict]) -> BatchPlan:
    """The batches of every epoch (tunesmith.data.batching): packed rows, length-grouped or random batches."""
    t = recipe.train
    mode = "packed" if t.packing else "grouped" if t.group_by_length else "random"
    lengths = [len(r["input_ids"]) for r in rows]
    budget = t.max_tokens_per_batch or max(math.ceil(t.batch_size * sum(lengths) / len(lengths)), max(lengths))
    if mode != "random" and budget < max(lengths):
        raise ConfigError(
            f"train.max_tokens_per_batch: {budget} is less than the longest training example ({max(lengths)} tokens), "
            f"which would not fit in any batch; raise it to at least {max(lengths)}, or lower data.max_length"
        )
    return plan_batches(lengths, mode, budget, t.batch_size, t.seed)


def build_trainer(recipe: Recipe, s, model, callbacks: list | None):
    """TRL's SFTTrainer on the planned batches, once the model passed tunesmith.models.lm_loss's checks; a model
    that fails them trains on padded batches, or with its own loss, and the data report says so."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if recipe.peft.method in VIRTUAL_TOKENS and s.plan.mode == "packed":
        refuse_packing(recipe, s, f"peft.method {recipe.peft.method!r} puts its virtual tokens before every row, "
                                  "where packed examples would share them and lose their positions")
    plan = s.plan
    chunked_refused = lm_loss.add_chunked_loss(model)
    save_cpu_memory(model, recipe)  # dropout masks in a byte, not 4; glibc's free heap pages back between layers (CPU)
    # sdpa one example at a time, not over the whole packed row (tunesmith.models.attention)
    switched = plan.mode == "packed" and attention.use_packed_sdpa(lm_loss.base_of(model))
    # FlashAttention's varlen kernels and packed_sdpa read the examples' bounds from cu_seq_lens.
    varlen = model.config._attn_implementation in (attention.NAME, "flash_attention_2", "flash_attention_3")
    pad_id = s.tokenizer.pad_token_id if s.tokenizer.pad_token_id is not None else s.tokenizer.eos_token_id
    packable = recipe.peft.method not in VIRTUAL_TOKENS
    found = lm_loss.check(model, Collator(pad_id, packed=packable, varlen=varlen), s.train_rows[0]["input_ids"],
                          chunked=chunked_refused is None, packing=packable)
    if plan.mode == "packed" and found.packing:
        if switched:
            lm_loss.base_of(model).set_attn_implementation("sdpa")
        refuse_packing(recipe, s, found.packing)
        plan = s.plan
    if found.chunked or chunked_refused:
        console.print(f"loss: computed from the full logits, since {found.chunked or chunked_refused}", markup=False, highlight=False)

    packed = plan.mode == "packed"
    args = SFTConfig(
        **trainer_arguments(recipe, s.run, has_eval=bool(s.eval_rows))
        | dict(
            per_device_train_batch_size=recipe.train.batch_size if plan.mode == "random" else 1,  # a planned batch is one item
            include_num_input_tokens_seen="all" if packed else "non_padding",  # packed rows have no padding, and no attention mask to count it by
            torch_compile=recipe.train.compile,
        ),
        max_length=None,  # lengths were enforced, and counted, in prepare_data
        packing=False,  # tunesmith packs (tunesmith.data.batching)
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    trainer_class = type("SFTTrainer", (PlannedBatches, SFTTrainer), {})
    # On several processes, one filler item (no trained token) after the planned batches tops up an epoch's last step.
    fillers = [[len(s.train_rows)]] if distributed.world_size() > 1 else []
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=batches_dataset([*s.train_rows, filler_like(s.train_rows)], plan.batches + fillers),
        eval_dataset=batches_dataset(s.eval_rows, [[i] for i in range(len(s.eval_rows))]) if s.eval_rows else None,
        data_collator=Collator(pad_id, packed=packed, varlen=varlen),
        processing_class=s.tokenizer,
        callbacks=callbacks_for(recipe, s.run, callbacks),
    )
    trainer.chunked_loss = not (found.chunked or chunked_refused)
    trainer.model_accepts_loss_kwargs = True  # so the Trainer counts each step's trained tokens (num_items_in_batch) for the loss
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def refuse_packing(recipe: Recipe, s, why: str) -> None:
    """Packing off for a model that cannot keep packed examples apart: length-grouped padded batches instead, said
    on the terminal and in the data report."""
    t = recipe.train
    s.plan = plan(recipe.model_copy(update={"train": t.model_copy(update={"packing": False, "group_by_length": True})}), s.train_rows)
    s.data_report.batching = s.plan.summary([len(r["input_ids"]) for r in s.train_rows], t.batch_size)
    s.data_report.batching["note"] = f"packing is off: {why}; padded batches instead (set train.packing: false to say so)"
    write_data_report(s.run, s.data_report)
    console.print(f"train.packing: {why}; training on length-grouped padded batches instead", markup=False, highlight=False)


class PlannedBatches:
    """What tunesmith's SFTTrainer does its own way: the order of the planned batches, and the loss."""

    chunked_loss = True

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.world_size == 1:
            return EpochSeededPermutation(len(dataset), self.args.data_seed)
        # the last item is the filler; every step deals world_size micro-batches of _train_batch_size items each
        return EpochSeededPermutation(len(dataset) - 1, self.args.data_seed, self.args.world_size * self._train_batch_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Summed over the trained tokens and divided by num_items_in_batch, their count over every micro-batch
        of the optimiser step (the Trainer counts them before the first): gradient accumulation then gives the
        gradient of the whole step's batch, not a mean of micro-batch means. In evaluation, over this batch.
        With train.token_weights, each token's loss is multiplied by its weight and num_items_in_batch is the
        sum of the weights: a weighted mean over the step's trained tokens."""
        inputs = dict(inputs)
        weights = inputs.pop("weights", None)  # (B, T), 0 where not trained
        if weights is not None and not self.chunked_loss:
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            logits = outputs.logits[:, -inputs["labels"].shape[1]:]  # prompt tuning's logits begin with its virtual tokens'
            total = losses.weighted_cross_entropy(logits, inputs["labels"], weights)
            loss = total / (weights[:, 1:].sum() if num_items_in_batch is None else num_items_in_batch)
        else:
            extra = ({"chunked_loss": True} if self.chunked_loss else {}) | ({"token_weights": weights} if weights is not None else {})
            outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch, **extra)
            loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counted every rank's tokens; DDP averages
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        """Checkpoints of bottleneck adapters hold the adapters' weights, not the whole model: the Trainer saves a
        model that is not a PeftModel whole, a copy of the frozen base in every checkpoint (14 GB for a 7B model)."""
        if bottleneck.sites(self.model):  # state_dict: the whole model's, gathered by DeepSpeed
            state_dict = {k: v for k, v in (self.model.state_dict() if state_dict is None else state_dict).items() if bottleneck.INFIX in k}
        super()._save(output_dir, state_dict)

    def _issue_warnings_after_load(self, load_result):
        if bottleneck.sites(self.model):  # resuming, or keep_best: the base's weights are not in the checkpoint, by design
            load_result = load_result._replace(missing_keys=[k for k in load_result.missing_keys if bottleneck.INFIX in k])
        super()._issue_warnings_after_load(load_result)

    def _get_num_items_in_batch(self, batch_samples, device):
        """The step's trained tokens, or with token weights the sum of their weights (see compute_loss)."""
        if "weights" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        total = sum(batch["weights"][:, 1:].sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        # A step whose rows all weigh 0 (train.token_weights.column) has nothing to learn: its loss sum(w·ce) is 0,
        # and divided by 1, not by 0, its loss and gradients are 0, not NaN.
        return torch.where(total > 0, total, torch.ones_like(total))


def filler_like(rows: list[dict]) -> dict:
    """The filler item, with a zero token weight where the rows carry token weights (one batch, one set of keys)."""
    return distributed.FILLER | ({"weights": [0.0]} if rows and "weights" in rows[0] else {})


class EpochSeededPermutation(torch.utils.data.Sampler):
    """The batches in an order drawn from seed + epoch. transformers' own samplers shuffle with the global RNG as
    it stands when an epoch begins, which a run resumed in the middle of a later epoch cannot reproduce: it would
    train on other batches than the run it continues. With `shards` > 1 (processes × items per micro-batch), the
    order is topped up with item n, the filler, to a multiple of it (tunesmith.distributed.topped_up)."""

    def __init__(self, n: int, seed: int, shards: int = 1):
        self.n, self.seed, self.shards, self.epoch = n, seed, shards, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's dataloader at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n + -self.n % self.shards

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        return iter(distributed.topped_up(order, self.shards, self.n))
