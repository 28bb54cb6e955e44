"""The deployments on a real Prefect server: `prefect server start` on loopback (SQLite, its
home in a temporary folder), `autosafe deploy`, a process worker, runs started through the
API and by the nightly schedule, and the UI in a headless chromium.

One server, worker and deployment set serve every test of the module. Every run uses the
instant schema responder on the thread runner, with storage in a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from autosafe_core.store import Run, StorageConfig, read_manifest, read_records, run_ids
from tests.support.browser import chrome, screenshot_is_blank  # noqa: F401 - chrome is a fixture
from tests.support.factory import RESPONDER

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
NIGHTLY_CRON, NIGHTLY_ZONE = "30 1 * * *", "Asia/Tokyo"


@dataclass
class Stack:
    url: str
    root: Path
    server_log: Path
    worker_log: Path

    def logs(self) -> str:
        """The end of the server's and the worker's logs, for an assertion message."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (self.server_log, self.worker_log))

    def call(self, make_coroutine):
        """Run `make_coroutine(client)` against this server."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def go():
            async with get_client() as client:
                return await make_coroutine(client)

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            return asyncio.run(go())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    """Until the API answers /health (it starts listening well after printing its banner)."""
    for attempt in Retrying(stop=stop_after_delay(180), wait=wait_fixed(0.25), retry=retry_if_exception_type(),
                            reraise=True):
        with attempt:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            httpx.get(f"{url}/health", timeout=5).raise_for_status()


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    server_env = {
        **base,
        "PREFECT_HOME": str(root / "server-home"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": url,  # what the browser calls; the default names port 4200
    }
    client_env = {**base, "PREFECT_API_URL": url, "PREFECT_HOME": str(root / "client-home")}
    server_log, worker_log = root / "server.log", root / "worker.log"
    with open(server_log, "w") as out:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
        )
    worker = None
    try:
        wait_healthy(url, server, server_log)
        deployed = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy", "--work-dir", str(root / "work"),
             "--nightly-cron", NIGHTLY_CRON, "--timezone", NIGHTLY_ZONE],
            env=client_env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "work pool autosafe-process (process) created" in deployed.stdout
        assert "work pool autosafe-kubernetes (kubernetes) created" in deployed.stdout
        with open(worker_log, "w") as out:
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "autosafe-process", "--type", "process", "--name", "test"],
                env={**client_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=out, stderr=subprocess.STDOUT,
                cwd=root,
            )
        yield Stack(url=url, root=root, server_log=server_log, worker_log=worker_log)
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def factory_form(storage: Path, scenarios: int) -> dict:
    """Non-default values for the factory's form: the scripted model, few scenarios, threads."""
    return {
        "storage": {"uri": str(storage)},
        "scenarios": scenarios,
        "shard_size": 4,
        "runner": "threads",
        "models": {"default": {"backend": "scripted", "model": RESPONDER, "options": {"keep_calls": False}}},
        "dataset": {"embeddings": False},
        "finetune": False,
        "evaluate": False,
    }


async def run_and_wait(client, flow_run_id):
    """The flow run once it is in a final state."""
    from prefect.flow_runs import wait_for_flow_run

    flow_run = await wait_for_flow_run(flow_run_id, timeout=600, client=client, log_states=False)
    # wait_for_flow_run returns on the final state's event, which can reach it before a
    # read of the flow run shows that state: read until it does.
    with anyio.fail_after(60):
        while not flow_run.state.is_final():
            await anyio.sleep(0.2)
            flow_run = await client.read_flow_run(flow_run_id)
    return flow_run


# --- registration ------------------------------------------------------------------------


def test_every_deployment_and_both_work_pools_are_registered(stack):
    async def read(client):
        names = {}
        for flow_name, name in [("autosafe-factory", "factory"), ("autosafe-nightly", "nightly"),
                                ("autosafe-finetune", "finetune"), ("autosafe-evaluate", "evaluate")]:
            names[name] = await client.read_deployment_by_name(f"{flow_name}/{name}")
        pools = {p.name: p for p in await client.read_work_pools()}
        return names, pools

    deployments, pools = stack.call(read)
    assert all(d.work_pool_name == "autosafe-process" for d in deployments.values())
    assert pools["autosafe-process"].type == "process"
    working_dir = pools["autosafe-process"].base_job_template["variables"]["properties"]["working_dir"]
    assert working_dir["default"] == str(stack.root / "work")
    gpu = pools["autosafe-kubernetes"].base_job_template["variables"]["properties"]["gpus"]
    assert (pools["autosafe-kubernetes"].type, gpu["default"]) == ("kubernetes", 1)
    for name in ("finetune", "evaluate"):
        config = deployments[name].parameter_openapi_schema["definitions"]["RunForm"]["properties"]
        assert config["run_id"]["description"] and config["storage"]


