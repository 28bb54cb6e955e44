"""The flows that `infra/prefect.yaml` deploys: `factory`, `finetune` and `evaluate` (the
nightly lives in flows/nightly.py).

Each takes the factory's typed configuration as the UI's run form (`RunForm`: every field
with its description, default and bounds), resolves it to a `FactoryConfig`, and runs the
data flow as a subflow on the task runner the form names; a flow cannot pick its own
task runner from its parameters, so the deployed flow is this thin wrapper. A run started
without a run id gets a new one from its flow run; retrying that flow run keeps the id, so
it resumes. `finetune` and `evaluate` import their flows only when they run.
"""

from __future__ import annotations

import importlib

from prefect import flow
from pydantic import Field, field_validator

from autosafe_core.store import RunManifest
from flows.config import FactoryConfig, new_run_id
from flows.data_flows import launch
from flows.runtime import task_runner, unreachable_api, unshared_storage

RUN_ID_OR_EMPTY = r"^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RunForm(FactoryConfig):
    """The factory's configuration as a deployment's run form: the run id may stay empty."""

    run_id: str = Field(
        "",
        pattern=RUN_ID_OR_EMPTY,
        description="Empty: a new run, named after the flow run. Re-using a run id resumes that run.",
    )

    @field_validator("run_id")
    @classmethod
    def _run_id_shape(cls, v: str) -> str:  # replaces FactoryConfig's: the pattern allows empty
        return v

    def resolved(self, run_id: str) -> FactoryConfig:
        """The configuration of the run, with `run_id` when the form left it empty."""
        return FactoryConfig.model_validate({**self.model_dump(), "run_id": self.run_id or run_id})


def flow_run_run_id() -> str:
    """A run id for the current flow run: its scheduled start (UTC) and the start of its id."""
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return new_run_id()
    return f"run-{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}-{flow_run.id[:8]}"


def _factory_run_name() -> str:
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config") or {}
    run_id = config.get("run_id") if isinstance(config, dict) else getattr(config, "run_id", "")
    return f"factory-{run_id or flow_run_run_id()}"


def check_reachable(config: FactoryConfig) -> FactoryConfig:
    """`config`, unless its Ray cluster could not report to the Prefect API or reach its storage (ValueError)."""
    problem = unreachable_api(config.ray_address) or unshared_storage(config.ray_address, config.storage)
    if problem:
        raise ValueError(problem)
    return config


@flow(name="autosafe-factory", flow_run_name=_factory_run_name, log_prints=False)
def factory(config: RunForm = RunForm()) -> RunManifest:
    """The AutoSafe factory end to end: risk scenarios, simulated rollouts, safe actions and the
    SFT dataset, then fine-tuning and evaluation when the config asks for them and they exist.

    Args:
        config: What to generate, with which models, where to store it and how to run it.
    """
    run_config = check_reachable(config.resolved(flow_run_run_id()))
    return launch("run", run_config)


def _existing_run(config: RunForm, what: str) -> FactoryConfig:
    if not config.run_id:
        raise ValueError(f"config.run_id: name the run to {what} (its dataset must be committed)")
    return check_reachable(config.resolved(config.run_id))


def _subflow(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise RuntimeError(f"{module} is not installed in this worker's environment") from None


def _on_its_runner(subflow, config: FactoryConfig):
    return subflow.with_options(task_runner=task_runner(config.runner, config.ray_address))


@flow(name="autosafe-finetune", flow_run_name="finetune-{config.run_id}", log_prints=False)
def finetune(config: RunForm = RunForm()) -> RunManifest:
    """Fine-tune the agent on the SFT dataset of an existing run (LoRA or full, DeepSpeed ZeRO).

    Args:
        config: The run whose dataset to train on (run_id is required), with its models, storage and training settings.
    """
    run_config = _existing_run(config, "fine-tune on")
    return _on_its_runner(_subflow("flows.finetune", "finetune_flow"), run_config)(run_config)


@flow(name="autosafe-evaluate", flow_run_name="evaluate-{config.run_id}", log_prints=False)
def evaluate(
    config: RunForm = RunForm(),
    benchmark: str = "synthetic",
    data: str | None = None,
    adapter: str | None = None,
) -> RunManifest:
    """Evaluate the base and the tuned agent of an existing run on a benchmark.

    Args:
        config: The run to evaluate (run_id is required), with its models, storage and evaluation settings.
        benchmark: The benchmark's name: synthetic (the run's held-out scenarios) or a public one.
        data: The benchmark's file or folder, for public benchmarks.
        adapter: The tuned agent's LoRA adapter (path or URI); empty: the one the run's fine-tuning registered.
    """
    run_config = _existing_run(config, "evaluate")
    evaluate_flow = _on_its_runner(_subflow("flows.evaluate", "evaluate_flow"), run_config)
    return evaluate_flow(run_config, benchmark_name=benchmark, data=data, adapter=adapter)
