"""A stand-in for the few vLLM names tunesmith's engines import (vLLM itself needs a CUDA GPU): it records the
SamplingParams it is given, and its outputs carry token ids and the text vLLM would detokenize with
skip_special_tokens (special tokens dropped)."""

import sys
import types
from dataclasses import dataclass, field


# SamplingParams' fields in vLLM 0.34.0 (vllm/sampling_params.py), so that a name vLLM does not take fails here too.
FIELDS = set("""n presence_penalty frequency_penalty repetition_penalty temperature watermarking top_p top_k min_p seed stop
    stop_token_ids ignore_eos max_tokens min_tokens logprobs prompt_logprobs prompt_logprob_token_ids prompt_logprob_start
    logprob_token_ids flat_logprobs detokenize skip_special_tokens spaces_between_special_tokens include_stop_str_in_output
    output_kind stream_interval skip_clone output_text_buffer_length structured_outputs logit_bias allowed_token_ids
    extra_args bad_words skip_reading_prefix_cache thinking_token_budget repetition_detection""".split())


class SamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - FIELDS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
        self.kwargs = kwargs


@dataclass
class Output:
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    logprobs: list | None = None


@dataclass
class Result:
    outputs: list[Output]
    finished: bool = True


@dataclass
class LLM:
    """vllm.LLM's generate: each prompt answered with `reply` (token ids)."""

    tokenizer: object
    reply: list[int]
    params: list = field(default_factory=list)

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        self.params.append(params)
        return [Result([Output(self.reply, self.tokenizer.decode(self.reply, skip_special_tokens=True), "stop")]) for _ in prompts]


@dataclass
class ModelConfig:
    max_model_len: int


@dataclass
class AsyncEngine:
    """AsyncLLMEngine's generate: `reply` one token at a time, cumulative, as vLLM streams it; its model_config as
    vLLM's V1 AsyncLLM holds it (0.10 and later)."""

    tokenizer: object
    reply: list[int]
    params: list = field(default_factory=list)
    model_config: ModelConfig = field(default_factory=lambda: ModelConfig(2048))

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.params.append(params)
        for n in range(1, len(self.reply) + 1):
            ids, last = self.reply[:n], n == len(self.reply)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            yield Result([Output(ids, text, "stop" if last else None)], finished=last)


def install(monkeypatch) -> None:
    modules = {name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")}
    modules["vllm"].SamplingParams = SamplingParams
    modules["vllm.inputs"].TokensPrompt = dict
    modules["vllm.lora.request"].LoRARequest = lambda *args: args
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
