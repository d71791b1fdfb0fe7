"""A stand-in for the few vLLM names tunesmith's engines import (vLLM itself needs a CUDA GPU): it records the
SamplingParams it is given, and its outputs carry token ids and the text vLLM would detokenize with
skip_special_tokens (special tokens dropped)."""

import sys
import types
from dataclasses import dataclass, field


class SamplingParams:
    def __init__(self, **kwargs):
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
class AsyncEngine:
    """AsyncLLMEngine's generate: `reply` one token at a time, cumulative, as vLLM streams it."""

    tokenizer: object
    reply: list[int]
    params: list = field(default_factory=list)

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
