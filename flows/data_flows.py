"""The data flows: `generate`, `rollout`, `safe_dataset` and `factory` (end to end).

Each takes one typed `FactoryConfig` (every field documented and validated; the
Prefect UI renders it as the run form) and runs its stages through the shard
pipeline. Flows are defined without a task runner; `launch` picks Prefect's Ray
task runner (a local Ray, or the cluster at `ray_address`) or threads from the config.
"""

from __future__ import annotations

import importlib.util

from prefect import flow
from rich.console import Console

from flows import progress
from autosafe_core.stages import generate as gen_stage, rollout as roll_stage, safe_actions as safe_stage
from autosafe_core.store import RunManifest
from flows.config import FactoryConfig
from flows.pipeline import run_pipeline
from flows.runtime import task_runner
from tasks import dataset

@flow(name="generate", flow_run_name="generate-{config.run_id}", log_prints=False)
def generate_flow(config: FactoryConfig) -> RunManifest:
    """Stage 1: risk scenarios for the run's OTS cells."""
    return run_pipeline(config, [gen_stage.STAGE])


@flow(name="rollout", flow_run_name="rollout-{config.run_id}")
def rollout_flow(config: FactoryConfig) -> RunManifest:
    """Stage 2: simulated rollouts of the run's committed scenarios."""
    return run_pipeline(config, [roll_stage.STAGE])


@flow(name="safe_dataset", flow_run_name="safe-dataset-{config.run_id}")
def safe_dataset_flow(config: FactoryConfig) -> RunManifest:
    """Stages 3 and 4: safe actions at the risk triggers, then dedup, split and SFT export."""
    return run_pipeline(config, [safe_stage.STAGE, dataset.STAGE])


@flow(name="factory", flow_run_name="factory-{config.run_id}")
def factory_flow(config: FactoryConfig) -> RunManifest:
    """End to end: scenarios, rollouts, safe actions and the dataset; then fine-tuning and
    evaluation, when those flows are installed and the config asks for them."""
    manifest = run_pipeline(
        config, [gen_stage.STAGE, roll_stage.STAGE, safe_stage.STAGE, dataset.STAGE]
    )
    for wanted, module, name in ((config.finetune, "flows.finetune", "finetune_flow"),
                                 (config.evaluate, "flows.evaluate", "evaluate_flow")):
        if wanted and importlib.util.find_spec(module) is not None:
            manifest = getattr(importlib.import_module(module), name)(config) or manifest
    return manifest


FLOWS = {
    "generate": generate_flow,
    "rollout": rollout_flow,
    "safe-dataset": safe_dataset_flow,
    "run": factory_flow,
}


def launch(name: str, config: FactoryConfig, console: Console | None = None) -> RunManifest:
    """Run flow `name` on the task runner the config names (needs a Prefect API: see runtime)."""
    progress.set_console(console)
    try:
        runner = task_runner(config.runner, config.ray_address)
        return FLOWS[name].with_options(task_runner=runner)(config)
    finally:
        progress.set_console(None)
