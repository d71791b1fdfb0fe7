"""The recipe: one typed config per run.

A recipe is a YAML file validated into the models below (unknown keys are rejected), then
dotted overrides from the command line are applied (`train.lr=1e-4`). Every error names the
key path, the bad value and what is allowed, and is raised before any model is loaded.

Defaults live here and only here: the rest of the package reads fields, never `.get(key, default)`.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AliasChoices, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from tunesmith.data.formats import FIELDS
from tunesmith.errors import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# A file, folder or module name: never empty.
Name = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    # strict: a value must already have its field's type, as YAML reads it (RecipeLoader below): `true` is not
    # the number 1, 2.0 is not a step count, 'yes' in quotes is text, not a switch. Numbers must be finite.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ModelConfig(_Section):
    path: Name = Field(
        description="Local folder, Hugging Face hub id, or a .gguf file (converted once to a cached safetensors folder)."
    )
    gguf_file: Name | None = Field(None, description="Name of the .gguf file inside `path` when `path` is a folder or hub repo.")
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

    @model_validator(mode="after")
    def _gguf_file_inside_a_folder(self) -> ModelConfig:
        if self.gguf_file is not None:
            if not self.gguf_file.endswith(".gguf"):
                raise ValueError(f"gguf_file: {self.gguf_file!r} is not a .gguf file name")
            if self.path.endswith(".gguf"):
                raise ValueError("gguf_file: names a file inside model.path, but model.path is a .gguf file already; remove one")
        return self


DataFormat = Literal[
    "auto", "alpaca", "messages", "sharegpt", "prompt_completion", "question_answer", "text", "preference", "unpaired", "prompt"
]


def _known_columns(columns: dict[str, str] | None) -> dict[str, str] | None:
    unknown = [name for name in columns or {} if name not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; fields are: {', '.join(FIELDS)} (map a field to your column: {{prompt: ticket}})")
    return columns


class DataSource(_Section):
    """One source of a mixture: an entry of data.train or data.eval written as a mapping instead of a path."""

    path: Name = Field(description="The file, folder or hub dataset, as a plain data.train entry.")
    task: Name | None = Field(None, description="Task name: tags every example of this source (see data.task_tag) and groups the preflight counts.")
    weight: float = Field(
        1.0, gt=0, description="Train examples of this source per example read: 2 repeats each twice, 0.5 keeps a seeded half, 1.5 adds a seeded half."
    )
    format: DataFormat | None = Field(None, description="This source's format. Default: data.format.")
    columns: dict[str, str] | None = Field(None, description="This source's column map. Default: data.columns.")

    _columns_name_fields = field_validator("columns")(_known_columns)


def as_source(entry: str | DataSource) -> DataSource:
    """A data entry as a source: a plain path takes the data section's format and columns."""
    return entry if isinstance(entry, DataSource) else DataSource(path=entry)


def _entry_kind(value) -> str:
    return "[source]" if isinstance(value, (dict, DataSource)) else "[path]"


# A data entry is a path or a source mapping, told apart by its type so that a bad mapping is reported as a source
# (not also as 'not a string'); the tags hold '[' so that error messages leave them out of the key path.
DataEntry = Annotated[Union[Annotated[Name, Tag("[path]")], Annotated[DataSource, Tag("[source]")]], Discriminator(_entry_kind)]


class DataConfig(_Section):
    train: list[DataEntry] = Field(
        min_length=1,
        description="Training file(s): JSONL, JSON, CSV/TSV, Parquet, a datasets save_to_disk folder (folder::split), "
        "or a hub dataset (org/name, hf://org/name, org/name::split, org/name@subset::split); an entry may be a mixture "
        "source {path, task, weight, format, columns}.",
    )
    eval: list[DataEntry] = Field([], description="Evaluation file(s) or hub datasets, as train (a source's weight stays 1). Without them, see eval_split.")
    eval_split: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of the training rows held out for evaluation when no eval file is given; a row written by "
        "`tunesmith data augment` is held out with its variants (augmented_from).",
    )
    format: DataFormat = Field(
        "auto",
        description="Row format; auto detects it from the first row among the formats the method takes "
        "(sft: conversations or text; dpo, reward: preference; kto: unpaired or preference; ppo, grpo: prompt).",
    )
    columns: dict[str, str] = Field({}, description="Map from a format's field name to your column name, e.g. {prompt: ticket}.")
    task_tag: Literal["prefix", "system"] = Field(
        "prefix",
        description="How a mixture source's task tags its examples: prefix: data.task_template and a space before the "
        "first user message (or the text); system: data.task_template as a line of the system message.",
    )
    task_template: str = Field("[TASK: {task}]", description="The tag of a task; {task} is the source's task name.")
    template: str = Field(
        "model",
        description="Chat template: 'model' (the tokenizer's own), 'chatml', 'alpaca', or a path to a .jinja file.",
    )
    system_prompt: str | None = Field(None, description="System message added to every conversation that has none.")
    system_prompt_mode: Literal["keep", "merge"] = Field(
        "keep",
        description="keep: system messages go to the template as they are; merge: the system text is put at the head "
        "of the first user turn, for templates that drop or refuse system messages (Mistral v0.3, Gemma). The run's "
        "template does the merge, so evaluation and serving merge alike.",
    )
    multi_turn: Literal["whole", "split"] = Field(
        "whole",
        description="whole: a conversation is one example, every assistant turn trained; split: each assistant turn is "
        "its own example, its prompt the conversation before it rendered as at inference (for templates that render "
        "earlier turns differently, e.g. Qwen3 drops their thinking, Phi-3 ends only the last turn with EOS).",
    )
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
                if isinstance(values.get(key), (str, dict)):
                    values = {**values, key: [values[key]]}
        return values

    _columns_name_fields = field_validator("columns")(_known_columns)

    @field_validator("task_template")
    @classmethod
    def _template_names_the_task(cls, template: str) -> str:
        if "{task}" not in template:
            raise ValueError(f"{template!r} does not contain {{task}}, where the task name goes")
        return template

    @model_validator(mode="after")
    def _one_source_of_eval_data(self) -> DataConfig:
        if self.eval and self.eval_split > 0:
            raise ValueError("eval_split: holds out training rows when there are no eval files, but data.eval is set; remove one of them")
        return self

    def sources(self, split: str) -> list[DataSource]:
        """The entries of data.train or data.eval as sources."""
        return [as_source(entry) for entry in getattr(self, split)]

    @property
    def mixture(self) -> bool:
        """Whether any entry is written as a source (its counts then get their own preflight section)."""
        return any(isinstance(entry, DataSource) for entry in self.train + self.eval)


