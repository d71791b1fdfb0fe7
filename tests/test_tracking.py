"""Each tracker for real: a tiny run logs to it, and the test reads back what arrived (params, metrics, reports,
adapter). The trackers are test dependencies (`make install` installs the mlflow, wandb and tensorboard extras)."""

import glob
import json
import os
import struct

import pytest

from tunesmith.config import validate
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir
from tunesmith.tracking import open_tracker

REPORTS = {"config.yaml", "data_report.md", "data_report.json", "report.md", "loss.png"}


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, and its caches and staging area in the test's folder instead of the home directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def tracked_run(lora_run_factory, tiny_llama, tmp_path, **tracking):
    run = lora_run_factory(tmp_path / "run", tiny_llama, steps=2, tracking=tracking, train={"logging_steps": 1})
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in metrics if "loss" in r}
    assert sorted(losses) == [1, 2]
    return run, json.loads((run / "tracking.json").read_text()), losses


def test_mlflow_store_in_the_run_directory_holds_recipe_metrics_reports_and_adapter(lora_run_factory, tiny_llama, tmp_path):
    from mlflow.tracking import MlflowClient

    run, state, losses = tracked_run(lora_run_factory, tiny_llama, tmp_path, backend="mlflow", project="capitals")
    assert state["where"] == f"sqlite:///{(run / 'mlflow' / 'mlflow.db').resolve()}"
    client = MlflowClient(state["where"])
    logged = client.get_run(state["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert client.get_experiment(logged.info.experiment_id).name == "capitals"
    params = logged.data.params
    assert (params["peft.r"], params["peft.alpha"], params["peft.target_modules"]) == ("4", "8.0", "all-linear")
    assert params["data.template"] == "model" and params["data.system_prompt"] == "Name the capital."
    assert (params["data_report.train.kept"], params["data_report.eval.kept"]) == ("8", "8")
    assert {m.step: m.value for m in client.get_metric_history(state["run_id"], "loss")} == pytest.approx(losses)

    def walk(path=None):
        for item in client.list_artifacts(state["run_id"], path):
            yield item.path
            if item.is_dir:
                yield from walk(item.path)

    artifacts = set(walk())
    assert REPORTS <= artifacts and "adapter/adapter_model.safetensors" in artifacts
    stored = client.download_artifacts(state["run_id"], "report.md", str(tmp_path))
    assert open(stored, encoding="utf-8").read() == (run / "report.md").read_text(encoding="utf-8")
    assert str((run / "mlflow" / "artifacts").resolve()) in logged.info.artifact_uri

    # --resume continues that run (the same store; creating one costs seconds); one that never finishes is FAILED.
    again = open_tracker(RunDir(run).recipe(), RunDir(run), resume=True)
    assert again.run_id == state["run_id"] and client.get_run(state["run_id"]).info.status == "RUNNING"
    again.close(ok=False)
    assert client.get_run(state["run_id"]).info.status == "FAILED"
    assert len(client.search_runs([logged.info.experiment_id])) == 1


def wandb_records(path):
    """The records of a W&B run file (LevelDB log format: 32 KiB blocks of chunks with a 7-byte header each)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_folder_holds_recipe_metrics_reports_and_adapter(lora_run_factory, tiny_llama, tmp_path):
    run, state, losses = tracked_run(lora_run_factory, tiny_llama, tmp_path, backend="wandb", project="capitals", run_name="first-try")
    [folder] = glob.glob(str(run / "wandb" / f"offline-run-*-{state['run_id']}"))
    assert state["where"] == f"project capitals, offline: {folder}"
    config, history, files, artifacts, exit_code, name = {}, {}, set(), {}, None, None
    [records_file] = glob.glob(f"{folder}/run-*.wandb")
    for record in wandb_records(records_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name, project = record.run.display_name, record.run.project
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            step = {item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json) for item in record.history.item}
            if "loss" in step:
                history[step["_step"]] = step["loss"]
        elif kind == "files":
            files |= {f.path for f in record.files.files}
        elif kind == "artifact":
            artifacts[record.artifact.type] = {entry.path for entry in record.artifact.manifest.contents}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert (name, project, exit_code) == ("first-try", "capitals", 0)
    assert config["peft.r"] == 4 and config["peft.target_modules"] == "all-linear" and config["data_report.train.kept"] == 8
    assert history == pytest.approx(losses)
    assert REPORTS <= files
    assert "adapter_model.safetensors" in artifacts["model"]


def test_tensorboard_event_files_hold_recipe_metrics_reports_and_plot(lora_run_factory, tiny_llama, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, state, losses = tracked_run(lora_run_factory, tiny_llama, tmp_path, backend="tensorboard")
    assert state["where"] == str(run / "tensorboard")
    events = EventAccumulator(state["where"], size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    assert {s.step: s.value for s in events.Scalars("loss")} == pytest.approx(losses)
    texts = {tag.split("/")[0]: events.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert "| peft.r | 4 |" in texts["params"] and "| data_report.train.kept | 8 |" in texts["params"]
    assert texts["report"] == (run / "report.md").read_text(encoding="utf-8")
    assert "data_report" in texts and events.Tags()["images"] == ["loss"]


def recipe_with(tmp_path, **tracking):
    return validate({"model": {"path": "org/m"}, "data": {"train": "x.jsonl"}, "tracking": tracking, "output_dir": str(tmp_path / "run")})


def test_shorthand_and_section_are_the_same_setting(tmp_path):
    short = validate({"model": {"path": "org/m"}, "data": {"train": "x.jsonl"}, "tracking": "wandb", "output_dir": str(tmp_path / "run")})
    assert short.tracking == recipe_with(tmp_path, backend="wandb").tracking
    assert (short.tracking.project, short.tracking.uri, short.tracking.run_name) == ("tunesmith", None, None)


def test_a_broken_tracker_install_stops_the_run_before_the_model_loads(tmp_path, monkeypatch, tiny_llama):
    import importlib

    from tunesmith.methods import sft

    # What an mlflow built against another protobuf raises on import.
    real = importlib.import_module

    def broken(name, *args):
        if name == "mlflow":
            raise TypeError("Descriptors cannot be created directly.\nIf this call came from a _pb2.py file ...")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.setattr(sft, "load_model", lambda *a, **k: pytest.fail("the model loaded before the tracker was checked"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    recipe = validate({"model": {"path": str(tiny_llama)}, "data": {"train": str(data)}, "tracking": "mlflow", "output_dir": str(tmp_path / "run")})
    with pytest.raises(TunesmithError) as err:
        sft.train(recipe)
    assert str(err.value) == (
        "tracking.backend: mlflow cannot be imported (TypeError: Descriptors cannot be created directly.): "
        "pip install -c constraints.txt 'tunesmith[mlflow]'"
    )
    assert not (tmp_path / "run").exists()


def test_an_unreachable_tracking_server_is_one_line_at_once(tmp_path, monkeypatch):
    import time

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's own default: minutes of retries
    recipe = recipe_with(tmp_path, backend="mlflow", uri="http://127.0.0.1:9")
    run = RunDir(recipe.run_dir)
    run.path.mkdir()
    started = time.monotonic()
    with pytest.raises(TunesmithError, match=r"^tracking: cannot start a mlflow run at http://127.0.0.1:9: MlflowException: .*Connection refused") as err:
        open_tracker(recipe, run, resume=False)
    assert time.monotonic() - started < 30
    assert "\n" not in str(err.value) and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
