"""What a server serves: one base model and the names clients pick with the `model` field.

    tunesmith serve runs/a --adapter b=runs/b      # models: a's base, `a` and `b`
    tunesmith serve merged/a                       # models: `a` (a plain or merged model folder)

Each name carries the chat template its run trained with (template.json) and the run's training
system prompt, used when a request brings none; so does a folder written by `tunesmith merge`. Every adapter must have been trained on the base
being served: an adapter applied to another base gives garbage without any error.

Names are never local paths: a base from the hub is served under its hub id, a local folder or file under its
own name (`<name>-base` when the run being served has that name too); adapter names are the user's and must
be unused. Every path, name and option is checked before anything heavy runs (a hub download, a GGUF
conversion, loading the weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ModelConfig
from tunesmith.data.templates import BUILTIN_TEMPLATES, ChatTemplate, resolve_template
from tunesmith.errors import TunesmithError
from tunesmith.models.load import ModelSource
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
    source: ModelSource             # where `base` was found (resolved once: a hub fallback is reported once)
    models: dict[str, ServedModel]
    default: str                    # the model of requests that name none (POST /generate)

    @property
    def base_path(self) -> str:
        """The local folder of `base`."""
        return self.source.path

    def public(self, error: dict) -> dict:
        """An error body as clients may see it: the local folders behind the models replaced by the models' names."""
        message = error["error"]["message"]
        for path, shown in self._local_paths():
            message = message.replace(path, shown)
        return {"error": {**error["error"], "message": message}}

    def _local_paths(self) -> list[tuple[str, str]]:
        """(path, what to show instead), longest path first so that a folder inside another is replaced whole."""
        base = next((f"<{m.name}>" for m in self.models.values() if m.adapter is None), "<the base model>")
        found = {self.source.path: base, self.base.path: base}
        for m in self.models.values():
            if m.adapter is not None:
                found[str(m.adapter.parent)] = f"<{m.name}>"
            if Path(m.template.name).is_file():
                found[m.template.name] = f"<the template of {m.name}>"
        pairs = {}
        for path, shown in found.items():
            if Path(path).expanduser().exists():
                pairs[path] = pairs[str(Path(path).expanduser().resolve())] = shown
        pairs[str(Path.home())] = "~"
        return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def build_catalog(target: str, adapters: list[str] = (), template: str = "model", dtype: str = "auto") -> Catalog:
    from tunesmith.models.load import resolve_source

    runs = [parse_adapter(spec) for spec in adapters]
    served_run = RunDir(Path(target)) if is_run_dir(target) else None
    if served_run is not None:
        base, names = run_base(served_run, template, dtype)
    else:
        check_template_name(template, target)
        base, names = ModelConfig(path=target, dtype=dtype), [served_name(target)]
    taken, differ_in_form = list(names), []
    for spec, name, run in runs:
        if name in taken:
            raise TunesmithError(f"--adapter {spec!r}: the name {name!r} is already served ({', '.join(taken)}); pick another")
        taken.append(name)
        if not same_model(run.recipe().model, base):
            differ_in_form.append((spec, run))

    source = resolve_source(base)
    for spec, run in differ_in_form:
        check_same_base(spec, run, source, target)
    if served_run is not None:
        models = run_models(served_run, source, names)
    else:
        models = {names[0]: folder_model(names[0], source, template, target)}
    for _, name, run in runs:
        models[name] = run_model(name, run)
    return Catalog(base, source, models, default=names[-1])  # the run itself, or the folder's one model


def run_base(run: RunDir, template: str, dtype: str) -> tuple[ModelConfig, list[str]]:
    """The base weights a run is served on, and its names: [base, run] for a LoRA run, [run] for a full one."""
    if not run.final_dir.is_dir():
        raise TunesmithError(f"{run.path} has no adapter/ or model/ folder yet: the run has not finished training")
    if template != "model":
        raise TunesmithError(f"--template {template}: {run.path} is a run, served with the template it trained with (template.json)")
    model = run.recipe().model
    if run.final_dir.name == "model":
        model = model.model_copy(update={"path": str(run.final_dir), "gguf_file": None})
    if dtype != "auto":
        model = model.model_copy(update={"dtype": dtype})
    if run.final_dir.name == "model":
        return model, [run.path.name]
    base = served_name(model.path)
    return model, [f"{base}-base" if base == run.path.name else base, run.path.name]


