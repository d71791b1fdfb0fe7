"""`tunesmith queue work`: takes jobs from the queue and runs each in its own process, `python -m tunesmith ...`,
with its own CUDA_VISIBLE_DEVICES, its output in jobs/<id>/log.txt.

    tunesmith queue work --workers 4 --devices 0,1,2,3     # up to 4 jobs at once, one GPU each (or --gpus N per job)
    tunesmith queue work --devices cpu --exit-when-empty   # one CPU job at a time, until nothing is left

One loop in the main thread: recover jobs whose worker died, start jobs while there are free slots, reap the
ones that ended, pass on cancels, beat. Every job process dies with its worker (it is sent SIGTERM then, so a
train job saves a checkpoint at the end of its step); the next worker finds the job stale and continues it from
that checkpoint with `train --resume`. SIGTERM or Ctrl-C to the worker: no new jobs, the running ones are sent
SIGTERM, save and stop, and are queued again to continue later; a second one stops them at once.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith import checkpoints
from tunesmith.experiments.notify import Notifier
from tunesmith.experiments.store import Job, JobQueue, this_host
from tunesmith.runs import RunDir

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the job's process, before it starts: SIGTERM it when its worker dies, however the worker dies."""
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Local:
    """Every job a child process of the worker, on this machine."""

    where = "cpu"  # what a job without CUDA devices runs on

    def start(self, job: Job, argv: list[str], variables: dict[str, str], log_file: Path) -> subprocess.Popen:
        with log_file.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tunesmith", *argv], cwd=job.cwd, env=os.environ | variables, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )

    def close(self) -> None:
        pass


@dataclass
class Running:
    job: Job
    process: subprocess.Popen  # or, on Ray, a handle that answers poll() and send_signal() alike
    log_start: int  # where this attempt's output begins in log.txt
    signals: int = 0  # SIGTERMs sent to it
    cancelled: bool = False


