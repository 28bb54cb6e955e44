"""`autosafe train RUN_ID`: fine-tune the agent of a committed run on its safe-action dataset.

The run's configuration comes from its manifest; training settings from `--config FILE` (the
fields of `TrainingConfig`, at the top level or under `training:` as in a factory config file),
then the options given. Everything is checked before anything is written: a run that is not
there, a bad setting, no train rows or no weights to tune end in one line on stderr and exit
status 2. A training job that fails exits 1 (its log is in the job's folder); the last line
printed on success is the adapter's URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from flows.inspect_cli import RunIdArg, STORE_ERRORS, open_run, unreadable
from flows.run_cli import EndpointOpt, RayOpt, StorageOpt, fail

TrainConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML or JSON of TrainingConfig fields (or a factory config's training:).")
]
BaseModelOpt = Annotated[str | None, typer.Option("--base-model", help="Weights to tune (default: the run's agent).")]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (default: auto).")]
ProcessesOpt = Annotated[int | None, typer.Option("--processes", help="Training processes (default: one per GPU).")]
DeepSpeedOpt = Annotated[str | None, typer.Option("--deepspeed", help="zero2, zero3 or a DeepSpeed JSON file.")]


def train(
    run_id: RunIdArg,
    storage: StorageOpt = None,
    endpoint_url: EndpointOpt = None,
    config: TrainConfigOpt = None,
    base_model: BaseModelOpt = None,
    max_steps: StepsOpt = None,
    processes: ProcessesOpt = None,
    deepspeed: DeepSpeedOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Fine-tune a run's agent on its train split (LoRA by default); prints the adapter's URI last."""
    from flows.config import FactoryConfig, load_config_file

    run, manifest, _ = open_run(run_id, storage, endpoint_url)
    if manifest is None or not manifest.config:
        raise fail(f"run {run_id} in {run.storage.uri} has no manifest with its configuration")
    settings: dict[str, Any] = {}
    where = ""
    if config is not None:
        where = f"{config}: "
        try:
            data = load_config_file(config)
        except FileNotFoundError:
            raise fail(f"{config}: no such file") from None
        except Exception as exc:  # YAML syntax and the like: name the file, one line
            raise fail(f"{config}: {str(exc).splitlines()[0]}") from None
        settings = dict(data.get("training", data)) if isinstance(data.get("training", data), dict) else {}
    options = {"base_model": base_model, "max_steps": max_steps, "processes": processes, "deepspeed": deepspeed}
    settings.update({k: v for k, v in options.items() if v is not None})
    try:
        factory = FactoryConfig.model_validate(
            {**manifest.config, "run_id": run_id, "storage": run.storage.model_dump(), "training": settings,
             "ray_address": ray_address}  # fmt: skip
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise fail(f"{where}field {field!r}: {first['msg'].removeprefix('Value error, ')}") from None
    from flows.finetune import NothingToTrain, TrainingFailed, finetune_flow, plan
    from flows.runtime import UnsharedStorage, prefect_api, unreachable_api, unshared_storage

    try:
        job = plan(factory)
    except NothingToTrain as exc:
        raise fail(f"run {run_id}: nothing to train: {exc}") from None
    except ValueError as exc:  # a general data file that is not there or not examples
        raise fail(f"{where}field 'general_data': {exc}") from None
    except STORE_ERRORS as exc:
        raise unreadable(run, exc) from None
    problem = unreachable_api(ray_address) or unshared_storage(ray_address, run.storage)
    if problem:
        raise fail(f"--ray-address: {problem}")
    console = Console(stderr=True, soft_wrap=True)
    console.print(f"[bold]autosafe train[/]: run {run_id}, job {job.train_id} -> {job.output.uri}")
    from flows import progress

    progress.set_console(console)
    try:
        with prefect_api():
            try:
                result = finetune_flow(factory)
            except TrainingFailed as exc:
                typer.echo(f"autosafe: {exc}", err=True)
                raise typer.Exit(1) from None
            except UnsharedStorage as exc:
                raise fail(f"--ray-address: {exc}") from None
    finally:
        progress.set_console(None)
    training = result.extra["training"]
    console.print(
        f"  {training['steps']} steps, loss {training['first_loss']:.4f} -> {training['final_loss']:.4f}, "
        f"{training['tokens_per_s_per_device']:,.0f} tokens/s per device; loss curve {training['loss_plot']}"
    )
    typer.echo(training.get("adapter") or training.get("model"))


def register(app: typer.Typer) -> None:
    """Add `train` to the `autosafe` app."""
    app.command("train")(train)
