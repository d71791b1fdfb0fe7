"""The wheel as a user gets it: built from this checkout, installed into a fresh virtual environment, run from a
folder that is not the checkout. The environment borrows the test interpreter's libraries (torch, transformers:
gigabytes, already here) through a .pth file, and gets tunesmith from the wheel alone: the checkout's own
tunesmith is neither on its path nor installed in it."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "tunesmith", "recipes", "examples"]


def run(args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    # Built from a copy: an in-tree build would leave build/ behind and could pack stale files from it.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)], tmp_path)
    [wheel] = (tmp_path / "dist").glob("tunesmith-*.whl")

    packed = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tunesmith").rglob("*.py")}
    assert modules <= packed, f"modules missing from the wheel (pyproject.toml lists the packages): {sorted(modules - packed)}"
    shipped = {f"tunesmith/{p.relative_to(ROOT).as_posix()}" for p in [*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "recipes" / "distributed").iterdir()]}
    shipped |= {f"tunesmith/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "examples" / "data").rglob("*.jsonl")}
    assert shipped <= packed, f"recipes or demo data missing from the wheel: {sorted(shipped - packed)}"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "usage: tunesmith quickstart" in run([str(venv / "bin" / "tunesmith"), "quickstart", "--help"], elsewhere)
    keys = run([str(python), "-m", "tunesmith", "train", "--keys"], elsewhere)
    assert "tracking.backend" in keys and "peft.target_modules" in keys
    check = (
        "import json, tunesmith\n"
        "from tunesmith.quickstart import quickstart_recipe\n"
        "recipe, link = quickstart_recipe('recipes/quickstart.yaml', ['train.max_steps=1'])\n"
        "print(json.dumps({'package': tunesmith.__file__, 'train': recipe.data.train, 'eval': recipe.data.eval,\n"
        "                  'name': recipe.name, 'link': str(link), 'steps': recipe.train.max_steps}))\n"
    )
    found = json.loads(run([str(python), "-c", check], elsewhere))
    package = Path(found["package"]).parent
    assert package == site / "tunesmith"
    assert found["train"] == [str(package / "examples/data/support_tickets/train.jsonl")]
    assert found["eval"] == [str(package / "examples/data/support_tickets/heldout.jsonl")]
    assert found["name"].startswith("quickstart-") and found["link"] == "runs/quickstart" and found["steps"] == 1
