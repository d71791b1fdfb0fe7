"""The experiment table: runs side by side, what differs in their recipes next to what they scored.

    tunesmith runs list [runs/]                       # one line per run, finished or not
    tunesmith runs compare runs/a runs/b [--out DIR]  # differing config keys + metrics; compare.md, compare.csv, loss.png

Metrics per run: steps, final train loss, final and best eval loss (metrics.jsonl), generation metrics
logged during training (eval_exact_match, ...: their best value), and the target metrics of every
`tunesmith eval` of the run (eval/<name>/metrics.json), as `<name>/<metric>`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.eval.report import fmt, to_markdown
from tunesmith.runs import RunDir, is_run_dir

# Shown by `runs list`, and by `runs compare` when only one run is given (nothing differs then).
MAIN_KEYS = ["model.path", "method", "peft.method", "data.train", "train.epochs", "train.max_steps", "train.lr"]


# Logged eval metrics shown at their best (highest) value: generation_eval's and TRL's token accuracy.
HIGHER_IS_BETTER = {"eval_exact_match", "eval_accuracy", "eval_chrf", "eval_bleu", "eval_rougeL", "eval_mean_token_accuracy"}


def find_runs(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if is_run_dir(folder):
        return [folder]
    if not folder.is_dir():
        raise TunesmithError(f"{folder}: no such folder")
    runs = [p for p in folder.iterdir() if is_run_dir(p)]
    # runs/quickstart links to the newest quickstart-<time> beside it: that run is listed once, under its own name.
    real = {p.resolve() for p in runs if not p.is_symlink()}
    runs = [p for p in runs if not (p.is_symlink() and p.resolve() in real)]
    return sorted(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)  # oldest run first


def flatten(node, prefix: str = "") -> dict:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists become comma-joined text."""
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, list):
        node = ",".join(map(str, node))
    return {prefix[:-1]: node}


def run_config(run: Path) -> dict:
    return flatten(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {})


def run_metrics(run: Path) -> dict:
    records = RunDir(run).metrics()
    train = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    metrics = {"steps": max((r["step"] for r in records), default=0)}
    if train:
        metrics["final_loss"] = train[-1]
    if evals:
        metrics["final_eval_loss"], metrics["best_eval_loss"] = evals[-1], min(evals)
    for key in sorted({k for r in records for k in r if k in HIGHER_IS_BETTER}):
        metrics[f"best_{key}"] = max(r[key] for r in records if key in r)
    for file in sorted(run.glob("eval/*/metrics.json")):
        summary = json.loads(file.read_text(encoding="utf-8"))
        for name, value in summary.get("metrics", {}).items():
            metrics[f"{file.parent.name}/{name}"] = value
    return metrics


def differing_keys(configs: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for c in configs for k in c))
    if len(configs) < 2:
        return [k for k in MAIN_KEYS if k in keys]
    # name and output_dir differ by construction: the run column already says which run it is.
    return [k for k in keys if k not in ("name", "output_dir") and len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


def experiment_table(runs: list[Path], keys: list[str] | None = None) -> tuple[list[str], list[list], int]:
    """Header, rows, and how many columns after the run name are config keys."""
    configs = [run_config(r) for r in runs]
    metrics = [run_metrics(r) for r in runs]
    keys = keys or differing_keys(configs)
    metric_keys = list(dict.fromkeys(k for m in metrics for k in m))
    headers = ["run", *keys, *metric_keys]
    rows = [[run.name, *(c.get(k, "") for k in keys), *(m.get(k, "") for k in metric_keys)] for run, c, m in zip(runs, configs, metrics)]
    return headers, rows, len(keys)


def shown(headers: list[str], rows: list[list], n_config: int) -> list[list[str]]:
    """Cells as text: config values as written (5e-05 stays 5e-05), metrics rounded like eval reports."""
    def cell(column: int, header: str, value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:g}" if column <= n_config else fmt(header.rsplit("/", 1)[-1], value)
        return str(value)

    return [[cell(k, h, v) for k, (h, v) in enumerate(zip(headers, row))] for row in rows]


def plot_losses(runs: list[Path], out: Path) -> None:
    """Every run's train loss (solid) and eval loss (dashed, dots) on one plot, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for k, run in enumerate(runs):
        records = RunDir(run).metrics()
        color = f"C{k % 10}"
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        if train:
            ax.plot(*zip(*train), color=color, label=f"{run.name} train")
        if evals:
            ax.plot(*zip(*evals), "o--", color=color, label=f"{run.name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def list_runs(folder: str) -> str:
    runs = find_runs(folder)
    jobs = queue_jobs(folder)
    waiting = [f"queued, not started: job {j.id} {j.name} ({j.run_dir})" for j in jobs.values() if not is_run_dir(Path(j.run_dir))]
    if not runs:
        print("\n".join(waiting) if waiting else f"no runs in {folder}")
        return ""
    headers, rows, n_config = experiment_table(runs, keys=MAIN_KEYS)
    # A run without final weights was stopped (or is still running): it is not a result to compare.
    status = [RunDir(run).status() + (f"; {j.state} as job {j.id}" if (j := jobs.get(str(run.resolve()))) else "") for run in runs]
    headers, rows = [*headers, "status"], [[*row, s] for row, s in zip(rows, status)]
    text = "\n".join([to_markdown([("table", headers, shown(headers, rows, n_config))]).rstrip(), *waiting])
    print(text)
    return text


def queue_jobs(folder: str) -> dict:
    """The queued and running train jobs of the queue beside these runs (`folder`/queue, or $TUNESMITH_QUEUE) that
    train into `folder`, by their run directory: so that a queued variant shows before it has begun, and a
    running one says so."""
    from tunesmith.experiments.store import JobQueue, default_folder

    for queue_folder in (default_folder(), Path(folder) / "queue"):
        if (queue_folder / "queue.db").is_file():
            queue = JobQueue(queue_folder, create=False)
            here = Path(folder).resolve()
            return {str(Path(j.run_dir).resolve()): j for j in queue.jobs(("queued", "running"))
                    if j.run_dir and here in (Path(j.run_dir).resolve(), Path(j.run_dir).resolve().parent)}
    return {}


def compare_runs(paths: list[str], out: str) -> Path:
    runs = [Path(p) for p in paths]
    missing = [str(p) for p in runs if not is_run_dir(p)]
    if missing:
        raise TunesmithError(f"not a run directory (no config.yaml and template.json): {', '.join(missing)}")
    headers, rows, n_config = experiment_table(runs)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "compare.csv").open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    plot_losses(runs, folder / "loss.png")
    table = ("table", headers, shown(headers, rows, n_config))
    (folder / "compare.md").write_text(to_markdown([table, ("img", "loss.png", "loss curves")]), encoding="utf-8")
    print(to_markdown([table]).rstrip())
    print(f"written: {folder}/compare.md, compare.csv, loss.png")
    return folder