PeftMethod = Literal["none", "lora", "qlora", "adapter", "ia3", "prefix", "prompt", "loha", "lokr", "vera", "oft"]

# The keys each method reads (besides `method`); any other key given a value is refused, not ignored.
_LAYER_KEYS = ("target_modules", "modules_to_save")
PEFT_METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "lora": ("r", "alpha", "dropout", *_LAYER_KEYS, "rslora", "dora", "init", "lora_plus_ratio"),
    "qlora": ("r", "alpha", "dropout", *_LAYER_KEYS, "rslora", "dora", "init", "lora_plus_ratio"),
    "adapter": ("placement", "reduction_factor", "bottleneck", "activation", "dropout"),
    "ia3": (*_LAYER_KEYS, "feedforward_modules"),
    "prefix": ("num_virtual_tokens",),
    "prompt": ("num_virtual_tokens", "prompt_init_text"),
    "loha": ("r", "alpha", *_LAYER_KEYS),
    "lokr": ("r", "alpha", *_LAYER_KEYS),
    "vera": ("r", "dropout", *_LAYER_KEYS),
    "oft": ("block_size", "dropout", *_LAYER_KEYS),
}


def peft_settings(peft: dict) -> list[str]:
    """'key=value' for each key peft.method reads that is set (not None, false or empty), as reports and model
    cards show an adapter: a method's own settings, never another's defaults."""
    def shown(value) -> str:
        return "+".join(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)

    return [f"{key}={shown(peft[key])}" for key in PEFT_METHOD_KEYS[peft["method"]] if peft.get(key) is not None and peft[key] is not False and peft[key] != []]


# Bottleneck adapters (tunesmith's own) and virtual tokens train with sft only; the preference and RL trainers take
# PEFT's layer methods.
SFT_ONLY_PEFT = ("adapter", "prefix", "prompt")