def run_models(run: RunDir, source: ModelSource, names: list[str]) -> dict[str, ServedModel]:
    from tunesmith.models.load import generation_eos, load_tokenizer

    own = run_model(names[-1], run)
    if own.adapter is None:
        return {own.name: own}
    base = base_template(load_tokenizer(source.path), own.template, generation_eos(source.path))
    return {names[0]: ServedModel(names[0], base), own.name: own}


def folder_model(name: str, source: ModelSource, template: str, target: str) -> ServedModel:
    """A plain model folder, or one written by tunesmith merge (which carries its run's template and system prompt)."""
    from tunesmith.models.load import generation_eos, load_tokenizer

    saved, provenance = Path(source.path) / "template.json", Path(source.path) / PROVENANCE
    if saved.is_file():
        if template != "model":
            raise TunesmithError(f"--template {template}: {target} brings its own template (template.json, from tunesmith merge)")
        chosen = ChatTemplate.load(saved)
    else:
        tokenizer = load_tokenizer(source.path)
        if template == "model" and not tokenizer.chat_template:
            raise TunesmithError(f"{target} has no chat template of its own: serve it with --template chatml, alpaca or a .jinja file")
        chosen = resolve_template(template, tokenizer, generation_eos(source.path))
    system = json.loads(provenance.read_text(encoding="utf-8"))["recipe"]["data"]["system_prompt"] if provenance.is_file() else None
    return ServedModel(name, chosen, system)


def served_name(path: str) -> str:
    """What clients call a model at `path`: a local folder or file by its own name, anything else (a hub id) as given."""
    local = Path(path).expanduser()
    return local.resolve().name if local.exists() else path


def check_template_name(template: str, target: str) -> None:
    if template in ("model", *BUILTIN_TEMPLATES):
        return
    if not Path(template).is_file():
        raise TunesmithError(f"--template {template}: not 'model', {', '.join(map(repr, BUILTIN_TEMPLATES))} or an existing .jinja file")
    if (Path(target) / "template.json").is_file():
        raise TunesmithError(f"--template {template}: {target} brings its own template (template.json, from tunesmith merge)")


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


def parse_adapter(spec: str) -> tuple[str, str, RunDir]:
    """(spec, name, run) for `--adapter name=RUN_DIR`, the folder checked to hold a finished LoRA run."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise TunesmithError(f"--adapter {spec!r}: expected name=RUN_DIR, e.g. --adapter support=runs/support")
    if not is_run_dir(path):
        raise TunesmithError(f"--adapter {spec!r}: {path} is not a run directory (config.yaml and template.json)")
    run = RunDir(Path(path))
    if run.final_dir.name != "adapter" or not run.final_dir.is_dir():
        raise TunesmithError(f"--adapter {spec!r}: {path} has no adapter/ folder (full fine-tuning runs are served on their own)")
    if not any((run.final_dir / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise TunesmithError(f"--adapter {spec!r}: {run.final_dir} holds no adapter weights (adapter_model.safetensors)")
    return spec, name, run


def same_model(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two model settings name the same weights, told without fetching anything."""

    def where(cfg: ModelConfig) -> tuple:
        local = Path(cfg.path).expanduser()
        return (str(local.resolve()) if local.exists() else cfg.path, cfg.gguf_file, cfg.revision)

    return where(a) == where(b)


def check_same_base(spec: str, run: RunDir, source: ModelSource, target: str) -> None:
    """For settings that differ in form (a hub id and its downloaded folder): compare the folders they resolve to."""
    from tunesmith.models.load import resolve_source

    if Path(resolve_source(run.recipe().model).path).resolve() != Path(source.path).resolve():
        raise TunesmithError(
            f"--adapter {spec!r}: trained on {run.recipe().model.path!r}, but the served base is {target!r}; "
            "an adapter only works on the base it was trained on"
        )
