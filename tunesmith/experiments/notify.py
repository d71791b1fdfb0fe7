"""What a job does when it ends: its --on-done command and its --webhook, with the job's state and run directory.

    tunesmith queue add recipe.yaml --on-done 'notify-send "$TUNESMITH_JOB_NAME: $TUNESMITH_JOB_STATE"'
    tunesmith queue add recipe.yaml --webhook https://hooks.example.com/tunesmith

The command runs in the job's folder through the shell, with these variables set; the webhook receives them as a
JSON body (keys without the TUNESMITH_JOB_ prefix, lower case). Neither holds up the worker: the command's
output goes to jobs/<id>/on_done.log, and a failure is logged there and changes nothing of the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request

from tunesmith.experiments.store import Job, JobQueue

WEBHOOK_TIMEOUT = 10
COMMAND_TIMEOUT = 300  # how long an exiting worker waits for the commands still running


def job_environment(job: Job, queue: JobQueue) -> dict[str, str]:
    return {
        "TUNESMITH_JOB_ID": str(job.id),
        "TUNESMITH_JOB_NAME": job.name,
        "TUNESMITH_JOB_STATE": job.state,
        "TUNESMITH_JOB_EXIT_CODE": "" if job.exit_code is None else str(job.exit_code),
        "TUNESMITH_JOB_ERROR": job.error or "",
        "TUNESMITH_JOB_LOG": str(queue.log_file(job.id).resolve()),
        "TUNESMITH_RUN_DIR": job.run_dir or "",
    }


class Notifier:
    """Starts each ended job's command and webhook, and waits for them when the worker exits."""

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.commands: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []

    def ended(self, job: Job) -> None:
        if not (job.on_done or job.webhook):
            return
        values = job_environment(job, self.queue)
        log = self.queue.job_folder(job.id) / "on_done.log"
        if job.on_done:
            with log.open("a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {job.state}: {job.on_done}\n")
                f.flush()
                try:
                    self.commands.append(subprocess.Popen(job.on_done, shell=True, cwd=job.cwd, env=os.environ | values,
                                                          stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
                except OSError as err:
                    f.write(f"could not start it: {err}\n")
        if job.webhook:
            body = {key.removeprefix("TUNESMITH_JOB_").removeprefix("TUNESMITH_").lower(): value for key, value in values.items()}
            thread = threading.Thread(target=post, args=(job.webhook, body, log), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.commands = [p for p in self.commands if p.poll() is None]
        self.threads = [t for t in self.threads if t.is_alive()]

    def wait(self) -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        for process in self.commands:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # it goes on without the worker
        for thread in self.threads:
            thread.join(WEBHOOK_TIMEOUT)


def post(url: str, body: dict, log) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as reply:
            outcome = f"webhook {url}: {reply.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        outcome = f"webhook {url} failed: {getattr(err, 'reason', err)}"
    with log.open("a", encoding="utf-8") as f:
        f.write(outcome + "\n")
