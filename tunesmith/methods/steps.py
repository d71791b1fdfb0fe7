"""The steps every method's `train()` takes, as plain functions: open the run directory, load the
tokenizer and template, prepare and report the data, save the final weights, write the report.

The order in which they are called, and everything between them, stays in the method files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console

from tunesmith.config import REFERENCE_FREE, Recipe
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import ChatTemplate, install_template, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.methods.common import MetricsLogger, ProgressBar, check_optimizer, generation_eval_callbacks, trim_metrics
from tunesmith.runs import RunDir, environment, plot_loss
from tunesmith.tracking import check_installed, data_params, open_tracker

console = Console(stderr=True, soft_wrap=True)


@dataclass
class Started:
    """What every method has before its model loads: the run directory, the model source, the tokenizer,
    the template, and the checked, tokenized data with its report."""

    run: RunDir
    source: object
    tokenizer: object
    template: ChatTemplate
    train_rows: list[dict]
    eval_rows: list[dict]
    data_report: object


def start(recipe: Recipe, resume: bool) -> Started:
    """Checks, run directory, tracker, tokenizer and template, data: a problem should not wait for the model to load."""
    check_installed(recipe.tracking)
    check_optimizer(recipe)
    run = open_run(recipe, resume)
    run.tracker = open_tracker(recipe, run, resume)  # from here on, every metrics.jsonl line reaches the tracker too
    source, tokenizer, template = load_tokenizer_and_template(recipe)
    train_rows, eval_rows, data_report = preflight(recipe, run, tokenizer, template)
    if run.tracker is not None and not resume:
        run.tracker.log_params(data_params(data_report))
    return Started(run, source, tokenizer, template, train_rows, eval_rows, data_report)


def fit(trainer, run: RunDir, resume: bool):
    """Train (from the last checkpoint with --resume); returns (TrainOutput, seconds)."""
    checkpoint = resume_from(run, resume)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result, time.perf_counter() - started


def finish(recipe: Recipe, s: Started, model, steps: int, seconds: float, parameters: tuple[int, int], extra=lambda records: []) -> RunDir:
    """Save the final weights with the template, write report.md and loss.png, hand them to the tracker.
    `extra(records)` gives the report lines only this method measures, from metrics.jsonl."""
    final_dir = save_final(recipe, s.run, model, s.tokenizer, s.template, s.source)
    write_report(recipe, s.run, s.data_report, steps, seconds, parameters, final_dir, extra(s.run.metrics()))
    if s.run.tracker is not None:
        s.run.tracker.finish(final_dir)
    console.print(f"run written to {s.run.path} (final weights in {final_dir.name}/)")
    return s.run


def describe(run: RunDir, model, recipe: Recipe, source, what: str) -> None:
    """Print what is being trained and record the environment (library versions, device, dtype)."""
    from tunesmith.models.load import torch_dtype

    console.print(f"model {source.origin} ({source.kind}), {recipe.peft.method}; {what}")
    run.write_json("environment.json", environment(model, torch_dtype(recipe.model.dtype)) | {"source": vars(source)})


def callbacks_for(recipe: Recipe, run: RunDir, callbacks: list | None) -> list:
    """metrics.jsonl, the progress bar, generation metrics and early stopping when asked, then the caller's own.
    Generation metrics join the eval metrics before early stopping and best-checkpoint selection read them."""
    from transformers import EarlyStoppingCallback

    stopping = [EarlyStoppingCallback(recipe.train.early_stopping_patience)] if recipe.train.early_stopping_patience else []
    return [MetricsLogger(run), ProgressBar(), *generation_eval_callbacks(recipe, run), *stopping, *(callbacks or [])]


def reference_mode(recipe: Recipe) -> str:
    """none (reference-free loss), precomputed, adapters_off or copy."""
    cfg = recipe.method_config
    if getattr(cfg, "loss", None) in REFERENCE_FREE:
        return "none"
    if getattr(cfg, "precompute_reference", False):
        return "precomputed"
    if cfg.reference == "auto":
        return "copy" if recipe.peft.method == "none" else "adapters_off"
    return cfg.reference


def load_reference(recipe: Recipe, source):
    """A second frozen copy of the starting model, or None when the policy itself provides the reference."""
    from tunesmith.models.load import load_model

    if reference_mode(recipe) != "copy":
        return None
    reference, _, _ = load_model(recipe.model, source)
    reference.eval().requires_grad_(False)
    return reference


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


def load_tokenizer_and_template(recipe: Recipe):
    """(model source, tokenizer, template). A run directory as model.path brings its own template."""
    from tunesmith.models.load import generation_eos, load_tokenizer, resolve_source

    source = resolve_source(recipe.model)
    tokenizer = load_tokenizer(source.path, recipe.model.trust_remote_code)
    if source.template is not None and recipe.data.template == "model":
        template = ChatTemplate.load(source.template)
    else:
        template = resolve_template(recipe.data.template, tokenizer, generation_eos(source.path))
    return source, tokenizer, template


def preflight(recipe: Recipe, run: RunDir, tokenizer, template: ChatTemplate):
    """Load, check and tokenize the data; save and print the report before any model is loaded."""
    train_rows, eval_rows, data_report = prepare_data(recipe.data, tokenizer, template, recipe.train.seed, method=recipe.method)
    run.write_json("data_report.json", data_report.to_dict())
    (run.path / "data_report.md").write_text(render_markdown(data_report), encoding="utf-8")
    template.save(run.path / "template.json")
    console.print(render_markdown(data_report), markup=False, highlight=False, soft_wrap=True)
    return train_rows, eval_rows, data_report


def resume_from(run: RunDir, resume: bool):
    """The checkpoint to resume from (None for a fresh run); forgets metrics logged after it."""
    checkpoint = run.last_checkpoint() if resume else None
    if checkpoint is not None:
        console.print(f"resuming from {checkpoint}")
        trim_metrics(run, int(checkpoint.name.split("-")[1]))
    return checkpoint


def save_final(recipe: Recipe, run: RunDir, model, tokenizer, template: ChatTemplate, source):
    """The adapter (LoRA/QLoRA) or the whole model, with a tokenizer that carries the run's template."""
    final_dir = run.path / ("model" if recipe.peft.method == "none" else "adapter")
    if recipe.peft.method != "none":
        # Point the adapter at a base PEFT can find again: the hub id, or the local (converted) folder.
        model.peft_config["default"].base_model_name_or_path = source.origin if source.kind == "hub" else source.path
    model.save_pretrained(final_dir)
    install_template(template, tokenizer)
    tokenizer.save_pretrained(final_dir)
    generation = getattr(model, "generation_config", None)
    if generation is not None:  # sequence classifiers (reward models) have none
        generation.eos_token_id = template.stop_token_ids
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(final_dir)
    return final_dir


