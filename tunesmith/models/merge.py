"""Merge a run's adapter (LoRA and PEFT's other weight methods) into its base and check the result; or export the adapter alone.

    tunesmith merge runs/x --out merged/x [--dtype bfloat16] [--prompts prompts.jsonl]
    tunesmith merge runs/x --adapter-only --out adapters/x

Steps: load the base unquantised in the merge dtype with the adapter on top; compute its logits on
the gate sequences (the run's eval conversations by default, answers included, so the adapter's
effect on every answer token is measured); merge; save a plain transformers folder with the run's
tokenizer, chat template and stop tokens; reload that folder and compare its logits with the
adapter's. Above the thresholds the merge fails and nothing is left at --out.

QLoRA runs merge into the base loaded in 16/32-bit, never into the 4-bit weights (rounding W + s·BA
back to 4 bits would throw most of the update away). The gate then compares the merged model with
the adapter applied to that same unquantised base. It does not measure the other gap: the adapter
was trained against the 4-bit-rounded weights, so the merged model (and the adapter on the
unquantised base) differ from the QLoRA model as trained by the quantisation error of the base.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.checks import check_output_folder
from tunesmith.config import Recipe, looks_local
from tunesmith.data.templates import ChatTemplate, install_template, prompt_ids
from tunesmith.errors import TunesmithError
from tunesmith.models.peft import UNMERGEABLE, load_adapter
from tunesmith.models.fidelity import DEFAULT_MAX_SHARE, DEFAULT_THRESHOLDS, Fidelity, adapter_logits, compare, model_logits
from tunesmith.runs import RunDir, is_run_dir

log = logging.getLogger(__name__)

# Sequences longer than this are cut for the gate: the comparison is per position, so a prefix is enough.
GATE_MAX_TOKENS = 256

# What a merged folder records about where it came from (read by `tunesmith push` and `serve`).
PROVENANCE = "tunesmith.json"


class FidelityError(TunesmithError):
    """The merged model's outputs drifted from the adapter model's beyond the allowed thresholds."""


@dataclass
class MergeResult:
    out: Path
    dtype: str
    fidelity: Fidelity
    max_logit_diff: float
    max_kl: float
    max_share: float
    prompts_from: str
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def open_adapter_run(target: str | Path) -> tuple[RunDir, Recipe]:
    if not is_run_dir(target):
        raise TunesmithError(f"{target}: not a run directory (it needs config.yaml and template.json)")
    run = RunDir(Path(target))
    recipe = run.recipe()
    if recipe.method == "reward":
        raise TunesmithError(f"{run.path} is a reward model (a scalar head, not a language model): score with it, `tunesmith score {run.path}`")
    if run.final_dir.name != "adapter":
        if (run.path / "model").is_dir():
            raise TunesmithError(
                f"{run.path} is a full fine-tuning run: its model/ folder is already a plain transformers model "
                "(serve or push it as it is; there is no adapter to merge)"
            )
        raise TunesmithError(f"{run.path} has no adapter/ folder yet: the run has not finished training")
    return run, recipe


def merge_run(
    target: str | Path,
    out: str | Path,
    dtype: str | None = None,
    prompts: str | None = None,
    n_prompts: int = 8,
    max_logit_diff: float | None = None,
    max_kl: float | None = None,
    max_share: float = DEFAULT_MAX_SHARE,
    force: bool = False,
) -> MergeResult:
    from tunesmith.models.load import load_model, load_tokenizer

    run, recipe = open_adapter_run(target)
    if recipe.peft.method in UNMERGEABLE:
        raise TunesmithError(
            f"{run.path} trained peft.method {recipe.peft.method!r}, which cannot be merged: {UNMERGEABLE[recipe.peft.method]}. "
            f"Serve or evaluate the run as it is, or export the adapter with `tunesmith merge {target} --adapter-only --out DIR`"
        )
    out = Path(out)
    check_output_folder(out, "--out", must_be_empty=True)
    # The gate's sequences need only the tokenizer: a missing data or prompts file is reported before any model loads.
    tokenizer = load_tokenizer(str(run.final_dir))
    template = ChatTemplate.load(run.path / "template.json")
    sequences, prompts_from = gate_sequences(recipe, tokenizer, template, prompts, n_prompts)

    log.info("loading the base model %s with the adapter of %s", recipe.model.path, run.path)
    model, base_cfg, source = adapter_model(run, recipe, dtype)
    resolved = str(model.dtype).replace("torch.", "")
    default_diff, default_kl = DEFAULT_THRESHOLDS[resolved]
    max_logit_diff = default_diff if max_logit_diff is None else max_logit_diff
    max_kl = default_kl if max_kl is None else max_kl
    model = model.to(inference_device()).eval()
    reference, adapter_kl = adapter_logits(model, sequences, tokenizer.pad_token_id, progress="gate: adapter model")

    log.info("merging in %s and saving", resolved)
    merged = model.merge_and_unload(safe_merge=True)  # safe_merge: NaNs in the merged weights are an error
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_merged(merged, tokenizer, template, staging)
    del model, merged

    log.info("reloading the merged model for the fidelity gate")
    reloaded = load_model(base_cfg.model_copy(update={"path": str(staging), "gguf_file": None}))[0]
    reloaded = reloaded.to(inference_device()).eval()
    fidelity = compare(reference, model_logits(reloaded, sequences, tokenizer.pad_token_id, progress="gate: merged model"), adapter_kl)
    problems = fidelity.problems(max_logit_diff, max_kl, max_share)
    result = MergeResult(out, resolved, fidelity, max_logit_diff, max_kl, max_share, prompts_from, problems)
    write_provenance(staging, run, recipe, source, result)
    if problems and not force:
        shutil.rmtree(staging)
        advice = (
            "Try --dtype float32 (a 16-bit merge rounds part of the update away), or pass --force to keep it anyway."
            if resolved != "float32"
            else "Pass --force to keep the merged model anyway."
        )
        raise FidelityError(
            f"merge failed the fidelity gate on {fidelity.sequences} sequences ({fidelity.tokens} tokens, {prompts_from}): "
            + "; ".join(problems)
            + f". Nothing was written to {out}. {advice}"
        )
    staging.rename(out)
    return result


def adapter_model(run: RunDir, recipe: Recipe, dtype: str | None = None):
    """(the run's adapter on its base loaded unquantised in `dtype`, that base's ModelConfig, its source).
    Unquantised whatever the run trained on: see the module docstring for QLoRA."""
    from tunesmith.models.load import load_model

    base_cfg = recipe.model.model_copy(update={"quantization": "none", "dtype": dtype or recipe.model.dtype})
    base, _, source = load_model(base_cfg)
    return load_adapter(base, run.final_dir), base_cfg, source


def inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def save_merged(model, tokenizer, template: ChatTemplate, folder: Path) -> None:
    """A plain transformers folder that generates with exactly the run's template and stop tokens."""
    model.save_pretrained(folder)
    save_inference_files(tokenizer, template, folder, model.generation_config)


