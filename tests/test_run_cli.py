"""`autosafe run` and the stage commands: bad settings end in one line naming the
field, exit status 2 and nothing written; a good run prints the show command last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from autosafe_core.store import read_manifest
from flows.cli import app
from flows.run_cli import resolve_config
from tests.support.factory import RESPONDER, run_of, scripted_config
from tests.support.prefect import prefect_server  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def scripted_file(tmp_path: Path, **fields) -> Path:
    data = {
        "models": {"default": {"backend": "scripted", "model": RESPONDER, "options": {"keep_calls": False}}},
        "runner": "threads",
        "finetune": False,
        "evaluate": False,
        "dataset": {"embeddings": False},
        **fields,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--scenarios", "0"], "field 'scenarios'"),
        (["--shard-size", "-3"], "field 'shard_size'"),
        (["--runner", "dask"], "field 'runner'"),
        (["--run-id", "no spaces allowed"], "field 'run_id'"),
        (["--config", "missing.yaml"], "missing.yaml: no such file"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_field_exit_2_and_nothing_written(tmp_path, monkeypatch, args, named):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "--storage", str(tmp_path / "data"), *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autosafe: ") and named in lines[0], result.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"toolkits": ["Terminal", "NoSuchKit"]}, "field toolkits[1]: unknown toolkit 'NoSuchKit'"),
        ({"risk_outcomes": ["not_an_outcome"]}, "field risk_outcomes[0]: unknown risk outcome"),
        ({"models": {"default": {"backend": "gpt"}}}, "field 'models.default.backend'"),
        ({"dataset": {"split": [0.8, 0.1]}}, "field 'dataset.split"),
        ({"scenarios": "many"}, "field 'scenarios'"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_field(tmp_path, fields, named):
    path = scripted_file(tmp_path, **fields)
    result = invoke("generate", "--config", str(path), "--storage", str(tmp_path / "data"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert str(path) in result.output and named in result.output, result.output
    assert not (tmp_path / "data").exists()


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scenarios: [1, 2\n")
    result = invoke("run", "--config", str(path))
    assert result.exit_code == 2 and str(path) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_example_config_is_valid():
    config = resolve_config(REPO / "examples" / "factory.yaml", {}, None, None)
    assert config.models.for_role("evaluator").backend == "openai" and config.shard_size == 1000


def test_command_line_options_override_the_file(tmp_path):
    path = scripted_file(tmp_path, scenarios=40, shard_size=10)
    config = resolve_config(path, {"scenarios": 8, "shard_size": None}, str(tmp_path / "s"), "http://127.0.0.1:9")
    assert (config.scenarios, config.shard_size) == (8, 10)
    assert config.storage.uri == str(tmp_path / "s") and config.storage.endpoint_url == "http://127.0.0.1:9"


def test_a_run_prints_the_show_command_last_and_refuses_another_config_for_its_id(prefect_server, tmp_path):
    path = scripted_file(tmp_path, scenarios=4, shard_size=2)
    storage = str(tmp_path / "data")
    result = invoke("run", "--config", str(path), "--storage", storage, "--run-id", "cli-run")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"run cli-run done: autosafe show cli-run --storage {storage}"
    shown = json.loads(invoke("show", "cli-run", "--storage", storage, "--json").output)
    assert shown["tables"]["scenarios"] == 4

    manifest_before = read_manifest(run_of(scripted_config(storage, run_id="cli-run")))
    changed = invoke("run", "--config", str(path), "--storage", storage, "--run-id", "cli-run", "--scenarios", "6")
    assert changed.exit_code == 2, changed.output
    header, error = changed.output.strip().splitlines()
    assert header.startswith("autosafe run: run cli-run")
    assert error.startswith("autosafe: run cli-run: made with config hash"), error
    assert read_manifest(run_of(scripted_config(storage, run_id="cli-run"))) == manifest_before


def test_a_stage_without_its_input_exits_2(prefect_server, tmp_path):
    path = scripted_file(tmp_path, scenarios=4, shard_size=2)
    result = invoke("rollout", "--config", str(path), "--storage", str(tmp_path / "data"), "--run-id", "fresh")
    assert result.exit_code == 2 and "run the generate stage first" in result.output, result.output



@pytest.mark.parametrize(
    ("api_url", "refused"),
    [(None, True), ("http://127.0.0.1:4200/api", True), ("http://prefect.internal:4200/api", False)],
)
def test_a_remote_cluster_needs_a_prefect_api_its_nodes_can_reach(monkeypatch, tmp_path, api_url, refused):
    if api_url is None:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    else:
        monkeypatch.setenv("PREFECT_API_URL", api_url)
    overrides = {"ray_address": "ray://head.internal:10001"}
    shared = "s3://autosafe/runs"  # only checked for its shape here: nothing is written
    if refused:
        with pytest.raises(typer.Exit) as exit_:
            resolve_config(None, overrides, shared, None)
        assert exit_.value.exit_code == 2
    else:
        assert resolve_config(None, overrides, shared, None).ray_address == overrides["ray_address"]
    assert resolve_config(None, {"ray_address": "127.0.0.1:6379"}, str(tmp_path / "data"), None).ray_address
    assert not (tmp_path / "data").exists()


def test_a_remote_cluster_needs_storage_every_node_reaches(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    overrides = {"ray_address": "ray://head.internal:10001"}
    with pytest.raises(typer.Exit) as exit_:
        resolve_config(None, overrides, str(tmp_path / "data"), None)
    assert exit_.value.exit_code == 2
    message = capsys.readouterr().err.strip()
    assert "field 'storage'" in message and "local folder" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "data").exists()
    # The same folder with a cluster on this machine is fine: every worker sees this disk.
    assert resolve_config(None, {"ray_address": "127.0.0.1:6379"}, str(tmp_path / "data"), None)


@pytest.fixture
def two_node_ray(monkeypatch):
    """A real Ray cluster of two nodes on this machine (Ray's own `cluster_utils`)."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_cluster_of_several_nodes_refuses_a_local_folder_before_writing(prefect_server, two_node_ray, tmp_path):
    # `auto` joins the cluster this machine is part of: its address alone says nothing of its nodes.
    config = scripted_file(tmp_path, runner="ray")
    storage = tmp_path / "data"
    result = invoke("generate", "--config", str(config), "--storage", str(storage), "--ray-address", "auto")
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert "field 'storage'" in message and "2 nodes" in message and "s3://" in message, message
    assert not storage.exists()
