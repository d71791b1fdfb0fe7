"""The `tunesmith queue ...` command group: its parser (`add_parser`, wired in by tunesmith.cli) and one function
per command."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from tunesmith.errors import TunesmithError

QUEUE_HELP = "the queue folder (default: $TUNESMITH_QUEUE, else runs/queue)"


def add_parser(sub) -> None:
    from tunesmith.cli import command

    group = command(sub, "queue", "queue runs and other commands, run them in parallel",
                    "tunesmith queue add recipes/quickstart.yaml train.lr=5e-4 --name lr5e-4\n"
                    "tunesmith queue work --devices cpu --exit-when-empty\n"
                    "tunesmith queue ls",
                    "Jobs are kept in a SQLite file (runs/queue/queue.db): nothing is lost when a worker or the machine stops, "
                    "and a train job whose worker died continues from its last checkpoint.")
    queue = group.add_subparsers(dest="queue_command", required=True, metavar="COMMAND", title="commands")

    p = command(queue, "add", "queue a recipe, or any tunesmith command",
                "tunesmith queue add recipes/quickstart.yaml train.lr=5e-4 peft.r=8 --name lr5e-4\n"
                "tunesmith queue add --after 1 eval runs/lr5e-4 --data examples/data/support_tickets/heldout.jsonl",
                "A recipe with its overrides becomes a train job, checked now (a bad key fails here, not overnight); "
                "--name names the job and its run (runs/NAME). Any other command (eval, merge, ...) is queued as written; "
                "its queue options go before it. A train job runs a copy of the recipe taken now.")
    add_options(p)
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="RECIPE.yaml [key=value ...] | COMMAND ...",
                   help="a recipe and its overrides, or a tunesmith command with its arguments")
    p.set_defaults(func=cmd_add)

    p = command(queue, "ls", "jobs with their state, progress, loss, elapsed time and ETA", "tunesmith queue ls\ntunesmith queue ls --watch")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS", help="redraw every SECONDS (2 when not given) until Ctrl-C")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_ls)

    p = command(queue, "show", "everything about one job: command, run, attempts, exit code, error", "tunesmith queue show 3")
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_show)

    p = command(queue, "logs", "a job's output, every attempt", "tunesmith queue logs 3 -f")
    p.add_argument("job", type=int, help="job id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_logs)

    p = command(queue, "cancel", "cancel queued or running jobs (a running train job saves a checkpoint first)", "tunesmith queue cancel 3 4")
    p.add_argument("jobs", type=int, nargs="+", help="job ids")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_cancel)

    p = command(queue, "retry", "queue failed or cancelled jobs again (a train job continues from its checkpoint)", "tunesmith queue retry 3")
    p.add_argument("jobs", type=int, nargs="+", help="job ids")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_retry)

    p = command(queue, "rm", "forget jobs and their logs (their run directories stay)", "tunesmith queue rm 3\ntunesmith queue rm --finished")
    p.add_argument("jobs", type=int, nargs="*", help="job ids")
    p.add_argument("--finished", action="store_true", help="every done, failed and cancelled job")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_rm)

    p = command(queue, "work", "run the queue's jobs, each in its own process",
                "tunesmith queue work --workers 4 --devices 0,1,2,3\ntunesmith queue work --devices cpu --exit-when-empty",
                "Each job gets its own CUDA_VISIBLE_DEVICES (--gpus N on queue add asks for more than one) and writes its "
                "output to runs/queue/jobs/ID/log.txt. Ctrl-C or SIGTERM: running train jobs save a checkpoint and stop, and "
                "continue from it under the next worker. Several workers may share a queue; each job runs once.")
    add_worker_options(p, "jobs")
    p.add_argument("--exit-when-empty", action="store_true", help="exit once no job is left to run (default: wait for new ones)")
    p.add_argument("--stale-after", type=float, default=120.0,
                   help="seconds without a heartbeat after which a running job's worker counts as dead (a dead worker on this machine is seen at once)")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_work)

    p = command(sub, "sweep", "hyperparameter search with Optuna, trials queued",
                "tunesmith sweep sweeps/quickstart.yaml\ntunesmith sweep sweeps/quickstart.yaml --devices 0,1,2,3\n"
                "tunesmith sweep sweeps/quickstart.yaml --report",
                "SWEEP.yaml names a base recipe, a search space over its keys, an objective (eval_loss, eval_exact_match, ...), "
                "n_trials, a sampler and a pruner. Trials run as queue jobs, by a worker this command runs (or by "
                "`tunesmith queue work` with --no-work); run it again after a crash to continue. Writes runs/NAME/trials.csv, "
                "trials.md, best.yaml and report.html.")
    p.add_argument("sweep", help="the sweep file (SWEEP.yaml)")
    add_worker_options(p, "trials")
    p.add_argument("--no-work", action="store_true", help="only queue the trials and tell the study their results; queue work runs them")
    p.add_argument("--report", action="store_true", help="write the results of the trials so far; start none")
    p.add_argument("--stale-after", type=float, default=120.0, help="seconds without a heartbeat after which a trial's worker counts as dead")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_sweep)

    p = command(sub, "dashboard", "a local web page of jobs, their runs and sweeps", "tunesmith dashboard --port 8765",
                "Jobs with their states, each run's loss curve and latest eval metrics, the sweeps' tables and plots, links to "
                "reports and logs; it redraws itself every 3 seconds. Serves only reports, plots, tables and logs of this folder.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 shows it to other machines)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on")
    p.add_argument("--runs", default="runs", help="the folder whose sweeps it shows")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(func=cmd_dashboard)


def add_worker_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, help=f"{what} at once (default: one per device, 1 on cpu; on Ray, as many as the cluster holds)")
    p.add_argument("--devices", help="CUDA device ids, e.g. 0,1,2,3, or cpu (default: the visible GPUs, else cpu; on Ray: its GPUs, or cpu)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help=f"local: {what} are processes here; ray: Ray tasks")
    p.add_argument("--ray-address", help="with --backend ray: the cluster, e.g. auto or ray://head:10001 (default: start a local Ray)")
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="with --backend ray: CPUs each job asks Ray for")


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of `queue add`: before the command, or, for a recipe, after it too."""
    p.add_argument("--name", help="job name; for a recipe also the run's name, so it trains into runs/NAME (default: the recipe's name)")
    p.add_argument("--after", action="append", metavar="JOB", help="start only once this job is done (repeatable, or 3,4)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first; equal priorities run in the order added")
    p.add_argument("--gpus", type=int, default=1, help="CUDA devices the job gets (on a worker with --devices)")
    p.add_argument("--on-done", metavar="COMMAND", help="shell command run when the job ends, with $TUNESMITH_JOB_STATE, $TUNESMITH_RUN_DIR, ...")
    p.add_argument("--webhook", metavar="URL", help="POST the job's id, name, state, run dir, exit code and error as JSON when it ends")
    p.add_argument("--queue", help=QUEUE_HELP)