class PeftConfig(_Section):
    """Which weights train: all of them (none), or an adapter. Each method reads only its own keys
    (PEFT_METHOD_KEYS); a key of another method is an error."""

    method: PeftMethod = Field(
        "lora",
        description="none: full fine-tuning; lora; qlora: LoRA on a 4-bit base; adapter: bottleneck adapters (Houlsby/Pfeiffer); "
        "PEFT's ia3, prefix (prefix tuning), prompt (prompt tuning), loha, lokr, vera, oft.",
    )
    r: int = Field(16, gt=0, description="Rank of lora, qlora, loha, lokr and vera (vera: its shared random projections' rank).")
    alpha: float = Field(32, gt=0, description="Scaling numerator of lora/qlora/loha/lokr (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input (lora, qlora, vera), in the bottleneck (adapter), on whole OFT blocks (oft).")
    target_modules: Annotated[list[Name], Field(min_length=1)] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt (suffix match, e.g. q_proj or c_attn), or all-linear: every linear layer but the output head. "
        "lora, qlora, ia3, loha, lokr, vera, oft.",
    )
    modules_to_save: list[Name] = Field([], description="Modules trained in full and saved with the adapter (e.g. lm_head).")
    rslora: bool = Field(
        False, validation_alias=AliasChoices("rslora", "use_rslora"), description="lora/qlora: rank-stabilised scaling alpha / sqrt(r) (also spelt use_rslora)."
    )
    dora: bool = Field(False, description="lora/qlora: weight-decomposed LoRA (DoRA).")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="lora/qlora initialisation: default (A Kaiming-uniform, B zero), gaussian (A Gaussian), pissa (A, B from the top "
        "singular vectors, the base keeps the rest), olora (from a QR decomposition). pissa and olora change the base weights: lora only.",
    )
    lora_plus_ratio: float | None = Field(
        None, gt=0, description="lora/qlora: LoRA+ (Hayou et al. 2024): B matrices train at train.lr times this (16 in the paper), A at train.lr."
    )
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="adapter: houlsby: after attention and after the MLP of each decoder layer; pfeiffer: after the MLP only."
    )
    reduction_factor: int = Field(16, gt=0, description="adapter: bottleneck size = hidden size / reduction_factor (unless bottleneck is set).")
    bottleneck: int | None = Field(None, gt=0, description="adapter: bottleneck size in units, instead of reduction_factor.")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="adapter: non-linearity between down- and up-projection.")
    feedforward_modules: Annotated[list[Name], Field(min_length=1)] | None = Field(
        None,
        description="ia3: the target modules scaled on their input (the MLP's down-projection), the others on their output. "
        "Default: PEFT's list for the architecture.",
    )
    num_virtual_tokens: int = Field(20, gt=0, description="prefix, prompt: virtual tokens learned before every sequence.")
    prompt_init_text: Name | None = Field(
        None, description="prompt: initialise the virtual tokens from this text's token embeddings (repeated to num_virtual_tokens); default random."
    )
    block_size: int = Field(32, gt=0, description="oft: size of the orthogonal blocks; every adapted layer's input size must be a multiple of it.")

    @model_validator(mode="before")
    @classmethod
    def _one_module_is_a_list(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key in ("target_modules", "feedforward_modules"):
                if isinstance(values.get(key), str) and values[key] != "all-linear":
                    values = {**values, key: [values[key]]}
        return values

    @model_validator(mode="after")
    def _only_the_method_keys(self) -> PeftConfig:
        if self.method == "none":
            return self  # Recipe says what full fine-tuning does with adapter keys
        # Compared with the defaults, not with the keys given: a run's resolved config.yaml holds every key.
        own = PEFT_METHOD_KEYS[self.method]
        stray = [key for key, info in PeftConfig.model_fields.items() if key != "method" and key not in own and getattr(self, key) != info.default]
        if stray:
            key = stray[0]
            takers = [m for m, keys in PEFT_METHOD_KEYS.items() if key in keys]
            raise ValueError(
                f"peft.{key}: applies to peft.method {', '.join(takers)}, not to {self.method!r}; remove "
                f"{', '.join('peft.' + k for k in stray)} ({self.method} reads {', '.join('peft.' + k for k in own)})"
            )
        if self.bottleneck is not None and self.reduction_factor != PeftConfig.model_fields["reduction_factor"].default:
            raise ValueError("peft.bottleneck and peft.reduction_factor both size the adapter: set one of them")
        if self.method == "qlora" and self.init in ("pissa", "olora"):
            raise ValueError(
                f"peft.init: {self.init!r} rewrites the base weights from their decomposition, which a 4-bit base cannot hold; "
                "use peft.method lora, or init default or gaussian"
            )
        if self.dora and self.init in ("pissa", "olora"):
            # The adapter is saved converted to the original base (rank 2r), a conversion of the low-rank factors
            # alone: DoRA's magnitude vectors are left out, and the saved adapter would not be the trained model.
            raise ValueError(
                f"peft.dora: DoRA cannot be saved against the original base after peft.init {self.init!r} (its magnitude "
                "vectors do not convert); use init default or gaussian with dora, or dora: false"
            )
        return self


class GenerationEvalConfig(_Section):
    """Generation metrics during training: at every evaluation, answer a fixed subset of the eval conversations
    greedily and score the answers; logged to metrics.jsonl as eval_<metric>."""

    metric: Literal["exact_match", "accuracy", "chrf", "bleu", "rougeL", "tool_call_exact"] | None = Field(
        None,
        description="Metric computed at every evaluation (train.eval_steps, or each epoch); none: off. accuracy reads "
        "labels as `tunesmith eval` does (label set detected from the references); tool_call_exact: the share of "
        "replies that call tools with the right functions and exactly the right arguments.",
    )
    samples: int = Field(32, gt=0, description="Eval conversations answered each time (the first N of the eval data).")
    max_new_tokens: int = Field(32, gt=0, description="Longest answer generated for the metric, in tokens.")
    select_best: bool = Field(
        False, description="Use this metric (higher is better) instead of eval loss for train.keep_best and early stopping."
    )

    @model_validator(mode="after")
    def _select_needs_metric(self) -> GenerationEvalConfig:
        if self.select_best and self.metric is None:
            raise ValueError("select_best: needs generation_eval.metric (e.g. exact_match)")
        return self


class TokenWeights(_Section):
    """sft: tokens that count more in the loss. A trained token's weight is `weight` where a phrase or the regex
    matches it (1 elsewhere), times its row's `column` value; the loss is the weighted mean over trained tokens."""

    words: list[str] = Field(
        [], description="Words or phrases to up-weight, matched as whole words in the text of the trained spans (a Korean word with its particles); "
        "the tokens that overlap a match are up-weighted."
    )
    regex: str | None = Field(None, description="A regular expression over each trained span's text; the tokens that overlap a match are up-weighted.")
    weight: float = Field(2.0, gt=0, description="The weight of the tokens words or regex match.")
    column: str | None = Field(None, description="A data column holding each row's weight (a number >= 0), multiplying all its trained tokens.")

    @model_validator(mode="after")
    def _says_what_to_weigh(self) -> TokenWeights:
        if not (self.words or self.regex or self.column):
            raise ValueError("give words, regex or column (what to weigh)")
        if any(not w.strip() for w in self.words):
            raise ValueError("words: an empty phrase matches nothing; remove it")
        padded = [w for w in self.words if w != w.strip()]
        if padded:
            raise ValueError(f"words: {padded[0]!r} begins or ends with white space; write it without (words match as whole words, wherever they stand)")
        if self.regex is not None:
            try:
                if re.compile(self.regex).match(""):
                    raise ValueError(f"regex: {self.regex!r} matches the empty string; make it match at least one character")
            except re.error as err:
                raise ValueError(f"regex: {self.regex!r} is not a valid regular expression: {err}") from None
        if self.weight != 2.0 and not (self.words or self.regex):
            raise ValueError("weight: applies to the tokens words or regex match; give words or regex, or remove it")
        return self


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimiser steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup: float = Field(0.03, ge=0, description="Warmup: a share of all steps when < 1, else a whole number of steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per device per forward pass.")
    eval_batch_size: int | None = Field(None, gt=0, description="Eval batch size. Default: batch_size.")
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimiser step.")
    packing: bool = Field(
        True,
        description="sft: concatenate examples into rows of up to max_tokens_per_batch tokens, no padding, each example "
        "attending only to itself (position ids restart per example; same loss as unpacked); dpo (not simpo/orpo) and reward: "
        "the same with both replies of whole pairs. Checked on the model before "
        "step 1: a model that cannot keep packed examples apart trains on padded batches instead, and says so. kto trains "
        "unpacked (its KL term pairs examples of a padded batch) and says so; ppo and grpo batch their rollouts.",
    )
    max_tokens_per_batch: int | None = Field(
        None,
        gt=0,
        description="sft, dpo, reward: tokens per forward pass, padding included, for packed rows and length-grouped batches "
        "(a pair counts its prompt twice and both replies). Default: batch_size times the mean example length (at least the "
        "longest example), so a step sees about batch_size examples.",
    )
    group_by_length: bool = Field(
        True,
        description="sft without packing: batches of similar length under max_tokens_per_batch (less padding, same "
        "examples per epoch); false: batch_size examples at random. Other methods batch at random.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    cpu_heap_trim: bool = Field(
        True,
        description="Training on CPU under glibc: give the heap's free pages back to the system after each decoder layer "
        "when far more is resident than in use (tunesmith.models.heap): a lower peak, paid in page faults (SmolLM2-135M "
        "LoRA, packed: 4.45 against 5.93 GiB peak, 81 against 112 tokens per CPU-second). false: faster, more memory. "
        "Nothing is installed on a GPU or under another C library, whatever this says.",
    )
    distributed: Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "none",
        description="Engine across several processes (tunesmith train --nproc N, torchrun or accelerate launch; see "
        "tunesmith.distributed). none: one process, or DDP (or an accelerate config file's engine) under a launcher; "
        "ddp: a copy of the model per process; fsdp: weights, gradients and optimiser state fully sharded "
        "(recipes/distributed/fsdp.json); deepspeed_zero2/3: ZeRO-2 (gradients and optimiser state sharded) or ZeRO-3 "
        "(weights too), recipes/distributed/zero2.json / zero3.json.",
    )
    token_weights: TokenWeights | None = Field(
        None, description="sft: up-weight chosen tokens in the loss (words, regex, or a per-row weight column); the eval loss stays unweighted."
    )
    compile: bool = Field(False, description="sft: torch.compile the model before training (slow first steps; pays off on long GPU runs; not benchmarked on CPU).")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"] = Field(
        "adamw", description="Optimiser. The 8-bit and paged ones need bitsandbytes support for the device."
    )
    seed: int = Field(42, ge=0, lt=2**32, description="Seed for initialisation, shuffling and dropout.")
    logging_steps: int = Field(10, gt=0, description="Log metrics every N optimiser steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps. Default: once per epoch.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps. Default: once per epoch.")
    save_total_limit: int | None = Field(2, gt=0, description="Keep at most N checkpoints (the best is always kept with keep_best).")
    keep_best: bool = Field(False, description="Finish with the checkpoint of lowest eval loss, not the last one.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop when eval loss has not improved for N evaluations."
    )

    @field_validator("warmup")
    @classmethod
    def _warmup_steps_are_whole(cls, warmup: float) -> float:
        if warmup >= 1 and not warmup.is_integer():
            raise ValueError(f"{warmup!r} is neither a share of the steps (< 1) nor a whole number of steps")
        return warmup


