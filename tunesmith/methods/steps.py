"""The steps every method's `train()` takes, as plain functions: open the run directory, load the
tokenizer and template, prepare and report the data, save the final weights, write the report.

The order in which they are called, and everything between them, stays in the method files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from rich.console import Console

from tunesmith import checkpoints, distributed
from tunesmith.config import REFERENCE_FREE, PeftConfig, Recipe, peft_settings
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import ChatTemplate, install_template, merging_system, resolve_template
from tunesmith.data.token_weights import weigh_rows
from tunesmith.errors import ConfigError, Interrupted, RunFinished, TunesmithError
from tunesmith.eval.experiments import flatten
from tunesmith.experiments.pruning import trial_callbacks
from tunesmith.methods.common import (
    InterruptRequest,
    MetricsLogger,
    NothingLeft,
    ProgressBar,
    StopAtTheLastStep,
    StopOnInterrupt,
    StopOnNonFinite,
    WriteProgress,
    check_finite_weights,
    check_optimizer,
    generation_eval_callbacks,
    restore_metrics,
    save_checkpoints_atomically,
)
from tunesmith.models.peft import VIRTUAL_TOKENS, check_adapters, check_prompt_init, save_adapter, use_lora_plus
from tunesmith.runs import RunDir, environment, plot_loss
from tunesmith.tracking import check_installed, data_params, open_tracker

console = Console(stderr=True, soft_wrap=True, quiet=not distributed.is_main())  # one process speaks for all


# Settings a resumed run may change without --allow-changes: where the run lives, what it is called, where it
# reports, how often it logs and how many checkpoints it keeps change nothing it trains. save_steps joins them
# unless keep_best or early stopping choose among the saved checkpoints.
RESUME_NEUTRAL = ("name", "output_dir", "tracking", "train.logging_steps", "train.save_total_limit")
# Settings no resume can change: the checkpoint's weights and optimiser state are those of the old ones.
RESUME_FIXED = ("method", "model.", "peft.", "train.optimizer")


@dataclass
class Started:
    """What every method has before its model loads: the run directory (and the checkpoint it resumes from),
    the model source, the tokenizer, the template, and the checked, tokenized data with its report."""

    run: RunDir
    resume_from: Path | None
    source: object
    tokenizer: object
    template: ChatTemplate
    train_rows: list[dict]
    eval_rows: list[dict]
    data_report: object
    plan: object = None  # sft's and dpo's batches (tunesmith.data.batching.BatchPlan); None for the other methods
    final_state: dict | None = None  # under FSDP or ZeRO-3: the trained weights gathered from every rank, for rank 0 to save
    peft: PeftConfig | None = None  # the recipe's adapters, for the optimizer (LoRA+)


def start(recipe: Recipe, resume: bool, allow_changes: bool = False, batching=None) -> Started:
    """Checks, run directory, tracker, tokenizer and template, adapter targets, data: a problem with any of them
    should not wait for the model to load. `batching(recipe, train_rows)` plans the batches (sft), whose figures
    join the data report. On several processes rank 0 alone does all this, and hands the others what it found."""
    distributed.engine(recipe)  # a launch the recipe cannot run under fails here, on every rank
    return distributed.on_main(lambda: start_here(recipe, resume, allow_changes, batching), lambda s: replace(s, run=RunDir(s.run.path)))


def start_here(recipe: Recipe, resume: bool, allow_changes: bool, batching) -> Started:
    check_installed(recipe.tracking)
    check_optimizer(recipe)
    run, checkpoint = open_run(recipe, resume, allow_changes)
    run.tracker = open_tracker(recipe, run, resume)  # from here on, every metrics.jsonl line reaches the tracker too
    source, tokenizer, template = load_tokenizer_and_template(recipe)
    head = "reward" if recipe.method == "reward" else "causal_lm"
    check_adapters(source.path, recipe.peft, recipe.method, recipe.model.trust_remote_code)
    check_prompt_init(recipe.peft, tokenizer)
    train_rows, eval_rows, data_report, plan = preflight(recipe, run, tokenizer, template, batching)
    check_positions(recipe, source.path, head, [*train_rows, *eval_rows])
    if run.tracker is not None and not resume:
        run.tracker.log_params(data_params(data_report))
    return Started(run, checkpoint, source, tokenizer, template, train_rows, eval_rows, data_report, plan, peft=recipe.peft)


def fit(trainer, s: Started):
    """Train (from s.resume_from with --resume); returns (TrainOutput, seconds). Checkpoints are written whole or
    not at all; Ctrl-C stops at the end of the step with a checkpoint there and raises Interrupted."""
    save_checkpoints_atomically(trainer, s.run)
    if s.peft is not None:
        use_lora_plus(trainer, s.peft)
    request = InterruptRequest()
    trainer.add_callback(StopOnInterrupt(request))
    if s.resume_from:
        trainer.add_callback(StopAtTheLastStep(s.resume_from))
    started = time.perf_counter()
    try:
        with request:
            result = trainer.train(resume_from_checkpoint=str(s.resume_from) if s.resume_from else None)
    except NothingLeft:  # the weights are the checkpoint's, loaded before the first step
        from transformers.trainer_utils import TrainOutput

        result = TrainOutput(trainer.state.global_step, float("nan"), {})
    except KeyboardInterrupt:
        raise interrupted(s.run, trainer.state.global_step, saved=False) from None
    finally:
        trainer.pop_callback(ProgressBar).close()  # an exception leaves it mid-line otherwise
    if request.requested and trainer.state.global_step < trainer.state.max_steps:
        raise interrupted(s.run, trainer.state.global_step, saved=True)
    if distributed.shards_weights(trainer):
        s.final_state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every rank takes part
    return result, time.perf_counter() - started


def interrupted(run: RunDir, step: int, saved: bool) -> Interrupted:
    last = run.last_checkpoint()
    return Interrupted(step, last, saved and last is not None and checkpoints.step_of(last) == step)


def finish(recipe: Recipe, s: Started, model, steps: int, seconds: float, parameters: tuple[int, int], extra=lambda records: []) -> RunDir:
    """Save the final weights with the template, write report.md and loss.png, hand them to the tracker.
    `extra(records)` gives the report lines only this method measures, from metrics.jsonl."""
    check_finite_weights(model, steps)
    if distributed.is_main():
        final_dir = save_final(recipe, s.run, model, s.tokenizer, s.template, s.source, s.final_state)
        write_report(recipe, s.run, s.data_report, steps, seconds, parameters, final_dir, extra(s.run.metrics()))
        if s.run.tracker is not None:
            s.run.tracker.finish(final_dir)
        console.print(f"run written to {s.run.path} (final weights in {final_dir.name}/)")
    distributed.barrier()  # no rank returns before the run directory is complete
    return s.run


def describe(run: RunDir, model, recipe: Recipe, source, what: str) -> None:
    """Print what is being trained and record the environment (library versions, device, dtype)."""
    from tunesmith.models.load import torch_dtype

    console.print(f"model {source.origin} ({source.kind}), {recipe.peft.method}; {what}")
    if (line := distributed.describe(recipe)) is not None:
        console.print(line, markup=False, highlight=False)
    if distributed.is_main():
        run.write_json("environment.json", environment(model, torch_dtype(recipe.model.dtype)) | {"source": vars(source), "processes": distributed.world_size()})


def callbacks_for(recipe: Recipe, run: RunDir, callbacks: list | None) -> list:
    """metrics.jsonl, the progress bar, generation metrics and early stopping when asked, then the caller's own.
    Generation metrics join the eval metrics before a sweep trial reports them (tunesmith.experiments.pruning) and
    before early stopping and best-checkpoint selection read them."""
    from transformers import EarlyStoppingCallback

    stopping = [EarlyStoppingCallback(recipe.train.early_stopping_patience)] if recipe.train.early_stopping_patience else []
    return [MetricsLogger(run), ProgressBar(), WriteProgress(run), StopOnNonFinite(recipe, run), *generation_eval_callbacks(recipe, run),
            *trial_callbacks(run), *stopping, *(callbacks or [])]


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


def open_run(recipe: Recipe, resume: bool, allow_changes: bool) -> tuple[RunDir, Path | None]:
    """The run directory, and the checkpoint a --resume continues from."""
    run = RunDir(recipe.run_dir)
    checkpoint = resume_point(run, recipe, allow_changes) if resume else None
    if not resume:
        # A run that saved no checkpoint (stopped early, or its preflight failed) may simply be started again.
        if run.finished or checkpoints.named(run.checkpoints):
            raise TunesmithError(
                f"{run.path} already holds a run: pass --resume to continue it, or choose another output_dir=... or name=..."
            )
        run.metrics_file.unlink(missing_ok=True)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(recipe)
    return run, checkpoint


def resume_point(run: RunDir, recipe: Recipe, allow_changes: bool) -> Path:
    """The newest complete checkpoint, once the recipe is known to continue the same run; metrics.jsonl is put back
    as it was when that checkpoint was saved, and the resume is recorded in it."""
    if not (run.path / "config.yaml").is_file():
        raise TunesmithError(f"--resume: {run.path} holds no run (no config.yaml): start it without --resume")
    if run.finished:
        raise RunFinished(
            f"{run.path} is finished (final weights in {run.final_dir.name}/): nothing to resume. "
            f"To train it further, start a new run from it: model.path={run.path} name=<another name>"
        )
    choice = checkpoints.newest_complete(run.checkpoints, recipe.method)
    for name, why in choice.skipped:
        console.print(f"--resume: skipping {name}: {why}", markup=False, highlight=False)
    if choice.checkpoint is None:
        skipped = f" ({', '.join(name for name, _ in choice.skipped)} skipped, see above)" if choice.skipped else ""
        raise TunesmithError(f"--resume: no complete checkpoint in {run.checkpoints}{skipped}; to start the run afresh, delete that folder and leave out --resume")
    checkpoint, step = choice.checkpoint, checkpoints.step_of(choice.checkpoint)
    changes = settings_changes(run, checkpoint, recipe)
    listed = "\n".join(f"  {key}: {shown(old)} ({checkpoint.name}) → {shown(new)} (now)" for key, old, new in changes)
    if any(key.startswith(RESUME_FIXED) for key, _, _ in changes):
        raise ConfigError(
            f"--resume: settings a resumed run cannot change (the checkpoint's weights and optimiser state belong to the old ones):\n"
            f"{listed}\nstart a new run instead (another name=... or output_dir=...)"
        )
    if changes and not allow_changes:
        raise ConfigError(
            f"--resume: the settings differ from {checkpoint.name}'s, so this would not continue the same run:\n{listed}\n"
            "use the settings it was trained with, or pass --allow-changes to continue with the new ones"
        )
    if changes:
        console.print(f"--allow-changes: continuing with changed settings:\n{listed}", markup=False, highlight=False)
    restore_metrics(run, checkpoint)
    run.append_metrics({"step": step, "resumed_from": checkpoint.name, **({"changed": {k: [old, new] for k, old, new in changes}} if changes else {})})
    console.print(f"resuming from {checkpoint} (step {step})", markup=False, highlight=False)
    return checkpoint


def settings_changes(run: RunDir, checkpoint: Path, recipe: Recipe) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, new value) for every setting that differs and could change what is trained.
    The checkpoint's own config.yaml is the reference (the run's, for a checkpoint saved without one)."""
    saved = checkpoint / "config.yaml" if (checkpoint / "config.yaml").is_file() else run.path / "config.yaml"
    raw = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    try:  # keys added to the schema since are compared at their defaults
        raw = Recipe.model_validate(raw).model_dump(mode="json")
    except ValueError:
        pass
    old, new = flatten(raw), flatten(recipe.model_dump(mode="json"))
    t = recipe.train
    neutral = RESUME_NEUTRAL if t.keep_best or t.early_stopping_patience else (*RESUME_NEUTRAL, "train.save_steps")
    return [(key, old.get(key), new.get(key)) for key in dict.fromkeys([*old, *new]) if key not in neutral and old.get(key) != new.get(key)]


