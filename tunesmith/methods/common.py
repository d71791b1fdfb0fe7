"""Pieces every training method shares: trainer arguments from the recipe, metrics logging, progress.

Control flow stays in the method files; this module holds only what would otherwise be copied.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from tunesmith import checkpoints, distributed
from tunesmith.config import METHOD_FORMATS, Recipe
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
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5.23 renamed gradient_checkpointing
        train_sampling_strategy="random",  # sft orders its own planned batches (tunesmith.methods.sft)
        max_grad_norm=t.max_grad_norm,
        optim=OPTIMIZERS[t.optimizer],
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is, and stops the run (StopOnNonFinite)
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
        **distributed.trainer_arguments(recipe),  # FSDP or DeepSpeed, from train.distributed
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
            # TRL's num_tokens counts what num_input_tokens_seen counts, but restarts from 0 on resume.
            if key in ("total_flos", "epoch", "num_tokens") or not isinstance(value, (int, float)):
                continue
            record[self.KEYS.get(key, key)] = value
        if record.get("tokens_per_s") == 0 and not state.num_input_tokens_seen:
            del record["tokens_per_s"]  # a trainer whose batches have no input_ids counts no tokens: unknown, not zero
        self.run.append_metrics(record)


class WriteProgress(TrainerCallback):
    """progress.json at every step: the step, of how many, the latest loss, and the step and time this session of
    training began at, from which `tunesmith queue ls` works out an ETA."""

    def __init__(self, run: RunDir):
        self.run, self.record = run, {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.record = {"step": state.global_step, "max_steps": state.max_steps, "start_step": state.global_step, "started_at": time.time()}
            self.run.write_progress(self.record)

    def on_step_end(self, args, state, control, **kwargs):
        if self.record:
            self.record.update(step=state.global_step, updated_at=time.time())
            self.run.write_progress(self.record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.record and "loss" in (logs or {}):  # logged after the step ended
            self.record["loss"] = logs["loss"]
            self.run.write_progress(self.record)


def restore_metrics(run: RunDir, checkpoint: Path) -> None:
    """On resume, metrics.jsonl as it was when `checkpoint` was saved: what the interrupted run logged after it
    (later steps, its end-of-training summary) is forgotten."""
    lines = run.metrics_file.read_text(encoding="utf-8").splitlines(keepends=True) if run.metrics_file.is_file() else []
    kept = checkpoints.metrics_lines(checkpoint)
    if kept is None:  # a checkpoint that does not say how many: keep the records up to its step
        lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= checkpoints.step_of(checkpoint)]
    run.metrics_file.write_text("".join(lines if kept is None else lines[:kept]), encoding="utf-8")


def save_checkpoints_atomically(trainer, run: RunDir) -> None:
    """Every checkpoint the trainer saves is written into checkpoints/.unfinished/ and moved into place once
    complete (tunesmith.checkpoints), then older ones are rotated out. transformers writes a checkpoint into
    `_get_output_dir()/checkpoint-N` and rotates inside that folder, so pointing it at .unfinished/ for the length
    of the save is enough; the best-checkpoint path it records there is moved along. On several processes every
    rank writes its part (its RNG state; under FSDP and ZeRO its shards), and rank 0 moves the folder once all have."""
    save = trainer._save_checkpoint

    def save_atomically(model, trial):
        check_finite_weights(trainer.model, trainer.state.global_step)
        staging = run.checkpoints / checkpoints.UNFINISHED
        if distributed.is_main():
            checkpoints.staging(run.checkpoints)
        distributed.barrier()
        trainer._get_output_dir = lambda trial=None: str(staging)
        try:
            save(model, trial)
        finally:
            del trainer._get_output_dir
        distributed.barrier()
        folder = staging / f"checkpoint-{trainer.state.global_step}"
        best = trainer.state.best_model_checkpoint
        if best and Path(best).parent == staging:
            trainer.state.best_model_checkpoint = str(run.checkpoints / Path(best).name)
            if distributed.is_main():
                trainer.state.save_to_json(str(folder / "trainer_state.json"))
        if distributed.is_main():
            checkpoints.commit(folder, run.checkpoints, run.path / "config.yaml", len(run.metrics()))
            checkpoints.rotate(run.checkpoints, trainer.args.save_total_limit, trainer.state.best_model_checkpoint)
        distributed.barrier()

    trainer._save_checkpoint = save_atomically


def finite_gradients(parameters) -> bool:
    import torch

    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.stack([g.isfinite().all().to(grads[0].device) for g in grads]).all())


def check_finite_weights(model, step: int) -> None:
    """Non-finite weights are never saved, as a checkpoint or as the final model."""
    import torch

    bad = [name for name, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        raise TunesmithError(f"the trained weights are not finite at step {step} ({bad[0]} and {len(bad) - 1} more): not saving them")


def diverged(what: str, step: int, recipe: Recipe, run: RunDir, fp16: bool) -> TunesmithError:
    """The error a run stops with when its loss or gradients stop being finite numbers."""
    causes = [f"train.lr {recipe.train.lr:g} too high for this model"]
    if fp16:
        causes.append("fp16 overflow (set model.dtype: bfloat16 or float32)")
    causes.append("a broken batch (see data_report.md)")
    last = run.last_checkpoint()
    kept = (f"{last.name} is kept: continue from it with a lower rate, --resume --allow-changes train.lr=<lower>" if last
            else "no checkpoint was saved before it")
    return TunesmithError(
        f"{what} at step {step}: training stopped before applying it, and no final weights were written ({kept}). "
        f"Likely causes: {'; '.join(causes)}"
    )


class StopOnNonFinite(TrainerCallback):
    """Stops the run at the first step whose gradients are not finite, before the optimiser applies them (so the
    weights stay the last good ones), or at the first logged loss that is not finite."""

    def __init__(self, recipe: Recipe, run: RunDir):
        self.recipe, self.run = recipe, run

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # fp16's loss scaler expects overflowing gradients now and then: it skips those steps itself.
        if not args.fp16 and not finite_gradients(model.parameters()):
            raise diverged("the gradients are not finite", state.global_step + 1, self.recipe, self.run, args.fp16)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise diverged(f"the loss is {loss}", state.global_step, self.recipe, self.run, args.fp16)


class InterruptRequest:
    """Ctrl-C (or SIGTERM, as a scheduler or `kill` sends it) while training, as a context manager: the first one
    asks the loop to stop at the end of the step and save a checkpoint there; a second one stops at once
    (KeyboardInterrupt), without saving."""

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.previous = {signum: signal.signal(signum, self.handle) for signum in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = self.SIGNALS[signum]
        print(f"\n{name}: stopping at the end of this step to save a checkpoint ({name} again: stop now, without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


class StopOnInterrupt(TrainerCallback):
    """Turns a Ctrl-C into a checkpoint at the end of the current step (or of the evaluation it arrived in) and a stop."""

    def __init__(self, request: InterruptRequest):
        self.request = request

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_rank(self.request.requested):  # every rank saves and stops at the same step
            self.request.requested = True
            control.should_save = control.should_training_stop = True

    on_evaluate = on_step_end


class NothingLeft(Exception):
    """A resumed run whose checkpoint is at its last step already: there is no step to train."""


class StopAtTheLastStep(TrainerCallback):
    """A run resumed from a checkpoint at its last step (train.max_steps lowered to it with --allow-changes) trains
    nothing: the Trainer would train one step more before it compares the step with max_steps. A checkpoint past
    the last step cannot end where the recipe says."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > state.max_steps:
            raise TunesmithError(
                f"--resume: {self.checkpoint.name} is at step {state.global_step}, past the run's last step "
                f"({state.max_steps}, from train.max_steps or train.epochs): ask for at least {state.global_step} steps, "
                "or start the run again"
            )
        if state.global_step == state.max_steps:
            raise NothingLeft


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimiser steps with the latest logged loss (shown as soon as it is logged) and training
    tokens/s, and a second bar over the batches of each evaluation."""

    LABELS = {"loss": "loss {:.4f}", "rewards/accuracies": "acc {:.2f}", "accuracy": "acc {:.2f}", "eval_loss": "eval {:.4f}"}

    def __init__(self):
        self.bar = self.eval_bar = None
        self.start = None
        self.tokens0 = 0
        self.shown: dict[str, str] = {}  # preference methods show acc: the share of pairs whose chosen reply wins
        self.speed = ""

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
            self.start, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            seconds = time.perf_counter() - self.start
            self.speed = f"{(state.num_input_tokens_seen - self.tokens0) / seconds if seconds else 0.0:,.0f} tok/s"
            self.refresh()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None:
            for key, label in self.LABELS.items():
                if key in (logs or {}):
                    self.shown[label.split()[0]] = label.format(logs[key])
            self.refresh()

    def refresh(self) -> None:
        self.bar.set_postfix_str(" | ".join([*self.shown.values(), self.speed]).strip(" |"))

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        from tqdm.auto import tqdm
        from transformers.trainer_utils import has_length

        if state.is_world_process_zero and self.eval_bar is None:
            total = len(eval_dataloader) if has_length(eval_dataloader) else None
            self.eval_bar = tqdm(total=total, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
        if self.eval_bar is not None:
            self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        for bar in (self.eval_bar, self.bar):
            if bar is not None:
                bar.close()
        self.bar = self.eval_bar = None


class GenerationEval(TrainerCallback):
    """At every evaluation: greedy answers to a fixed subset of eval conversations, scored and added to the eval
    metrics as eval_<metric>, before early stopping and best-checkpoint selection read them (so it must come
    before EarlyStoppingCallback in the callback list), and appended to metrics.jsonl."""

    def __init__(self, run: RunDir, metric: str, template, data, max_new_tokens: int):
        self.run, self.metric, self.template = run, metric, template
        self.data, self.max_new_tokens = data, max_new_tokens  # tunesmith.eval.evaluate.EvalData

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        from tunesmith.eval.generate import Loaded, generate
        from tunesmith.eval.tool_calls import tool_family

        was_training = model.training
        model.eval()
        loaded = Loaded(model, processing_class, self.template, "eval")
        # replies to rows with tools are decoded and read as `tunesmith eval` and the server do: the template's parser
        family = tool_family(self.template, processing_class) if any(self.data.tools) else None
        outputs = generate(loaded, self.data.prompts(None), self.max_new_tokens, args.per_device_eval_batch_size,
                           progress=state.is_world_process_zero, tools=self.data.tools, family=family)
        model.train(was_training)
        key = f"eval_{self.metric}"
        value = generation_score(self.metric, outputs, self.data.references, self.data.expected_calls, family, self.data.tools)
        if metrics is not None:
            metrics[key] = value
        if state.is_world_process_zero:
            self.run.append_metrics({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), key: value})


def generation_score(metric: str, outputs: list[str], references: list[str], calls: list | None = None, family=None,
                     tools: list | None = None) -> float:
    """One number, scored as `tunesmith eval` scores it (accuracy: labels detected from the references;
    tool_call_exact: `calls`, each row's expected tool calls, read from the outputs by `family`'s parser, with
    each row's `tools`)."""
    from tunesmith.eval.classification import label_set
    from tunesmith.eval.evaluate import Scoring, score_outputs

    labels = label_set(references) if metric == "accuracy" else None
    group = {"rougeL": "rouge", "tool_call_exact": "tool_calls"}.get(metric, metric)
    scoring = Scoring([group], labels, "closest" if labels else "first_line")
    return score_outputs(outputs, references, scoring, calls, family, tools)[0][metric]


def generation_eval_callbacks(recipe: Recipe, run: RunDir) -> list[TrainerCallback]:
    """The GenerationEval callback the recipe asks for (none when generation_eval.metric is unset).

    The eval conversations are read again, as prepare_data read them: the eval files, or the same seeded
    split of the training files."""
    gen = recipe.generation_eval
    if gen.metric is None:
        return []
    from tunesmith.data.prepare import DataReport, read_mixture
    from tunesmith.data.templates import ChatTemplate
    from tunesmith.eval.evaluate import EvalData

    examples = read_mixture(recipe.data, DataReport(), recipe.train.seed, METHOD_FORMATS["sft"])[1]
    if examples[0].messages is None:
        raise TunesmithError("generation_eval.metric: the eval data is plain text, with no answers to generate; unset it")
    data = EvalData("eval", examples[: gen.samples], [])
    if gen.metric == "tool_call_exact" and not any(data.expected_calls):
        raise TunesmithError(f"generation_eval.metric: tool_call_exact: none of the first {len(data.examples)} eval replies calls a tool")
    template = ChatTemplate.load(run.path / "template.json")
    return [GenerationEval(run, gen.metric, template, data, gen.max_new_tokens)]