Reference = Literal["auto", "copy", "adapters_off"]
REFERENCE_HELP = (
    "The frozen reference policy. auto: adapters_off when training LoRA/QLoRA, else copy; copy: a second frozen "
    "copy of the starting model in memory; adapters_off: the policy itself with its adapters disabled (no second copy)."
)
PRECOMPUTE_HELP = "Compute the reference log-probs of every example once before training, then free the reference."
# dpo losses that score replies without a reference policy.
REFERENCE_FREE = ("simpo", "orpo")


class DpoConfig(_Section):
    """Direct preference optimisation and its relatives, on prompt/chosen/rejected pairs."""

    loss: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"] = Field(
        "sigmoid",
        description="sigmoid: DPO (arXiv:2305.18290); ipo: IPO (arXiv:2310.12036); hinge: SLiC hinge (arXiv:2305.10425); "
        "robust: DPO with flipped-label smoothing (arXiv:2403.00409); reference-free: simpo (arXiv:2405.14734), "
        "orpo (odds ratio + SFT loss, arXiv:2403.07691).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="sigmoid/hinge/robust: how tightly the policy stays near the reference; ipo: the regulariser tau; "
        "simpo: reward scale (the paper uses 2-10); orpo: weight lambda of the odds-ratio term.",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="robust: assumed probability that a preference label is flipped (e.g. 0.1).")
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: target reward margin gamma.")
    reference: Reference = Field("auto", description=REFERENCE_HELP)
    precompute_reference: bool = Field(False, description=PRECOMPUTE_HELP)

    @model_validator(mode="after")
    def _knobs_fit_the_loss(self) -> DpoConfig:
        if self.loss == "robust" and self.label_smoothing == 0:
            raise ValueError("label_smoothing: loss 'robust' needs a value > 0 (e.g. 0.1); with 0 it is plain sigmoid DPO")
        if self.loss != "robust" and self.label_smoothing:
            raise ValueError(f"label_smoothing: applies to loss 'robust' only (loss is {self.loss!r})")
        # Compared with the defaults, not with the keys given: a run's resolved config.yaml holds every key.
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        if self.loss != "simpo" and self.simpo_gamma != defaults["simpo_gamma"]:
            raise ValueError(f"simpo_gamma: applies to loss 'simpo' only (loss is {self.loss!r})")
        if self.loss in REFERENCE_FREE:
            for key in ("reference", "precompute_reference"):
                if getattr(self, key) != defaults[key]:
                    raise ValueError(f"{key}: loss {self.loss!r} is reference-free; remove the key")
        return self