def open_queue(args, create: bool = False):
    from tunesmith.experiments.store import JobQueue

    return JobQueue(args.queue, create=create)


def job_ids(values: list[str] | None) -> list[int]:
    ids = []
    for value in values or []:
        for part in str(value).split(","):
            if not part.strip().isdigit():
                raise TunesmithError(f"--after: {part.strip()!r} is not a job id (a number, see tunesmith queue ls)")
            ids.append(int(part))
    return ids


def cmd_add(args) -> None:
    from tunesmith.experiments.submit import add_job

    def reparse(tail: list[str]) -> list[str]:
        tail_parser = argparse.ArgumentParser(prog="tunesmith queue add RECIPE.yaml [key=value ...]", add_help=False)
        add_options(tail_parser)
        _, rest = tail_parser.parse_known_args(tail, namespace=args)
        args.after = job_ids(args.after)
        return rest

    args.after = job_ids(args.after)
    queue = open_queue(args, create=True)
    job = add_job(queue, args.job, args, reparse)
    waits = f", after job {', '.join(map(str, job.after))}" if job.after else ""
    print(f"job {job.id} {job.name} queued{waits}: tunesmith {shlex.join(job.argv)}")
    if job.run_dir:
        print(f"  run: {job.run_dir}")


def cmd_ls(args) -> None:
    from rich.console import Console

    queue = open_queue(args)
    if args.watch is None:
        Console(soft_wrap=False).print(jobs_table(queue))
        return
    from rich.live import Live

    with Live(jobs_table(queue), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(args.watch)
                live.update(jobs_table(queue), refresh=True)
        except KeyboardInterrupt:  # how a watch ends
            return


def jobs_table(queue):
    from rich.table import Table
    from rich.text import Text

    from tunesmith.experiments.progress import job_progress

    jobs = queue.jobs()
    if not jobs:
        return Text(f"no jobs in {queue.folder}")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "name", "state", "progress", "loss", "elapsed", "ETA", "device", "note"):
        table.add_column(column, justify="right" if column in ("id", "loss", "elapsed", "ETA") else "left", overflow="fold")
    now = time.time()
    for job in jobs:
        table.add_row(str(job.id), job.name, job.state, *job_progress(job, now).cells(), job.devices or "", note(job))
    return table


