"""A sweep's results, from its study: the table of trials (terminal, trials.csv, trials.md), the best recipe
(best.yaml) and report.html with the table and Optuna's plots (optimisation history, parameter importances,
parallel coordinates), each also a PNG in plots/."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import yaml

from tunesmith.eval.report import to_html, to_markdown
from tunesmith.experiments.space import SweepConfig, override

PLOTS = {
    "history": ("plot_optimization_history", "the objective of each trial, and the best so far"),
    "importances": ("plot_param_importances", "how much each key moved the objective (PED-ANOVA)"),
    "parallel": ("plot_parallel_coordinate", "each finished trial's values and objective"),
}


def trial_table(sweep: SweepConfig, study) -> tuple[list[str], list[list]]:
    keys = [p.key for p in sweep.params]
    best = best_trial(study)
    headers = ["trial", "state", sweep.objective, *keys, "run", "note"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("lost"):
            continue
        state = t.state.name.lower() + (" (best)" if best is not None and t.number == best.number else "")
        note = t.user_attrs.get("error") or (f"pruned at step {t.user_attrs['pruned_at']}" if "pruned_at" in t.user_attrs else "")
        rows.append([t.number, state, "" if t.value is None else t.value, *(t.params.get(k, "") for k in keys), t.user_attrs.get("run_dir", ""), note])
    return headers, rows


def best_trial(study):
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def shown(rows: list[list]) -> list[list[str]]:
    return [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]


def write_best_recipe(sweep: SweepConfig, trial) -> Path:
    """The base recipe with the sweep's overrides and the best trial's values: `tunesmith train best.yaml` trains it."""
    from tunesmith.config import apply_overrides, read_yaml

    base = sweep.folder / "recipe.yaml"
    raw = read_yaml(base.read_text(encoding="utf-8"), str(base)) or {}
    values = [override(k, v) for k, v in trial.params.items()]
    raw = apply_overrides(raw, [*sweep.overrides, *values, f"name={sweep.name}-best"])
    raw.pop("output_dir", None)
    path = sweep.folder / "best.yaml"
    header = (f"# tunesmith train {path}\n# the best trial of sweep {sweep.name}: trial {trial.number}, {sweep.objective} {trial.value:.6g} "
              f"({', '.join(values)})\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_plots(study, folder: Path) -> list[tuple[str, str]]:
    """folder/plots/*.png; (file, caption) of each plot that could be drawn (importances need two finished trials
    with differing values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots
    from optuna.importance import PedAnovaImportanceEvaluator

    (folder / "plots").mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, (function, caption) in PLOTS.items():
        kwargs = {"evaluator": PedAnovaImportanceEvaluator()} if name == "importances" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = getattr(plots, function)(study, **kwargs)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials for this plot
                continue
        figure = ax.figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        figure.savefig(folder / "plots" / f"{name}.png", dpi=100)
        plt.close(figure)
        drawn.append((f"plots/{name}.png", caption))
    return drawn


def write_results(sweep: SweepConfig, study) -> None:
    from optuna.trial import TrialState

    headers, rows = trial_table(sweep, study)
    folder = sweep.folder
    with (folder / "trials.csv").open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    table = ("table", headers, shown(rows))
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    summary = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
    best = best_trial(study)
    lines = [f"{sweep.trials} trials asked: {summary or 'none yet'}; objective {sweep.objective} ({'max' if sweep.maximize else 'min'}imised)"]
    if best is not None:
        lines.append(f"best: trial {best.number}, {sweep.objective} {best.value:.6g}; its recipe: {write_best_recipe(sweep, best)}")
    (folder / "trials.md").write_text(to_markdown([("h1", f"Sweep {sweep.name}"), ("p", lines[0]), table]), encoding="utf-8")
    images = write_plots(study, folder) if best is not None else []
    blocks = [("h1", f"Sweep {sweep.name}"), *(("p", line) for line in lines), table, *(("img", file, caption) for file, caption in images)]
    (folder / "report.html").write_text(to_html(blocks, folder, f"Sweep {sweep.name}"), encoding="utf-8")
    print(to_markdown([table]).rstrip())
    for line in lines:
        print(line)
    print(f"written: {folder}/trials.csv, trials.md, report.html" + (", best.yaml" if best is not None else ""), file=sys.stderr)
