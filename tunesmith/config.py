"""The recipe: one typed config per run.

A recipe is a YAML file validated into the models below (unknown keys are rejected), then
dotted overrides from the command line are applied (`train.lr=1e-4`). Every error names the
key path, the bad value and what is allowed, and is raised before any model is loaded.

Defaults live here and only here: the rest of the package reads fields, never `.get(key, default)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: str = Field(
        description="Local folder, Hugging Face hub id, or a .gguf file (converted once to a cached safetensors folder)."
    )
    gguf_file: str | None = Field(None, description="Name of the .gguf file inside `path` when `path` is a folder or hub repo.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `path` is a hub id.")
    dtype: Dtype = Field(
        "auto",
        description="Weights dtype. auto: bfloat16 on GPUs and CPUs with native bf16, float32 elsewhere.",
    )
    quantization: Literal["none", "4bit", "8bit"] | None = Field(
        None, description="Load the base quantised with bitsandbytes. Default: 4bit for peft.method qlora, none otherwise."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantisation data type.")
    double_quant: bool = Field(True, description="Quantise the 4-bit quantisation constants too (saves ~0.4 bit/param).")
    compute_dtype: Dtype = Field("auto", description="Dtype of the matmuls on 4-bit weights. auto: the weights dtype.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub repo. Off unless you trust it.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None, description="Attention kernel. Default: what transformers picks for the model."
    )


class DataConfig(_Section):
    train: list[str] = Field(description="Training file(s): JSONL, JSON, CSV/TSV, Parquet, or a datasets save_to_disk folder.")
    eval: list[str] = Field([], description="Evaluation file(s). Without them, see eval_split.")
    eval_split: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the training rows held out for evaluation when no eval file is given.")
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "question_answer", "text"] = Field(
        "auto", description="Row format; auto detects it from the first row."
    )
    columns: dict[str, str] = Field({}, description="Map from a format's field name to your column name, e.g. {prompt: ticket}.")
    template: str = Field(
        "model",
        description="Chat template: 'model' (the tokenizer's own), 'chatml', 'alpaca', or a path to a .jinja file.",
    )
    system_prompt: str | None = Field(None, description="System message added to every conversation that has none.")
    max_length: int = Field(2048, gt=0, description="Longest example in tokens; longer ones follow `truncation`.")
    truncation: Literal["drop", "truncate_right", "truncate_left", "error"] = Field(
        "drop",
        description="Examples over max_length: drop (counted), truncate_right (keeps the start, loses the end and its EOS), "
        "truncate_left (keeps the end), or error.",
    )
    on_bad_row: Literal["error", "drop"] = Field("error", description="A malformed row stops the run (error) or is counted and skipped (drop).")
    train_on_prompt: bool = Field(False, description="Train on every token, not only the assistant turns.")

    @model_validator(mode="before")
    @classmethod
    def _one_file_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("train", "eval"):
                if isinstance(values.get(key), str):
                    values = {**values, key: [values[key]]}
        return values


class PeftConfig(_Section):
    method: Literal["none", "lora", "qlora"] = Field("lora", description="none: full fine-tuning; lora; qlora: LoRA on a 4-bit base.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt (suffix match, e.g. q_proj or c_attn), or all-linear: every linear layer but the output head.",
    )
    modules_to_save: list[str] = Field([], description="Modules trained in full and saved with the adapter (e.g. lm_head).")
    rslora: bool = Field(False, description="Rank-stabilised LoRA scaling alpha / sqrt(r).")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")

    @model_validator(mode="before")
    @classmethod
    def _one_module_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("target_modules"), str) and values["target_modules"] != "all-linear":
            values = {**values, "target_modules": [values["target_modules"]]}
        return values


class GenerationEvalConfig(_Section):
    """Generation metrics during training: at every evaluation, answer a fixed subset of the eval conversations
    greedily and score the answers; logged to metrics.jsonl as eval_<metric>."""

    metric: Literal["exact_match", "accuracy", "chrf", "bleu", "rougeL"] | None = Field(
        None,
        description="Metric computed at every evaluation (train.eval_steps, or each epoch); none: off. accuracy reads "
        "labels as `tunesmith eval` does (label set detected from the references).",
    )
    samples: int = Field(32, gt=0, description="Eval conversations answered each time (the first N of the eval data).")
    max_new_tokens: int = Field(32, gt=0, description="Longest answer generated for the metric, in tokens.")
    select_best: bool = Field(
        False, description="Use this metric (higher is better) instead of eval loss for train.keep_best and early stopping."
    )

    @model_validator(mode="after")
    def _select_needs_metric(self) -> GenerationEvalConfig:
        if self.select_best and self.metric is None:
            raise ValueError("generation_eval.select_best needs generation_eval.metric (e.g. exact_match)")
        return self


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimiser steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup: float = Field(0.03, ge=0, description="Warmup: a share of all steps when < 1, else a number of steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per forward pass.")
    eval_batch_size: int | None = Field(None, gt=0, description="Eval batch size. Default: batch_size.")
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimiser step.")
    group_by_length: bool = Field(True, description="Batch examples of similar length together (less padding, same examples per epoch).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"] = Field(
        "adamw", description="Optimiser. The 8-bit and paged ones need bitsandbytes support for the device."
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    logging_steps: int = Field(10, gt=0, description="Log metrics every N optimiser steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps. Default: once per epoch.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps. Default: once per epoch.")
    save_total_limit: int | None = Field(2, gt=0, description="Keep at most N checkpoints (the best is always kept with keep_best).")
    keep_best: bool = Field(False, description="Finish with the checkpoint of lowest eval loss, not the last one.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop when eval loss has not improved for N evaluations."
    )


class Recipe(_Section):
    name: str | None = Field(None, description="Run name. Default: the recipe file's name.")
    method: Literal["sft"] = Field("sft", description="Training method.")
    model: ModelConfig
    data: DataConfig
    peft: PeftConfig = Field(default_factory=PeftConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation_eval: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)
    output_dir: str | None = Field(None, description="Run directory. Default: runs/<name>.")
    tracking: Literal["none", "tensorboard", "mlflow", "wandb"] = Field("none", description="Experiment tracker to log to.")

    @model_validator(mode="after")
    def _check_combinations(self) -> Recipe:
        quant, method = self.model.quantization, self.peft.method
        if quant is None:
            self.model.quantization = "4bit" if method == "qlora" else "none"
        elif method == "qlora" and quant == "none":
            raise ValueError("peft.method 'qlora' trains LoRA on a quantised base: set model.quantization to 4bit or 8bit, or use peft.method lora")
        elif method != "qlora" and quant != "none":
            raise ValueError(
                f"model.quantization '{quant}' can only be trained through adapters: set peft.method qlora (a quantised base cannot be fully fine-tuned or take plain lora)"
            )
        has_eval = bool(self.data.eval) or self.data.eval_split > 0
        for key, on in (("train.keep_best", self.train.keep_best), ("train.early_stopping_patience", self.train.early_stopping_patience)):
            if on and not has_eval:
                raise ValueError(f"{key} needs evaluation data: set data.eval or data.eval_split")
        if (self.train.keep_best or self.train.early_stopping_patience) and (self.train.eval_steps or self.train.save_steps):
            if self.train.eval_steps is None or self.train.save_steps is None or self.train.save_steps % self.train.eval_steps:
                raise ValueError(
                    "with train.keep_best or early stopping, train.save_steps must be a multiple of train.eval_steps "
                    f"(got save_steps={self.train.save_steps}, eval_steps={self.train.eval_steps}); set both or neither"
                )
        if self.peft.method == "none" and self.model.dtype == "float16":
            raise ValueError("model.dtype 'float16' cannot be fully fine-tuned (fp16 weights lose the updates): use bfloat16 or float32, or train adapters")
        if self.peft.method == "none" and (self.peft.rslora or self.peft.dora):
            raise ValueError("peft.rslora and peft.dora apply to LoRA: set peft.method lora or qlora")
        return self

    @model_validator(mode="after")
    def _generation_eval_needs_eval_data(self) -> Recipe:
        if self.generation_eval.metric and not (self.data.eval or self.data.eval_split > 0):
            raise ValueError("generation_eval.metric needs evaluation data: set data.eval or data.eval_split")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / (self.name or "run"))


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """`train.lr=1e-4` -> (['train', 'lr'], 1e-4). Values are read as YAML (numbers, bools, lists)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.split("."), value))
    return parsed


