"""Cheap checks of what a command was given, run before any model loads: a run directory, a model folder, a
.gguf file or a hub id; input files; output files and folders. Each problem is one line naming the path and what is wrong.

    check_model("runs/quickstart")                          # files on disk only: no network, no weights read
    fetch_models([("runs/a", ""), ("org/b", "--compare")])  # also fetches every model after the first from the hub

Commands that take several models (`eval --compare`, `eval select`) check and fetch them all before
evaluating the first, so that the last one being wrong does not cost the time spent on the others.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.config import HUB_ID_RULES, ConfigError, ModelConfig, Recipe, is_hub_id, looks_local, validate
from tunesmith.errors import TunesmithError
from tunesmith.runs import is_run_dir

WHAT = "a run directory, a model folder, a .gguf file or a hub id (org/name)"


def check_model(spec: str, flag: str = "") -> Recipe | None:
    """`spec` names something a model can be loaded from; returns the run's recipe when it is a run directory."""
    where = f"{flag} {spec}" if flag else spec
    path = Path(spec).expanduser()
    if is_run_dir(path):
        return check_run(path, where)
    if path.is_dir():
        if (path / "config.yaml").is_file():
            raise TunesmithError(f"{where}: a run directory without template.json: the run stopped before its data was prepared")
        if not (path / "config.json").is_file():
            raise TunesmithError(f"{where}: a folder without config.json: not {WHAT}")
        return None
    if path.is_file():
        if path.suffix != ".gguf":
            raise TunesmithError(f"{where}: a file, not {WHAT}")
        return None
    if looks_local(spec):
        missing = "no such file" if path.suffix == ".gguf" else "no such run folder or model folder"
        raise TunesmithError(f"{where}: {missing}{runs_nearby(path)}")
    if not is_hub_id(spec):
        raise TunesmithError(f"{where}: no such file or folder, and not a hub id ({HUB_ID_RULES})")
    return None


def check_run(path: Path, where: str) -> Recipe:
    """A run directory whose final weights exist and whose base model (for an adapter) can be found."""
    config = path / "config.yaml"
    try:
        recipe = validate(yaml.safe_load(config.read_text(encoding="utf-8")), source=str(config))
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise TunesmithError(f"{where} is not a usable run: {err}") from None
    if (path / "adapter").is_dir():
        if not (path / "adapter" / "adapter_config.json").is_file():
            raise TunesmithError(f"{where}: adapter/ has no adapter_config.json (an interrupted save?)")
        base = recipe.model.path
        if looks_local(base) and not Path(base).expanduser().exists():
            raise TunesmithError(f"{where}: its base model {base} is not found (model.path in its config.yaml; relative to the folder training ran in)")
    elif not (path / "model" / "config.json").is_file():
        raise TunesmithError(f"{where}: no adapter/ or model/ folder: the run has not finished training")
    return recipe


def runs_nearby(path: Path) -> str:
    """For runs/quickstart when runs/ holds quickstart-0412-1530: say which runs are there."""
    parent = path.parent
    if not parent.is_dir():
        return ""
    found = sorted((p.name for p in parent.iterdir() if is_run_dir(p)), reverse=True)
    if not found:
        return ""
    more = f", ... ({len(found)} in all)" if len(found) > 5 else ""
    return f" (runs in {parent}/: {', '.join(found[:5])}{more})"


def fetch_models(specs: list[tuple[str, str]]) -> None:
    """Check every (spec, flag); then fetch every model after the first (which loads right away) as loading it
    will: a hub id downloaded, found in the cache or refused offline, a .gguf file converted, an adapter run's base
    found. A wrong last model is then reported before the first one is evaluated."""
    from tunesmith.models.load import resolve_source

    recipes = [check_model(spec, flag) for spec, flag in specs]
    for (spec, _), recipe in list(zip(specs, recipes))[1:]:
        if recipe is None:
            resolve_source(ModelConfig(path=spec))
        elif (Path(spec) / "adapter").is_dir():
            resolve_source(recipe.model)


def check_input(path: str | None, flag: str) -> None:
    """An input data file (or a datasets folder, `folder::split`) exists; a hub dataset (org/name) is found when it loads."""
    from tunesmith.data.load import hub_dataset

    if path is not None and hub_dataset(path) is None and not Path(path.split("::")[0]).expanduser().exists():
        raise TunesmithError(f"{flag} {path}: no such file or folder")


def check_output_file(path: str | None, flag: str) -> None:
    """A file about to be written is not a folder, nor inside a file."""
    if path is None:
        return
    if Path(path).expanduser().is_dir():
        raise TunesmithError(f"{flag} {path}: a folder; give a file name")
    check_output_folder(str(Path(path).parent), flag, shown=path)


def check_output_folder(path: str | Path, flag: str, must_be_empty: bool = False, shown: str | Path | None = None) -> None:
    """A folder about to be written (or made) is not a file, nor inside one; with must_be_empty, it is new or empty."""
    folder = Path(path).expanduser()
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise TunesmithError(f"{flag} {shown or path}: {existing} is a file, not a folder")
    if must_be_empty and folder.is_dir() and any(folder.iterdir()):
        raise TunesmithError(f"{flag} {path} already exists and is not empty: choose another folder or remove it")
