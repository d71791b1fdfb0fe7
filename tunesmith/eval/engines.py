"""Generation engines behind `tunesmith eval` and `tunesmith generate`: one decoding setting, one output format.

    engine = open_engine("runs/quickstart", engine="auto")      # or a model folder, hub id, .gguf
    completions = engine.complete(conversations, Decoding(max_new_tokens=32), batch_size=16)
    completions = engine.complete(conversations, decoding, tools=[tools_of_row, ...])  # rows with tools (OpenAI style)

`TransformersEngine` runs anywhere. `VLLMEngine` is chosen by engine="auto" when vllm is importable and
a CUDA GPU is present, for decodings vLLM supports (no beams, no no_repeat_ngram_size); it gets the same
prompt token ids, stop tokens and stop strings, so its output is in the same form.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.data.templates import ChatTemplate, prompt_ids
from tunesmith.errors import TunesmithError
from tunesmith.eval.generate import Completion, Loaded, decode_completion, generate_ids, kept_markers, load_for_inference
from tunesmith.runs import RunDir, is_run_dir
from tunesmith.serve.tools import Family


@dataclass
class Decoding:
    """How to decode; the defaults are greedy. Each field is a CLI flag of the same name (--top-p, ...)."""

    max_new_tokens: int = 256
    temperature: float = 0.0          # 0: greedy; > 0 samples
    top_p: float = 1.0
    top_k: int = 0                    # 0: off
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0     # 0: off
    stop: list[str] = field(default_factory=list)
    seed: int = 0                     # for sampling

    def __post_init__(self):
        checks = [
            ("max-new-tokens", self.max_new_tokens, self.max_new_tokens > 0, "> 0"),
            ("temperature", self.temperature, self.temperature >= 0, ">= 0 (0 is greedy)"),
            ("top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("top-k", self.top_k, self.top_k >= 0, ">= 0 (0 is off)"),
            ("num-beams", self.num_beams, self.num_beams >= 1, ">= 1"),
            ("repetition-penalty", self.repetition_penalty, self.repetition_penalty > 0, "> 0 (1 is off)"),
            ("no-repeat-ngram-size", self.no_repeat_ngram_size, self.no_repeat_ngram_size >= 0, ">= 0 (0 is off)"),
        ]
        for flag, value, ok, allowed in checks:
            if not ok:
                raise TunesmithError(f"--{flag}: {value!r} must be {allowed}")
        if self.temperature == 0 and (self.top_p < 1 or self.top_k):
            raise TunesmithError("--top-p and --top-k apply to sampling: set --temperature above 0")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def hf_kwargs(self) -> dict:
        """transformers' generate arguments (besides max_new_tokens and stop strings), only those that differ from off."""
        kwargs: dict = {"do_sample": self.sampling}
        if self.sampling:
            # top_k=0 explicitly: None would mean the model's generation_config default (50 in transformers).
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.num_beams > 1:
            kwargs["num_beams"] = self.num_beams
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


class TransformersEngine:
    name_of_engine = "transformers"

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.name, self.template, self.tokenizer = loaded.name, loaded.template, loaded.tokenizer
        self.system_prompt = loaded.system_prompt

    def complete(self, conversations: list[list[dict]], decoding: Decoding, batch_size: int = 8, progress: bool = True,
                 tools: list[list[dict] | None] | None = None, family: Family | None = None) -> list[Completion]:
        import torch

        if decoding.sampling:
            torch.manual_seed(decoding.seed)
        tools = tools or [None] * len(conversations)
        prompts = [prompt_ids(self.template, self.tokenizer, conv, row_tools) for conv, row_tools in zip(conversations, tools)]
        return generate_ids(self.loaded, prompts, decoding.max_new_tokens, batch_size, progress, decoding.stop, decoding.hf_kwargs(),
                            kept_markers(self.tokenizer, family, tools))


@dataclass
class TargetFiles:
    """Where a target's weights are, without loading them: what vLLM needs."""

    name: str
    base: str                    # a transformers model folder
    adapter: str | None          # a PEFT folder, for LoRA runs
    tokenizer: object
    template: ChatTemplate
    system_prompt: str | None


def target_files(target: str, template: str = "model") -> TargetFiles:
    from tunesmith.config import ModelConfig
    from tunesmith.data.templates import resolve_template
    from tunesmith.models.load import generation_eos, load_tokenizer, resolve_source

    if is_run_dir(target):
        run = RunDir(Path(target))
        recipe = run.recipe()
        final = run.final_dir
        tokenizer = load_tokenizer(str(final))
        saved = ChatTemplate.load(run.path / "template.json")
        if final.name == "adapter":
            return TargetFiles(run.path.name, resolve_source(recipe.model).path, str(final), tokenizer, saved, recipe.data.system_prompt)
        return TargetFiles(run.path.name, str(final), None, tokenizer, saved, recipe.data.system_prompt)
    source = resolve_source(ModelConfig(path=target))
    tokenizer = load_tokenizer(source.path)
    return TargetFiles(target, source.path, None, tokenizer, resolve_template(template, tokenizer, generation_eos(source.path)), None)


