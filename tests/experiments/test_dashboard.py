"""`tunesmith dashboard`: its API in-process, and the page itself in a real headless Chromium (Debian's package):
it loads, lists a finished and a running job, and draws their loss curves."""

import shutil
import socket
import subprocess
import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.experiments.dashboard import build_app  # noqa: E402
from tunesmith.experiments.store import JobQueue, NewJob  # noqa: E402
from tunesmith.runs import RunDir  # noqa: E402


@pytest.fixture
def jobs(project):
    """A finished train job, a running one (40 of 100 steps) and a queued one, with their runs' metrics."""
    queue = JobQueue()
    for name in ("finished", "running", "waiting"):
        queue.add(NewJob(name=name, argv=["train", "r.yaml"], cwd=str(project), run_dir=str(project / "runs" / name)))
    for name, steps in (("finished", 100), ("running", 40)):
        run = RunDir(project / "runs" / name)
        run.path.mkdir(parents=True)
        for step in range(10, steps + 1, 10):
            run.append_metrics({"step": step, "loss": 3.0 - step / 50})
            if step % 20 == 0:
                run.append_metrics({"step": step, "eval_loss": 3.2 - step / 60, "eval_exact_match": step / 100})
        run.write_progress({"step": steps, "max_steps": 100, "start_step": 0, "started_at": time.time() - 60, "updated_at": time.time(), "loss": 3.0 - steps / 50})
    queue.finish(queue.claim("host:1", None).id, "done", exit_code=0)
    queue.claim("host:1", None)
    (project / "runs" / "finished" / "report.md").write_text("# Run `finished`\n")
    queue.log_file(1).write_text("--- attempt 1\ndone\n")
    return queue


def test_the_api_gives_jobs_metrics_and_only_the_files_it_should(project, jobs):
    client = TestClient(build_app(project / "runs" / "queue", project / "runs", project))
    state = client.get("/api/state").json()
    assert [(j["name"], j["state"], j["progress"]) for j in state["jobs"]] == [
        ("finished", "done", "100% (100/100)"), ("running", "running", "40% (40/100)"), ("waiting", "queued", "")]
    assert state["jobs"][0]["report"] == "/files/runs/finished/report.md" and state["jobs"][0]["log"] == "/files/runs/queue/jobs/1/log.txt"
    metrics = client.get("/api/jobs/2/metrics").json()
    assert metrics["train"][-1] == [40, pytest.approx(2.2)] and [s for s, _ in metrics["eval"]] == [20, 40]
    assert metrics["latest"] == {"eval_loss": pytest.approx(3.2 - 40 / 60), "eval_exact_match": 0.4}
    assert client.get("/files/runs/finished/report.md").text == "# Run `finished`\n"
    (project / "secret.py").write_text("TOKEN = 'x'\n")
    for path in ("/files/secret.py", "/files/..%2F..%2Fetc%2Fpasswd", "/files/runs/nothing.html"):
        assert client.get(path).status_code == 404, path
    assert client.get("/api/jobs/9/metrics").status_code == 404
    from tunesmith.cli import build_parser

    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"  # other machines see it only when asked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a browser: apt-get install chromium")
def test_the_page_in_a_headless_browser_lists_jobs_and_draws_loss_charts(project, jobs, tmp_path):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(project / "runs" / "queue", project / "runs", project), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.1)
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=8000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert '<tr data-job="1"><td>1</td><td>finished</td><td class="state-done">done</td><td>100% (100/100)</td>' in dom
    assert '<tr data-job="2"><td>2</td><td>running</td><td class="state-running">running</td><td>40% (40/100)</td>' in dom
    for job in ("1", "2"):
        card = dom.split(f'<div class="run" data-job="{job}">')[1].split('<div class="run"')[0]
        assert '<svg class="loss"' in card and '<polyline class="train"' in card and '<polyline class="eval"' in card
    assert "eval_exact_match 0.4000" in dom and "no sweeps yet" in dom