class Worker:
    def __init__(self, queue: JobQueue, slots: int, devices: list[str] | None, exit_when_empty: bool = False,
                 stale_after: float = 120.0, heartbeat: float = 5.0, poll: float = 1.0, sweep: str | None = None, backend=None):
        """`sweep`: take only that sweep's trials (the worker `tunesmith sweep` runs). `backend`: where the jobs run,
        Local() (the default) or a tunesmith.experiments.ray_backend.RayCluster."""
        self.queue, self.slots, self.devices, self.sweep = queue, slots, devices, sweep
        self.backend = backend or Local()
        self.exit_when_empty, self.stale_after, self.heartbeat, self.poll = exit_when_empty, stale_after, heartbeat, poll
        self.id = f"{this_host()}:{os.getpid()}"
        self.running: dict[int, Running] = {}
        self.stops = 0  # SIGTERM/SIGINT received
        self.stopped_by = ""
        self.notifier = Notifier(queue)
        self.last_beat = 0.0

    def run(self, between=None) -> None:
        """Until stopped (or, with exit_when_empty, until no job is left); `between()` is called at every turn of
        the loop and returns whether more jobs may come (a sweep adds its next trials there)."""
        where = "a Ray cluster" if self.backend.where == "ray" else "cpu" if self.devices is None else f"devices {','.join(self.devices)}"
        say(f"worker {self.id}: {self.slots} job{'s' * (self.slots > 1)} at a time on {where}, queue {self.queue.folder}")
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self.tick()
                more = between() if between is not None and not self.stops else False
                if not self.running and (self.stops or (self.exit_when_empty and not more and self.nothing_left())):
                    break
                time.sleep(self.poll)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.notifier.wait()
            self.backend.close()
        if self.stops:
            say(f"worker {self.id} stopped; jobs it stopped continue from their checkpoint when a worker takes them again")

    def tick(self) -> None:
        """One turn: recover jobs of dead workers, start jobs, pass on signals and cancels, reap, beat."""
        for job in self.queue.recover(self.stale_after, alive):
            say(f"job {job.id} {job.name}: {job.note}" if job.state == "queued" else f"job {job.id} {job.name}: {job.state} ({job.note})")
        if not self.stops:
            self.start_jobs()
        self.forward_stops()
        self.pass_on_cancels()
        self.reap()
        if time.monotonic() - self.last_beat >= self.heartbeat:
            self.queue.beat(self.id)
            self.last_beat = time.monotonic()

    def stop(self, signum, frame) -> None:
        self.stops += 1
        name = self.stopped_by = signal.Signals(signum).name
        if self.stops == 1:
            say(f"\n{name}: no new jobs; running ones save a checkpoint at the end of their step, stop, and are queued to continue "
                f"({name} again: stop them now)")
        self.forward_stops()

    def forward_stops(self) -> None:
        for r in self.running.values():
            while r.signals < self.stops:
                send(r.process, signal.SIGTERM)
                r.signals += 1

    def nothing_left(self) -> bool:
        waiting = self.queue.runnable_later(self.devices, self.sweep)
        if waiting:
            return False
        too_big = [j for j in self.queue.jobs(("queued",)) if self.devices is not None and j.gpus > len(self.devices)
                   and (self.sweep is None or j.sweep == self.sweep)]
        for job in too_big:
            say(f"job {job.id} {job.name}: asks for {job.gpus} devices, this worker has {len(self.devices)}: left queued")
        return True

    def start_jobs(self) -> None:
        while len(self.running) < self.slots:
            job = self.queue.claim(self.id, self.devices, self.sweep, self.backend.where)
            if job is None:
                return
            self.start(job)

    def start(self, job: Job) -> None:
        argv = [*job.argv, *(["--resume"] if resumes(job) else [])]
        log_file = self.queue.log_file(job.id)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            if not ends_line(log_file):  # the last attempt's progress bar, cut off mid-line
                log.write(b"\n")
            start = log.tell()
            log.write(f"--- attempt {job.attempts}, {time.strftime('%Y-%m-%d %H:%M:%S')}, worker {self.id}, devices {job.devices}: "
                      f"tunesmith {shlex.join(argv)}\n".encode())
        try:
            process = self.backend.start(job, argv, self.variables(job), log_file)
        except OSError as err:  # its folder was removed, say
            self.notifier.ended(self.queue.finish(job.id, "failed", error=f"could not start in {job.cwd}: {err.strerror or err}"))
            return
        if process.pid is not None:
            self.queue.set_pid(job.id, process.pid)
        self.running[job.id] = Running(job, process, start)
        resumed = " (continuing from its checkpoint)" if "--resume" in argv[len(job.argv):] else ""
        say(f"job {job.id} {job.name}: started on {job.devices}{resumed}, attempt {job.attempts}, log {log_file}")

    def variables(self, job: Job) -> dict[str, str]:
        """What a job's environment adds to the worker's: its devices, its identity, the sweep trial it is."""
        values = job.env | {"TUNESMITH_JOB_ID": str(job.id), "TUNESMITH_QUEUE": str(self.queue.folder.resolve()), "PYTHONUNBUFFERED": "1"}
        if job.devices == "cpu":
            values["CUDA_VISIBLE_DEVICES"] = ""
            if "OMP_NUM_THREADS" not in os.environ:  # jobs side by side share the cores
                values["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.slots))
        elif job.devices != self.backend.where:
            values["CUDA_VISIBLE_DEVICES"] = job.devices
        return values

    def pass_on_cancels(self) -> None:
        for r in self.running.values():
            if not r.cancelled and self.queue.get(r.job.id).cancel_requested:
                r.cancelled = True
                say(f"job {r.job.id} {r.job.name}: cancelling (it saves a checkpoint at the end of its step, then stops)")
                if not r.signals:  # already stopping: a second SIGTERM would stop it unsaved
                    send(r.process, signal.SIGTERM)
                    r.signals += 1

    def reap(self) -> None:
        for job_id, r in list(self.running.items()):
            code = r.process.poll()
            if code is None:
                continue
            del self.running[job_id]
            took = f"after {duration(time.time() - r.job.started)}"
            stopped_by_us = r.signals and code in (130, -signal.SIGTERM)
            if code == 0:
                job = self.queue.finish(job_id, "done", exit_code=0)
                say(f"job {job_id} {job.name}: done {took}")
            elif r.cancelled:
                job = self.queue.finish(job_id, "cancelled", exit_code=code, note=f"cancelled while running ({exit_reason(code)})")
                say(f"job {job_id} {job.name}: cancelled {took}")
            elif self.stops and stopped_by_us:
                job = self.queue.requeue(job_id, f"stopped by the worker's {self.stopped_by}: continues from its checkpoint", code)
                say(f"job {job_id} {job.name}: stopped {took}, queued to continue")
                continue
            else:
                error = error_from_log(self.queue.log_file(job_id), r.log_start) or exit_reason(code)
                job = self.queue.finish(job_id, "failed", exit_code=code, error=error)
                say(f"job {job_id} {job.name}: failed {took} ({exit_reason(code)}): {error.splitlines()[0]}")
            self.notifier.ended(job)


def resumes(job: Job) -> bool:
    """A train job that was started before continues its run when the run has checkpoints (`train --resume` takes
    the newest complete one, or says why none is), or is finished (`train --resume` says so and exits 0)."""
    if not (job.is_train and job.resume and job.run_dir):
        return False
    run = RunDir(Path(job.run_dir))
    return (run.path / "config.yaml").is_file() and (run.finished or bool(checkpoints.named(run.checkpoints)))


def ends_line(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def send(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass  # it has just exited; reap() sees it


def exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    return f"exit code {code}"


def error_from_log(log: Path, start: int, lines: int = 20) -> str | None:
    """What the attempt that began at byte `start` said went wrong: from tunesmith's last `error:` line on, or the
    last lines of a traceback."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace")
    # tqdm redraws its bar with \r: only the last drawing of each line counts.
    output = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()[1:]]
    output = [line for line in output if line.strip()]
    marks = [i for i, line in enumerate(output) if line.startswith("error: ")]
    if marks:
        return "\n".join(output[marks[-1]:][:lines])
    return "\n".join(output[-lines:]) or None


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
