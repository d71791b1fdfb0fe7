"""`tunesmith queue add` and the commands that read the queue, without running a job: what is checked when a job
is added, and what ls/show print."""

import json
import time

import pytest

from tests.experiments.conftest import write_recipe
from tunesmith.cli import main
from tunesmith.experiments.store import JobQueue


def queue_add(*words) -> int:
    return main(["queue", "add", *words])


def test_a_recipe_becomes_a_train_job_named_as_asked_with_a_copy_of_the_recipe(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    # Queue options after the overrides are read too: train itself has none of them.
    assert queue_add(str(recipe), "train.lr=5e-4", "--name", "lr5e-4", "--priority", "3") == 0
    out = capsys.readouterr().out
    job = JobQueue(create=False).get(1)
    copy = project / "runs" / "queue" / "jobs" / "1" / "capitals.yaml"
    assert job.argv == ["train", str(copy), "train.lr=5e-4", "name=lr5e-4"]
    assert (job.name, job.priority, job.run_dir, job.cwd) == ("lr5e-4", 3, str(project / "runs" / "lr5e-4"), str(project))
    assert out.startswith(f"job 1 lr5e-4 queued: tunesmith train {copy} train.lr=5e-4 name=lr5e-4\n")
    recipe.write_text(recipe.read_text().replace("max_steps: 8", "max_steps: 9"))
    assert "max_steps: 8" in copy.read_text()  # editing the recipe later changes no queued job


@pytest.mark.parametrize("words, message", [
    (["{recipe}", "train.lr=fast"], "train.lr: 'fast': expected a finite number > 0"),
    (["{recipe}", "train.bogus=1"], "train.bogus: unknown key"),
    (["{recipe}", "--nmae", "x"], "--nmae is neither an override (key=value) nor an option of queue add"),
    (["missing.yaml"], "recipe not found: missing.yaml"),
    (["notes.txt"], "notes.txt is neither a recipe (.yaml) nor a tunesmith command"),
    (["--after", "7", "{recipe}"], "--after: no job 7 in runs/queue"),
    (["--after", "x", "{recipe}"], "--after: 'x' is not a job id"),
    (["serve", "runs/x"], "queue add: serve runs until stopped, it cannot be a job"),
    (["eval", "runs/x", "--data", "d.jsonl", "--bogus"], "`tunesmith eval` does not take --bogus"),
    ([], "queue add: give a recipe"),
])
def test_a_bad_job_is_refused_when_added_not_when_it_runs(project, stories_path, capsys, words, message):
    recipe = write_recipe(project, stories_path)
    assert queue_add(*[w.replace("{recipe}", str(recipe)) for w in words]) == 2
    assert message in capsys.readouterr().err
    assert not (project / "runs" / "queue" / "queue.db").is_file() or JobQueue().jobs() == []


def test_two_jobs_never_train_into_one_run_directory(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    assert queue_add(str(recipe)) == 0
    assert queue_add(str(recipe), "train.lr=1e-3") == 2
    assert f"error: job 1 (capitals) already trains into {project / 'runs' / 'capitals'}: give this one --name NAME" in capsys.readouterr().err
    assert queue_add(str(recipe), "train.lr=1e-3", "--name", "other") == 0
    (project / "runs" / "done" / "adapter").mkdir(parents=True)  # a finished run
    assert queue_add(str(recipe), "--name", "done") == 2
    assert "runs/done already holds a run: add with --resume to continue it" in capsys.readouterr().err


def test_other_commands_are_queued_as_written_after_their_dependency(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    queue_add(str(recipe), "--name", "sft")
    # The run it evaluates does not exist yet: only the command's form is checked.
    assert queue_add("--after", "1", "eval", "runs/sft", "--data", "capitals.jsonl", "--name", "heldout") == 0
    job = JobQueue().get(2)
    assert (job.argv, job.after, job.name, job.run_dir) == (["eval", "runs/sft", "--data", "capitals.jsonl", "--name", "heldout"], [1], "eval sft", None)
    assert queue_add("--after", "1,2", "eval", "select", "--models", "runs/sft", "--data", "capitals.jsonl") == 0
    assert JobQueue().get(3).argv[:2] == ["eval select", "--models"]


def test_ls_shows_progress_loss_elapsed_and_eta_from_the_run(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    for name in ("a", "b", "c"):
        queue_add(str(recipe), "--name", name)
    queue = JobQueue()
    now = time.time()
    queue.claim("host:1", None)
    queue.db.execute("UPDATE jobs SET started = ? WHERE id = 1", (now - 65,))
    (project / "runs" / "a").mkdir(parents=True)
    # 40 of 100 steps, the 30 since this session began took 60 s: 60 steps left take 120 s.
    record = {"step": 40, "max_steps": 100, "start_step": 10, "started_at": now - 60, "updated_at": now, "loss": 1.23456}
    (project / "runs" / "a" / "progress.json").write_text(json.dumps(record))
    queue.claim("host:1", None)
    queue.finish(2, "failed", exit_code=2, error="error: data.train[0]: file not found: capitals.jsonl\nmore")
    capsys.readouterr()
    assert main(["queue", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "name", "state", "progress", "loss", "elapsed", "ETA", "device", "note"]
    row = lines[1].split()
    assert row[:6] == ["1", "a", "running", "40%", "(40/100)", "1.2346"] and row[8:] == ["cpu"]
    assert row[6] in ("1m05s", "1m06s") and row[7] in ("2m00s", "1m59s")  # elapsed since it started; ETA
    assert lines[2].split()[:3] == ["2", "b", "failed"] and lines[2].endswith("error: data.train[0]: file not found: capitals.jsonl")
    assert lines[3].split() == ["3", "c", "queued"]

    assert main(["queue", "show", "2"]) == 0
    out = capsys.readouterr().out
    assert "state:     failed\n" in out and "exit code: 2\n" in out
    assert out.endswith("error:\n  error: data.train[0]: file not found: capitals.jsonl\n  more\n")


def test_queue_commands_without_a_queue_say_so(project, capsys):
    assert main(["queue", "ls"]) == 2
    assert "error: no queue at runs/queue (no queue.db): add a job first with tunesmith queue add" in capsys.readouterr().err


def test_ls_watch_redraws_until_ctrl_c(project, stories_path, capsys, monkeypatch):
    from tunesmith.experiments import commands

    queue_add(str(write_recipe(project, stories_path)), "--name", "a")
    naps = []

    def nap(seconds):
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt
        JobQueue().claim("host:1", None)  # what the table shows changes between two drawings

    monkeypatch.setattr(commands.time, "sleep", nap)
    capsys.readouterr()
    assert main(["queue", "ls", "--watch"]) == 0  # Ctrl-C ends a watch: no error, no traceback
    out = capsys.readouterr().out
    assert naps == [2.0, 2.0] and "running" in out.splitlines()[-1]


def test_rm_finished_keeps_what_a_queued_job_waits_for(project, capsys):
    for name in ("first", "second"):
        queue_add("--name", name, "runs", "list", ".")
    queue_add("--after", "1", "--name", "third", "runs", "list", ".")
    queue = JobQueue()
    for _ in range(2):
        queue.finish(queue.claim("host:1", None).id, "done", exit_code=0)
    capsys.readouterr()
    assert main(["queue", "rm", "--finished"]) == 0
    assert capsys.readouterr().out == "job 1 first kept: job 3 waits for it (--after)\njob 2 second removed\n"
    assert [j.id for j in queue.jobs()] == [1, 3]


def test_a_stopped_run_can_be_queued_to_continue_with_changed_settings(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    (project / "runs" / "capitals" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    assert queue_add(str(recipe), "train.lr=1e-3", "--allow-changes") == 2
    assert "--allow-changes goes with --resume" in capsys.readouterr().err
    assert queue_add(str(recipe), "train.lr=1e-3", "--resume", "--allow-changes") == 0
    job = JobQueue().get(1)
    assert job.resume and job.argv[2:] == ["train.lr=1e-3", "name=capitals", "--allow-changes"]


def test_a_train_job_asking_for_several_devices_trains_one_process_on_each(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    assert queue_add(str(recipe), "--gpus", "2", "--name", "two") == 0
    assert queue_add(str(recipe), "--name", "one") == 0
    two, one = JobQueue(create=False).get(1), JobQueue(create=False).get(2)
    assert two.argv[-2:] == ["--nproc", "2"] and two.gpus == 2  # DDP (or train.distributed's engine), not DataParallel
    assert "--nproc" not in one.argv


def test_runs_list_shows_queued_jobs_runs_before_they_begin_and_which_are_running(project, stories_path, capsys):
    recipe = write_recipe(project, stories_path)
    assert queue_add(str(recipe), "--name", "first") == 0
    assert queue_add(str(recipe), "--name", "second") == 0
    capsys.readouterr()
    assert main(["runs", "list", "runs"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"queued, not started: job 1 first ({project / 'runs' / 'first'})",
        f"queued, not started: job 2 second ({project / 'runs' / 'second'})",
    ]
    queue = JobQueue()
    queue.claim("host:1", None)  # job 1 starts: its run directory appears as training begins
    assert main(["train", str(recipe), "name=first", "train.max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["runs", "list", "runs"]) == 0
    out = capsys.readouterr().out
    assert "| finished; running as job 1 |" in out
    assert out.rstrip().splitlines()[-1] == f"queued, not started: job 2 second ({project / 'runs' / 'second'})"
