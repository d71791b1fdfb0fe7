"""What a server serves: one base model and the names clients pick with the `model` field.

    tunesmith serve runs/a --adapter b=runs/b      # models: the base, `a` and `b`
    tunesmith serve merged/a                       # models: `a` (a plain or merged model folder)

Each name carries the chat template its run trained with (template.json) and the run's training
system prompt, used when a request brings none; so does a folder written by `tunesmith merge`. Every adapter must have been trained on the base
being served: an adapter applied to another base gives garbage without any error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig
from tunesmith.data.templates import ChatTemplate, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.models.merge import PROVENANCE
from tunesmith.runs import RunDir, is_run_dir


@dataclass
class ServedModel:
    name: str                       # what clients put in `model`
    template: ChatTemplate
    system_prompt: str | None = None
    adapter: Path | None = None     # the run's adapter folder; None serves the base weights
    rank: int = 0                   # LoRA rank (vLLM sizes its adapter slots by the largest)


@dataclass
class Catalog:
    base: ModelConfig               # the weights loaded once
    base_path: str                  # resolved local folder of `base`
    models: dict[str, ServedModel]
    default: str                    # the model of requests that name none (POST /generate)


def build_catalog(target: str, adapters: list[str] = (), template: str = "model", dtype: str = "auto") -> Catalog:
    from tunesmith.models.load import generation_eos, load_tokenizer, resolve_source

    models: dict[str, ServedModel] = {}
    if is_run_dir(target):
        run = RunDir(Path(target))
        recipe = run.recipe()
        if not run.final_dir.is_dir():
            raise TunesmithError(f"{run.path} has no adapter/ or model/ folder yet: the run has not finished training")
        if run.final_dir.name == "adapter":
            base = recipe.model
        else:
            base = recipe.model.model_copy(update={"path": str(run.final_dir), "gguf_file": None})
        base_path = resolve_source(base).path
        own = run_model(run.path.name, run)
        if run.final_dir.name == "adapter":
            tokenizer = load_tokenizer(base_path)
            models[recipe.model.path] = ServedModel(
                recipe.model.path, base_template(tokenizer, own.template, generation_eos(base_path))
            )
        models[own.name] = own
        default = own.name
    else:
        base = ModelConfig(path=target, dtype=dtype)
        base_path = resolve_source(base).path
        # A folder written by tunesmith merge carries its run's template and training system prompt.
        saved, provenance = Path(base_path) / "template.json", Path(base_path) / PROVENANCE
        if saved.is_file():
            chosen = ChatTemplate.load(saved)
        else:
            chosen = resolve_template(template, load_tokenizer(base_path), generation_eos(base_path))
        system = json.loads(provenance.read_text(encoding="utf-8"))["recipe"]["data"]["system_prompt"] if provenance.is_file() else None
        default = Path(target).name if Path(target).exists() else target
        models[default] = ServedModel(default, chosen, system)
    for spec in adapters:
        name, run = parse_adapter(spec, models)
        check_same_base(run, base_path, target)
        models[name] = run_model(name, run)
    return Catalog(base, base_path, models, default)


def run_model(name: str, run: RunDir) -> ServedModel:
    recipe = run.recipe()
    adapter = run.final_dir if run.final_dir.name == "adapter" else None
    return ServedModel(
        name,
        ChatTemplate.load(run.path / "template.json"),
        recipe.data.system_prompt,
        adapter,
        recipe.peft.r if adapter else 0,
    )


def base_template(tokenizer, fallback: ChatTemplate, extra_eos: list[int]) -> ChatTemplate:
    """The base model's own chat template; a base without one is served with the run's."""
    if not tokenizer.chat_template:
        return fallback
    return resolve_template("model", tokenizer, extra_eos)


def parse_adapter(spec: str, models: dict) -> tuple[str, RunDir]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise TunesmithError(f"--adapter {spec!r}: expected name=RUN_DIR, e.g. --adapter support=runs/support")
    if name in models:
        raise TunesmithError(f"--adapter {spec!r}: the name {name!r} is already served; pick another")
    if not is_run_dir(path):
        raise TunesmithError(f"--adapter {spec!r}: {path} is not a run directory (config.yaml and template.json)")
    run = RunDir(Path(path))
    if run.final_dir.name != "adapter" or not run.final_dir.is_dir():
        raise TunesmithError(f"--adapter {spec!r}: {path} has no adapter/ folder (full fine-tuning runs are served on their own)")
    return name, run


def check_same_base(run: RunDir, base_path: str, target: str) -> None:
    from tunesmith.models.load import resolve_source

    trained_on = resolve_source(run.recipe().model).path
    if Path(trained_on).resolve() != Path(base_path).resolve():
        raise TunesmithError(
            f"--adapter {run.path}: trained on {run.recipe().model.path!r}, but the served base is {target!r}; "
            "an adapter only works on the base it was trained on"
        )
