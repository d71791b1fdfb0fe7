"""The job queue: one SQLite file, so that nothing is lost when a worker or the machine stops.

    runs/queue/                the queue folder (--queue, or $TUNESMITH_QUEUE)
      queue.db                 every job: its command, state, worker, devices, exit code and error
      jobs/<id>/log.txt        the job's output, every attempt appended

SQLite (the standard library's sqlite3) because it needs no server, every change is a transaction that
survives a crash, and `BEGIN IMMEDIATE` takes the write lock before a worker reads which job is next, so two
workers never claim the same one. WAL lets `queue ls` read while workers write. Its locks need a local disk:
for workers on several machines, see the Ray backend.

A job is queued → running → done, failed or cancelled. A running job whose worker stops beating (killed, the
machine restarted) is queued again and continues from its run's last checkpoint (`train --resume`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from tunesmith.errors import TunesmithError

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    argv TEXT NOT NULL,                    -- JSON list: the tunesmith command, e.g. ["train", "r.yaml", "train.lr=1e-4"]
    cwd TEXT NOT NULL,                     -- the folder it was added from, where it runs
    run_dir TEXT,                          -- train jobs: the run directory it writes (absolute)
    state TEXT NOT NULL DEFAULT 'queued',
    priority INTEGER NOT NULL DEFAULT 0,   -- higher runs first
    after TEXT NOT NULL DEFAULT '[]',      -- JSON list of job ids that must be done first
    gpus INTEGER NOT NULL DEFAULT 1,       -- devices it asks for (on a GPU worker)
    on_done TEXT,                          -- shell command run when it ends
    webhook TEXT,                          -- URL POSTed to when it ends
    resume INTEGER NOT NULL DEFAULT 0,     -- the next start continues the run from its checkpoint
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,                           -- host:pid of the worker running it
    pid INTEGER,                           -- the job's own process
    devices TEXT,                          -- 'cpu' or CUDA device ids, '0,1'
    created REAL NOT NULL,
    started REAL,                          -- when the latest attempt started
    ended REAL,
    heartbeat REAL,
    exit_code INTEGER,
    error TEXT,
    note TEXT,                             -- why it was re-queued, cancelled or skipped
    env TEXT NOT NULL DEFAULT '{}',        -- JSON: variables added to the job's environment (a sweep trial's identity)
    sweep TEXT                             -- the sweep it is a trial of
);
"""


@dataclass
class Job:
    id: int
    name: str
    argv: list[str]
    cwd: str
    run_dir: str | None
    state: str
    priority: int
    after: list[int]
    gpus: int
    on_done: str | None
    webhook: str | None
    resume: bool
    cancel_requested: bool
    attempts: int
    worker: str | None
    pid: int | None
    devices: str | None
    created: float
    started: float | None
    ended: float | None
    heartbeat: float | None
    exit_code: int | None
    error: str | None
    note: str | None
    env: dict[str, str]
    sweep: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["argv"], values["after"], values["env"] = json.loads(values["argv"]), json.loads(values["after"]), json.loads(values["env"])
        values["resume"], values["cancel_requested"] = bool(values["resume"]), bool(values["cancel_requested"])
        return cls(**values)

    @property
    def host(self) -> str | None:
        return self.worker.rsplit(":", 1)[0] if self.worker else None

    @property
    def worker_pid(self) -> int | None:
        return int(self.worker.rsplit(":", 1)[1]) if self.worker else None

    @property
    def is_train(self) -> bool:
        return self.argv[0] == "train"


@dataclass
class NewJob:
    """What `queue add` puts in: a checked command (see tunesmith.experiments.submit)."""

    name: str
    argv: list[str]
    cwd: str
    run_dir: str | None = None
    priority: int = 0
    after: list[int] = field(default_factory=list)
    gpus: int = 1
    on_done: str | None = None
    webhook: str | None = None
    resume: bool = False
    env: dict[str, str] = field(default_factory=dict)
    sweep: str | None = None


def this_host() -> str:
    return socket.gethostname()


def default_folder() -> Path:
    return Path(os.environ.get("TUNESMITH_QUEUE") or "runs/queue")


