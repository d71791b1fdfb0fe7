"""Which checkpoint --resume may trust: every way a checkpoint folder can be broken is planted and named."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tunesmith import checkpoints


def write_checkpoint(folder, step):
    """A checkpoint folder with the files transformers writes for a LoRA run (tiny but real formats)."""
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.ones(4, 4)}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(64)}, folder / name)
    return folder


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def delete(name):
    return lambda folder: (folder / name).unlink()


BROKEN = [
    ("empty folder", lambda folder: [p.unlink() for p in folder.iterdir()], "empty"),
    ("truncated adapter", lambda folder: truncate(folder / "adapter_model.safetensors"), "adapter_model.safetensors is truncated or corrupt"),
    ("truncated optimizer", lambda folder: truncate(folder / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
    ("truncated trainer state", lambda folder: truncate(folder / "trainer_state.json"), "trainer_state.json is truncated or corrupt"),
    ("no trainer state", delete("trainer_state.json"), "no trainer_state.json"),
    ("no optimizer", delete("optimizer.pt"), "no optimizer.pt (the optimiser's moments): resuming without it would not continue the same run"),
    ("no rng state", delete("rng_state.pth"), "no rng_state.pth (the random state of dropout and shuffling)"),
    ("no scheduler", delete("scheduler.pt"), "no scheduler.pt"),
    ("no weights", delete("adapter_model.safetensors"), "no weights"),
]


@pytest.mark.parametrize(("case", "spoil", "why"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_a_broken_newest_checkpoint_is_skipped_and_named(tmp_path, case, spoil, why):
    write_checkpoint(tmp_path / "checkpoint-4", 4)
    spoil(write_checkpoint(tmp_path / "checkpoint-8", 8))
    choice = checkpoints.newest_complete(tmp_path, "sft")
    assert choice.checkpoint == tmp_path / "checkpoint-4"
    assert [name for name, _ in choice.skipped] == ["checkpoint-8"]
    assert why in choice.skipped[0][1]


def test_strays_and_interrupted_saves_are_named_not_read(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    (tmp_path / "checkpoint-x.tmp").mkdir()
    write_checkpoint(tmp_path / checkpoints.UNFINISHED / "checkpoint-4", 4)
    choice = checkpoints.newest_complete(tmp_path, "sft")
    assert choice.checkpoint == tmp_path / "checkpoint-2"
    assert dict(choice.skipped) == {
        "checkpoint-4": "its save was interrupted (left in checkpoints/.unfinished)",
        "checkpoint-x.tmp": "not a checkpoint (checkpoint-<step>)",
    }


def test_a_checkpoint_whose_state_is_at_another_step_is_not_trusted(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-8", 4)  # e.g. a folder copied under the wrong name
    assert checkpoints.problem(tmp_path / "checkpoint-8", "sft") == "trainer_state.json is at step 4, not 8"


def test_ppo_checkpoints_need_their_state_file(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "config.yaml").write_text("method: ppo\n")
    assert checkpoints.problem(folder, "ppo").startswith("no ppo_state.pt")
    torch.save({"step": 2}, folder / "ppo_state.pt")
    assert checkpoints.problem(folder, "ppo") is None
    truncate(folder / "ppo_state.pt")
    assert checkpoints.problem(folder, "ppo") == "ppo_state.pt is truncated or corrupt"


def test_commit_moves_a_finished_save_into_place_and_replaces_an_older_copy(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("name: r\n")
    root = tmp_path / "checkpoints"
    (root / "checkpoint-4").mkdir(parents=True)
    (root / "checkpoint-4" / "stale").write_text("from a run that died here")
    staged = write_checkpoint(checkpoints.staging(root) / "checkpoint-4", 4)
    target = checkpoints.commit(staged, root, config, metrics_lines=7)
    assert target == root / "checkpoint-4" and not (target / "stale").exists()
    assert not (root / checkpoints.UNFINISHED).exists()
    assert (target / "config.yaml").read_text() == "name: r\n" and checkpoints.metrics_lines(target) == 7
    assert checkpoints.problem(target, "sft") is None


def test_rotate_keeps_the_newest_and_the_best(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x.tmp").mkdir()
    checkpoints.rotate(tmp_path, keep=2, protect=str(tmp_path / "checkpoint-2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-8", "checkpoint-x.tmp"]
