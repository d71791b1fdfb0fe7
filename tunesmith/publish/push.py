"""Publish a run (its adapter or model), a merged folder or an exported adapter to the Hugging Face Hub.

    tunesmith push runs/x --repo me/x [--private] [--dry-run] [--out DIR]

The folder is built first, exactly as it will be uploaded: the weights, the tokenizer with the run's
chat template, generation_config.json with its stop tokens, template.json and a model card. --dry-run
stops there and lists it. The token comes from HF_TOKEN or `hf auth login`; it is handed to
huggingface_hub and never printed or written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith.checks import check_output_folder
from tunesmith.config import looks_local
from tunesmith.errors import TunesmithError
from tunesmith.models.merge import PROVENANCE
from tunesmith.models.peft import adapter_kind
from tunesmith.publish.card import CardInfo, read_evals, render_card, training_summary
from tunesmith.runs import RunDir, is_run_dir

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# A run's adapter/ gets PEFT's placeholder card: ours replaces it.
SKIPPED = {"README.md", "training_args.bin"}


@dataclass
class Source:
    folder: Path                     # the files to upload
    kind: str                        # adapter, merged, full or model
    run: RunDir | None = None        # the run it came from, when we can still find it
    recipe: dict | None = None
    provenance: dict = field(default_factory=dict)


@dataclass
class Plan:
    repo: str
    folder: Path
    files: list[tuple[str, int]]     # (path in repo, bytes)
    card: CardInfo
    private: bool
    notes: list[str]


def resolve(target: str | Path) -> Source:
    target = Path(target)
    if is_run_dir(target):
        run = RunDir(target)
        if not run.final_dir.is_dir():
            raise TunesmithError(f"{run.path} has no adapter/ or model/ folder yet: the run has not finished training")
        kind = "adapter" if run.final_dir.name == "adapter" else "full"
        return Source(run.final_dir, kind, run, yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8")))
    if (target / PROVENANCE).is_file():
        provenance = json.loads((target / PROVENANCE).read_text(encoding="utf-8"))
        run = RunDir(Path(provenance["run"])) if is_run_dir(provenance["run"]) else None
        return Source(target, provenance["kind"], run, provenance.get("recipe"), provenance)
    if (target / "adapter_config.json").is_file():
        return Source(target, "adapter")
    if (target / "config.json").is_file():
        return Source(target, "model")
    raise TunesmithError(
        f"{target}: not a run directory, nor a model or adapter folder (no config.yaml, config.json or adapter_config.json)"
    )


def build(
    target: str | Path,
    repo: str,
    out: Path,
    private: bool = False,
    license: str | None = None,
    language: list[str] | None = None,
    datasets: list[str] | None = None,
) -> Plan:
    """Write the upload folder at `out` and say what it holds."""
    from tqdm.auto import tqdm

    if not REPO_ID.fullmatch(repo):
        raise TunesmithError(f"--repo {repo!r}: expected owner/name (letters, digits, '-', '_', '.')")
    source = resolve(target)
    check_output_folder(out, "--out", must_be_empty=True)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    # tunesmith.json stays home: it holds local paths, and the card says what it knows.
    files = [f for f in sorted(source.folder.rglob("*")) if f.is_file() and str(f.relative_to(source.folder)) not in SKIPPED | {PROVENANCE}]
    log.info("building the upload folder in %s", out)
    with tqdm(total=sum(f.stat().st_size for f in files), desc="build folder", unit="B", unit_scale=True) as bar:
        for file in files:
            relative = file.relative_to(source.folder)
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(file, out / relative)
            bar.update(file.stat().st_size)
    if source.run and not (out / "template.json").exists():
        shutil.copy2(source.run.path / "template.json", out / "template.json")

    base_model = base_hub_id(source)
    if source.kind == "adapter" and base_model:
        point_adapter_at(out / "adapter_config.json", base_model)
    card = card_info(source, repo, base_model, license, language or [], datasets or [], notes)
    (out / "README.md").write_text(render_card(card), encoding="utf-8")
    files = [(str(p.relative_to(out)), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]
    return Plan(repo, out, files, card, private, notes)


def link_or_copy(src: Path, dst: Path) -> None:
    """Weights can be gigabytes: a hard link costs nothing. Small text files are copied, since we may edit them."""
    if src.suffix in (".safetensors", ".bin", ".gguf"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def base_hub_id(source: Source) -> str | None:
    if source.recipe:
        path = source.recipe["model"]["path"]
        return None if looks_local(path) else path
    config = source.folder / "adapter_config.json"
    if config.is_file():
        path = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
        return path if path and not looks_local(path) else None
    return None


def point_adapter_at(config_file: Path, base_model: str) -> None:
    """A run may record a local copy of its base (a GGUF conversion, a cache folder): others find it by hub id."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") != base_model:
        config["base_model_name_or_path"] = base_model
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


