"""vLLM behind the same small engine interface: continuous batching and paged attention on a GPU, with each
run's LoRA adapter passed per request as a LoRARequest.

Used by `tunesmith serve --engine vllm` (or `auto` when vLLM is installed and a CUDA GPU is present).
vLLM is not a tunesmith dependency: install it separately on a GPU machine. Templates, stop strings and
the HTTP layer are tunesmith's, as with the transformers engine; vLLM receives token ids and returns
token ids (and logprobs, of the raw logits as the transformers engine gives them). JSON schemas are decoded
under through vLLM's structured outputs (xgrammar by default there too). QLoRA runs are served on the unquantised base here (vLLM loads the base from its folder).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from tunesmith.serve.catalog import Catalog, ServedModel
from tunesmith.serve.engine import Request, Step, TokenLogprob

# vLLM sizes its LoRA slots by a maximum rank taken from this list.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class VLLMEngine:
    name = "vllm"

    def __init__(self, engine, lora_ids: dict[str, int], context_length: int):
        self.engine = engine
        self.lora_ids = lora_ids            # served name -> vLLM's integer adapter id (1, 2, ...)
        self.context_length = context_length
        self.counts = {"completed": 0, "cancelled": 0}
        self.running = 0

    @classmethod
    def load(cls, catalog: Catalog, max_batch: int = 256) -> VLLMEngine:
        from transformers import AutoConfig
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from tunesmith.errors import TunesmithError
        from tunesmith.models.load import torch_dtype
        from tunesmith.models.peft import adapter_kind

        adapters = [m for m in catalog.models.values() if m.adapter]
        other = [f"{m.name} ({adapter_kind(m.adapter).lower()})" for m in adapters if adapter_kind(m.adapter) != "LORA"]
        if other:
            raise TunesmithError(f"vLLM serves LoRA adapters only, not {', '.join(other)}: use --engine transformers")
        rank = max((m.rank for m in adapters), default=8)
        args = AsyncEngineArgs(
            model=catalog.base_path,
            tokenizer=catalog.base_path,
            dtype=str(torch_dtype(catalog.base.dtype)).replace("torch.", ""),
            trust_remote_code=catalog.base.trust_remote_code,
            max_num_seqs=max_batch,
            enable_lora=bool(adapters),
            max_loras=max(1, len(adapters)),
            max_lora_rank=next(r for r in VLLM_LORA_RANKS if r >= rank),
        )
        engine = AsyncLLMEngine.from_engine_args(args)
        config = AutoConfig.from_pretrained(catalog.base_path, trust_remote_code=catalog.base.trust_remote_code)
        context = int(getattr(config, "max_position_embeddings", 2048))
        return cls(engine, {m.name: i for i, m in enumerate(adapters, 1)}, context)

    async def start(self) -> None:
        # vLLM may cap the context below the model's own (to fit its KV cache): requests are checked against that.
        # vLLM's V1 engine (AsyncLLM, which AsyncLLMEngine names since 0.10) holds it as model_config; older ones
        # answered get_model_config().
        config = getattr(self.engine, "model_config", None)
        if config is None:
            config = await self.engine.get_model_config()
        self.context_length = config.max_model_len

    async def stop(self) -> None:
        self.engine.shutdown()

    def stats(self) -> dict:
        return {"engine": self.name, "waiting": 0, "running": self.running, **self.counts}

    def constrain(self, model: ServedModel, schema: dict | None) -> object:
        """vLLM compiles the schema itself (a bad one fails that request with vLLM's own error)."""
        from vllm.sampling_params import StructuredOutputsParams

        return StructuredOutputsParams(json_object=True) if schema is None else StructuredOutputsParams(json=schema)

    async def stream(self, request: Request) -> AsyncIterator[Step]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        model, sampling = request.model, request.sampling
        stops = model.template.stop_token_ids
        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,  # -1 is off in every vLLM version (0 only in newer ones)
            min_p=sampling.min_p,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            stop_token_ids=stops,
            # Only vLLM's own text, which is not used: the app decodes the token ids (serve.text), keeping the
            # tool-call markers that are special tokens ([TOOL_CALLS], <|python_tag|>).
            skip_special_tokens=True,
            logprobs=request.logprobs,
            structured_outputs=request.constraint,
        )
        lora = LoRARequest(model.name, self.lora_ids[model.name], str(model.adapter)) if model.adapter else None
        request_id = uuid.uuid4().hex
        sent, finished = 0, False
        self.running += 1
        try:
            outputs = self.engine.generate(TokensPrompt(prompt_token_ids=request.prompt_ids), params, request_id, lora_request=lora)
            async for output in outputs:
                completion = output.outputs[0]
                ids = list(completion.token_ids)  # cumulative
                new, sent = ids[sent:], len(ids)
                finish = completion.finish_reason if output.finished else None
                scores = [] if request.logprobs is None else [
                    scored(token, step, request.logprobs) for token, step in zip(new, completion.logprobs[len(ids) - len(new):])
                ]
                if finish == "stop" and new and new[-1] in stops:
                    new, scores = new[:-1], scores[:-1]  # the stop token ends the turn; it is not text
                finished = finish is not None
                yield Step(new, finish, len(ids), scores)
                if finished:
                    self.counts["completed"] += 1
                    return
        finally:
            self.running -= 1
            if not finished:
                self.counts["cancelled"] += 1
                await self.engine.abort(request_id)


def scored(token: int, step: dict, top: int) -> TokenLogprob:
    """vLLM's {token_id: Logprob} of one step (the chosen token and the `top` best) as a TokenLogprob."""
    best = sorted(((t, lp.logprob) for t, lp in step.items() if lp.rank is not None and lp.rank <= top), key=lambda pair: -pair[1])
    return TokenLogprob(token, step[token].logprob, best[:top])
