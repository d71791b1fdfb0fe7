"""The queue's store on its own: states and their transitions, priorities, --after, devices, stale jobs, and many
processes claiming at once. No job runs here."""

import multiprocessing
import os
import time

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.experiments.store import JobQueue, NewJob, this_host


def add(queue: JobQueue, name: str, **kwargs):
    return queue.add(NewJob(name=name, argv=["runs", "list", "."], cwd="/tmp", **kwargs))


def test_a_job_goes_queued_running_done_and_keeps_what_happened(tmp_path):
    queue = JobQueue(tmp_path / "q")
    job = add(queue, "a")
    assert (job.state, job.attempts, job.worker) == ("queued", 0, None)
    claimed = queue.claim("host:1", None)
    assert (claimed.id, claimed.state, claimed.attempts, claimed.worker, claimed.devices) == (job.id, "running", 1, "host:1", "cpu")
    assert queue.claim("host:2", None) is None  # nothing else to take
    done = queue.finish(job.id, "done", exit_code=0)
    assert (done.state, done.exit_code) == ("done", 0) and done.ended >= done.started
    # Nothing is kept in memory: another connection sees the same.
    assert JobQueue(tmp_path / "q", create=False).get(job.id).state == "done"


def test_failed_jobs_keep_their_error_and_retry_continues_them(tmp_path):
    queue = JobQueue(tmp_path / "q")
    job = add(queue, "a")
    queue.claim("host:1", None)
    failed = queue.finish(job.id, "failed", exit_code=2, error="error: data.train[0]: file not found: x.jsonl")
    assert (failed.state, failed.exit_code, failed.error) == ("failed", 2, "error: data.train[0]: file not found: x.jsonl")
    retried = queue.retry(job.id)
    assert (retried.state, retried.resume, retried.error, retried.exit_code) == ("queued", True, None, None)
    assert retried.note == "retried after it failed"
    assert queue.claim("host:1", None).attempts == 2


def test_transitions_that_make_no_sense_are_refused(tmp_path):
    queue = JobQueue(tmp_path / "q")
    job = add(queue, "a")
    with pytest.raises(TunesmithError, match="job 1 \\(a\\) is queued: only a failed or cancelled job can be retried"):
        queue.retry(job.id)
    queue.claim("host:1", None)
    with pytest.raises(TunesmithError, match="job 1 is running: cancel it first"):
        queue.remove([job.id])
    queue.finish(job.id, "done", exit_code=0)
    with pytest.raises(TunesmithError, match="job 1 \\(a\\) is done: only a queued or running job can be cancelled"):
        queue.cancel(job.id)
    with pytest.raises(TunesmithError, match="no job 7 in"):
        queue.get(7)


def test_cancel_a_queued_job_at_once_and_a_running_one_through_its_worker(tmp_path):
    queue = JobQueue(tmp_path / "q")
    waiting, running = add(queue, "waiting", priority=-1), add(queue, "running")
    assert queue.claim("host:1", None).id == running.id
    assert queue.cancel(waiting.id).state == "cancelled"
    asked = queue.cancel(running.id)
    assert (asked.state, asked.cancel_requested) == ("running", True)  # the worker sees the flag and stops the process


def test_higher_priority_first_then_the_order_added(tmp_path):
    queue = JobQueue(tmp_path / "q")
    for name, priority in [("low", -1), ("first", 0), ("urgent", 5), ("second", 0)]:
        add(queue, name, priority=priority)
    assert [queue.claim("host:1", None).name for _ in range(4)] == ["urgent", "first", "second", "low"]


def test_after_waits_for_done_and_a_failed_dependency_cancels_its_dependents(tmp_path):
    queue = JobQueue(tmp_path / "q")
    train = add(queue, "train")
    evaluate = add(queue, "eval", after=[train.id], priority=9)
    merge = add(queue, "merge", after=[evaluate.id], priority=9)
    assert queue.claim("host:1", None).id == train.id  # eval's higher priority does not put it before its --after
    assert queue.claim("host:1", None) is None
    queue.finish(train.id, "done", exit_code=0)
    assert queue.claim("host:1", None).id == evaluate.id
    queue.finish(evaluate.id, "failed", exit_code=1, error="boom")
    assert queue.claim("host:1", None) is None
    skipped = queue.get(merge.id)
    assert (skipped.state, skipped.note) == ("cancelled", f"not run: job {evaluate.id} (its --after) failed")
    with pytest.raises(TunesmithError, match="--after: no job 99"):
        add(queue, "x", after=[99])