def _takes_text(path: list[str]) -> bool:
    """Whether the field at this dotted path is free text, so `data.system_prompt=Answer: yes` stays a string."""
    model: type[BaseModel] = Recipe
    for part in path:
        info = model.model_fields.get(part)
        if info is None:
            return False
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        return annotation in (str, str | None)
    return False


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for (path, value), item in zip(parse_overrides(overrides), overrides):
        if _takes_text(path):
            value = item.partition("=")[2]
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is {child!r}, not a section")
            node = child
        node[path[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Read, override, validate. Raises ConfigError with one line per problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections (model, data, train, ...), got {type(raw).__name__}")
    # A section whose keys are all commented out reads as None: treat it as empty.
    raw = {key: {} if value is None and key in Recipe.model_fields else value for key, value in raw.items()}
    raw = apply_overrides(raw, list(overrides))
    raw.setdefault("name", path.stem)
    recipe = validate(raw, source=str(path))
    if check_files:
        check_paths(recipe)
    return recipe


def validate(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        # A union field (e.g. target_modules: list or 'all-linear') fails once per branch: one line per key.
        lines = list(dict.fromkeys(format_error(e) for e in err.errors()))
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(f"  {line}" for line in lines)) from None


def format_error(e: dict) -> str:
    # Drop pydantic's internal location parts: validator names and union branch tags like list[str].
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-") and "[" not in str(p))
    value = e.get("input")
    kind = e["type"]
    if kind == "literal_error":
        return f"{loc}: {value!r} is not one of {e['ctx']['expected']}"
    if kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(e["loc"][:-1]))
        return f"{loc}: unknown key (allowed here: {allowed})"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind == "value_error":
        return str(e["ctx"]["error"]) if not loc else f"{loc}: {e['ctx']['error']}"
    return f"{loc}: {value!r}: {e['msg']}" if loc else e["msg"]


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _looks_local(path: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else (absolute, ./, ~, .gguf, deeper) is a local path."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or path.endswith(".gguf")
        or path.count("/") > 1
        or Path(path).expanduser().exists()
    )


def check_paths(recipe: Recipe) -> None:
    """Missing files are one-line errors, before anything heavy happens."""
    problems = []
    model_path = recipe.model.path
    if _looks_local(model_path) and not Path(model_path).expanduser().exists():
        problems.append(f"model.path: {model_path!r} does not exist (a local folder, a .gguf file, or a hub id like org/name)")
    for key in ("train", "eval"):
        for i, file in enumerate(getattr(recipe.data, key)):
            if not Path(file.split("::")[0]).exists():
                problems.append(f"data.{key}[{i}]: file not found: {file}")
    template = recipe.data.template
    if template not in ("model", "chatml", "alpaca") and not Path(template).is_file():
        problems.append(f"data.template: {template!r} is not 'model', 'chatml', 'alpaca' or an existing .jinja file")
    if problems:
        raise ConfigError("\n".join(problems))


def field_help(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field: the source of `tunesmith train --help-config`."""
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += field_help(annotation, f"{prefix}{name}.")
        else:
            default = "(required)" if info.is_required() else repr(info.default)
            rows.append((f"{prefix}{name}", default, info.description or ""))
    return rows
