"""Load a run (or a plain model) for inference and generate with its template.

A run directory brings its own template (template.json); a plain model uses its tokenizer's chat
template. Generation is batched with left padding and stops on the template's stop tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig
from tunesmith.data.templates import ChatTemplate, prompt_ids, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, is_run_dir


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
            from peft import PeftModel

            base, _, _ = load_model(recipe.model)
            model = PeftModel.from_pretrained(base, final)
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
    **decoding,
) -> list[str]:
    """One completion per conversation (greedy unless decoding says otherwise), in input order."""
    import torch
    from tqdm.auto import tqdm

    tokenizer, model = loaded.tokenizer, loaded.model
    pad_id = tokenizer.pad_token_id
    do_sample = decoding.pop("do_sample", False)
    encoded = [prompt_ids(loaded.template, tokenizer, conv) for conv in conversations]
    # Longest first keeps padding low inside each batch; results are put back in input order.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=f"generate {loaded.name}", disable=not progress, unit="batch"):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                eos_token_id=loaded.template.stop_token_ids,
                pad_token_id=pad_id,
                **decoding,
            )
        for row, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return outputs


def require_conversation(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    if isinstance(prompt, list):
        return prompt
    if not isinstance(prompt, str) or not prompt:
        raise TunesmithError("a prompt must be a non-empty string or a list of messages")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
