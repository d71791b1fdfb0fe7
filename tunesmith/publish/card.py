"""The model card (README.md) of a published model: YAML front matter the Hub indexes, then what a
reader needs: how to run it with its chat template, how it was trained, how it scored, where not to use it.

Everything comes from the run directory (config.yaml, data_report.json, metrics.jsonl, environment.json,
template.json, eval/<name>/metrics.json) or from the tunesmith.json a merge or export wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith.config import peft_settings

KIND_TEXT = {
    "adapter": "an adapter",
    "merged": "a model with its adapter merged into the base weights",
    "full": "a fully fine-tuned model",
    "model": "a model",
}


@dataclass
class CardInfo:
    repo: str                       # owner/name
    kind: str                       # adapter, merged, full or model (a plain folder we know nothing about)
    adapter: str | None = None      # an adapter's kind (tunesmith.models.peft.adapter_kind): LORA, IA3, PREFIX_TUNING, bottleneck, ...
    base_model: str | None = None   # hub id of the base, when it has one
    license: str = "other"
    language: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    recipe: dict | None = None      # the resolved recipe, as config.yaml holds it
    data_report: dict | None = None
    training: dict = field(default_factory=dict)   # steps, losses: see training_summary
    evals: list[dict] = field(default_factory=list)  # eval/<name>/metrics.json contents
    merge: dict | None = None       # the merge section of tunesmith.json: dtype, fidelity, thresholds
    template: dict | None = None    # template.json: name, stop_token_ids, ...
    stop_tokens: list[str] = field(default_factory=list)
    environment: dict | None = None


def read_evals(run_path: Path) -> list[dict]:
    """Every `<run>/eval/<name>/metrics.json` that holds a flat "metrics" mapping, by name."""
    evals = []
    for file in sorted(run_path.glob("eval/*/metrics.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        metrics = {k: v for k, v in (data.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if metrics:
            evals.append({"name": data.get("name") or file.parent.name, "data": data.get("data"), "n": data.get("n"), "metrics": metrics})
    return evals


def training_summary(records: list[dict]) -> dict:
    """Last step, first and last training loss, last and best eval loss from metrics.jsonl records."""
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    summary = {"steps": max((r["step"] for r in records), default=0)}
    if losses:
        summary |= {"first_loss": losses[0], "last_loss": losses[-1]}
    if evals:
        summary |= {"last_eval_loss": evals[-1], "best_eval_loss": min(evals)}
    return summary


def front_matter(info: CardInfo) -> dict:
    peft_method = (info.recipe or {}).get("peft", {}).get("method")
    method = (info.recipe or {}).get("method")
    meta: dict = {}
    if info.base_model:
        meta["base_model"] = info.base_model
        meta["base_model_relation"] = "adapter" if info.kind == "adapter" else "finetune"
    if info.adapter != "bottleneck":  # tunesmith's own adapters: neither PEFT nor transformers loads them
        meta["library_name"] = "peft" if info.kind == "adapter" else "transformers"
    meta["license"] = info.license
    if info.language:
        meta["language"] = info.language
    meta["pipeline_tag"] = "text-generation"
    tags = ["tunesmith", method, peft_method if peft_method != "none" else "full-fine-tuning", "merged" if info.kind == "merged" else None]
    meta["tags"] = [t for t in dict.fromkeys(tags) if t]
    if info.datasets:
        meta["datasets"] = info.datasets
    names = list(dict.fromkeys(name for e in info.evals for name in e["metrics"]))
    if names:
        meta["metrics"] = names
        meta["model-index"] = [{"name": info.repo.split("/")[-1], "results": [eval_result(e) for e in info.evals]}]
    return meta


def eval_result(e: dict) -> dict:
    data = str(e.get("data") or e["name"])
    return {
        "task": {"type": "text-generation", "name": "Text Generation"},
        "dataset": {"name": f"{e['name']} ({Path(data).name})", "type": Path(data).stem},
        "metrics": [{"type": name, "name": name, "value": value} for name, value in e["metrics"].items()],
    }


def render_card(info: CardInfo) -> str:
    meta = yaml.safe_dump(front_matter(info), sort_keys=False, allow_unicode=True)
    sections = [
        f"# {info.repo.split('/')[-1]}",
        intro(info),
        "## Usage\n\n" + usage(info),
        chat_section(info),
        training_section(info),
        evaluation_section(info),
        merge_section(info),
        limits_section(info),
        environment_section(info),
    ]
    return f"---\n{meta}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def intro(info: CardInfo) -> str:
    what = KIND_TEXT[info.kind]
    base = f" of [`{info.base_model}`](https://huggingface.co/{info.base_model})" if info.base_model else ""
    recipe = info.recipe or {}
    how = ""
    if recipe:
        peft = recipe["peft"]["method"]
        how = f", trained with tunesmith ({recipe['method']}, {peft if peft != 'none' else 'full fine-tuning'})"
    text = f"This is {what}{base}{how}."
    source = (info.environment or {}).get("source") or {}
    if source.get("kind") == "gguf":
        text += (
            " Training used a GGUF copy of the base, de-quantised to float, whose weights can differ slightly "
            "from the original checkpoint's."
        )
    return text


def usage(info: CardInfo) -> str:
    repo = info.repo
    system = ((info.recipe or {}).get("data") or {}).get("system_prompt")
    messages = (f'{{"role": "system", "content": {json.dumps(system, ensure_ascii=False)}}}, ' if system else "") + '{"role": "user", "content": "Hello!"}'
    if info.adapter == "bottleneck":
        load = (
            "from huggingface_hub import snapshot_download\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "from tunesmith.models.bottleneck import load  # pip install tunesmith: PEFT cannot load these adapters\n\n"
            f'folder = snapshot_download("{repo}")\n'
            f'model = load(AutoModelForCausalLM.from_pretrained("{info.base_model or "BASE_MODEL"}"), folder)\n'
            "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        )
        alt = ("\n\nBottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020) are non-linear blocks after the layers' "
               "attention and MLP: they cannot be merged into the base weights.")
    elif info.kind == "adapter":
        load = (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")  # downloads the base too\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
        )
        alt = f'\n\nOr on a base you already loaded: `PeftModel.from_pretrained(base, "{repo}")`'
        alt += ("; its virtual tokens cannot be merged into the weights." if info.adapter in ("PREFIX_TUNING", "PROMPT_TUNING")
                else "; `model.merge_and_unload()` gives a plain transformers model.")
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
        )
        alt = ""
    generate = (
        f"messages = [{messages}]\n"
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n"
        "# generation_config.json stops on the end-of-turn token the model was trained to emit\n"
        "output = model.generate(**inputs, max_new_tokens=128)\n"
        "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n"
    )
    serve = "" if info.kind == "adapter" else f"\n\nAn OpenAI-compatible server with the same template: `tunesmith serve {repo}`."
    return f"```python\n{load}\n{generate}```{alt}{serve}"


def chat_section(info: CardInfo) -> str:
    if not info.template:
        return ""
    name = info.template["name"]
    which = "the base model's own template" if name == "model" else f"`{Path(name).name}`"
    lines = [
        "## Chat template",
        "",
        f"The tokenizer carries the chat template this model was trained with ({which}); "
        f"generation stops at {', '.join(f'`{t}`' for t in info.stop_tokens) or 'the EOS token'}.",
    ]
    system = ((info.recipe or {}).get("data") or {}).get("system_prompt")
    if system:
        lines.append(f"Every training conversation had this system message, so give it too:\n\n> {system}")
    return "\n".join(lines)


def training_section(info: CardInfo) -> str:
    recipe = info.recipe
    if not recipe:
        return ""
    model, data, peft, train = recipe["model"], recipe["data"], recipe["peft"], recipe["train"]
    base = f"`{model['path']}`" if info.base_model else f"a local model (`{Path(model['path']).name}`)"
    rows = [("method", recipe["method"]), ("base", base), ("weights dtype", model["dtype"])]
    if model.get("quantization") not in (None, "none"):
        rows.append(("quantisation (training)", f"{model['quantization']} {model['quant_type']}"))
    if peft["method"] != "none":
        rows.append(("adapter", ", ".join([peft["method"], *peft_settings(peft)])))
    length = f"{train['max_steps']} steps" if train.get("max_steps") else f"{train['epochs']} epochs"
    rows += [
        ("length", length),
        ("learning rate", f"{train['lr']} ({train['scheduler']}, warmup {train['warmup']})"),
        ("batch", f"{train['batch_size']} x {train['grad_accum']} accumulation"),
        ("max length", f"{data['max_length']} tokens (longer examples: {data['truncation']})"),
        ("seed", train["seed"]),
    ]
    t = info.training
    if t.get("steps"):
        rows.append(("optimiser steps", t["steps"]))
    if "last_loss" in t:
        rows.append(("training loss", f"{t['first_loss']:.4f} → {t['last_loss']:.4f}"))
    if "last_eval_loss" in t:
        rows.append(("eval loss", f"last {t['last_eval_loss']:.4f}, best {t['best_eval_loss']:.4f}"))
    table = "| setting | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return "## Training\n\n" + table + data_lines(info.data_report)


def data_lines(report: dict | None) -> str:
    if not report:
        return ""
    files = ", ".join(f"`{Path(f['file']).name}` ({f['format']}, {f['kept']} of {f['read']} rows)" for f in report["files"])
    train, held = report["train"], report["eval"]
    text = f"\n\nData: {files}. Trained on {train['kept']} examples ({train['trained_tokens']:,} trained tokens)"
    text += f", evaluated on {held['kept']}." if held["kept"] else "."
    dropped = {**train["dropped"], **{f"eval {k}": v for k, v in held["dropped"].items()}}
    if dropped or train["truncated"]:
        text += f" Dropped: {dropped or 'none'}; truncated: {train['truncated']}."
    return text


def evaluation_section(info: CardInfo) -> str:
    if not info.evals:
        return "## Evaluation\n\nNo evaluation results were recorded for this run."
    rows = [
        f"| {e['name']} | {Path(str(e.get('data') or '')).name or '-'} | {e.get('n') or '-'} | {name} | {value:.4g} |"
        for e in info.evals
        for name, value in e["metrics"].items()
    ]
    return "## Evaluation\n\n| eval | data | n | metric | value |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)


def merge_section(info: CardInfo) -> str:
    if not info.merge:
        return ""
    f, limits = info.merge["fidelity"], info.merge["thresholds"]
    return (
        "## Merge check\n\n"
        f"The adapter was merged into the base in {info.merge['dtype']}. On {f['sequences']} sequences ({f['tokens']} tokens, "
        f"{info.merge['prompts']}) the merged model's logits differ from the adapter model's by at most "
        f"{f['max_abs_logit_diff']:.3g} (allowed {limits['max_logit_diff']:g}); mean KL {f['mean_kl']:.3g} nats/token "
        f"(allowed {limits['max_kl']:g}), against {f['adapter_kl']:.3g} between the adapter model and its base."
    )


def limits_section(info: CardInfo) -> str:
    recipe = info.recipe or {}
    lines = [
        "## Intended use and limitations",
        "",
        "- Made for the task its training data shows"
        + (f" ({info.data_report['train']['kept']} examples)" if info.data_report else "")
        + "; it has not been checked outside the evaluations listed above.",
        "- It inherits the limitations and biases of its base model and of its training data, and can state false "
        "things fluently. Review its output before relying on it; do not use it alone for medical, legal, financial "
        "or safety decisions.",
        "- Use it with its chat template (the tokenizer's) and stop tokens: other prompt formats were not trained.",
    ]
    if recipe.get("peft", {}).get("method") == "qlora" and info.kind == "merged":
        lines.append(
            "- Trained as QLoRA: the adapter learned against the 4-bit-rounded base, and was merged into the unrounded "
            "base. The merge check compares with the adapter on the unrounded base, so the quantisation error of the "
            "base is not part of it."
        )
    return "\n".join(lines)


def environment_section(info: CardInfo) -> str:
    env = info.environment
    if not env:
        return ""
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    return f"## Environment\n\nTrained on {env.get('device', 'unknown device')}, {versions}."