def note(job) -> str:
    """The one thing worth knowing about a job beside its state."""
    if job.state == "failed":
        return (job.error or "").splitlines()[0][:100] if job.error else f"exit code {job.exit_code}"
    if job.state == "running" and job.cancel_requested:
        return "cancelling"
    if job.state == "queued" and job.after:
        return f"after {', '.join(map(str, job.after))}" + (f"; {job.note}" if job.note else "")
    return job.note or ""


def cmd_show(args) -> None:
    from tunesmith.experiments.progress import job_progress

    queue = open_queue(args)
    job = queue.get(args.job)
    progress = job_progress(job)
    lines = [
        ("job", f"{job.id} {job.name}"),
        ("state", job.state + (" (cancelling)" if job.cancel_requested else "")),
        ("command", f"tunesmith {shlex.join(job.argv)}"),
        ("folder", job.cwd),
        ("run", job.run_dir or ""),
        ("log", str(queue.log_file(job.id))),
        ("priority", str(job.priority)),
        ("after", ", ".join(map(str, job.after))),
        ("gpus", str(job.gpus)),
        ("attempts", str(job.attempts)),
        ("worker", job.worker or ""),
        ("devices", job.devices or ""),
        ("created", stamp(job.created)),
        ("started", stamp(job.started)),
        ("ended", stamp(job.ended) if job.state != "running" else ""),
        ("progress", " ".join(c for c in progress.cells()[:2] if c)),
        ("exit code", "" if job.exit_code is None else str(job.exit_code)),
        ("on done", job.on_done or ""),
        ("webhook", job.webhook or ""),
        ("note", job.note or ""),
    ]
    for key, value in lines:
        if value:
            print(f"{key + ':':10} {value}")
    if job.error:
        print("error:\n" + "\n".join(f"  {line}" for line in job.error.splitlines()))


def stamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def cmd_logs(args) -> None:
    from tunesmith.experiments.store import FINISHED

    queue = open_queue(args)
    job = queue.get(args.job)
    log = queue.log_file(job.id)
    if not args.follow:
        if not log.is_file():
            print(f"job {job.id} {job.name} has not started yet (no {log})", file=sys.stderr)
            return
        sys.stdout.buffer.write(log.read_bytes())
        return
    while not log.is_file():
        if queue.get(job.id).state in FINISHED:
            return
        time.sleep(0.5)
    with log.open("rb") as f:
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if queue.get(job.id).state in FINISHED:
                sys.stdout.buffer.write(f.read())
                return
            time.sleep(0.5)


def cmd_cancel(args) -> None:
    queue = open_queue(args)
    for job_id in args.jobs:
        job = queue.cancel(job_id)
        said = "cancelled" if job.state == "cancelled" else "cancelling: its worker stops it (a train job saves a checkpoint at the end of its step)"
        print(f"job {job.id} {job.name}: {said}")


