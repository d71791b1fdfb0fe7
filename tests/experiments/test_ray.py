"""--backend ray against a real local Ray instance (ray.init with 2 CPUs), not a mock: jobs run as Ray tasks, in
their own folder, with their exit code and error kept."""

import signal

import pytest

ray = pytest.importorskip("ray")

from tunesmith.cli import main  # noqa: E402
from tunesmith.experiments.ray_backend import RayCluster  # noqa: E402
from tunesmith.experiments.store import JobQueue  # noqa: E402
from tunesmith.experiments.worker import Worker  # noqa: E402


@pytest.fixture
def local_ray(project):
    """Started after `project` set PYTHONPATH, so that Ray's workers import this checkout's tunesmith. ray.init sets
    its own SIGTERM handler in this process (sys.exit); the tests after these get the handler they had before."""
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.slow  # a local Ray instance takes ~15 s to start on 2 CPU cores
def test_two_jobs_run_as_ray_tasks_at_once(project, local_ray, capsys):
    assert main(["queue", "add", "--name", "listing", "runs", "list", "."]) == 0
    assert main(["queue", "add", "--name", "broken", "runs", "compare", "nothing-here"]) == 0
    cluster = RayCluster(None, cpus_per_job=1, gpus=False)
    assert cluster.slots() == 2  # 2 CPUs, 1 per job
    queue = JobQueue()
    Worker(queue, cluster.slots(), None, exit_when_empty=True, poll=0.1, backend=cluster).run()
    listing, broken = queue.get(1), queue.get(2)
    assert (listing.state, listing.exit_code, listing.devices, listing.pid) == ("done", 0, "ray", None)
    assert (broken.state, broken.exit_code) == ("failed", 2)
    assert broken.error == "error: not a run directory (no config.yaml and template.json): nothing-here"
    assert "no runs in ." in queue.log_file(1).read_text()
    assert broken.started < listing.ended and listing.started < broken.ended  # side by side, not one after the other
    assert ray.is_initialized()  # a cluster it did not start is left running
    assert "on a Ray cluster" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_cancels_a_task_still_waiting_for_a_node_and_queues_its_job_again(project, local_ray):
    import signal

    assert main(["queue", "add", "--name", "waiting", "runs", "list", "."]) == 0
    cluster = RayCluster(None, cpus_per_job=3, gpus=False)  # more CPUs than the cluster has: Ray holds the task back
    turns = []

    def turn():
        turns.append(1)
        if len(turns) == 3:
            signal.raise_signal(signal.SIGTERM)
        return True

    queue = JobQueue()
    Worker(queue, 1, None, poll=0.1, backend=cluster).run(between=turn)
    job = queue.get(1)
    assert (job.state, job.resume, job.exit_code) == ("queued", True, -signal.SIGTERM)
    assert job.note == "stopped by the worker's SIGTERM: continues from its checkpoint"
