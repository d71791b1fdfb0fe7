"""The recipes and demo data tunesmith ships: `recipes/` and `examples/data/` of a checkout, which the wheel
carries inside the package (pyproject.toml maps them to tunesmith/recipes and tunesmith/examples), so the
quickstart runs from any folder, installed or not.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped_root() -> Path:
    """Where `recipes/` and `examples/` are: inside the installed package, or in the checkout around it."""
    return PACKAGE if (PACKAGE / "recipes").is_dir() else PACKAGE.parent


def locate(path: str) -> str:
    """`path` itself when it exists here; else the shipped file it names (recipes/x.yaml, examples/data/...)."""
    if Path(path).exists():
        return path
    candidate = shipped_root() / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path