def test_removing_a_job_others_wait_for_is_refused(tmp_path):
    queue = JobQueue(tmp_path / "q")
    first = add(queue, "first")
    second = add(queue, "second", after=[first.id])
    with pytest.raises(TunesmithError, match="job 2 waits for job 1 \\(--after\\)"):
        queue.remove([first.id])
    queue.log_file(first.id).write_text("output\n")
    assert [j.name for j in queue.remove([first.id, second.id])] == ["first", "second"]
    assert queue.jobs() == [] and not queue.job_folder(first.id).exists()


def test_devices_are_shared_by_the_workers_of_one_machine(tmp_path):
    queue = JobQueue(tmp_path / "q")
    big, small, other = add(queue, "big", gpus=2), add(queue, "small"), add(queue, "other")
    host = this_host()
    assert queue.claim(f"{host}:1", ["0", "1", "2"]).devices == "0,1"
    assert queue.claim(f"{host}:2", ["0", "1", "2"]).devices == "2"  # a second worker on the same GPUs takes the free one
    assert queue.claim(f"{host}:1", ["0", "1", "2"]) is None
    queue.finish(big.id, "done", exit_code=0)
    assert queue.claim(f"{host}:2", ["0", "1", "2"]).devices == "0"
    assert {j.id for j in queue.jobs(("running",))} == {small.id, other.id}
    too_big = add(queue, "too big", gpus=4)
    assert queue.runnable_later(["0", "1"]) == [] and queue.runnable_later(None)[0].id == too_big.id


def test_a_job_whose_worker_died_is_queued_again_to_resume(tmp_path):
    queue = JobQueue(tmp_path / "q")
    local, remote, beating, cancelled, still_saving = (add(queue, n) for n in ("local", "remote", "beating", "cancelled", "still saving"))
    host, dead = this_host(), 999_999_999
    queue.claim(f"{host}:{dead}", None)  # local: its worker's process is gone
    queue.claim("elsewhere:5", None)  # remote: silent for longer than stale_after
    queue.claim(f"{host}:{os.getpid()}", None)  # beating: this process, alive
    queue.claim(f"{host}:{dead}", None)
    queue.cancel(cancelled.id)
    queue.claim(f"{host}:{dead}", None)
    queue.set_pid(still_saving.id, os.getpid())  # its own process still runs (saving its checkpoint)
    queue.db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time() - 600, remote.id))

    def alive(pid):
        return pid == os.getpid()

    recovered = {j.name: j for j in queue.recover(stale_after=120, alive=alive)}
    assert set(recovered) == {"local", "remote", "cancelled"}
    assert (recovered["local"].state, recovered["local"].resume, recovered["local"].worker) == ("queued", True, None)
    assert f"its worker {host}:{dead} stopped without a word" in recovered["local"].note
    assert recovered["remote"].state == "queued"
    assert recovered["cancelled"].state == "cancelled"
    assert queue.get(beating.id).state == queue.get(still_saving.id).state == "running"


def claim_all(folder, worker, out):
    queue = JobQueue(folder, create=False)
    taken = []
    while (job := queue.claim(worker, None)) is not None:
        taken.append(job.id)
    out.put(taken)


def test_concurrent_claims_never_take_one_job_twice(tmp_path):
    queue = JobQueue(tmp_path / "q")
    ids = [add(queue, f"job{i}").id for i in range(60)]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=claim_all, args=(tmp_path / "q", f"host:{i}", out)) for i in range(4)]
    for w in workers:
        w.start()
    taken = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    claimed = [i for t in taken for i in t]
    assert sorted(claimed) == ids  # each job once, none lost
    assert all(j.attempts == 1 for j in queue.jobs())