def test_the_nightly_schedule_is_registered_with_its_cron_and_time_zone(stack):
    deployment = stack.call(lambda c: c.read_deployment_by_name("autosafe-nightly/nightly"))
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (NIGHTLY_CRON, NIGHTLY_ZONE, True)
    assert schedule.parameters == {"timezone": NIGHTLY_ZONE}


# --- the factory through the API ------------------------------------------------------------


def test_the_factory_deployment_runs_on_the_worker_with_the_parameters_given(stack):
    from prefect.exceptions import PrefectHTTPStatusError

    storage = stack.root / "factory-data"

    async def start(client):
        deployment = await client.read_deployment_by_name("autosafe-factory/factory")
        with pytest.raises(PrefectHTTPStatusError, match="0 is less than the minimum of 1"):
            await client.create_flow_run_from_deployment(deployment.id, parameters={"config": {"scenarios": 0}})
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"config": factory_form(storage, scenarios=8)}
        )
        return await run_and_wait(client, flow_run.id)

    flow_run = stack.call(start)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{stack.logs()}"
    (run_id,) = run_ids(StorageConfig(uri=str(storage)))
    assert run_id.endswith(str(flow_run.id)[:8]) and flow_run.name == f"factory-{run_id}"
    run = Run(run_id=run_id, storage=StorageConfig(uri=str(storage)))
    scenarios = read_records(run, "scenarios")
    assert len(scenarios) == len({s.id for s in scenarios}) == 8
    assert len(read_records(run, "trajectories")) == 8
    dataset = read_records(run, "dataset")
    assert dataset and {r.scenario_id for r in dataset} <= {s.id for s in scenarios}
    manifest = read_manifest(run)
    assert set(manifest.model_ids.values()) == {RESPONDER}
    assert manifest.config["scenarios"] == 8 and manifest.changes is None


# --- the nightly, as the schedule starts it ------------------------------------------------