class KtoConfig(_Section):
    """Kahneman-Tversky optimisation (arXiv:2402.01306) on unpaired examples labelled desirable or not."""

    beta: float = Field(0.1, gt=0, description="How tightly the policy stays near the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Loss weight of desirable examples (raise it when they are rarer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable examples.")
    reference: Reference = Field("auto", description=REFERENCE_HELP)
    precompute_reference: bool = Field(False, description=PRECOMPUTE_HELP)


class RewardModelConfig(_Section):
    """A Bradley-Terry reward model: a scalar head trained so that chosen responses score above rejected ones."""

    center_rewards: float | None = Field(
        None, ge=0, description="Weight of an extra loss that keeps rewards centred on 0 (arXiv:2312.09244; e.g. 0.01)."
    )


class PpoConfig(_Section):
    """PPO (arXiv:1707.06347) against a trained reward model with a per-token KL penalty (arXiv:2203.02155)."""

    reward_model: str = Field(description="Run directory of a `method: reward` run that scores the responses.")
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty to the reference, subtracted from the reward.")
    clip_range: float = Field(0.2, gt=0, description="PPO clipping of the policy probability ratio.")
    value_clip_range: float = Field(0.2, gt=0, description="Clipping of value predictions around their rollout values.")
    value_coef: float = Field(0.1, gt=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount factor.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    ppo_epochs: int = Field(4, gt=0, description="Optimisation passes over each rollout batch.")
    mini_batch_size: int = Field(4, gt=0, description="Rollouts per PPO update (train.batch_size prompts are rolled out per step).")
    max_new_tokens: int = Field(64, gt=0, description="Longest generated response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the reward of responses that hit max_new_tokens without ending."
    )
    whiten_rewards: bool = Field(False, description="Normalise rewards to zero mean and unit variance within each rollout batch.")
    reference: Reference = Field("auto", description=REFERENCE_HELP)


class RewardFunction(_Section):
    """One GRPO reward: a built-in, a reward-model run, or the user's own function."""

    type: Literal["exact_match", "regex", "length", "reward_model", "python"] = Field(
        description="exact_match: 1 when the response equals the row's reference column; regex: 1 when the pattern "
        "matches; length: minus the characters beyond max_chars, per 100 characters; reward_model: the score of a "
        "`method: reward` run; python: your function `module:name` or `file.py:name`."
    )
    weight: float = Field(1.0, description="Multiplier of this reward in the sum.")
    column: str | None = Field(None, description="exact_match: the data column holding the reference answer.")
    first_line: bool = Field(True, description="exact_match: compare only the first non-empty line of the response.")
    pattern: str | None = Field(None, description="regex: a Python regular expression searched in the response.")
    max_chars: int | None = Field(None, gt=0, description="length: responses longer than this are penalised.")
    path: str | None = Field(None, description="reward_model: the run directory of a reward run.")
    function: str | None = Field(
        None,
        description="python: 'package.module:function' or 'path/to/file.py:function', called as "
        "function(prompts, completions, **columns) -> list[float] (see tunesmith/rewards.py).",
    )

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> RewardFunction:
        needs = {"exact_match": "column", "regex": "pattern", "length": "max_chars", "reward_model": "path", "python": "function"}
        needed = needs[self.type]
        if getattr(self, needed) is None:
            raise ValueError(f"{needed}: required for reward type {self.type!r}")
        stray = [key for key in needs.values() if key != needed and getattr(self, key) is not None]
        if stray:
            raise ValueError(f"{stray[0]}: not used by reward type {self.type!r} (it takes {needed})")
        if self.type == "regex":
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern: {self.pattern!r} is not a valid regular expression: {err}") from None
        return self


class GrpoConfig(_Section):
    """Group relative policy optimisation (arXiv:2402.03300): sample a group per prompt, reward each, push up the better ones."""

    rewards: list[RewardFunction] = Field(min_length=1, description="Reward functions; a response's reward is their weighted sum.")
    num_generations: int = Field(4, ge=2, description="Responses sampled per prompt (the group).")
    max_new_tokens: int = Field(64, gt=0, description="Longest generated response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference; 0 loads no reference model.")
    epsilon: float = Field(0.2, gt=0, description="Clipping of the probability ratio.")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="How token losses are averaged: grpo (per sequence), dr_grpo (constant), dapo/bnpo (per token)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Divide advantages by the reward std of the group, the batch, or not at all.")


