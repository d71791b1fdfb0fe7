"""`--backend ray`: the queue's jobs run as Ray tasks, on a Ray cluster, each asking for its CPUs and GPUs.

    ray start --head                                             # or an existing cluster
    tunesmith queue work --backend ray --ray-address auto        # every queued job becomes a Ray task
    tunesmith sweep sweeps/quickstart.yaml --backend ray --ray-address ray://head:10001

The queue stays where it is (SQLite, on the machine running `queue work`); only the jobs move. A task runs the
job's command as on a local worker, `python -m tunesmith ...` in the job's folder, with Ray's CUDA_VISIBLE_DEVICES.
So every node needs tunesmith installed, and the job's folder, its data, the queue folder and the runs at the same
paths: a shared filesystem (NFS, a mounted bucket). Without --ray-address, a local Ray instance is started.

A SIGTERM or cancel for a job is passed on through a file in its job folder (jobs/<id>/signals), which the task
reads every half second and turns into a SIGTERM of its process: a train job saves a checkpoint and stops, as it
does locally. A task still waiting for a node (jobs/<id>/ray_task not written yet) is cancelled in Ray instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.experiments.store import Job


def run_job(argv: list[str], cwd: str, variables: dict[str, str], log_file: str, signals_file: str) -> int:
    """The Ray task: the job's process, with the SIGTERMs written to `signals_file` passed on. Its exit code."""
    from tunesmith.experiments.worker import die_with_parent

    with open(log_file, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "tunesmith", *argv], cwd=cwd, env=os.environ | variables, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    Path(signals_file).with_name("ray_task").write_text(f"{process.pid}\n", encoding="utf-8")  # it runs: signals reach it now
    sent = 0
    while process.poll() is None:
        asked = len(Path(signals_file).read_text().split()) if os.path.exists(signals_file) else 0
        while sent < asked:
            process.send_signal(signal.SIGTERM)
            sent += 1
        time.sleep(0.5)
    return process.returncode


class RayTask:
    """A running job on Ray, answering as a subprocess.Popen does: poll(), send_signal(), pid (None: on another node)."""

    pid = None

    def __init__(self, ref, signals_file: Path):
        self.ref, self.signals_file = ref, signals_file
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import ray

        if self.returncode is None and ray.wait([self.ref], timeout=0)[0]:
            try:
                self.returncode = ray.get(self.ref)
            except ray.exceptions.RayError as err:  # its node or worker died
                with self.signals_file.with_name("log.txt").open("a", encoding="utf-8") as log:
                    log.write(f"\nerror: the Ray task stopped: {str(err).splitlines()[0]}\n")
                self.returncode = -signal.SIGKILL
        return self.returncode

    def send_signal(self, signum: int) -> None:
        import ray

        if not self.signals_file.with_name("ray_task").is_file():  # still waiting for a node: it never starts
            ray.cancel(self.ref)
            self.returncode = -signal.SIGTERM
            return
        with self.signals_file.open("a", encoding="utf-8") as f:
            f.write(f"{signum}\n")


class RayCluster:
    """Where a worker with --backend ray runs its jobs."""

    where = "ray"

    def __init__(self, address: str | None, cpus_per_job: float, gpus: bool):
        try:
            import ray
        except ImportError:
            raise TunesmithError("--backend ray needs Ray: pip install 'tunesmith[ray]'") from None
        self.started = not ray.is_initialized()
        self.sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with its own (sys.exit); close() puts it back
        if self.started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as err:
                raise TunesmithError(f"--ray-address {address}: {err}") from None
        self.cpus_per_job = cpus_per_job
        # A job asking for a GPU that no node has would wait for ever: on a cluster without GPUs, jobs run on CPUs.
        self.gpus = gpus and ray.cluster_resources().get("GPU", 0) > 0
        if gpus and not self.gpus:
            print("the Ray cluster has no GPUs: jobs run on its CPUs", file=sys.stderr)
        self.task = ray.remote(run_job)

    def slots(self) -> int:
        """How many jobs the cluster can run at once: its GPUs, or its CPUs by cpus_per_job."""
        import ray

        resources = ray.cluster_resources()
        if self.gpus and resources.get("GPU"):
            return int(resources["GPU"])
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_job))

    def start(self, job: Job, argv: list[str], variables: dict[str, str], log_file: Path) -> RayTask:
        if not Path(job.cwd).is_dir():
            raise FileNotFoundError(2, "no such folder", job.cwd)
        if not self.gpus:
            variables = variables | {"CUDA_VISIBLE_DEVICES": ""}
        signals_file = log_file.with_name("signals")
        signals_file.write_text("", encoding="utf-8")
        signals_file.with_name("ray_task").unlink(missing_ok=True)
        ref = self.task.options(num_cpus=self.cpus_per_job, num_gpus=job.gpus if self.gpus else 0, name=f"tunesmith-job-{job.id}").remote(
            argv, job.cwd, variables, str(log_file.resolve()), str(signals_file.resolve()))
        return RayTask(ref, signals_file)

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
            signal.signal(signal.SIGTERM, self.sigterm)
