"""Pieces every training method shares: trainer arguments from the recipe, metrics logging, progress.

Control flow stays in the method files; this module holds only what would otherwise be copied.
"""

from __future__ import annotations

import json
import math
import time

from transformers import TrainerCallback

from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir

OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}

def check_optimizer(recipe: Recipe) -> None:
    import torch

    name = recipe.train.optimizer
    if name.startswith("paged") and not torch.cuda.is_available():
        raise TunesmithError(f"train.optimizer: {name!r} pages optimizer state to GPU memory and needs a CUDA device; use adamw or adamw_8bit")


def trainer_arguments(recipe: Recipe, run: RunDir, has_eval: bool) -> dict:
    """Keyword arguments shared by every TRL config class (SFTConfig, DPOConfig, ...)."""
    import torch

    from tunesmith.models.load import torch_dtype

    t = recipe.train
    m = recipe.model
    # Mixed precision follows the dtype the model computes in; TRL would otherwise default to bf16 autocast
    # even for a model the recipe asked to train in float32.
    compute = torch_dtype(m.compute_dtype if m.quantization == "4bit" and m.compute_dtype != "auto" else m.dtype)
    eval_strategy = ("steps" if t.eval_steps else "epoch") if has_eval else "no"
    save_strategy = "steps" if t.save_steps else "epoch"
    return dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        gradient_checkpointing=t.gradient_checkpointing,
        # Length grouping reads an input_ids column, which only SFT rows have.
        train_sampling_strategy="group_by_length" if t.group_by_length and recipe.method == "sft" else "random",
        max_grad_norm=t.max_grad_norm,
        optim=OPTIMIZERS[t.optimizer],
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.keep_best or bool(t.early_stopping_patience),
        **best_metric(recipe),
        report_to=[],  # tunesmith.tracking logs what metrics.jsonl holds, for every method alike
        run_name=recipe.name,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        bf16=compute == torch.bfloat16,
        fp16=compute == torch.float16,
        disable_tqdm=True,  # ProgressBar below shows loss and tokens/s instead
        dataloader_num_workers=0,
    )


def best_metric(recipe: Recipe) -> dict:
    """What keep_best and early stopping compare: eval loss, or a generation metric (higher is better)."""
    gen = recipe.generation_eval
    if gen.select_best:
        return dict(metric_for_best_model=f"eval_{gen.metric}", greater_is_better=True)
    return dict(metric_for_best_model="eval_loss", greater_is_better=False)


class MetricsLogger(TrainerCallback):
    """Appends one JSON line per log or eval event to metrics.jsonl."""

    KEYS = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "train_tokens_per_second": "tokens_per_s"}

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if key in ("total_flos", "epoch") or not isinstance(value, (int, float)):
                continue
            record[self.KEYS.get(key, key)] = value
        if record.get("tokens_per_s") == 0 and not state.num_input_tokens_seen:
            del record["tokens_per_s"]  # a trainer whose batches have no input_ids counts no tokens: unknown, not zero
        self.run.append_metrics(record)


def trim_metrics(run: RunDir, up_to_step: int) -> None:
    """On resume, forget what the interrupted run logged after the checkpoint it resumes from."""
    records = [r for r in run.metrics() if r["step"] <= up_to_step]
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimiser steps, showing the latest loss and training tokens/s."""

    def __init__(self):
        self.bar = None
        self.start = None
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
            self.start, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            seconds = time.perf_counter() - self.start
            tokens = state.num_input_tokens_seen - self.tokens0
            self.bar.set_postfix_str(self._postfix(state, tokens / seconds if seconds else 0.0), refresh=False)

    @staticmethod
    def _postfix(state, tokens_per_s: float) -> str:
        losses = [r["loss"] for r in state.log_history if "loss" in r]
        evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
        parts = [f"loss {losses[-1]:.4f}" if losses and math.isfinite(losses[-1]) else "loss -"]
        accuracies = [r.get("rewards/accuracies", r.get("accuracy")) for r in state.log_history if "rewards/accuracies" in r or "accuracy" in r]
        if accuracies:  # preference methods: share of pairs whose chosen reply out-scores the rejected one
            parts.append(f"acc {accuracies[-1]:.2f}")
        if evals:
            parts.append(f"eval {evals[-1]:.4f}")
        parts.append(f"{tokens_per_s:,.0f} tok/s")
        return " | ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class GenerationEval(TrainerCallback):
    """At every evaluation: greedy answers to a fixed subset of eval conversations, scored and added to the eval
    metrics as eval_<metric>, before early stopping and best-checkpoint selection read them (so it must come
    before EarlyStoppingCallback in the callback list), and appended to metrics.jsonl."""

    def __init__(self, run: RunDir, metric: str, template, conversations: list[list[dict]], references: list[str], max_new_tokens: int):
        self.run, self.metric, self.template = run, metric, template
        self.conversations, self.references, self.max_new_tokens = conversations, references, max_new_tokens

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        from tunesmith.eval.generate import Loaded, generate

        was_training = model.training
        model.eval()
        loaded = Loaded(model, processing_class, self.template, "eval")
        outputs = generate(loaded, self.conversations, self.max_new_tokens, args.per_device_eval_batch_size, progress=False)
        model.train(was_training)
        key = f"eval_{self.metric}"
        value = generation_score(self.metric, outputs, self.references)
        if metrics is not None:
            metrics[key] = value
        if state.is_world_process_zero:
            self.run.append_metrics({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), key: value})


def generation_score(metric: str, outputs: list[str], references: list[str]) -> float:
    """One number, scored as `tunesmith eval` scores it (accuracy: labels detected from the references)."""
    from tunesmith.eval.classification import label_set
    from tunesmith.eval.evaluate import Scoring, score_outputs

    labels = label_set(references) if metric == "accuracy" else None
    scoring = Scoring(["rouge" if metric == "rougeL" else metric], labels, "closest" if labels else "first_line")
    return score_outputs(outputs, references, scoring)[0][metric]


def generation_eval_callbacks(recipe: Recipe, run: RunDir) -> list[TrainerCallback]:
    """The GenerationEval callback the recipe asks for (none when generation_eval.metric is unset).

    The eval conversations are read again, as prepare_data read them: the eval files, or the same seeded
    split of the training files."""
    gen = recipe.generation_eval
    if gen.metric is None:
        return []
    from tunesmith.data.load import load_examples
    from tunesmith.data.prepare import split_eval
    from tunesmith.data.templates import ChatTemplate

    cfg = recipe.data

    def read(files):
        return [e for f in files for e in load_examples(f, cfg.format, cfg.columns, cfg.system_prompt, cfg.on_bad_row)[0]]

    examples = read(cfg.eval) if cfg.eval else split_eval(read(cfg.train), cfg.eval_split, recipe.train.seed)[1]
    if examples[0].messages is None:
        raise TunesmithError("generation_eval.metric: the eval data is plain text, with no answers to generate; unset it")
    examples = examples[: gen.samples]
    template = ChatTemplate.load(run.path / "template.json")
    return [GenerationEval(run, gen.metric, template, [e.messages[:-1] for e in examples], [e.messages[-1]["content"] for e in examples], gen.max_new_tokens)]