def save_inference_files(tokenizer, template: ChatTemplate, folder: Path, generation) -> None:
    install_template(template, tokenizer)
    tokenizer.save_pretrained(folder)
    generation.eos_token_id = template.stop_token_ids
    generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(folder)
    template.save(folder / "template.json")


def write_provenance(folder: Path, run: RunDir, recipe: Recipe, source, result: MergeResult | None) -> None:
    data = {
        "kind": "merged" if result else "adapter",
        "run": str(run.path.resolve()),
        "base_model": recipe.model.path,
        "base_source": source.kind if source else None,
        "recipe": recipe.model_dump(mode="json"),
    }
    if result:
        data["merge"] = {
            "dtype": result.dtype,
            "fidelity": asdict(result.fidelity),
            "thresholds": {"max_logit_diff": result.max_logit_diff, "max_kl": result.max_kl, "max_share": result.max_share},
            "prompts": result.prompts_from,
            "passed": result.passed,
        }
    (folder / PROVENANCE).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def export_adapter(target: str | Path, out: str | Path) -> Path:
    """The adapter with its tokenizer, template and generation config: `PeftModel.from_pretrained(base, out)`."""
    run, recipe = open_adapter_run(target)
    out = Path(out)
    check_output_folder(out, "--out", must_be_empty=True)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.final_dir, staging)
    shutil.copy2(run.path / "template.json", staging / "template.json")
    if not looks_local(recipe.model.path):
        # The run may point at a local conversion of the base (GGUF, offline): others find it by hub id.
        config_file = staging / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = recipe.model.path
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_provenance(staging, run, recipe, None, None)
    staging.rename(out)
    return out


def gate_sequences(recipe: Recipe, tokenizer, template: ChatTemplate, prompts: str | None, limit: int) -> tuple[list[list[int]], str]:
    """Token sequences the gate compares on, and a phrase saying where they came from."""
    from tunesmith.config import METHOD_FORMATS
    from tunesmith.data.formats import Example
    from tunesmith.data.preference import conversation_of
    from tunesmith.data.prepare import DataReport, held_out, read_split, tokenize_example

    data = recipe.data
    formats = METHOD_FORMATS[recipe.method]  # a DPO run's data are pairs, a GRPO run's prompts
    try:
        if prompts:
            examples, where = read_prompt_file(prompts, data), f"prompts from {prompts}"
        elif data.eval:
            examples, where = read_split(data.eval, data, DataReport(), formats), "the run's eval data"
        elif data.eval_split > 0:
            train = read_split(data.train, data, DataReport(), formats)
            examples, where = held_out(train, data, recipe.train.seed)[1], "the run's held-out eval split"
        else:
            examples, where = read_split(data.train, data, DataReport(), formats), "the run's training data (it has no eval data)"
    except FileNotFoundError as err:
        raise TunesmithError(
            f"{err}: the gate reads the run's data files, whose paths in config.yaml are relative to where training "
            "ran; run from there or pass --prompts FILE"
        ) from None
    sequences = []
    for example in examples[:limit]:
        if not isinstance(example, Example):  # pairs: the chosen reply; prompts: the prompt
            example = Example(messages=conversation_of(example), text=None, where=example.where)
        if example.messages and example.messages[-1]["role"] == "user":
            ids = prompt_ids(template, tokenizer, example.messages, example.tools)  # a bare prompt: up to the generation prompt
        else:
            ids = tokenize_example(example, template, tokenizer, train_on_prompt=False).input_ids
        sequences.append(ids[:GATE_MAX_TOKENS])
    if not sequences:
        raise TunesmithError(f"no sequences to compare the merged model on ({where} is empty): pass --prompts FILE")
    return sequences, where


def read_prompt_file(path: str, data) -> list:
    """A .txt file (one user prompt per line) or a data file in any training format."""
    from tunesmith.data.formats import Example
    from tunesmith.data.load import load_examples

    file = Path(path)
    if not file.is_file():
        raise TunesmithError(f"--prompts: file not found: {path}")
    if file.suffix == ".txt":
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
        return [
            Example(messages=system + [{"role": "user", "content": line}], text=None, where=f"{path}:{i}")
            for i, line in enumerate(lines, 1)
        ]
    return load_examples(path, system_prompt=data.system_prompt)[0]