def card_info(source: Source, repo: str, base_model, license, language, datasets, notes: list[str]) -> CardInfo:
    run = source.run
    base_meta = base_card(source) if license is None or not language else {}
    if license is None:
        license = base_meta.get("license") or "other"
        if license == "other":
            notes.append("license: unknown, written as 'other' (pass --license, e.g. apache-2.0)")
    if not language:
        found = base_meta.get("language")
        language = [found] if isinstance(found, str) else list(found or [])
        if not language:
            notes.append("language: not set (pass --language, e.g. --language en)")
    if base_model is None:
        notes.append("base_model: the base is a local folder, not a hub id, so the card cannot link it")
    template = read_json(run.path / "template.json") if run else read_json(source.folder / "template.json")
    tokenizer_config = read_json(source.folder / "tokenizer_config.json") or {}
    return CardInfo(
        repo=repo,
        kind=source.kind,
        adapter=adapter_kind(source.folder) if source.kind == "adapter" else None,
        base_model=base_model,
        license=license,
        language=language,
        datasets=datasets,
        recipe=source.recipe,
        data_report=read_json(run.path / "data_report.json") if run else None,
        training=training_summary(run.metrics()) if run else {},
        evals=read_evals(run.path) if run else [],
        merge=source.provenance.get("merge"),
        template=template,
        stop_tokens=stop_token_names(template, source.folder, tokenizer_config),
        environment=read_json(run.path / "environment.json") if run else None,
    )


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stop_token_names(template: dict | None, folder: Path, tokenizer_config: dict) -> list[str]:
    if not template:
        return []
    tokenizer_file = read_json(folder / "tokenizer.json") or {}
    names = {t["id"]: t["content"] for t in tokenizer_file.get("added_tokens", [])}
    names |= {int(k): v["content"] for k, v in tokenizer_config.get("added_tokens_decoder", {}).items()}
    return [names.get(i, f"id {i}") for i in template["stop_token_ids"]]


def base_card(source: Source) -> dict:
    """The front matter of the base model's own card: its README.md, from its folder or the hub (that file
    alone: reading the card never downloads the base's weights)."""
    if not source.recipe:
        return {}
    model = source.recipe["model"]
    if looks_local(model["path"]):
        readme = Path(model["path"]).expanduser() / "README.md"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            readme = Path(hf_hub_download(model["path"], "README.md", revision=model.get("revision")))
        except (OSError, ValueError, EntryNotFoundError):  # offline and not cached, no such repo or file: no metadata
            return {}
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def push(
    target: str | Path,
    repo: str,
    private: bool = False,
    dry_run: bool = False,
    out: str | Path | None = None,
    license: str | None = None,
    language: list[str] | None = None,
    datasets: list[str] | None = None,
) -> Plan:
    from huggingface_hub import get_token

    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="tunesmith-push-"))
    plan = build(target, repo, folder, private, license, language, datasets)
    token = get_token()
    if dry_run:
        plan.notes.append(
            "token: found (environment or hf login)" if token else "token: none found; set HF_TOKEN or run `hf auth login` before the real push"
        )
        return plan
    if not token:
        raise TunesmithError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login` (the folder is ready in {folder})")
    log.info("uploading %d files (%s bytes) to %s", len(plan.files), f"{sum(size for _, size in plan.files):,}", repo)
    upload(plan, token)
    if out is None:
        shutil.rmtree(folder)
    return plan


def upload(plan: Plan, token: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(plan.repo, private=plan.private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=plan.repo, folder_path=plan.folder, repo_type="model", commit_message="Upload with tunesmith push")
    except Exception as err:  # HTTP, auth and network errors: one line for the user, token scrubbed to be safe
        message = str(err).replace(token, "***")
        raise TunesmithError(f"upload to {plan.repo} failed: {err.__class__.__name__}: {message}") from None
