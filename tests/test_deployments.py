"""Deployments, work pools, the nightly's bookkeeping and the production compose file, checked
without a server (tests/test_prefect_deployments.py runs them on a real one).

infra/prefect.yaml passes the validation `prefect deploy` applies to it and names flows that
load; the factory's run form documents, defaults and bounds every field; the Kubernetes
pool's template passes the server's check and renders to a Job that requests GPUs on the
project's image; `autosafe deploy` refuses bad input in one line; a night is named by its
date in the schedule's zone and deduplicated against the nights before it; the compose
file has what a Prefect server on PostgreSQL needs, on images of the project's version.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from autosafe_core.store import (
    Run,
    RunChanges,
    StorageConfig,
    commit_shard,
    committed,
    read_manifest,
    read_records,
    run_ids,
    update_manifest,
)
from flows import deploy_cli
from flows.cli import app
from flows.deployments import RunForm
from flows.nightly import EARLIER_DUPLICATES, changes_of, earlier_nights, night_config, night_of, night_run_id
from autosafe_core.stages.dedup import DedupConfig
from tasks.dataset import DatasetConfig, dataset_shards
from tests.support.samples import safe_sample

REPO = Path(__file__).resolve().parent.parent
PREFECT_FILE = REPO / "infra" / "prefect.yaml"
KUBERNETES_TEMPLATE = REPO / "infra" / "prefect" / "kubernetes-job-template.json"
COMPOSE = REPO / "infra" / "compose.yaml"
DEPLOYMENTS = {"factory", "nightly", "finetune", "evaluate"}
GPU = "nvidia.com/gpu"


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].strip()
    raise KeyError(name)


def prefect_document() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text())


def deployment(name: str) -> dict:
    return next(d for d in prefect_document()["deployments"] if d["name"] == name)


# --- infra/prefect.yaml ----------------------------------------------------------------


def test_the_deployment_file_passes_prefect_deploys_own_validation():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_document())
    assert {d.name for d in model.deployments} == DEPLOYMENTS
    assert model.prefect_version == pinned("prefect")
    assert model.pull == []  # entry points are modules of the installed package: nothing to pull
    for d in model.deployments:
        assert d.work_pool.name in deploy_cli.POOL_TYPES
        assert d.version == project_version()
        assert d.enforce_parameter_schema is True


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_entrypoint_loads_a_flow_with_a_documented_parameter_schema(name):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(deployment(name)["entrypoint"])
    assert flow.name == f"autosafe-{name}"
    schema = parameter_schema(flow.fn).model_dump()
    assert schema["properties"], name
    for param, spec in schema["properties"].items():
        assert spec.get("description"), f"{name}: parameter {param} has no description"


def form_fields(schema: dict):
    """(model, field, spec) of every field of every model in the parameter schema."""
    for model, definition in schema["definitions"].items():
        for field, spec in definition.get("properties", {}).items():
            yield model, field, spec


def description(schema: dict, spec: dict) -> str | None:
    """A field's description, or its model's (pydantic leaves out a field's when they are equal)."""
    ref = spec.get("$ref", "").removeprefix("#/definitions/")
    return spec.get("description") or (schema["definitions"][ref].get("description") if ref else None)


def test_the_factory_form_gives_every_field_a_description_and_a_default():
    from flows.deployments import factory
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(factory.fn).model_dump()
    assert schema["properties"]["config"]["default"]["run_id"] == ""  # no run id fixed at deploy time
    missing = [(m, f) for m, f, spec in form_fields(schema) if not description(schema, spec)]
    assert missing == []
    required = [(m, f) for m, definition in schema["definitions"].items() for f in definition.get("required", [])]
    assert required == []  # every field has a default: the form can be submitted as it opens
    fields = {(m, f): spec for m, f, spec in form_fields(schema)}
    assert fields[("RunForm", "scenarios")]["minimum"] == 1
    assert fields[("RunForm", "runner")]["enum"] == ["ray", "threads"]
    assert fields[("RunForm", "run_id")]["pattern"]


def test_the_factory_form_refuses_what_pydantic_refuses():
    from flows.deployments import factory
    from prefect.utilities.callables import parameter_schema

    validator = jsonschema.Draft7Validator(parameter_schema(factory.fn).model_dump())
    assert list(validator.iter_errors({"config": {"scenarios": 3, "runner": "threads"}})) == []
    for bad in ({"scenarios": 0}, {"runner": "spark"}, {"run_id": "a/b"}, {"shard_size": "many"}):
        assert list(validator.iter_errors({"config": bad})), bad
        with pytest.raises(ValueError):
            RunForm.model_validate(bad)


def test_an_empty_run_id_becomes_the_one_given_and_a_set_one_is_kept():
    assert RunForm().resolved("run-x").run_id == "run-x"
    assert RunForm(run_id="mine").resolved("run-x").run_id == "mine"


def test_the_nightly_schedule_is_a_valid_cron_and_names_nights_in_its_own_zone():
    from prefect.client.schemas.schedules import CronSchedule

    nightly = deployment("nightly")
    (schedule,) = nightly["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert schedule["parameters"]["timezone"] == schedule["timezone"]
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_deploy_overrides_pool_cron_and_time_zone_in_a_copy():
    document = prefect_document()
    out = deploy_cli.resolved_file(document, "autosafe-kubernetes", "30 1 * * *", "Asia/Tokyo")
    assert {d["work_pool"]["name"] for d in out["deployments"]} == {"autosafe-kubernetes"}
    (schedule,) = next(d for d in out["deployments"] if d["name"] == "nightly")["schedules"]
    assert (schedule["cron"], schedule["timezone"], schedule["parameters"]["timezone"]) == (
        "30 1 * * *", "Asia/Tokyo", "Asia/Tokyo",
    )
    assert document == prefect_document()  # the file's document is untouched


# --- work pools ---------------------------------------------------------------------------


def kubernetes_template() -> dict:
    return json.loads(KUBERNETES_TEMPLATE.read_text())


def rendered_job(template: dict, values: dict | None = None) -> dict:
    """The Job manifest a worker builds from the template, the variables' defaults and `values`."""
    from prefect.utilities.templating import apply_values

    variables = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    return apply_values(template["job_configuration"], {**variables, **(values or {})})["job_manifest"]


def test_the_kubernetes_template_passes_the_servers_check_and_its_defaults_their_schema():
    from prefect.server.schemas.actions import validate_base_job_template

    template = kubernetes_template()
    validate_base_job_template(template)
    schema = template["variables"]
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = {k: v["default"] for k, v in schema["properties"].items()}
    jsonschema.validate(defaults, schema)


def test_an_undeclared_variable_in_the_kubernetes_template_is_refused():
    from prefect.server.schemas.actions import validate_base_job_template

    template = kubernetes_template()
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["priorityClassName"] = "{{ priority }}"
    with pytest.raises(ValueError, match="priority"):
        validate_base_job_template(template)


def test_the_kubernetes_job_requests_gpus_on_the_project_image_and_keeps_the_workers_shape():
    job = rendered_job(kubernetes_template())
    # What prefect-kubernetes' worker requires of a job manifest.
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert container["image"] == f"ghcr.io/autosafe/autosafe-factory-gpu:{project_version()}"
    resources = container["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == 1  # an int: a Kubernetes quantity
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert any(t["key"] == GPU for t in pod["tolerations"])
    eight = rendered_job(kubernetes_template(), {"gpus": 8})["spec"]["template"]["spec"]["containers"][0]
    assert eight["resources"]["limits"][GPU] == 8


def test_the_process_pool_starts_flow_runs_in_the_work_dir(tmp_path):
    template = deploy_cli.process_template(tmp_path)
    assert template["variables"]["properties"]["working_dir"]["default"] == str(tmp_path)
    assert "{{ working_dir }}" in json.dumps(template["job_configuration"])


# --- autosafe deploy: user mistakes ------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "no Prefect server: set PREFECT_API_URL"),
        (["--pool", "gpu-farm"], "--pool: 'gpu-farm' is not one of"),
        (["--timezone", "Mars/Olympus"], "--timezone: Invalid timezone"),
        (["--nightly-cron", "0 25 * * *"], "--nightly-cron: Invalid cron string"),
        (["--prefect-file", "nowhere.yaml"], "nowhere.yaml: no such file"),
    ],
)
def test_deploy_refuses_bad_input_in_one_line_with_status_2(args, expected, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["deploy", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output


# --- the nightly ----------------------------------------------------------------------------


def test_a_night_is_the_date_of_its_scheduled_start_in_the_schedules_zone():
    start = datetime(2026, 1, 1, 16, 30, tzinfo=UTC)  # 01:30 on 2 January in Tokyo
    assert night_of(start, "UTC") == date(2026, 1, 1)
    assert night_of(start, "Asia/Tokyo") == date(2026, 1, 2)
    with pytest.raises(ValueError, match="timezone: unknown time zone 'Mars/Olympus'"):
        night_of(start, "Mars/Olympus")


def test_earlier_nights_are_the_series_runs_before_the_night_oldest_first(tmp_path):
    storage = StorageConfig(uri=str(tmp_path))
    for run_id in ("nightly-20260103", "nightly-20260101", "nightly-20260102", "other-20260101", "nightly-x"):
        (tmp_path / "runs" / run_id).mkdir(parents=True)
    assert run_ids(storage) == sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert earlier_nights(storage, "nightly", date(2026, 1, 3)) == ["nightly-20260101", "nightly-20260102"]
    assert earlier_nights(storage, "other", date(2026, 1, 3)) == ["other-20260101"]


def test_each_night_gets_its_own_run_id_and_seed_and_dedups_against_the_nights_before(tmp_path):
    form = RunForm(storage=StorageConfig(uri=str(tmp_path)))
    (tmp_path / "runs" / "nightly-20260101").mkdir(parents=True)
    first = night_config(form, "nightly", date(2026, 1, 1))
    second = night_config(form, "nightly", date(2026, 1, 2))
    assert (first.run_id, second.run_id) == ("nightly-20260101", "nightly-20260102")
    assert first.generate.seed != second.generate.seed
    assert night_config(form, "nightly", date(2026, 1, 2)).generate.seed == second.generate.seed  # a re-run resumes
    assert (first.dataset.dedup_against, second.dataset.dedup_against) == ((), ("nightly-20260101",))
    assert first.toolkits == [] and first.risk_outcomes == []  # the whole catalog of the night
    with pytest.raises(ValueError, match="config.run_id: a nightly names its runs"):
        night_config(RunForm(run_id="mine"), "nightly", date(2026, 1, 1))


def commit_samples(run: Run, samples) -> None:
    commit_shard(run, "safe_samples", "safe_actions", "00000", samples)


def test_the_dataset_drops_samples_that_an_earlier_runs_dataset_holds(tmp_path):
    storage = StorageConfig(uri=str(tmp_path))
    earlier, tonight = Run(run_id="nightly-20260101", storage=storage), Run(run_id="nightly-20260102", storage=storage)
    commit_samples(earlier, [safe_sample("a", "Delete all files in /tmp"), safe_sample("b", "Email the report")])
    cfg = DatasetConfig(embeddings=False, split=(1.0, 0.0, 0.0))
    dataset_shards.fn(earlier, cfg)
    # Tonight repeats a's content under a new id, and brings one new sample.
    commit_samples(tonight, [safe_sample("a2", "Delete all files  in /TMP"), safe_sample("c", "Book a flight to Oslo")])
    dataset_shards.fn(tonight, cfg.model_copy(update={"dedup_against": ("nightly-20260101",)}))
    rows = read_records(tonight, "dataset")
    assert [r.safe_sample_id for r in rows] == ["c"]
    (rejection,) = [r for r in read_records(tonight, "rejections") if r.stage == "dataset"]
    assert (rejection.item_id, rejection.reason) == ("a2", "exact duplicate of a")
    manifest = update_manifest(tonight)
    assert manifest.counters[EARLIER_DUPLICATES] == 1
    changes = changes_of(manifest, ["nightly-20260101"])
    assert (changes.new_rows["dataset"], changes.rejected_rows, changes.duplicates_of_earlier) == (1, 1, 1)


class CountingEmbedder:
    """MiniLM, counting the texts it embeds."""

    def __init__(self):
        from autosafe_core.stages.embedding import MiniLMEmbedder

        self.inner, self.texts = MiniLMEmbedder(), 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def test_a_later_night_reads_the_earlier_fingerprints_instead_of_embedding_earlier_samples(tmp_path, monkeypatch):
    import tasks.dataset as dataset_task

    embedder = CountingEmbedder()
    monkeypatch.setattr(dataset_task, "_embedder", lambda cfg: embedder if cfg.embeddings else None)
    storage = StorageConfig(uri=str(tmp_path))
    nights = [Run(run_id=f"nightly-2026010{i}", storage=storage) for i in (1, 2, 3)]
    cfg = DatasetConfig(split=(1.0, 0.0, 0.0), dedup=DedupConfig(compare=("instruction",)))
    commit_samples(nights[0], [safe_sample("a", "Delete all files in the /tmp folder"), safe_sample("b", "Email the report")])
    dataset_shards.fn(nights[0], cfg)
    (fingerprints,) = committed(nights[0], "fingerprints")
    assert fingerprints.rows == 2 and embedder.texts == 2
    # Night 2 repeats a in other words and brings one new sample; night 3 has both earlier nights behind it.
    commit_samples(nights[1], [safe_sample("a2", "Delete all the files in the /tmp folder"), safe_sample("c", "Book a flight")])
    dataset_shards.fn(nights[1], cfg.model_copy(update={"dedup_against": ("nightly-20260101",)}))
    assert embedder.texts == 4  # tonight's two only
    assert [r.safe_sample_id for r in read_records(nights[1], "dataset")] == ["c"]
    (rejection,) = [r for r in read_records(nights[1], "rejections") if r.stage == "dataset"]
    assert rejection.item_id == "a2" and rejection.reason.startswith("near duplicate of a (cos ")
    commit_samples(nights[2], [safe_sample("d", "Book  a FLIGHT"), safe_sample("e", "Water the plants")])
    dataset_shards.fn(nights[2], cfg.model_copy(update={"dedup_against": ("nightly-20260101", "nightly-20260102")}))
    assert embedder.texts == 5  # e only: d is an exact duplicate of night 2's c, found by its stored hash
    assert [r.safe_sample_id for r in read_records(nights[2], "dataset")] == ["e"]
    # Fingerprints made another way (other compared parts) are not used: the samples are embedded again.
    other = cfg.model_copy(update={"dedup": DedupConfig(compare=("instruction", "safe_action")), "dedup_against": ("nightly-20260101",)})
    night4 = Run(run_id="nightly-20260104", storage=storage)
    commit_samples(night4, [safe_sample("f", "Water the plants")])
    dataset_shards.fn(night4, other)
    assert embedder.texts == 5 + 1 + 2


def test_without_earlier_runs_the_same_samples_are_kept(tmp_path):
    run = Run(run_id="nightly-20260102", storage=StorageConfig(uri=str(tmp_path)))
    commit_samples(run, [safe_sample("a2", "Delete all files in /tmp"), safe_sample("c", "Book a flight to Oslo")])
    dataset_shards.fn(run, DatasetConfig(embeddings=False, split=(1.0, 0.0, 0.0)))
    assert sorted(r.safe_sample_id for r in read_records(run, "dataset")) == ["a2", "c"]
    assert update_manifest(run).counters[EARLIER_DUPLICATES] == 0


def test_changes_persist_in_the_manifest_across_later_updates_and_old_manifests_still_read(tmp_path):
    run = Run(run_id="nightly-20260101", storage=StorageConfig(uri=str(tmp_path)))
    update_manifest(run, changes=RunChanges(previous_runs=["nightly-20251231"], rejected_rows=2))
    update_manifest(run, extra={"training": {"adapter": "x"}})
    assert read_manifest(run).changes.previous_runs == ["nightly-20251231"]
    path = tmp_path / "runs" / run.run_id / "manifest.json"
    old = json.loads(path.read_text())
    del old["changes"]
    path.write_text(json.dumps(old))
    assert read_manifest(run).changes is None


def test_a_nights_run_id_is_its_prefix_and_date():
    assert night_run_id("nightly", date(2026, 3, 9)) == "nightly-20260309"


# --- infra/compose.yaml ----------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_the_server_on_postgres_and_a_worker_of_the_process_pool():
    services = compose()["services"]
    assert {"postgres", "prefect-server", "worker", "deploy"} <= set(services)
    for name, service in services.items():
        assert service.get("image"), name
        for dependency, how in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            assert how == {"condition": "service_healthy"} and services[dependency].get("healthcheck"), name
    server = services["prefect-server"]
    db_url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.match(r"^postgresql\+asyncpg://prefect:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432/prefect$", db_url)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    port = server["command"][server["command"].index("--port") + 1]
    for client in ("worker", "deploy"):
        assert services[client]["environment"]["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == deploy_cli.PROCESS_POOL
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_compose_images_are_the_projects_at_its_version_or_pinned_releases():
    for name, service in compose()["services"].items():
        image, _, tag = service["image"].rpartition(":")
        if image.startswith("ghcr.io/autosafe/"):
            assert image == "ghcr.io/autosafe/autosafe-factory-cpu" and tag == project_version(), name
        else:
            assert tag and tag != "latest", name


def test_compose_deploy_mounts_the_deployment_file_it_names():
    deploy = compose()["services"]["deploy"]
    command = deploy["command"]
    prefect_file = command[command.index("--prefect-file") + 1]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in deploy["volumes"]}
    folder = str(Path(prefect_file).parent)
    assert mounts[folder] == "./"  # infra/ itself, where compose.yaml lives
    assert (COMPOSE.parent / Path(prefect_file).name).is_file()
    assert (COMPOSE.parent / deploy_cli.KUBERNETES_TEMPLATE).is_file()