def shown(value) -> str:
    """A setting as a person writes it: 0.0001, yes/no, none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):  # a list item (a grpo reward): its unset fields say nothing
        return ", ".join(f"{k}: {shown(v)}" for k, v in value.items() if v is not None)
    return str(value)


def load_tokenizer_and_template(recipe: Recipe):
    """(model source, tokenizer, template). A run directory as model.path brings its own template;
    data.system_prompt_mode: merge is written into the template's text."""
    from tunesmith.models.load import generation_eos, load_tokenizer, resolve_source

    source = resolve_source(recipe.model)
    tokenizer = load_tokenizer(source.path, recipe.model.trust_remote_code)
    if source.template is not None and recipe.data.template == "model":
        template = ChatTemplate.load(source.template)
    else:
        template = resolve_template(recipe.data.template, tokenizer, generation_eos(source.path))
    if recipe.data.system_prompt_mode == "merge":
        template = merging_system(template)
    return source, tokenizer, template


def preflight(recipe: Recipe, run: RunDir, tokenizer, template: ChatTemplate, batching=None):
    """Load, check and tokenize the data, plan the batches; save and print the report before any model is loaded."""
    train_rows, eval_rows, data_report = prepare_data(recipe.data, tokenizer, template, recipe.train.seed, method=recipe.method)
    if recipe.train.token_weights is not None:
        data_report.token_weights = weigh_rows(recipe.train.token_weights, tokenizer, recipe.data.train, train_rows)
    plan = plan_batches_into(data_report, recipe, train_rows, batching)
    write_data_report(run, data_report)
    template.save(run.path / "template.json")
    console.print(render_markdown(data_report), markup=False, highlight=False, soft_wrap=True)
    return train_rows, eval_rows, data_report, plan


