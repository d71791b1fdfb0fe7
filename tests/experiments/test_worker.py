"""`tunesmith queue work` with jobs that take a fraction of a second (real tunesmith commands, each in its own
process): errors kept, --after order, --on-done and webhooks, several workers on one queue."""

import http.server
import json
import socket
import subprocess
import sys
import threading

import pytest

from tests.experiments.conftest import write_recipe
from tunesmith.cli import main
from tunesmith.experiments.store import JobQueue
from tunesmith.experiments.worker import Worker, error_from_log


def work(slots: int = 1) -> JobQueue:
    queue = JobQueue()
    Worker(queue, slots, None, exit_when_empty=True, poll=0.05).run()
    return queue


def attempts_in_log(queue: JobQueue, job_id: int) -> list[str]:
    return [line for line in queue.log_file(job_id).read_text().splitlines() if line.startswith("--- attempt")]


def test_a_failed_job_keeps_its_exit_code_and_error(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    assert main(["queue", "add", str(recipe)]) == 0
    (project / "capitals.jsonl").unlink()  # gone by the time the job runs
    queue = work()
    job = queue.get(1)
    assert (job.state, job.exit_code, job.error) == ("failed", 2, "error: data.train[0]: file not found: capitals.jsonl")
    assert "job 1 capitals: failed after 0s (exit code 2): error: data.train[0]: file not found: capitals.jsonl" in capsys.readouterr().err
    assert attempts_in_log(queue, 1)[0].endswith(f"tunesmith train {job.argv[1]} name=capitals")


def test_the_error_is_the_last_error_line_or_the_end_of_a_traceback(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("--- attempt 1\nold output\n--- attempt 2\ntrain:  50%|#  | 1/2\rtrain: 100%|##| 2/2\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: CUDA out of memory\n")
    start = log.read_text().index("--- attempt 2")
    assert error_from_log(log, start, lines=2) == '  File "x.py", line 1\nRuntimeError: CUDA out of memory'
    log.write_text("--- attempt 1\nerror: recipe.yaml: invalid config\n  train.lr: 'x': expected a finite number > 0\n")
    assert error_from_log(log, 0) == "error: recipe.yaml: invalid config\n  train.lr: 'x': expected a finite number > 0"


class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_after_waits_and_on_done_and_the_webhook_get_the_state_and_run_dir(project, stories_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/done"
    Hook.received = []
    try:
        assert main(["queue", "add", "--name", "first", "runs", "list", "."]) == 0
        assert main(["queue", "add", "--after", "1", "--priority", "5", "--name", "second", "--on-done", "env | grep ^TUNESMITH_ | sort > done.txt",
                     "--webhook", url, "runs", "list", "."]) == 0
        assert main(["queue", "add", "--name", "broken", "--webhook", url, "runs", "compare", "nothing-here"]) == 0
        queue = work(slots=2)
    finally:
        server.shutdown()
    first, second, broken = queue.get(1), queue.get(2), queue.get(3)
    assert (first.state, second.state, broken.state) == ("done", "done", "failed")
    assert second.started >= first.ended  # its higher priority does not start it before the job it waits for
    env = dict(line.split("=", 1) for line in (project / "done.txt").read_text().splitlines())
    assert env["TUNESMITH_JOB_STATE"] == "done" and env["TUNESMITH_JOB_NAME"] == "second" and env["TUNESMITH_JOB_ID"] == "2"
    assert env["TUNESMITH_JOB_LOG"] == str(queue.log_file(2).resolve()) and env["TUNESMITH_RUN_DIR"] == ""
    by_id = {body["id"]: body for body in Hook.received}
    assert by_id["3"]["state"] == "failed" and by_id["3"]["exit_code"] == "2"
    assert by_id["3"]["error"] == "error: not a run directory (no config.yaml and template.json): nothing-here"
    assert by_id["2"]["state"] == "done"


def test_two_workers_on_one_queue_run_every_job_once(project):
    for i in range(8):
        assert main(["queue", "add", "--name", f"job{i}", "runs", "list", "."]) == 0
    command = [sys.executable, "-m", "tunesmith", "queue", "work", "--devices", "cpu", "--workers", "2", "--exit-when-empty"]
    workers = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    queue = JobQueue()
    assert [j.state for j in queue.jobs()] == ["done"] * 8
    assert all(j.attempts == 1 and len(attempts_in_log(queue, j.id)) == 1 for j in queue.jobs())
    started = [line for out in outputs for line in out.splitlines() if ": started on cpu" in line]
    assert sorted(line.split()[1] for line in started) == [str(i) for i in range(1, 9)]


def test_worker_options_that_do_not_go_together_are_refused(project, capsys):
    assert main(["queue", "work", "--backend", "ray", "--devices", "0,1"]) == 2
    assert "--devices with --backend ray: Ray gives each job its GPUs" in capsys.readouterr().err
    assert main(["queue", "work", "--ray-address", "auto"]) == 2
    assert "--ray-address goes with --backend ray" in capsys.readouterr().err
    assert main(["queue", "work", "--devices", "0,x"]) == 2
    assert "--devices: '0,x': give CUDA device ids (0,1,2,3) or cpu" in capsys.readouterr().err
    assert main(["queue", "work", "--workers", "0", "--exit-when-empty"]) == 2  # not taken for "the default"
    assert "--workers: 0: at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["99999", "0"])
def test_the_dashboard_refuses_a_port_that_is_not_one(project, capsys, port):
    assert main(["dashboard", "--port", port]) == 2
    assert f"--port {port}: not a port; give one from 1 to 65535" in capsys.readouterr().err


def test_the_dashboard_says_when_its_port_is_taken(project, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--port", str(port)]) == 2
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in capsys.readouterr().err


def test_a_retried_train_job_resumes_whenever_its_run_has_checkpoints(project, stories_path):
    from tunesmith.experiments.worker import resumes

    assert main(["queue", "add", str(write_recipe(project, stories_path))]) == 0
    queue = JobQueue()
    queue.claim("host:1", None)
    job = queue.requeue(1, "stopped")
    run = project / "runs" / "capitals"
    assert not resumes(job)  # stopped before its run began: it starts afresh
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: sft\n")
    assert not resumes(job)
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # spoilt, say: `train --resume` says so, plain train would not
    assert resumes(job)


class Signalled:
    def __init__(self):
        self.sent = []

    def send_signal(self, signum):
        self.sent.append(signum)


def test_a_cancel_while_the_worker_stops_a_job_sends_no_second_sigterm(project):
    from tunesmith.experiments.worker import Running

    assert main(["queue", "add", "runs", "list", "."]) == 0
    queue = JobQueue()
    worker = Worker(queue, 1, None)
    job = queue.claim(worker.id, None)
    stopping, fresh = Signalled(), Signalled()
    worker.running = {job.id: Running(job, stopping, 0, signals=1)}
    queue.cancel(job.id)
    worker.pass_on_cancels()
    assert stopping.sent == [] and worker.running[job.id].cancelled  # a second SIGTERM would stop it without saving
    worker.running = {job.id: Running(job, fresh, 0)}
    worker.pass_on_cancels()
    assert fresh.sent == [15]
