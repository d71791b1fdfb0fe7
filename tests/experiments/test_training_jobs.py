"""Train jobs under a worker, stopped in every way a queue sees: cancelled, the worker sent SIGTERM, the worker
killed with SIGKILL. Each job is a real `tunesmith train` process on stories260K (seconds to start)."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.experiments.conftest import write_recipe
from tests.methods.test_resume import assert_same_run
from tunesmith import checkpoints
from tunesmith.cli import main
from tunesmith.config import load_recipe
from tunesmith.experiments.store import JobQueue
from tunesmith.experiments.worker import Worker, alive
from tunesmith.methods import sft
from tunesmith.runs import RunDir


def wait_for(condition, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def saved_steps(run: RunDir) -> list[int]:
    return [checkpoints.step_of(p) for p in checkpoints.named(run.checkpoints)]


def start_worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunesmith", "queue", "work", "--devices", "cpu", "--exit-when-empty"],
                            stderr=subprocess.PIPE, text=True)


def test_cancelling_a_running_job_saves_a_checkpoint_and_stops_it(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path, max_steps=5000, save_steps=5000)
    assert main(["queue", "add", str(recipe), "--on-done", "echo $TUNESMITH_JOB_STATE > state.txt"]) == 0
    run = RunDir(project / "runs" / "capitals")

    def cancel_once_it_trains():
        wait_for(lambda: (run.progress() or {}).get("step", 0) >= 2, "the job to train")
        assert main(["queue", "cancel", "1"]) == 0

    canceller = threading.Thread(target=cancel_once_it_trains)
    canceller.start()
    queue = JobQueue()
    Worker(queue, 1, None, exit_when_empty=True, poll=0.1).run()
    canceller.join()
    job = queue.get(1)
    assert (job.state, job.exit_code, job.note) == ("cancelled", 130, "cancelled while running (exit code 130)")
    assert "job 1 capitals: cancelling: its worker stops it" in capsys.readouterr().out
    [step] = saved_steps(run)  # saved at the step it was cancelled at, far from the end
    assert 2 <= step < 5000 and not run.finished
    assert (project / "state.txt").read_text() == "cancelled\n"
    retried = queue.retry(1)
    assert (retried.state, retried.resume) == ("queued", True)


@pytest.mark.slow  # three train processes, ~30 s on 2 CPU cores
def test_a_job_survives_its_worker_stopped_and_killed_and_ends_as_an_uninterrupted_run(project, stories_path):
    recipe = write_recipe(project, stories_path, max_steps=40, save_steps=4)
    straight = sft.train(load_recipe(recipe, ["name=straight"]))
    assert main(["queue", "add", str(recipe), "--name", "job"]) == 0
    run, queue = RunDir(project / "runs" / "job"), JobQueue()

    # SIGTERM: the job saves at the end of its step, stops, and is queued to continue.
    worker = start_worker()
    wait_for(lambda: saved_steps(run), "a first checkpoint")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    job = queue.get(1)
    assert (job.state, job.resume, job.exit_code) == ("queued", True, 130)
    assert job.note == "stopped by the worker's SIGTERM: continues from its checkpoint"
    stopped_at = max(saved_steps(run))
    assert stopped_at < 40 and not run.finished

    # SIGKILL of the worker: its job is sent SIGTERM by the kernel, saves and stops; it does not train on alone.
    worker = start_worker()
    wait_for(lambda: max(saved_steps(run)) > stopped_at, "a checkpoint after the resume")
    pid = queue.get(1).pid
    worker.kill()
    worker.wait()
    wait_for(lambda: not alive(pid), "the orphaned job to stop", timeout=60)
    assert queue.get(1).state == "running" and not run.finished  # as the dead worker left it

    worker = start_worker()
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    job = queue.get(1)
    assert (job.state, job.attempts) == ("done", 3), err
    assert "job 1 job: its worker" in err and "stopped without a word" in err
    attempts = [line for line in queue.log_file(1).read_text().splitlines() if line.startswith("--- attempt")]
    assert [a.endswith("--resume") for a in attempts] == [False, True, True]
    assert_same_run(run, straight)
