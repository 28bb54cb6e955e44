"""The fine-tune flow and `autosafe train` on runs committed with the scripted model: a tiny llama
built from a config is tuned on the run's train split (torchrun, one CPU process), and the run
then shows its adapter; a run without train rows records why it was not trained.
"""

from __future__ import annotations

import json
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
from tests.support.tiny_llama import tiny_llama_dir
from tests.test_training_data import dataset_row

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