def save_cpu_memory(model, recipe: Recipe) -> None:
    """What keeps a CPU step's memory down without changing a value: dropout masks kept in a byte, not 4
    (tunesmith.models.dropout; LoRA's among them, so call it once the adapters are in), and, unless
    train.cpu_heap_trim is false, glibc's free heap pages given back between decoder layers (tunesmith.models.heap).
    Neither does anything on a GPU."""
    from tunesmith.models import dropout, heap

    dropout.use_bool_mask_dropout(model)
    if recipe.train.cpu_heap_trim:
        heap.trim_between_layers(model)


def plan_batches_into(data_report, recipe: Recipe, train_rows: list[dict], batching=None):
    """The batch plan, if the method plans its batches (sft, dpo, reward), with its figures put in the data report."""
    plan = batching(recipe, train_rows) if batching else None
    if plan is not None:
        data_report.batching = plan.summary([example_tokens(r) for r in train_rows], recipe.train.batch_size)
        if recipe.method == "reward" and plan.mode == "random" and (note := repeats_note(len(train_rows), recipe.train.batch_size)):
            data_report.batching["note"] = note  # TRL's RewardTrainer batches them
    return plan


def repeats_note(examples: int, batch_size: int) -> str | None:
    """What a TRL trainer that batches the examples itself trains twice on several processes, or None. tunesmith's
    planned batches top an epoch up with fillers (methods/sft.py, dpo.planned_items); TRL's own, under accelerate,
    complete the epoch's last step with its first examples, so that every process has a full batch."""
    processes = distributed.world_size()
    if processes == 1 or not (repeated := -examples % (batch_size * processes)):
        return None
    return (f"{examples} examples over {processes} processes × {batch_size}: the last step of every epoch trains {repeated} of the "
            f"epoch's first examples a second time (accelerate gives every process a full batch); a multiple of "
            f"{batch_size * processes} examples avoids it")


