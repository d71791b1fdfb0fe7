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

import time

from rich.console import Console
from transformers import set_seed

from tunesmith.config import Recipe
from tunesmith.data.prepare import prepare_data
from tunesmith.data.preflight import render_markdown
from tunesmith.data.templates import install_template, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.methods.common import (
    MetricsLogger,
    ProgressBar,
    check_optimizer,
    check_tracking,
    generation_eval_callbacks,
    trainer_arguments,
    trim_metrics,
)
from tunesmith.models.load import generation_eos, load_model, load_tokenizer, resolve_source, torch_dtype
from tunesmith.models.peft import count_parameters, wrap_model
from tunesmith.runs import RunDir, environment, plot_loss

console = Console(stderr=True, soft_wrap=True)


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None) -> RunDir:
    check_tracking(recipe)
    check_optimizer(recipe)
    run = open_run(recipe, resume)

    # Tokenizer, template and data first: a data problem should not wait for the model to load.
    source = resolve_source(recipe.model)
    tokenizer = load_tokenizer(source.path, recipe.model.trust_remote_code)
    template = resolve_template(recipe.data.template, tokenizer, generation_eos(source.path))
    train_rows, eval_rows, data_report = prepare_data(recipe.data, tokenizer, template, recipe.train.seed)
    run.write_json("data_report.json", data_report.to_dict())
    (run.path / "data_report.md").write_text(render_markdown(data_report), encoding="utf-8")
    template.save(run.path / "template.json")
    console.print(render_markdown(data_report), markup=False, highlight=False, soft_wrap=True)

    set_seed(recipe.train.seed)  # adapter initialisation draws from the global RNG
    model, _, _ = load_model(recipe.model, source)
    model = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing)
    trainable, total = count_parameters(model)
    console.print(f"model {source.origin} ({source.kind}), {recipe.peft.method}: trainable {trainable:,} / {total:,} parameters")
    run.write_json("environment.json", environment(model, torch_dtype(recipe.model.dtype)) | {"source": vars(source)})

    trainer = build_trainer(recipe, run, model, tokenizer, train_rows, eval_rows, callbacks or [])
    checkpoint = run.last_checkpoint() if resume else None
    if checkpoint is not None:
        console.print(f"resuming from {checkpoint}")
        trim_metrics(run, int(checkpoint.name.split("-")[1]))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started

    final_dir = save_final(recipe, run, trainer, tokenizer, template, source)
    records = run.metrics()
    plot_loss(records, run.path / "loss.png")
    write_report(recipe, run, data_report, result, seconds, trainable, total, final_dir, records)
    console.print(f"run written to {run.path} (final weights in {final_dir.name}/)")
    return run


def open_run(recipe: Recipe, resume: bool) -> RunDir:
    run = RunDir(recipe.run_dir)
    if resume:
        if run.last_checkpoint() is None:
            raise TunesmithError(f"--resume: no checkpoint in {run.checkpoints}")
    elif run.checkpoints.exists() or (run.path / "adapter").exists() or (run.path / "model").exists():
        # Only a run that reached training counts: a preflight that failed may simply be run again.
        raise TunesmithError(
            f"{run.path} already holds a run: pass --resume to continue it, or choose another output_dir=... or name=..."
        )
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(recipe)
    return run


def build_trainer(recipe: Recipe, run: RunDir, model, tokenizer, train_rows, eval_rows, callbacks: list):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(recipe, run, has_eval=bool(eval_rows)),
        max_length=None,  # lengths were enforced, and counted, in prepare_data
        packing=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    extra = [EarlyStoppingCallback(recipe.train.early_stopping_patience)] if recipe.train.early_stopping_patience else []
    # Generation metrics join the eval metrics before early stopping and best-checkpoint selection read them.
    extra = generation_eval_callbacks(recipe, run) + extra
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[MetricsLogger(run), ProgressBar(), *extra, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the progress bar
    return trainer


def save_final(recipe: Recipe, run: RunDir, trainer, tokenizer, template, source):
    """The adapter (LoRA/QLoRA) or the whole model, with a tokenizer that carries the run's template."""
    final_dir = run.path / ("model" if recipe.peft.method == "none" else "adapter")
    model = trainer.model
    if recipe.peft.method != "none":
        # Point the adapter at a base PEFT can find again: the hub id, or the local (converted) folder.
        model.peft_config["default"].base_model_name_or_path = source.origin if source.kind == "hub" else source.path
    model.save_pretrained(final_dir)
    install_template(template, tokenizer)
    tokenizer.save_pretrained(final_dir)
    generation = model.generation_config
    generation.eos_token_id = template.stop_token_ids
    generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(final_dir)
    return final_dir


def write_report(recipe, run, data_report, result, seconds, trainable, total, final_dir, records) -> None:
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    lines = [
        f"# Run `{recipe.name}`",
        "",
        f"- model: `{recipe.model.path}`; method: sft, {recipe.peft.method}"
        + (f" (r={recipe.peft.r}, alpha={recipe.peft.alpha})" if recipe.peft.method != "none" else ""),
        f"- trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)",
        f"- data: {data_report.train.kept} train / {data_report.eval.kept} eval examples, template `{data_report.template}` (see data_report.md)",
        f"- steps: {result.global_step}; time: {seconds:.0f} s"
        + (f"; {speeds[-1]:,.0f} tokens/s" if speeds else ""),
        f"- loss: first {losses[0]:.4f}, last {losses[-1]:.4f}" if losses else "- loss: not logged",
        f"- eval loss: first {evals[0]:.4f}, best {min(evals):.4f}, last {evals[-1]:.4f}" if evals else "- eval loss: no eval data",
        f"- final weights: `{final_dir.name}/`",
        "",
        "![loss](loss.png)",
        "",
        "Try it:",
        "",
        "```bash",
        f'tunesmith generate {run.path} "your prompt"',
        "```",
        "",
    ]
    (run.path / "report.md").write_text("\n".join(lines), encoding="utf-8")
