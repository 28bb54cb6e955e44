"""`autosafe eval RUN_ID --benchmark NAME`: evaluate a run's agent (base, and tuned with an
adapter) on a benchmark, or score its judge on R-Judge.

Models come from the run's recorded configuration; `--config FILE` overrides it (its
`models` and `evaluation` sections), and a run id that does not exist yet starts a run
that holds only evaluations. Settings are the file's `evaluation` section, else
`EvalConfig`'s defaults (every case), then `--max-cases` and `--max-steps`. The cases,
the adapter and the configuration are all checked before anything is written: a
mistake ends in one line naming the file, record or field, and exit status 2; shards
that failed after their retries end in exit status 1, and running the same command
again redoes only them. The report the flow wrote (or why it could not) is printed
with the figures; the last line printed names the report command, which rewrites a page
over every benchmark of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from autosafe_core.evaluation.benchmarks import BenchmarkInputError, benchmark
from autosafe_core.evaluation.evaluations import evaluations
from autosafe_core.evaluation.run_cases import EvalConfig
from autosafe_core.store import ConfigChanged, Run, StorageConfig, read_manifest
from autosafe_core.store.location import DEFAULT_URI
from flows.config import FactoryConfig, load_config_file
from flows.inspect_cli import STORE_ERRORS, RunIdArg
from flows.run_cli import ConfigOpt, EndpointOpt, RunnerOpt, StorageOpt, fail, resolve_config

BenchmarkOpt = Annotated[
    str, typer.Option("--benchmark", help="synthetic (the run's test split), toolemu, agent_safetybench, rjudge or terminal (sandboxed tasks).")
]
AdapterOpt = Annotated[
    str | None,
    typer.Option("--adapter", help="The tuned agent's LoRA adapter (folder or URI); default: the run's fine-tuned one."),
]
DataOpt = Annotated[Path | None, typer.Option("--data", help="The benchmark's file or folder (public benchmarks).")]
MaxCasesOpt = Annotated[int | None, typer.Option("--max-cases", min=1, help="Cases at most, drawn by case-id hash.")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, max=50, help="Agent steps per episode.")]


def eval_command(
    run_id: RunIdArg,
    benchmark_name: BenchmarkOpt = "synthetic",
    storage: StorageOpt = None,
    endpoint_url: EndpointOpt = None,
    adapter: AdapterOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    max_cases: MaxCasesOpt = None,
    max_steps: MaxStepsOpt = None,
    runner: RunnerOpt = None,
) -> None:
    """Evaluate a run's agent on a benchmark (base and tuned), or score its judge on R-Judge."""
    try:
        bench = benchmark(benchmark_name)
    except ValueError as exc:
        raise fail(str(exc)) from None
    factory = _config(run_id, config, storage, endpoint_url, runner)
    settings = _settings(config, max_cases, max_steps)
    _check_adapter(adapter)
    from flows.evaluate import load_cases
    from flows.pipeline import make_run

    try:
        cases = load_cases(bench, factory, make_run(factory), str(data) if data else None)
    except BenchmarkInputError as exc:
        raise fail(str(exc)) from None
    except STORE_ERRORS as exc:
        raise fail(f"run {run_id} in {factory.storage.uri}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    console = Console(stderr=True, soft_wrap=True)
    console.print(
        f"[bold]autosafe eval[/]: {bench.name} on run {run_id} -> {factory.storage.uri}: "
        f"{min(len(cases.cases), settings.max_cases or len(cases.cases))} of {len(cases.cases)} cases"
    )
    manifest = _launch(factory, bench.name, data, adapter, settings)
    evaluation = evaluations(manifest)[bench.name]
    for label, part in evaluation.labels.items():
        figures = evaluation.headline.get(label, {})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float))
        console.print(f"  {label:<10} {part.rows:>6} rows  {part.judge_errors:>5} judge errors  {shown}")
    for label, agreement in evaluation.headline.get("agreement", {}).items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in agreement.items() if isinstance(v, float))
        console.print(f"  {label:<10} agreement with the labels: {shown}")
    console.print(f"  report: {evaluation.report}" if evaluation.report else f"  no report: {evaluation.report_error}")
    typer.echo(f"eval {bench.name} of run {run_id} done: autosafe report {run_id} --storage {factory.storage.uri}")


def _config(
    run_id: str, config_file: Path | None, storage: str | None, endpoint_url: str | None, runner: str | None
) -> FactoryConfig:
    """The run's recorded configuration, under the file's sections and the options; Exit(2) if invalid."""
    try:
        where = StorageConfig(uri=storage or DEFAULT_URI, endpoint_url=endpoint_url)
        manifest = read_manifest(Run(run_id=run_id, storage=where))
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    except STORE_ERRORS as exc:
        raise fail(f"run {run_id} in {storage or DEFAULT_URI}: {(str(exc).splitlines() or ['unreadable'])[0]}") from None
    file_keys: set[str] = set()
    if config_file is not None:
        try:
            file_keys = set(load_config_file(config_file))
        except FileNotFoundError:
            raise fail(f"{config_file}: no such file") from None
        except Exception as exc:  # YAML syntax and the like: name the file, one line
            raise fail(f"{config_file}: {str(exc).splitlines()[0]}") from None
    recorded: dict[str, Any] = dict(manifest.config) if manifest is not None else {}
    overrides = {k: v for k, v in recorded.items() if k not in file_keys}
    overrides.update(run_id=run_id, runner=runner)
    return resolve_config(config_file, overrides, storage, endpoint_url)


def _settings(config_file: Path | None, max_cases: int | None, max_steps: int | None) -> EvalConfig:
    section = load_config_file(config_file).get("evaluation") if config_file is not None else None
    if section is not None and not isinstance(section, dict):
        raise fail(f"{config_file}: field 'evaluation': must be a mapping")
    data = dict(section or {})
    data.update({k: v for k, v in {"max_cases": max_cases, "max_steps": max_steps}.items() if v is not None})
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in ("evaluation", *first["loc"]))
        raise fail(f"{config_file}: field {field!r}: {first['msg']}") from None


def _check_adapter(adapter: str | None) -> None:
    """A local adapter folder must hold adapter_config.json (a remote one is checked when loaded)."""
    if adapter is None or ("://" in adapter and not adapter.startswith("file://")):
        return
    path = Path(adapter.removeprefix("file://")).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise fail(f"adapter {adapter}: no adapter_config.json there")


def _launch(config: FactoryConfig, name: str, data: Path | None, adapter: str | None, settings: EvalConfig):
    from flows.evaluate import launch
    from flows.pipeline import ShardsFailed
    from flows.runtime import prefect_api

    with prefect_api():
        try:
            return launch(config, name, str(data) if data else None, adapter, settings)
        except (BenchmarkInputError, ConfigChanged) as exc:
            raise fail(str(exc)) from None
        except ShardsFailed as exc:
            typer.echo(f"autosafe: {exc}", err=True)
            raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add `eval` to the `autosafe` app."""
    app.command("eval")(eval_command)