class TrackingConfig(_Section):
    """`tracking: mlflow` is short for `tracking: {backend: mlflow}`."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(
        "none", description="Experiment tracker that receives the run's settings, metrics, reports and adapter."
    )
    uri: str | None = Field(
        None,
        description="Where runs are stored: an MLflow tracking URI, a TensorBoard log folder or a W&B server URL. "
        "Default: inside the run directory (mlflow/, tensorboard/, wandb/; W&B syncs to its own server unless WANDB_MODE=offline).",
    )
    project: str = Field("tunesmith", description="MLflow experiment or W&B project the run is logged under.")
    run_name: str | None = Field(None, description="The run's name in the tracker. Default: the recipe's name.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            return {"backend": value}
        if not isinstance(value, (dict, TrackingConfig)):
            raise ValueError(f"{value!r} is neither a tracker name (none, tensorboard, mlflow, wandb) nor a section with backend, uri, project, run_name")
        return value


METHOD_SECTIONS = {"dpo": DpoConfig, "kto": KtoConfig, "reward": RewardModelConfig, "ppo": PpoConfig, "grpo": GrpoConfig}

# The data formats each method reads; `auto` detects among these.
METHOD_FORMATS = {
    "sft": ("alpaca", "messages", "sharegpt", "prompt_completion", "question_answer", "text"),
    "dpo": ("preference",),
    "reward": ("preference",),
    "kto": ("unpaired", "preference"),
    "ppo": ("prompt",),
    "grpo": ("prompt",),
}


class Recipe(_Section):
    name: str | None = Field(None, description="Run name. Default: the recipe file's name.")
    method: Literal["sft", "dpo", "kto", "reward", "ppo", "grpo"] = Field(
        "sft", description="Training method: sft, dpo (and simpo/orpo via dpo.loss), kto, reward, ppo or grpo."
    )
    model: ModelConfig
    data: DataConfig
    peft: PeftConfig = Field(default_factory=PeftConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation_eval: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)
    dpo: DpoConfig | None = Field(None, description="Settings of method dpo.")
    kto: KtoConfig | None = Field(None, description="Settings of method kto.")
    reward: RewardModelConfig | None = Field(None, description="Settings of method reward.")
    ppo: PpoConfig | None = Field(None, description="Settings of method ppo.")
    grpo: GrpoConfig | None = Field(None, description="Settings of method grpo.")
    output_dir: str | None = Field(None, description="Run directory. Default: runs/<name>.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> Recipe:
        self._check_method_sections()
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
        for key, on in (
            ("train.keep_best", self.train.keep_best),
            ("train.early_stopping_patience", self.train.early_stopping_patience),
            ("train.eval_steps", self.train.eval_steps),  # would be ignored: nothing to evaluate
        ):
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
        if self.peft.method == "none":
            # Compared with the defaults, not with the keys given: a run's resolved config.yaml holds every key.
            stray = [key for key, info in PeftConfig.model_fields.items() if key != "method" and getattr(self.peft, key) != info.default]
            if stray:
                raise ValueError(
                    f"peft.{stray[0]}: applies to adapters, but peft.method is 'none' (full fine-tuning trains every weight); "
                    f"remove {', '.join('peft.' + key for key in stray)} (on the command line: peft={{method: none}} replaces the section) "
                    "or set peft.method lora or qlora"
                )
        if self.model.quantization != "4bit":
            defaults = ModelConfig.model_fields
            for key in ("quant_type", "double_quant", "compute_dtype"):
                if getattr(self.model, key) != defaults[key].default:
                    raise ValueError(f"model.{key} applies to 4-bit quantisation (model.quantization is {self.model.quantization!r}); remove it")
        return self

    @model_validator(mode="after")
    def _generation_eval_needs_eval_data(self) -> Recipe:
        if self.generation_eval.metric and not (self.data.eval or self.data.eval_split > 0):
            raise ValueError("generation_eval.metric needs evaluation data: set data.eval or data.eval_split")
        if self.generation_eval.metric and self.method != "sft":
            raise ValueError(
                f"generation_eval.metric applies to method sft; {self.method} logs its own eval metrics "
                "(reward accuracies, eval_reward), and `tunesmith eval` scores any run's generations"
            )
        return self

    def _check_method_sections(self) -> None:
        if self.method != "sft" and self.peft.method in SFT_ONLY_PEFT:
            layers = [m for m in PEFT_METHOD_KEYS if m not in ("none", *SFT_ONLY_PEFT)]
            raise ValueError(f"peft.method {self.peft.method!r} trains with method sft only, not {self.method}; use one of {', '.join(layers)} with {self.method}")
        if self.peft.method == "prefix" and self.train.gradient_checkpointing:
            raise ValueError(
                "train.gradient_checkpointing: prefix tuning hands its keys and values to every layer as a cache, which "
                "transformers' checkpointed layers drop in training; set it to false, or use peft.method prompt or lora"
            )
        if self.train.token_weights is not None and self.method != "sft":
            raise ValueError(f"train.token_weights: weighs the sft loss, but method is {self.method!r}; remove it")
        if self.train.compile and self.method != "sft":
            raise ValueError(f"train.compile: applies to method sft for now, but method is {self.method!r}; remove it")
        for section in METHOD_SECTIONS:
            if section != self.method and getattr(self, section) is not None:
                raise ValueError(f"{section}: settings of method {section}, but method is {self.method!r}; remove the section or set method: {section}")
        if self.method in ("ppo", "grpo") and getattr(self, self.method) is None:
            needed = "reward_model" if self.method == "ppo" else "rewards"
            raise ValueError(f"method {self.method} needs a {self.method} section with {self.method}.{needed}")
        if self.method in ("dpo", "kto", "reward") and getattr(self, self.method) is None:
            setattr(self, self.method, METHOD_SECTIONS[self.method]())
        formats = METHOD_FORMATS[self.method]
        if self.data.format not in ("auto", *formats):
            raise ValueError(f"data.format: {self.data.format!r} is not one of auto, {', '.join(formats)} (the formats method {self.method} reads)")
        for split in ("train", "eval"):
            for i, source in enumerate(self.data.sources(split)):
                if source.format not in (None, "auto", *formats):
                    raise ValueError(f"data.{split}[{i}].format: {source.format!r} is not one of auto, {', '.join(formats)} (the formats method {self.method} reads)")
                if split == "eval" and source.weight != 1:
                    raise ValueError(f"data.eval[{i}].weight: eval data is not resampled; remove the weight (it is {source.weight:g})")
        section = getattr(self, self.method) if self.method in METHOD_SECTIONS else None
        reference = getattr(section, "reference", None)
        if reference == "adapters_off" and self.peft.method == "none":
            raise ValueError(f"{self.method}.reference: 'adapters_off' needs adapters (peft.method lora or qlora); full fine-tuning uses copy")
        if getattr(section, "precompute_reference", False) and reference == "copy":
            raise ValueError(
                f"{self.method}.precompute_reference computes the reference log-probs with the starting policy itself, "
                f"before training: remove {self.method}.reference: copy"
            )
        if self.method == "grpo" and (self.train.batch_size * self.train.grad_accum) % self.grpo.num_generations:
            raise ValueError(
                f"train.batch_size x train.grad_accum ({self.train.batch_size} x {self.train.grad_accum}) must be a multiple of "
                f"grpo.num_generations ({self.grpo.num_generations}): each step trains on whole groups of replies"
            )
        if self.method == "ppo":
            self._check_ppo()
        if self.method == "kto" and self.train.batch_size < 2:
            raise ValueError("train.batch_size: kto estimates its KL term from the other examples of a batch: use 2 or more")
        if self.method != "sft" and self.data.train_on_prompt:
            raise ValueError(f"data.train_on_prompt applies to method sft only (method is {self.method})")

    def _check_ppo(self) -> None:
        t = self.train
        if t.grad_accum != 1:
            raise ValueError("train.grad_accum: ppo updates once per ppo.mini_batch_size rollouts; leave grad_accum at 1 and size the updates with ppo.mini_batch_size")
        if self.ppo.mini_batch_size > t.batch_size:
            raise ValueError(f"ppo.mini_batch_size ({self.ppo.mini_batch_size}) cannot exceed train.batch_size ({t.batch_size}), the rollouts per step")
        if t.keep_best or t.early_stopping_patience:
            raise ValueError("train.keep_best and train.early_stopping_patience select on eval loss, which ppo does not compute (it logs eval_reward)")
        if t.optimizer not in ("adamw", "adamw_8bit", "sgd"):
            raise ValueError(f"train.optimizer: {t.optimizer!r} is not one of 'adamw', 'adamw_8bit', 'sgd' (the optimizers ppo supports)")

    @property
    def method_config(self):
        """The settings section of this recipe's method (None for sft)."""
        return getattr(self, self.method) if self.method in METHOD_SECTIONS else None

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / (self.name or "run"))