def check_positions(recipe: Recipe, source_path: str, head: str, rows: list[dict]) -> None:
    """An example longer than the model's learned position table (GPT-2: 1,024) fails in the middle of training with
    an IndexError: refused here, before the model loads. Prefix and prompt tuning's virtual tokens come first."""
    from tunesmith.models.load import learned_positions, model_skeleton

    try:
        limit = learned_positions(model_skeleton(source_path, head, recipe.model.trust_remote_code))
    except TunesmithError:
        return  # loading the model says what is wrong with it
    lengths = [len(r["input_ids"]) if "input_ids" in r else len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
               for r in rows if "input_ids" in r or "chosen_ids" in r]
    virtual = recipe.peft.num_virtual_tokens if recipe.peft.method in VIRTUAL_TOKENS else 0
    if limit is None or not lengths or max(lengths) + virtual <= limit:
        return
    tokens = f"{max(lengths)} tokens" + (f" after {virtual} virtual tokens (peft.num_virtual_tokens)" if virtual else "")
    raise ConfigError(
        f"data.max_length: {recipe.data.max_length}: the longest example has {tokens}, but this model has {limit} learned positions "
        f"(absolute position embeddings), and a longer sequence would stop training with an IndexError; set data.max_length to at most "
        f"{limit - virtual}" + (" or lower peft.num_virtual_tokens" if virtual else "")
    )