class VLLMEngine:
    """vLLM on a GPU (not exercised by the CPU test suite). LoRA runs are served as base + adapter."""

    name_of_engine = "vllm"

    def __init__(self, files: TargetFiles, dtype: str = "auto"):
        from vllm import LLM

        self.files = files
        self.name, self.template, self.tokenizer = files.name, files.template, files.tokenizer
        self.system_prompt = files.system_prompt
        lora = {}
        if files.adapter:
            rank = json.loads((Path(files.adapter) / "adapter_config.json").read_text())["r"]
            lora = dict(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
        self.llm = LLM(model=files.base, tokenizer=files.base, dtype=dtype, seed=0, **lora)

    def complete(self, conversations: list[list[dict]], decoding: Decoding, batch_size: int = 8, progress: bool = True,
                 tools: list[list[dict] | None] | None = None, family: Family | None = None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(**self.sampling_params(decoding))
        tools = tools or [None] * len(conversations)
        prompts = [TokensPrompt(prompt_token_ids=prompt_ids(self.template, self.tokenizer, conv, row_tools))
                   for conv, row_tools in zip(conversations, tools)]
        lora_request = None
        if self.files.adapter:
            from vllm.lora.request import LoRARequest

            lora_request = LoRARequest(self.name, 1, self.files.adapter)
        # vLLM schedules its own batches; batch_size is a transformers setting.
        results = self.llm.generate(prompts, params, use_tqdm=progress, lora_request=lora_request)
        # The generated ids are decoded here, as the transformers engine and the server decode them: vLLM's own text
        # (skip_special_tokens) would drop a tool-call marker that is a special token ([TOOL_CALLS], <|python_tag|>).
        stop_ids, stop = set(self.template.stop_token_ids), [*decoding.stop, *self.template.stop_texts]
        return [decode_completion(list(r.outputs[0].token_ids), self.tokenizer, stop_ids, None, stop, keep)
                for r, keep in zip(results, kept_markers(self.tokenizer, family, tools))]

    def sampling_params(self, decoding: Decoding) -> dict:
        """vLLM's SamplingParams for a decoding. Its text is not used (see complete), only its token ids and its
        stopping: on the template's stop tokens and on stop strings, which vLLM matches in that text."""
        return dict(
            n=1,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            top_k=decoding.top_k or -1,
            repetition_penalty=decoding.repetition_penalty,
            max_tokens=decoding.max_new_tokens,
            stop=[*decoding.stop, *self.template.stop_texts] or None,
            stop_token_ids=self.template.stop_token_ids,
            seed=decoding.seed,
            skip_special_tokens=True,
        )


def vllm_usable(decoding: Decoding) -> bool:
    if decoding.num_beams > 1 or decoding.no_repeat_ngram_size:
        return False  # vLLM's sampler has neither
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def open_engine(target: str, template: str = "model", engine: str = "auto", decoding: Decoding | None = None, dtype: str = "auto"):
    """An engine for a run directory or a model: vLLM when asked (or, with 'auto', when usable), else transformers."""
    if engine not in ("auto", "transformers", "vllm"):
        raise TunesmithError(f"--engine: {engine!r} is not one of auto, transformers, vllm")
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise TunesmithError("--engine vllm: vllm is not installed (pip install vllm, on a machine with a CUDA GPU)")
    if engine == "vllm" or (engine == "auto" and vllm_usable(decoding or Decoding())):
        return VLLMEngine(target_files(target, template), dtype)
    return TransformersEngine(load_for_inference(target, template=template, dtype=dtype))


def open_base_of_run(run_path: str, dtype: str = "auto") -> TransformersEngine:
    """The base model a run started from, with the run's template and system prompt: the fair 'before'."""
    from tunesmith.models.load import load_model, load_tokenizer

    run = RunDir(Path(run_path))
    recipe = run.recipe()
    model, _, _ = load_model(recipe.model if dtype == "auto" else recipe.model.model_copy(update={"dtype": dtype}))
    model.eval()
    tokenizer = load_tokenizer(str(run.final_dir))
    template = ChatTemplate.load(run.path / "template.json")
    return TransformersEngine(Loaded(model, tokenizer, template, "base", recipe.data.system_prompt))