class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes and override values are read. A key given twice is an error (PyYAML would keep the
    last one silently), and 1e-4 is a number: PyYAML follows YAML 1.1, which reads it as text unless
    written 1.0e-4, and the strict fields above take no text for numbers."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first_line[key]})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str, source: str, lines: bool = True) -> Any:
    """`text` read with RecipeLoader; a YAML error is one line naming `source` (and the line, with `lines`)."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.MarkedYAMLError as err:
        where = f"{source}:{err.problem_mark.line + 1}" if lines else source
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(f"{where}: not valid YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """`train.lr=1e-4` -> (['train', 'lr'], 1e-4). Values are read as YAML (numbers, bools, lists), but for text
    fields, which keep everything after the first '=' (`data.system_prompt=Answer: yes`)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=1e-4")
        path = key.split(".")
        if _takes_text(path) or not raw.strip():
            value = raw
        else:
            value = read_yaml(raw, f"override {item!r}", lines=False)
        parsed.append((path, value))
    return parsed


def _nested_model(annotation) -> type[BaseModel] | None:
    """The section model a field holds: directly, as an optional section, or as list items (a mixture source
    among paths too)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_nested_model, get_args(annotation))), None)


def _takes_plain_items(annotation) -> bool:
    """Whether a list field's items may also be plain values: data.train takes paths as well as sources."""
    if get_origin(annotation) is not list:
        return False
    item = get_args(annotation)[0]
    item = get_args(item)[0] if get_origin(item) is Annotated else item
    return any(_nested_model(option) is None for option in get_args(item))


def _field_at(path: list) -> FieldInfo | None:
    """The field at a dotted path (list indexes skipped), or None where no field is."""
    model: type[BaseModel] | None = Recipe
    info = None
    for part in path:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if model else None
        if info is None:
            return None
        model = _nested_model(info.annotation)
    return info


def _value_types(info: FieldInfo) -> tuple[list, bool]:
    """The types a field's value may have, Annotated constraints and None removed; and whether None is allowed."""
    options = get_args(info.annotation) if get_origin(info.annotation) in (Union, UnionType) else (info.annotation,)
    types = [get_args(t)[0] if get_origin(t) is Annotated else t for t in options if t is not type(None)]
    return types, len(types) < len(options)


def _takes_text(path: list[str]) -> bool:
    """Whether the field at this dotted path is free text, so `data.system_prompt=Answer: yes` stays a string."""
    info = _field_at(path)
    return info is not None and _value_types(info)[0] == [str]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for path, value in parse_overrides(overrides):
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
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the recipe: {err.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig: a byte-order mark from a Windows editor is fine
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the recipe as UTF-8") from None
    raw = read_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections (model, data, train, ...), got {type(raw).__name__}")
    # A section whose keys are all commented out reads as None: treat it as empty. An optional section (a method's,
    # `ppo: null` in a run's config.yaml) stays unset.
    sections = [key for key, info in Recipe.model_fields.items() if info.default is not None and _nested_model(info.annotation)]
    raw = {key: {} if value is None and key in sections else value for key, value in raw.items()}
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


# Pydantic error types of a number or switch given the wrong type or out of range: answered with what the field takes.
_NUMBER_ERRORS = {
    "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "finite_number", "bool_type", "bool_parsing",
    "greater_than", "greater_than_equal", "less_than", "less_than_equal",
}
_KINDS = {int: "a whole number", float: "a finite number", bool: "true or false"}
_BOUNDS = {Gt: lambda m: f"> {m.gt}", Ge: lambda m: f">= {m.ge}", Lt: lambda m: f"< {m.lt}", Le: lambda m: f"<= {m.le}"}


def format_error(e: dict) -> str:
    # Drop pydantic's internal location parts: validator names and union branch tags like list[str].
    parts = [p for p in e["loc"] if not str(p).startswith("function-") and "[" not in str(p)]
    loc = _dotted(parts)
    value = e.get("input")
    kind = e["type"]
    if kind == "literal_error":
        return f"{loc}: {value!r} is not one of {e['ctx']['expected']}"
    if kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(parts[:-1]))
        return f"{loc}: unknown key (allowed here: {allowed})"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind == "value_error":
        message = str(e["ctx"]["error"])
        # A section's own check starts with one of its field names: name the full key path.
        field, sep, rest = message.partition(": ")
        if loc and sep and field in _fields_at(parts):
            return f"{_dotted([*parts, field])}: {rest}"
        return message if not loc else f"{loc}: {message}"
    info = _field_at(parts)
    allowed = _allowed(info) if kind in _NUMBER_ERRORS and info is not None else None
    if allowed:
        return f"{loc}: {_yaml_text(value)}: expected {allowed}"
    return f"{loc}: {value!r}: {e['msg']}" if loc else e["msg"]


