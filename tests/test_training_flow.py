"""The fine-tune flow and `autosafe train` on runs committed with the scripted model: a tiny llama
built from a config is tuned on the run's train split (torchrun, one CPU process), and the run
then shows its adapter; a run without train rows records why it was not trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autosafe_core.store import committed, commit_shard, read_records, update_manifest
from autosafe_core.store.records import TrainingStepRow
from flows.cli import app
from flows.data_flows import launch
from flows.finetune import finetune_flow
from flows.pipeline import make_run
from tests.support.factory import scripted_config
from tests.support.prefect import prefect_server  # noqa: F401 - fixture
from tests.support.s3 import moto_s3, s3_storage  # noqa: F401 - fixtures
from tests.support.tiny_llama import tiny_llama_dir
from tests.test_engines_cli import ray_cluster  # noqa: F401 - fixture
from tests.test_training_data import dataset_row

REPO = Path(__file__).resolve().parent.parent

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def show(storage: Path, run_id: str) -> dict:
    result = invoke("show", run_id, "--storage", str(storage), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "base")


def bare_run(storage: Path, run_id: str, train_rows: int):
    """A run with a manifest and a committed dataset (`train_rows` train rows), no other table."""
    config = scripted_config(storage, run_id=run_id)
    run = make_run(config)
    update_manifest(run, config=config.content())
    commit_shard(run, "dataset", "dataset", "train", [dataset_row(i, "train") for i in range(train_rows)])
    return config


@pytest.mark.slow
def test_the_factory_trains_the_agent_and_train_tunes_again_with_other_settings(prefect_server, tiny, tmp_path):
    storage = tmp_path / "data"
    config = scripted_config(storage, run_id="tuned", scenarios=6, shard_size=3, finetune=True,
                             training={"base_model": str(tiny), "max_steps": 2})  # fmt: skip
    manifest = launch("run", config)

    first = manifest.extra["training"]
    assert first["status"] == "done" and first["steps"] == 2 and first["method"] == "lora"
    assert (Path(first["adapter"]) / "adapter_config.json").is_file()
    assert Path(first["adapter"]).parent == storage.resolve() / "runs" / "tuned" / "finetune" / first["train_id"]
    assert Path(first["loss_plot"]).read_bytes().startswith(PNG)
    assert first["examples"]["safe"] == manifest.rows("dataset") - _other_splits(config)

    result = invoke("train", "tuned", "--storage", str(storage), "--base-model", str(tiny), "--max-steps", "3")

    assert result.exit_code == 0, result.output
    adapter = result.output.strip().splitlines()[-1]
    report = show(storage, "tuned")
    second = report["extra"]["training"]
    assert report["training"] == second  # `show --json` also puts it at the top
    assert second["adapter"] == adapter != first["adapter"] and second["steps"] == 3
    assert report["tables"]["training"] == 5
    rows: list[TrainingStepRow] = read_records(make_run(config), "training")
    steps = {(r.train_id, r.step) for r in rows}
    assert steps == {(first["train_id"], 1), (first["train_id"], 2), *((second["train_id"], s) for s in (1, 2, 3))}
    assert all(r.tokens > 0 and r.tokens_per_s > 0 and r.devices == 1 for r in rows)

    before = [(r.shard_id, r.committed_at) for r in committed(make_run(config), "training")]
    again = invoke("train", "tuned", "--storage", str(storage), "--base-model", str(tiny), "--max-steps", "3")
    assert again.exit_code == 0 and again.output.strip().splitlines()[-1] == adapter
    assert [(r.shard_id, r.committed_at) for r in committed(make_run(config), "training")] == before


def _other_splits(config) -> int:
    return sum(ref.rows for ref in committed(make_run(config), "dataset") if ref.shard_id != "train")


def test_a_run_without_train_rows_is_recorded_as_skipped_and_train_refuses_it(prefect_server, tiny, tmp_path):
    config = bare_run(tmp_path, "empty", train_rows=0)

    manifest = finetune_flow(config.model_copy(update={"training": config.training.model_copy(update={"base_model": str(tiny)})}))

    skipped = manifest.extra["training"]
    assert skipped["status"] == "skipped" and "no train rows" in skipped["reason"]
    assert show(tmp_path, "empty")["extra"]["training"] == skipped
    result = invoke("train", "empty", "--storage", str(tmp_path), "--base-model", str(tiny))
    assert result.exit_code == 2
    assert result.output.strip() == f"autosafe: run empty: nothing to train: {skipped['reason']}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "autosafe: run nope not found in {storage}"),
        (["bare", "--deepspeed", "zero9"], "autosafe: field 'training.deepspeed': deepspeed config 'zero9': no file "),
        (["bare", "--max-steps", "0"], "autosafe: field 'training.max_steps': must be at least 1"),
        (["bare"], "autosafe: run bare: nothing to train: the agent runs on the scripted backend, which has no weights"),
    ],
)
def test_train_mistakes_are_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    bare_run(tmp_path, "bare", train_rows=2)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    result = invoke("train", *args, "--storage", str(tmp_path))

    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(message.format(storage=tmp_path))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_general_set_that_is_not_there_is_named(tmp_path, tiny):
    bare_run(tmp_path, "bare", train_rows=2)
    config = tmp_path / "training.yaml"
    config.write_text(f"training:\n  base_model: {tiny}\n  general_data: {tmp_path / 'general.jsonl'}\n  general_ratio: 0.3\n")

    result = invoke("train", "bare", "--storage", str(tmp_path), "--config", str(config))

    assert result.exit_code == 2
    assert result.output.strip() == f"autosafe: {config}: field 'general_data': {tmp_path / 'general.jsonl'}: no such file"


@pytest.mark.slow
def test_the_quickstart_default_tunes_smollm2_on_the_cpu_in_a_short_lora(prefect_server, tmp_path):
    """The embedded default's agent (SmolLM2-135M on the transformers backend) and the default
    training settings, on real SFT rows: what `autosafe run` does once its judge accepts samples."""
    import time

    from autosafe_core.catalog import default_catalog
    from autosafe_core.training import to_dataset_row
    from flows.config import FactoryConfig
    from tests.support.samples import safe_sample

    config = FactoryConfig(run_id="quick", storage={"uri": str(tmp_path)})
    run = make_run(config)
    update_manifest(run, config=config.content())
    catalog = default_catalog()
    rows = []
    for i, toolkit in enumerate(["Terminal", "EmailClient", "BankAccount", "SmartHome"]):
        sample = safe_sample(f"q{i}")
        sample = sample.model_copy(update={"scenario": sample.scenario.model_copy(update={"toolkits": [toolkit]})})
        rows.append(to_dataset_row(sample, "train", catalog))
    commit_shard(run, "dataset", "dataset", "train", rows)

    began = time.monotonic()
    training = finetune_flow(config).extra["training"]
    seconds = time.monotonic() - began

    print(f"default LoRA on SmolLM2: {training['steps']} steps, loss {training['first_loss']:.3f} -> "
          f"{training['final_loss']:.3f}, {training['tokens_per_s']:.0f} tokens/s, {seconds:.0f} s in all")  # fmt: skip
    assert training["status"] == "done" and training["steps"] == 8 and training["device"] == "cpu"
    assert training["base_model"].endswith("smollm2-135m-instruct")
    assert training["final_loss"] < training["first_loss"]


@pytest.mark.slow
def test_train_on_a_ray_cluster_runs_ray_train_workers_under_the_run_data_config_hash(ray_cluster, tiny, tmp_path):
    from autosafe_core.store import read_manifest, read_table, write_manifest

    config = bare_run(tmp_path, "on-ray", train_rows=4)
    run = make_run(config)
    # Code whose defaults moved since the data was made hashes the same settings differently:
    # training adds no data row, so it runs under the hash the data was made with.
    manifest = read_manifest(run)
    write_manifest(run, manifest.model_copy(update={"config_hash": "d" * 64}))

    # In its own process, as a user runs it: a Ray driver or Prefect context left in this one by
    # earlier tests must not decide the outcome (in-process, the Ray Train controller once died here).
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "train", "on-ray", "--storage", str(tmp_path), "--base-model", str(tiny),
         "--max-steps", "2", "--processes", "2", "--ray-address", ray_cluster],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    training = show(tmp_path, "on-ray")["extra"]["training"]
    assert training["status"] == "done" and training["devices"] == 2 and training["steps"] == 2
    assert (Path(training["adapter"]) / "adapter_model.safetensors").is_file()
    assert set(read_table(run, "training", columns=["config_hash"]).column("config_hash").to_pylist()) == {"d" * 64}


@pytest.mark.slow
def test_a_job_that_fails_exits_1_in_one_line_and_the_run_records_why(prefect_server, tmp_path):
    bare_run(tmp_path, "broken", train_rows=2)
    missing = tmp_path / "no-such-model"

    result = invoke("train", "broken", "--storage", str(tmp_path), "--base-model", str(missing), "--max-steps", "1")

    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()[-1:]
    assert line.startswith("autosafe: training exited with status 1: ") and "no-such-model" in line
    training = show(tmp_path, "broken")["extra"]["training"]
    assert training["status"] == "failed" and training["reason"] == line.removeprefix("autosafe: ")
    assert "Traceback" in Path(training["log"]).read_text()


@pytest.mark.slow
def test_on_s3_checkpoints_and_the_adapter_go_to_the_bucket_and_a_restart_resumes_from_there(
    prefect_server, moto_s3, s3_storage, tiny, monkeypatch
):
    import s3fs

    config = bare_run(s3_storage, "in-s3", train_rows=4)
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"base_model": str(tiny), "max_steps": 4, "save_steps": 2, "learning_rate": 1e-2})})  # fmt: skip

    first = finetune_flow(config).extra["training"]

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3.endpoint_url})
    folder = first["folder"]
    assert folder.startswith(f"{s3_storage.uri}/runs/in-s3/finetune/") and first["adapter"] == f"{folder}/adapter"
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(folder)}
    assert {"checkpoints", "adapter", "metrics.jsonl", "result.json", "loss.png", "job.json", "launcher.log"} <= names
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{folder}/checkpoints")} >= {"step-00000002", "step-00000004", "latest.json"}
    before = [json.loads(line)["loss"] for line in fs.cat(f"{folder}/metrics.jsonl").decode().splitlines()]

    # A crash after step 2: the newest complete checkpoint is step 2, and there is no result.
    fs.rm(f"{folder}/result.json")
    fs.rm(f"{folder}/adapter", recursive=True)
    fs.pipe(f"{folder}/checkpoints/latest.json", json.dumps({"tag": "step-00000002", "step": 2}).encode())
    again = finetune_flow(config).extra["training"]

    assert again["adapter"] == first["adapter"]
    log = fs.cat(f"{folder}/launcher.log").decode()
    assert "resuming after step 2" in log
    after = [json.loads(line)["loss"] for line in fs.cat(f"{folder}/metrics.jsonl").decode().splitlines()]
    assert after == pytest.approx(before, rel=1e-5) and len(after) == 4

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)  # where the backends' fsspec finds the bucket
    from autosafe_core.llm.local_weights import local_adapter

    with local_adapter(again["adapter"]) as copy:
        assert (copy / "adapter_model.safetensors").is_file()
    assert not copy.exists()  # the fetched copy lives as long as its `with` block