def schedule_night(stack: Stack, day: datetime, form: dict):
    """Set the nightly's parameters, let the server's schedule make the runs of `day` (a
    backfill), and wait for them; returns the finished flow runs."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client):
        deployment = await client.read_deployment_by_name("autosafe-nightly/nightly")
        await client.update_deployment(deployment.id, DeploymentUpdate(parameters={"config": form}))
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        before = {r.id for r in await client.read_flow_runs(deployment_filter=by_deployment)}
        response = await client.request(
            "POST", "/deployments/{id}/schedule", path_params={"id": deployment.id},
            json={"start_time": day.isoformat(), "end_time": (day + timedelta(days=1, seconds=-1)).isoformat()},
        )
        response.raise_for_status()
        new = [r for r in await client.read_flow_runs(deployment_filter=by_deployment) if r.id not in before]
        return [await run_and_wait(client, r.id) for r in new]

    return stack.call(go)


def rows_by_run(storage: StorageConfig, table: str) -> dict[str, list]:
    return {run_id: read_records(Run(run_id=run_id, storage=storage), table) for run_id in run_ids(storage)}


def test_two_scheduled_nights_make_two_runs_without_a_duplicate_row(stack):
    path = stack.root / "nightly-data"
    storage = StorageConfig(uri=str(path))
    tokyo = ZoneInfo(NIGHTLY_ZONE)
    # The second night draws more scenarios, as if the catalog had grown: some repeat the
    # first night's content (the scripted model answers alike), some are new.
    first = schedule_night(stack, datetime(2026, 1, 1, tzinfo=tokyo), factory_form(path, scenarios=4))
    second = schedule_night(stack, datetime(2026, 1, 2, tzinfo=tokyo), factory_form(path, scenarios=8))
    assert len(first) == len(second) == 1, stack.logs()
    for flow_run in (*first, *second):
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{stack.logs()}"
    # 01:30 in Tokyo is 16:30 UTC the day before: the night is named by Tokyo's date.
    assert first[0].expected_start_time == datetime(2025, 12, 31, 16, 30, tzinfo=ZoneInfo("UTC"))
    assert [first[0].name, second[0].name] == ["nightly-20260101", "nightly-20260102"]
    assert run_ids(storage) == ["nightly-20260101", "nightly-20260102"]

    for table in ("scenarios", "trajectories", "safe_samples", "dataset"):
        one, two = rows_by_run(storage, table).values()
        assert one and two, table
        assert not {r.id for r in one} & {r.id for r in two}, table
    one, two = rows_by_run(storage, "dataset").values()
    content = lambda row: (tuple((m.role, m.content) for m in row.messages), row.target)  # noqa: E731
    assert not {content(r) for r in one} & {content(r) for r in two}

    night1 = read_manifest(Run(run_id="nightly-20260101", storage=storage)).changes
    night2 = read_manifest(Run(run_id="nightly-20260102", storage=storage)).changes
    assert (night1.previous_runs, night1.duplicates_of_earlier) == ([], 0)
    assert night2.previous_runs == ["nightly-20260101"]
    first_samples = {r.safe_sample_id for r in one}
    repeats = [r for r in rows_by_run(storage, "rejections")["nightly-20260102"]
               if r.stage == "dataset" and r.reason.split()[-1] in first_samples]
    assert night2.duplicates_of_earlier == len(repeats) > 0
    assert night2.new_rows["dataset"] == len(two) > 0
    assert night2.tokens.calls > 0 and night2.rejected_rows >= len(repeats)


# --- the UI -------------------------------------------------------------------------------------


def test_the_ui_shows_the_factory_run_form_and_its_validation(stack, chrome, tmp_path):  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ui = stack.url.removesuffix("/api")
    page = lambda: chrome.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait = WebDriverWait(chrome, 120, ignored_exceptions=[StaleElementReferenceException])
    chrome.get(f"{ui}/deployments")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "factory"))).click()
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Run']"))).click()
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Custom run']"))).click()
    # The form: the config's fields with their descriptions, from the deployment's schema.
    wait.until(lambda _: "Number of risk scenarios to generate." in page())
    text = page()
    for shown in ("Empty: a new run, named after the flow run.", "A local folder, or s3://bucket/prefix.",
                  "Task runner for shards."):
        assert shown in text
    png = chrome.get_screenshot_as_png()
    (tmp_path / "factory-run-form.png").write_bytes(png)
    print(f"screenshot: {tmp_path / 'factory-run-form.png'}")
    assert not screenshot_is_blank(png)
    # A value outside the field's bounds is refused when the form is submitted.
    scenarios = chrome.find_element(
        By.XPATH, "//*[normalize-space(.)='Scenarios (Optional)']/ancestor::*[.//input][1]//input"
    )
    assert scenarios.get_attribute("value") == "6"
    scenarios.send_keys(Keys.CONTROL, "a")
    scenarios.send_keys("0")
    chrome.find_element(By.XPATH, "//button[normalize-space(.)='Submit']").click()
    wait.until(lambda _: "0 is less than the minimum of 1" in page())


# --- finetune and evaluate, on a run the factory deployment made ----------------------------


def test_the_finetune_and_evaluate_deployments_work_on_an_existing_run(stack):
    pytest.importorskip("flows.finetune", reason="the finetune flow is not installed")
    pytest.importorskip("flows.evaluate", reason="the evaluate flow is not installed")
    storage = stack.root / "evaluate-data"
    # Half the scenarios held out for testing: the synthetic benchmark's cases.
    form = factory_form(storage, scenarios=8) | {"run_id": "to-evaluate"}
    form["dataset"] |= {"split": [0.5, 0.0, 0.5]}

    async def start(client):
        factory = await client.read_deployment_by_name("autosafe-factory/factory")
        made = await run_and_wait(client, (await client.create_flow_run_from_deployment(
            factory.id, parameters={"config": form})).id)
        finetune = await client.read_deployment_by_name("autosafe-finetune/finetune")
        tuned = await run_and_wait(client, (await client.create_flow_run_from_deployment(
            finetune.id, parameters={"config": form})).id)
        evaluate = await client.read_deployment_by_name("autosafe-evaluate/evaluate")
        unnamed = await run_and_wait(client, (await client.create_flow_run_from_deployment(
            evaluate.id, parameters={"config": factory_form(storage, 8)})).id)
        evaluated = await run_and_wait(client, (await client.create_flow_run_from_deployment(
            evaluate.id, parameters={"config": form})).id)
        return made, tuned, unnamed, evaluated

    made, tuned, unnamed, evaluated = stack.call(start)
    # The form's empty run id names no run to evaluate.
    assert unnamed.state.is_failed() and "config.run_id: name the run to evaluate" in unnamed.state.message
    assert made.state.is_completed() and evaluated.state.is_completed(), f"{evaluated.state}\n{stack.logs()}"
    assert evaluated.name == "evaluate-to-evaluate"
    run = Run(run_id="to-evaluate", storage=StorageConfig(uri=str(storage)))
    # A scripted agent has no weights: the fine-tune flow records why it did not train.
    assert tuned.state.is_completed() and tuned.name == "finetune-to-evaluate", f"{tuned.state}\n{stack.logs()}"
    assert read_manifest(run).extra["training"]["status"] == "skipped"
    rows = read_records(run, "eval")
    evaluation = read_manifest(run).extra["evaluation"]["synthetic"]
    assert rows and evaluation["cases"] > 0 and {r.model_label for r in rows} == {"base"}