def _allowed(info: FieldInfo) -> str | None:
    """What a number or switch field takes, for error messages: 'a whole number > 0, or null'."""
    types, optional = _value_types(info)
    if len(types) != 1 or types[0] not in _KINDS:
        return None
    bounds = " and ".join(_BOUNDS[type(m)](m) for m in info.metadata if type(m) in _BOUNDS)
    return _KINDS[types[0]] + (f" {bounds}" if bounds else "") + (", or null" if optional else "")


def _yaml_text(value) -> str:
    """A value as the recipe writes it: true, null, inf, 'text'."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).removesuffix("\n...\n")
    return repr(value)


def _dotted(parts: list) -> str:
    """('grpo', 'rewards', 0, 'pattern') -> 'grpo.rewards[0].pattern'."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(loc: list) -> list[str]:
    """The keys of the section at `loc` (the recipe's own at the top)."""
    if not loc:
        return list(Recipe.model_fields)
    info = _field_at(loc)
    nested = _nested_model(info.annotation) if info else None
    return list(nested.model_fields) if nested else []


def looks_local(path: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else (absolute, ./, ~, .gguf, deeper) is a local path, and so
    is 'folder/name' when that folder exists here (runs/my-sft before the run was trained)."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or path.endswith(".gguf")
        or path.count("/") > 1
        or Path(path).expanduser().exists()
        or (path.count("/") == 1 and Path(path).parent.is_dir())
    )


def check_paths(recipe: Recipe) -> None:
    """Missing files, and paths of the wrong kind, are one-line errors, before anything heavy happens."""
    from tunesmith.data.load import DataFileError, hub_dataset

    problems = _model_path_problems(recipe.model)
    for key in ("train", "eval"):
        for i, file in enumerate(source.path for source in recipe.data.sources(key)):
            try:
                local = hub_dataset(file) is None
            except DataFileError as err:
                problems.append(f"data.{key}[{i}]: {err}")
                continue
            if local and not Path(file.split("::")[0]).exists():
                problems.append(f"data.{key}[{i}]: file not found: {file}")
    if recipe.ppo and not Path(recipe.ppo.reward_model).is_dir():
        problems.append(f"ppo.reward_model: {recipe.ppo.reward_model!r} is not a directory (the run directory of a reward run)")
    for i, spec in enumerate(recipe.grpo.rewards if recipe.grpo else []):
        if spec.path and not Path(spec.path).is_dir():
            problems.append(f"grpo.rewards[{i}].path: {spec.path!r} is not a directory (the run directory of a reward run)")
        file = (spec.function or "").rpartition(":")[0]
        if file.endswith(".py") and not Path(file).is_file():
            problems.append(f"grpo.rewards[{i}].function: file {file!r} not found")
    template = recipe.data.template
    if template not in ("model", "chatml", "alpaca") and not Path(template).is_file():
        problems.append(f"data.template: {template!r} is not 'model', 'chatml', 'alpaca' or an existing .jinja file")
    # The run folder, or the first of its parents that exists, must be a folder.
    existing = next(p for p in (recipe.run_dir, *recipe.run_dir.parents) if p.exists())
    if not existing.is_dir():
        key = "output_dir" if recipe.output_dir else "name"
        problems.append(f"{key}: the run folder {recipe.run_dir} cannot be made: {existing} is a file")
    if problems:
        raise ConfigError("\n".join(problems))


HUB_ID_RULES = "org/name: letters, digits, '-', '_', '.'"


def is_hub_id(name: str) -> bool:
    """Whether `name` is a valid hub repo id, by huggingface_hub's own rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _model_path_problems(cfg: ModelConfig) -> list[str]:
    path = Path(cfg.path).expanduser()
    if not looks_local(cfg.path):
        if not is_hub_id(cfg.path):
            return [f"model.path: {cfg.path!r} is neither a local path nor a hub id ({HUB_ID_RULES})"]
        return []
    if not path.exists():
        return [f"model.path: {cfg.path!r} does not exist (a local folder, a .gguf file, or a hub id like org/name)"]
    problems = []
    if path.is_file() and path.suffix != ".gguf":
        problems.append(f"model.path: {cfg.path!r} is a file; give the model's folder (with config.json) or a .gguf file")
    if cfg.revision is not None:
        problems.append(f"model.revision: applies to hub ids; {cfg.path!r} is a local path")
    return problems


def field_help(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field: the source of `tunesmith train --help-config`."""
    rows = []
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is not None:
            items = "[]" if get_origin(info.annotation) is list else ""
            if _takes_plain_items(info.annotation):
                rows.append((f"{prefix}{name}", "(required)" if info.is_required() else repr(info.default), info.description or ""))
            rows += field_help(nested, f"{prefix}{name}{items}.")
        else:
            default = "(required)" if info.is_required() else repr(info.default)
            rows.append((f"{prefix}{name}", default, info.description or ""))
    return rows