def example_tokens(row: dict) -> int:
    """Tokens an example puts in a batch: an sft row its input_ids; a preference pair its prompt twice (once before
    each reply) and both replies."""
    if "input_ids" in row:
        return len(row["input_ids"])
    return 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])


def write_data_report(run: RunDir, data_report) -> None:
    if not distributed.is_main():
        return
    run.write_json("data_report.json", data_report.to_dict())
    (run.path / "data_report.md").write_text(render_markdown(data_report), encoding="utf-8")


def save_final(recipe: Recipe, run: RunDir, model, tokenizer, template: ChatTemplate, source, state_dict: dict | None = None):
    """The adapter (LoRA/QLoRA) or the whole model, with a tokenizer that carries the run's template.
    `state_dict`: the weights gathered from the ranks that each hold a shard of them (FSDP, ZeRO-3)."""
    from tunesmith.models.load import _save_atomically

    final_dir = run.path / ("model" if recipe.peft.method == "none" else "adapter")

    def write(folder: Path) -> None:
        if recipe.peft.method == "none":
            model.save_pretrained(folder, **({"state_dict": state_dict} if state_dict is not None else {}))
        else:  # pointed at a base PEFT can find again: the hub id, or the local (converted) folder
            save_adapter(model, folder, recipe.peft, source.origin if source.kind == "hub" else source.path, state_dict)
        install_template(template, tokenizer)
        tokenizer.save_pretrained(folder)
        generation = getattr(model, "generation_config", None)
        if generation is not None:  # sequence classifiers (reward models) have none
            generation.eos_token_id = template.stop_token_ids
            generation.pad_token_id = tokenizer.pad_token_id
            generation.save_pretrained(folder)

    _save_atomically(final_dir, write)  # the final folder is what marks a run finished: never half of one
    return final_dir


def write_report(recipe: Recipe, run: RunDir, data_report, steps: int, seconds: float, parameters: tuple[int, int], final_dir, extra: list[str] = ()) -> None:
    """report.md and loss.png from metrics.jsonl; `extra` lines say what only this method measures."""
    records = run.metrics()
    plot_loss(records, run.path / "loss.png")
    trainable, total = parameters
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    detail = f" ({', '.join(f'{k}: {shown(v)}' for k, v in recipe.method_config.model_dump().items())})" if recipe.method_config else ""
    lines = [
        f"# Run `{recipe.name}`",
        "",
        f"- model: `{recipe.model.path}`; method: {recipe.method}{detail}, {recipe.peft.method}"
        + (f" ({', '.join(peft_settings(recipe.peft.model_dump()))})" if recipe.peft.method != "none" else ""),
        f"- trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)",
        f"- data: {data_report.train.kept} train / {data_report.eval.kept} eval {data_report.kind} examples, "
        f"template `{data_report.template}` (see data_report.md)",
        f"- steps: {steps}; time: {seconds:.0f} s" + (f"; {speeds[-1]:,.0f} tokens/s" if speeds else ""),
        *resume_lines(records),
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


def resume_lines(records: list[dict]) -> list[str]:
    """One report line per --resume, with the settings it changed."""
    lines = []
    for r in records:
        if "resumed_from" in r:
            changed = "; ".join(f"{key} {shown(old)} → {shown(new)}" for key, (old, new) in r.get("changed", {}).items())
            lines.append(f"- resumed from {r['resumed_from']}" + (f" with changed settings: {changed}" if changed else ""))
    return lines


def first_last(records: list[dict], key: str) -> str | None:
    """'first 0.5000, last 0.9000' for a logged metric, or None when it was never logged."""
    values = [r[key] for r in records if key in r]
    return f"first {values[0]:.4f}, last {values[-1]:.4f}" if values else None