def write_report(recipe: Recipe, run: RunDir, data_report, steps: int, seconds: float, parameters: tuple[int, int], final_dir, extra: list[str] = ()) -> None:
    """report.md and loss.png from metrics.jsonl; `extra` lines say what only this method measures."""
    records = run.metrics()
    plot_loss(records, run.path / "loss.png")
    trainable, total = parameters
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    detail = f" ({recipe.method_config.model_dump()})" if recipe.method_config else ""
    lines = [
        f"# Run `{recipe.name}`",
        "",
        f"- model: `{recipe.model.path}`; method: {recipe.method}{detail}, {recipe.peft.method}"
        + (f" (r={recipe.peft.r}, alpha={recipe.peft.alpha})" if recipe.peft.method != "none" else ""),
        f"- trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)",
        f"- data: {data_report.train.kept} train / {data_report.eval.kept} eval {data_report.kind} examples, "
        f"template `{data_report.template}` (see data_report.md)",
        f"- steps: {steps}; time: {seconds:.0f} s" + (f"; {speeds[-1]:,.0f} tokens/s" if speeds else ""),
        f"- loss: first {losses[0]:.4f}, last {losses[-1]:.4f}" if losses else "- loss: not logged",
        f"- eval loss: first {evals[0]:.4f}, best {min(evals):.4f}, last {evals[-1]:.4f}" if evals else "- eval loss: no eval data",
        *extra,
        f"- final weights: `{final_dir.name}/`",
        "",
        "![loss](loss.png)",
        "",
    ]
    if recipe.method != "reward":
        lines += ["Try it:", "", "```bash", f'tunesmith generate {run.path} "your prompt"', "```", ""]
    (run.path / "report.md").write_text("\n".join(lines), encoding="utf-8")


def first_last(records: list[dict], key: str) -> str | None:
    """'first 0.5000, last 0.9000' for a logged metric, or None when it was never logged."""
    values = [r[key] for r in records if key in r]
    return f"first {values[0]:.4f}, last {values[-1]:.4f}" if values else None