def cmd_retry(args) -> None:
    queue = open_queue(args)
    for job_id in args.jobs:
        job = queue.retry(job_id)
        print(f"job {job.id} {job.name}: queued again" + (" (continues from its checkpoint)" if job.run_dir else ""))


def cmd_rm(args) -> None:
    from tunesmith.experiments.store import FINISHED

    queue = open_queue(args)
    ids = list(args.jobs)
    if args.finished:  # all of them but those a queued or running job still waits for (--after)
        waited = {a: j.id for j in queue.jobs(("queued", "running")) for a in j.after}
        for job in queue.jobs(FINISHED):
            if job.id in waited:
                print(f"job {job.id} {job.name} kept: job {waited[job.id]} waits for it (--after)")
            else:
                ids.append(job.id)
    if not ids and not args.finished:
        raise TunesmithError("queue rm: give job ids, or --finished for every done, failed and cancelled job")
    for job in queue.remove(list(dict.fromkeys(ids))):
        print(f"job {job.id} {job.name} removed" + (f" (its run stays in {job.run_dir})" if job.run_dir else ""))


def cmd_work(args) -> None:
    from tunesmith.experiments.worker import Worker

    workers, devices, backend = worker_setup(args)
    Worker(open_queue(args, create=True), workers, devices, exit_when_empty=args.exit_when_empty, stale_after=args.stale_after,
           backend=backend).run()


def cmd_sweep(args) -> None:
    from tunesmith.experiments.space import load_sweep
    from tunesmith.experiments.sweep import run_sweep

    sweep = load_sweep(args.sweep)  # a broken sweep file is said before a Ray cluster is reached
    workers, devices, backend = (args.workers or 1, None, None) if args.no_work or args.report else worker_setup(args)
    run_sweep(sweep, workers, devices, work=not args.no_work, report_only=args.report, queue_folder=args.queue,
              stale_after=args.stale_after, backend=backend)


def cmd_dashboard(args) -> None:
    import importlib.util
    from pathlib import Path

    if not (importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn")):
        raise TunesmithError("tunesmith dashboard needs FastAPI and uvicorn: pip install 'tunesmith[serve]'")
    from tunesmith.experiments.dashboard import serve_dashboard
    from tunesmith.experiments.store import default_folder

    serve_dashboard(args.host, args.port, Path(args.queue) if args.queue else default_folder(), Path(args.runs))


def worker_setup(args):
    """(jobs at once, CUDA device ids or None for cpu, the backend: None for local processes)."""
    backend = None
    if args.backend == "ray":
        from tunesmith.experiments.ray_backend import RayCluster

        if args.devices not in (None, "cpu"):
            raise TunesmithError("--devices with --backend ray: Ray gives each job its GPUs; leave it out, or give --devices cpu")
        if args.cpus_per_job <= 0:
            raise TunesmithError(f"--cpus-per-job: {args.cpus_per_job:g}: give a number of CPUs > 0")
        backend = RayCluster(args.ray_address, args.cpus_per_job, gpus=args.devices != "cpu")
        devices = None
        workers = backend.slots() if args.workers is None else args.workers
    else:
        if args.ray_address:
            raise TunesmithError("--ray-address goes with --backend ray")
        devices = parse_devices(args.devices)
        workers = (len(devices) if devices else 1) if args.workers is None else args.workers
    if workers < 1:
        raise TunesmithError(f"--workers: {workers}: at least 1")
    return workers, devices, backend


def parse_devices(value: str | None) -> list[str] | None:
    """CUDA device ids, or None for CPU. Default: CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
    import os

    if value is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return [d.strip() for d in visible.split(",") if d.strip()] or None
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] or None
    if value.strip().lower() == "cpu":
        return None
    devices = [d.strip() for d in value.split(",") if d.strip()]
    bad = [d for d in devices if not d.isdigit()]
    if bad or not devices:
        raise TunesmithError(f"queue work --devices: {value!r}: give CUDA device ids (0,1,2,3) or cpu")
    return list(dict.fromkeys(devices))