class JobQueue:
    def __init__(self, folder: str | Path | None = None, create: bool = True):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.path = self.folder / "queue.db"
        if not self.path.is_file():
            if not create:
                raise TunesmithError(f"no queue at {self.folder} (no queue.db): add a job first with tunesmith queue add, or pass --queue DIR")
            if self.folder.exists() and not self.folder.is_dir():
                raise TunesmithError(f"--queue: {self.folder} is a file, not a queue folder")
            self.folder.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own BEGIN IMMEDIATE.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=60000")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TunesmithError(f"{self.path} was written by a newer tunesmith (queue schema {version}, this one reads {SCHEMA_VERSION}): upgrade tunesmith")
        if version < SCHEMA_VERSION:
            with self.transaction():
                self.db.execute(SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: the write lock is taken before anything is read."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def job_folder(self, job_id: int) -> Path:
        return self.folder / "jobs" / str(job_id)

    def log_file(self, job_id: int) -> Path:
        return self.job_folder(job_id) / "log.txt"

    def add(self, new: NewJob) -> Job:
        with self.transaction() as db:
            known = {row[0]: row[1] for row in db.execute("SELECT id, state FROM jobs")}
            missing = [str(j) for j in new.after if j not in known]
            if missing:
                raise TunesmithError(f"--after: no job {', '.join(missing)} in {self.folder} (see tunesmith queue ls)")
            if new.run_dir:
                clash = db.execute("SELECT id, name FROM jobs WHERE run_dir = ? AND state IN ('queued', 'running')", (new.run_dir,)).fetchone()
                if clash:
                    raise TunesmithError(
                        f"job {clash['id']} ({clash['name']}) already trains into {new.run_dir}: give this one --name NAME (or name=... / output_dir=...)"
                    )
            values = {f.name: getattr(new, f.name) for f in fields(NewJob)}
            values["argv"], values["after"], values["env"] = json.dumps(new.argv), json.dumps(new.after), json.dumps(new.env)
            values["created"] = time.time()
            columns = ", ".join(values)
            cursor = db.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' * len(values))})", list(values.values()))
            job_id = cursor.lastrowid
        self.job_folder(job_id).mkdir(parents=True, exist_ok=True)
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise TunesmithError(f"no job {job_id} in {self.folder} (see tunesmith queue ls)")
        return Job.from_row(row)

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        marks = ", ".join("?" * len(states))
        return [Job.from_row(r) for r in self.db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)]

    def claim(self, worker: str, devices: list[str] | None, sweep: str | None = None, where: str = "cpu") -> Job | None:
        """Take the next job this worker can run, atomically: the highest priority, then the oldest, whose --after
        jobs are done and whose device count fits in those of `devices` that no job on this host holds (None: any
        job fits, and it runs on `where`: cpu, or ray, whose scheduler gives it devices); with `sweep`, only that
        sweep's trials. Jobs whose --after job failed or was cancelled are cancelled first, with the reason."""
        with self.transaction() as db:
            skip_orphans(db)
            busy = self.busy_devices(worker.rsplit(":", 1)[0])
            free_devices = None if devices is None else [d for d in devices if d not in busy]
            states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
            for row in db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id"):
                job = Job.from_row(row)
                if any(states.get(j) != "done" for j in job.after):
                    continue
                if (free_devices is not None and job.gpus > len(free_devices)) or (sweep is not None and job.sweep != sweep):
                    continue
                devices = where if free_devices is None else ",".join(free_devices[: job.gpus])
                now = time.time()
                db.execute(
                    "UPDATE jobs SET state = 'running', worker = ?, pid = NULL, devices = ?, started = ?, ended = NULL, heartbeat = ?, "
                    "attempts = attempts + 1, exit_code = NULL, error = NULL, note = NULL WHERE id = ?",
                    (worker, devices, now, now, job.id),
                )
                return self.get(job.id)
        return None

    def busy_devices(self, host: str) -> set[str]:
        """CUDA devices held by running jobs of every worker on `host`: two workers on one machine share its GPUs."""
        rows = self.db.execute("SELECT worker, devices FROM jobs WHERE state = 'running' AND devices != 'cpu'").fetchall()
        return {d for worker, devices in rows if worker and worker.rsplit(":", 1)[0] == host for d in (devices or "").split(",") if d}

    def runnable_later(self, devices: list[str] | None, sweep: str | None = None) -> list[Job]:
        """Queued jobs a worker with `devices` (None: CPU) could still run: none of their --after jobs failed or
        was cancelled, they ask for no more devices than it has, and (with `sweep`) they are that sweep's."""
        states = dict(self.db.execute("SELECT id, state FROM jobs").fetchall())
        return [j for j in self.jobs(("queued",))
                if all(states.get(a) in ("queued", "running", "done") for a in j.after) and (devices is None or j.gpus <= len(devices))
                and (sweep is None or j.sweep == sweep)]

    def set_argv(self, job_id: int, argv: list[str]) -> Job:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET argv = ? WHERE id = ?", (json.dumps(argv), job_id))
        return self.get(job_id)

    def set_pid(self, job_id: int, pid: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def beat(self, worker: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE worker = ? AND state = 'running'", (time.time(), worker))

    def finish(self, job_id: int, state: str, exit_code: int | None = None, error: str | None = None, note: str | None = None) -> Job:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, error = ?, note = ?, ended = ?, pid = NULL, cancel_requested = 0 WHERE id = ?",
                (state, exit_code, error, note, time.time(), job_id),
            )
        return self.get(job_id)

    def requeue(self, job_id: int, note: str, exit_code: int | None = None) -> Job:
        """Back to queued, to continue from the run's checkpoint when a worker takes it again."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', resume = 1, worker = NULL, pid = NULL, devices = NULL, exit_code = ?, note = ?, "
                "ended = ? WHERE id = ?",
                (exit_code, note, time.time(), job_id),
            )
        return self.get(job_id)

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker sends it SIGTERM)."""
        with self.transaction() as db:
            job = self.get(job_id)
            if job.state == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', ended = ?, note = 'cancelled before it started' WHERE id = ?", (time.time(), job_id))
            elif job.state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise TunesmithError(f"job {job_id} ({job.name}) is {job.state}: only a queued or running job can be cancelled")
        return self.get(job_id)

    def retry(self, job_id: int) -> Job:
        """A failed or cancelled job back in the queue; a train job continues from its run's checkpoint."""
        with self.transaction() as db:
            job = self.get(job_id)
            if job.state not in ("failed", "cancelled"):
                raise TunesmithError(f"job {job_id} ({job.name}) is {job.state}: only a failed or cancelled job can be retried")
            db.execute(
                "UPDATE jobs SET state = 'queued', resume = 1, cancel_requested = 0, worker = NULL, pid = NULL, devices = NULL, "
                "exit_code = NULL, error = NULL, ended = NULL, note = ? WHERE id = ?",
                (f"retried after it {'failed' if job.state == 'failed' else 'was cancelled'}", job_id),
            )
        return self.get(job_id)

    def remove(self, job_ids: list[int]) -> list[Job]:
        """Forget finished or queued jobs (their logs too; run directories stay). Running jobs are cancelled first."""
        with self.transaction() as db:
            jobs = [self.get(j) for j in job_ids]
            running = [f"{j.id}" for j in jobs if j.state == "running"]
            if running:
                raise TunesmithError(f"job {', '.join(running)} is running: cancel it first (tunesmith queue cancel)")
            gone = {j.id for j in jobs}
            waiting = [(w.id, a) for w in self.jobs(("queued", "running")) if w.id not in gone for a in w.after if a in gone]
            if waiting:
                raise TunesmithError(
                    "; ".join(f"job {w} waits for job {a} (--after)" for w, a in waiting) + ": remove or cancel the waiting job too"
                )
            db.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in gone])
        for job in jobs:
            log = self.log_file(job.id)
            for file in sorted(log.parent.glob("*")) if log.parent.is_dir() else []:
                file.unlink()
            if log.parent.is_dir():
                log.parent.rmdir()
        return jobs

    def recover(self, stale_after: float, alive) -> list[Job]:
        """Running jobs whose worker is gone, queued again to continue from their checkpoint (or cancelled, if that
        was asked). A worker is gone when, on this host, its process no longer exists, or, anywhere, it has not
        beaten for `stale_after` seconds. A job whose own process still runs here (finishing the checkpoint it saves
        when its worker dies) is left until it exits. `alive(pid)`: whether a process of this host exists."""
        host, recovered = this_host(), []
        with self.transaction() as db:
            now = time.time()
            for job in self.jobs(("running",)):
                local = job.host == host
                if not ((local and not alive(job.worker_pid)) or now - (job.heartbeat or 0) > stale_after):
                    continue
                if local and job.pid and alive(job.pid):
                    continue
                if job.cancel_requested:
                    db.execute("UPDATE jobs SET state = 'cancelled', ended = ?, pid = NULL, note = ? WHERE id = ?",
                               (now, f"cancelled; its worker {job.worker} stopped before it could report", job.id))
                else:
                    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.heartbeat or now))
                    db.execute(
                        "UPDATE jobs SET state = 'queued', resume = 1, worker = NULL, pid = NULL, devices = NULL, note = ? WHERE id = ?",
                        (f"its worker {job.worker} stopped without a word (last heartbeat {seen}): continues from its checkpoint", job.id),
                    )
                recovered.append(self.get(job.id))
        return recovered


def skip_orphans(db: sqlite3.Connection) -> None:
    """Queued jobs whose --after job failed or was cancelled will never run: cancel them, saying why (and their own
    dependents with them, round after round)."""
    while True:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
        orphans = []
        for row in db.execute("SELECT id, after FROM jobs WHERE state = 'queued'"):
            bad = [a for a in json.loads(row["after"]) if states.get(a) in ("failed", "cancelled")]
            if bad:
                orphans.append((f"not run: job {bad[0]} (its --after) {'failed' if states[bad[0]] == 'failed' else 'was cancelled'}", row["id"]))
        if not orphans:
            return
        db.executemany("UPDATE jobs SET state = 'cancelled', ended = ?, note = ? WHERE id = ?", [(time.time(), *o) for o in orphans])
