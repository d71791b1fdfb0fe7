"""Load a run (or a plain model) for inference and generate with its template.

A run directory brings its own template (template.json); a plain model uses its tokenizer's chat
template. Generation is batched with left padding and stops on the template's stop tokens and stop
texts (turn-end markers that are no token, see tunesmith.data.turn_end), and optionally on stop strings
(the output is cut before the first one; a batch ends early once every row has hit one).

Two engines give the same output format (a `Completion` per prompt, in input order):
`TransformersEngine` (any machine) and `VLLMEngine` (used by `open_engine` when vllm is installed and a
GPU is present). Both are fed the same token ids, rendered with the run's template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig
from tunesmith.data.formats import with_system
from tunesmith.data.templates import ChatTemplate, prompt_ids, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, is_run_dir
from tunesmith.serve.text import decode
from tunesmith.serve.tools import Family, marker_tokens


@dataclass
class Loaded:
    model: object
    tokenizer: object
    template: ChatTemplate
    name: str
    system_prompt: str | None = None   # a run's data.system_prompt: what its model saw in every training example


def load_for_inference(target: str, template: str = "model", dtype: str = "auto") -> Loaded:
    """`target` is a run directory (its adapter or model, its template) or anything model.path accepts."""
    from tunesmith.models.load import generation_eos, load_model, load_tokenizer, resolve_source

    if is_run_dir(target):
        run = RunDir(Path(target))
        recipe = run.recipe()
        saved = ChatTemplate.load(run.path / "template.json")
        final = run.final_dir
        if final.name == "adapter":
            from tunesmith.models.peft import load_adapter

            base, _, _ = load_model(recipe.model)
            model = load_adapter(base, final)
        else:
            model, _, _ = load_model(recipe.model.model_copy(update={"path": str(final), "gguf_file": None}))
        tokenizer = load_tokenizer(str(final))
        model.eval()
        return Loaded(model, tokenizer, saved, run.path.name, recipe.data.system_prompt)
    cfg = ModelConfig(path=target, dtype=dtype)
    source = resolve_source(cfg)
    model, tokenizer, _ = load_model(cfg, source)
    model.eval()
    return Loaded(model, tokenizer, resolve_template(template, tokenizer, generation_eos(source.path)), target)


def generate(
    loaded: Loaded,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    stop: list[str] | None = None,
    tools: list[list[dict] | None] | None = None,
    family: Family | None = None,
    **decoding,
) -> list[str]:
    """One completion per conversation (greedy unless decoding says otherwise), in input order; `tools`: the
    tools each conversation may call (OpenAI style), as its training row gave them; `family`: the tool-call
    parser the replies will be read with (see kept_markers).

    `decoding` goes to transformers' generate as is (do_sample, temperature, num_beams, ...).
    """
    tools = tools or [None] * len(conversations)
    prompts = [prompt_ids(loaded.template, loaded.tokenizer, conv, row_tools) for conv, row_tools in zip(conversations, tools)]
    completions = generate_ids(loaded, prompts, max_new_tokens, batch_size, progress, stop or [], decoding,
                               kept_markers(loaded.tokenizer, family, tools))
    return [c.text for c in completions]


def kept_markers(tokenizer, family: Family | None, tools: list[list[dict] | None]) -> list[dict[int, str] | None]:
    """Per row, the special tokens its completion keeps: with `family` (the tool-call parser its replies are read
    with), the family's marker tokens in rows that have tools, as the server keeps them for a request with tools."""
    markers = marker_tokens(tokenizer, family) if family is not None else None
    return [markers if row_tools else None for row_tools in tools]


@dataclass
class Completion:
    text: str
    tokens: int      # generated tokens, the end-of-turn token included, padding not


def generate_ids(
    loaded: Loaded, prompts: list[list[int]], max_new_tokens: int, batch_size: int, progress: bool, stop: list[str], hf_kwargs: dict,
    keep: list[dict[int, str] | None] | None = None,
) -> list[Completion]:
    """`keep`: per prompt, the special tokens whose text its completion keeps (tool-call markers; see `decode_completion`)."""
    import torch
    from tqdm.auto import tqdm

    tokenizer, model = loaded.tokenizer, loaded.model
    pad_id = tokenizer.pad_token_id
    if prompt_tuned(model):
        # PEFT puts the virtual tokens before a left-padded row's padding and numbers the positions through it: a
        # shorter prompt in a batch is shifted away from the positions it trained at, and answers otherwise
        batch_size = 1
    stop_ids = set(loaded.template.stop_token_ids)
    stop = [*stop, *loaded.template.stop_texts]
    hf_kwargs = dict(hf_kwargs)
    do_sample = hf_kwargs.pop("do_sample", False)
    if stop:
        hf_kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    # Longest first keeps padding low inside each batch; results are put back in input order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[Completion] = [Completion("", 0)] * len(prompts)
    bar = tqdm(total=len(prompts), desc=f"generate {loaded.name}", disable=not progress, unit="prompt")
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in batch])   # (B, T), left padded
        attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                eos_token_id=loaded.template.stop_token_ids,
                pad_token_id=pad_id,
                **hf_kwargs,
            )
        for row, i in enumerate(batch):
            outputs[i] = decode_completion(out[row, width:].tolist(), tokenizer, stop_ids, pad_id, stop, keep[i] if keep else None)
        bar.update(len(batch))
    bar.close()
    return outputs


def prompt_tuned(model) -> bool:
    """Whether the active adapter is prompt tuning (virtual token embeddings before the input's)."""
    from peft import PeftModel

    return isinstance(model, PeftModel) and model.peft_config[model.active_adapter].peft_type == "PROMPT_TUNING"


def decode_completion(generated: list[int], tokenizer, stop_ids: set[int], pad_id: int | None, stop: list[str],
                keep: dict[int, str] | None = None) -> Completion:
    """Generated ids up to the first stop token (counted, not decoded: it may be no special token) or padding
    (a row finished by a stop string), decoded as the server decodes them (special tokens dropped, those in
    `keep` written) and cut."""
    n, text_end = len(generated), len(generated)
    for k, token in enumerate(generated):
        if token in stop_ids:
            n, text_end = k + 1, k
            break
        if token == pad_id:
            n = text_end = k
            break
    # A token budget can end inside a multi-byte character (byte-level BPE): drop the half character.
    text = decode(tokenizer, generated[:text_end], keep).rstrip("\ufffd")
    return Completion(cut_at_stop(text, stop), n)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the earliest stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def require_conversation(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    if isinstance(prompt, list):
        return prompt
    if not isinstance(prompt, str) or not prompt:
        raise TunesmithError("a prompt must be a non-empty string or a list of messages")
    return with_system([{"role": "user", "content": prompt}], system)
