"""`tunesmith queue add`: a recipe (a train job) or any other tunesmith command, checked when it is added, so a
typo surfaces now and not overnight.

    tunesmith queue add recipes/quickstart.yaml train.lr=5e-4 --name lr5e-4   # trains into runs/lr5e-4
    tunesmith queue add --after 1 eval runs/lr5e-4 --data examples/data/support_tickets/heldout.jsonl

A train job runs a copy of its recipe taken when it was added (jobs/<id>/), so editing the recipe afterwards
changes no queued job.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tunesmith import checkpoints, distributed
from tunesmith.errors import TunesmithError
from tunesmith.experiments.store import Job, JobQueue, NewJob
from tunesmith.runs import RunDir

# Commands a job cannot be: they run until stopped, read the terminal, or are the queue itself.
NOT_JOBS = {"queue": "the queue itself", "serve": "runs until stopped", "chat": "reads the terminal"}


def add_job(queue: JobQueue, words: list[str], options: argparse.Namespace, reparse) -> Job:
    """Check the command in `words` and queue it with the --name/--after/... `options`. After a recipe, queue
    options may follow the overrides: `reparse(words)` reads them into `options` and returns the other words."""
    words = words[1:] if words[:1] == ["--"] else words
    if not words:
        raise TunesmithError("queue add: give a recipe (tunesmith queue add recipes/quickstart.yaml train.lr=1e-4) "
                             "or a command (tunesmith queue add eval runs/quickstart --data heldout.jsonl)")
    from tunesmith.cli import build_parser, with_eval_subcommand

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    words = with_eval_subcommand(words)
    if words[0] == "train":
        words = words[1:]
    if words and words[0] in commands:
        return queue.add(command_job(parser, words, options))
    job = queue.add(train_job([words[0], *reparse(words[1:])], options))
    return queue.set_argv(job.id, snapshot_recipe(queue, job.id, job.argv))


def command_job(parser: argparse.ArgumentParser, words: list[str], options: argparse.Namespace) -> NewJob:
    if words[0] in NOT_JOBS:
        raise TunesmithError(f"queue add: {words[0]} {NOT_JOBS[words[0]]}, it cannot be a job")
    try:
        _, extra = parser.parse_known_args(words)
    except SystemExit:  # argparse has printed what is wrong, with the command's usage
        raise TunesmithError(f"queue add: `tunesmith {' '.join(words)}` is not a valid command (see above)") from None
    if extra:
        raise TunesmithError(f"queue add: `tunesmith {words[0]}` does not take {' '.join(extra)} (queue options such as --name go before the command)")
    target = next((w for w in words[1:] if not w.startswith("-")), "")
    name = options.name or " ".join([words[0], Path(target).name]).strip()
    return new_job(options, name, words)


def train_job(words: list[str], options: argparse.Namespace) -> NewJob:
    from tunesmith.config import load_recipe

    recipe_path, tail = words[0], words[1:]
    overrides = [w for w in tail if "=" in w and not w.startswith("-")]
    flags = [w for w in tail if w not in overrides]
    unknown = [f for f in flags if f not in ("--resume", "--allow-changes", "--verbose")]
    if unknown:
        raise TunesmithError(f"queue add: {unknown[0]} is neither an override (key=value) nor an option of queue add (see tunesmith queue add --help)")
    if not recipe_path.endswith((".yaml", ".yml")) and not Path(recipe_path).is_file():
        raise TunesmithError(f"queue add: {recipe_path} is neither a recipe (.yaml) nor a tunesmith command")
    if options.name and not any(o.startswith("name=") for o in overrides):
        overrides.append(f"name={options.name}")
    # A model or data file made by an earlier job (--after) need not exist yet.
    recipe = load_recipe(recipe_path, overrides, check_files=not options.after)
    run = RunDir(recipe.run_dir.resolve())
    resume = "--resume" in flags
    if "--allow-changes" in flags and not resume:
        raise TunesmithError("queue add: --allow-changes goes with --resume (it lets the resumed run take changed settings)")
    if not resume and (run.finished or checkpoints.named(run.checkpoints)):
        raise TunesmithError(f"{run.path} already holds a run: add with --resume to continue it, or give another --name NAME (or output_dir=...)")
    # The job runs a copy of the recipe under its own file name; the run's name is fixed here, as it was checked.
    argv = ["train", recipe_path, *[o for o in overrides if not o.startswith("name=")], f"name={recipe.name}"]
    argv += [f for f in flags if f in ("--allow-changes", "--verbose")]  # --resume: added by the worker when there is a run to resume
    if options.gpus > 1 and recipe.method in distributed.METHODS:  # one process per device (DDP, or train.distributed's engine)
        argv += ["--nproc", str(options.gpus)]
    return new_job(options, recipe.name, argv, run_dir=str(run.path), resume=resume)


def new_job(options: argparse.Namespace, name: str, argv: list[str], run_dir: str | None = None, resume: bool = False) -> NewJob:
    if options.gpus < 1:
        raise TunesmithError(f"queue add --gpus: {options.gpus}: a job asks for at least 1 device")
    return NewJob(name=name, argv=argv, cwd=str(Path.cwd()), run_dir=run_dir, priority=options.priority, after=options.after or [],
                  gpus=options.gpus, on_done=options.on_done, webhook=options.webhook, resume=resume)


def snapshot_recipe(queue: JobQueue, job_id: int, argv: list[str]) -> list[str]:
    """A train job's recipe copied into its job folder; the argv that trains from the copy."""
    source = Path(argv[1])
    copy = queue.job_folder(job_id) / source.name
    shutil.copy2(source, copy)
    return [argv[0], str(copy.resolve()), *argv[2:]]
