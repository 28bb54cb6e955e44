"""The fine-tune flow: the agent tuned on the run's D_safe, its adapter registered in the run manifest.

The flow resolves a `TrainJob` (base weights, the run's train split, the job's folder
`runs/<run_id>/finetune/<train_id>/` in the run's storage, the DeepSpeed config) and launches the
training entry point: torchrun (or the deepspeed launcher) as a local subprocess by default, or
Ray Train's TorchTrainer on the cluster at `ray_address`. Workers stream the examples from storage
and write checkpoints there; the flow never touches a tensor. Then it commits the loss and
throughput of every step to the `training` table, draws the loss curve into the job's folder
(`loss.png`), and records `extra.training` in the manifest: the adapter's URI under `adapter`
(what the evaluate flow loads), or why training was skipped (no train rows, no weights to tune)
or failed.

A finished job is not run again (its `result.json` exists); a crashed one resumes from its
newest checkpoint when the flow runs again. Changing what is learned (any training setting but
the process count and launcher) makes a new job in a new folder.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from prefect import flow, get_run_logger

from autosafe_core.llm.local_weights import model_source
from autosafe_core.store import Run, RunManifest, commit_shard, committed, read_manifest, update_manifest
from autosafe_core.store.location import StorageConfig, join, put_whole
from autosafe_core.store.records import TrainingStepRow
from autosafe_core.training.checkpoints import METRICS, RESULT, JobFolder
from autosafe_core.training.config import TrainingConfig, TrainJob, deepspeed_config, train_id
from autosafe_core.training.examples import FileSource
from autosafe_core.training.loss_plot import loss_plot
from autosafe_core.training.train import STEP_EVENT
from flows import progress
from flows.config import FactoryConfig
from flows.pipeline import ShardsFailed, make_run
from flows.runtime import check_cluster_storage

STAGE = "finetune"
"""The stage of the `training` table's rows, and the folder of the run's jobs."""
TABLE = "training"
ENTRY_POINT = "autosafe_core.training.train"
REPO = Path(__file__).resolve().parent.parent


class NothingToTrain(ValueError):
    """The run cannot be trained on as it is: no train rows, or no weights to tune."""


class TrainingFailed(ShardsFailed):
    """The training job ended without its result; its log is in the job's folder.

    A failed part of the run that running it again resumes (from the newest checkpoint), as a
    failed shard is: the CLI reports both in one line with exit status 1.
    """


@flow(name="finetune", flow_run_name="finetune-{config.run_id}")
def finetune_flow(config: FactoryConfig) -> RunManifest:
    """Fine-tune the run's agent on its train split; the manifest's `training` says how it went."""
    log = get_run_logger()
    run = data_run(config)
    try:
        job = plan(config)
    except NothingToTrain as exc:
        log.warning("run %s: training skipped: %s", run.run_id, exc)
        return update_manifest(run, extra={TABLE: {"status": "skipped", "reason": str(exc)}})
    folder = JobFolder(job.output, Path(tempfile.mkdtemp(prefix="autosafe-finetune-")))
    try:
        result = folder.read_json(RESULT) or _train(job, folder, config.ray_address, run)
    finally:
        shutil.rmtree(folder.scratch, ignore_errors=True)
    summary = record(run, config, job, folder, result)
    log.info("run %s: trained %s steps, loss %.4f -> %.4f, %s", run.run_id, summary["steps"],
             summary["first_loss"], summary["final_loss"], summary.get("adapter") or summary.get("model"))  # fmt: skip
    return update_manifest(run, extra={TABLE: summary})


def _train(job: TrainJob, folder: JobFolder, ray_address: str | None, run: Run) -> dict[str, Any]:
    """Launch the job and return its result; on failure, record why in the manifest and raise."""
    if ray_address:
        join_ray(ray_address, job.output)  # before anything is written
    folder.write_json(job.model_dump(mode="json"), "job.json")
    get_run_logger().info("run %s: training job %s in %s", run.run_id, job.train_id, folder.uri())
    try:
        if ray_address:
            launch_ray(job)
        else:
            launch_local(job, folder)
        result = folder.read_json(RESULT)
        if result is None:
            raise TrainingFailed(f"job {job.train_id} ended without {folder.uri(RESULT)}")
    except TrainingFailed as exc:
        where = {"log": folder.uri("launcher.log")} if not ray_address else {"ray": f"{ray_address}, job {job.train_id}"}
        update_manifest(run, extra={TABLE: {"status": "failed", "train_id": job.train_id, "reason": str(exc), **where}})
        raise
    return result


# -- the job ---------------------------------------------------------------------------------


def plan(config: FactoryConfig) -> TrainJob:
    """The job that tunes the run's agent; NothingToTrain saying why there is none, ValueError for bad settings."""
    run = data_run(config)
    training = config.training
    rows = sum(ref.rows for ref in committed(run, "dataset", shards=["train"]))
    if rows == 0:
        raise NothingToTrain(_no_rows_reason(run))
    base = base_weights(config)
    if training.general_data:
        FileSource(training.general_data).check()
    storage = _absolute(config.storage)
    source = run.model_copy(update={"storage": storage})
    ds_config = deepspeed_config(training.deepspeed)
    tid = train_id(training, base, "weights", source, "train", None, ds_config)
    output = storage.model_copy(update={"uri": join(storage.uri, "runs", run.run_id, STAGE, tid)})
    return TrainJob(
        training=training, base_model=base, data_run=source, split="train", output=output, deepspeed_config=ds_config
    )


def data_run(config: FactoryConfig) -> Run:
    """The run as its data was made: its manifest's config hash, when it has one.

    Training changes no row of the data stages, so it may run under code whose defaults have
    moved since (the hash of the same settings would differ); the rows it adds carry the hash
    of the data they were learned from, and so does the job's identity.
    """
    run = make_run(config)
    manifest = read_manifest(run)
    if manifest is not None and manifest.config_hash:
        run = run.model_copy(update={"config_hash": manifest.config_hash})
    return run


def base_weights(config: FactoryConfig) -> str:
    """What the job loads: `training.base_model`, else the agent's weights; NothingToTrain if it has none here."""
    if config.training.base_model:
        return model_source(config.training.base_model)
    agent = config.models.for_role("agent")
    if agent.backend not in ("transformers", "vllm"):
        raise NothingToTrain(
            f"the agent runs on the {agent.backend} backend, which has no weights to tune here; "
            "set training.base_model to a model directory or id"
        )
    return model_source(agent.model)


def _no_rows_reason(run: Run) -> str:
    manifest = read_manifest(run)
    samples = manifest.rows("safe_samples") if manifest else 0
    dataset = manifest.rows("dataset") if manifest else 0
    return (
        f"the run's dataset has no train rows ({samples} safe samples, {dataset} dataset rows in all splits); "
        "a stronger evaluator model accepts more safe actions"
    )


def _absolute(storage: StorageConfig) -> StorageConfig:
    """Local storage by absolute path: training processes may start in another directory."""
    if storage.is_s3 or "://" in storage.uri:
        return storage
    return storage.model_copy(update={"uri": os.path.abspath(storage.uri)})


# -- launchers ---------------------------------------------------------------------------------


def processes(training: TrainingConfig) -> int:
    """Training processes on this machine: as configured, else one per GPU, else one."""
    return training.processes or _gpus() or 1


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def launch_command(training: TrainingConfig, job_file: Path) -> list[str]:
    """torchrun (or the deepspeed launcher) over the entry point, one process per GPU."""
    n = processes(training)
    if training.launcher == "deepspeed":
        launcher = str(Path(sys.executable).parent / "deepspeed")
        return [launcher, f"--num_gpus={n}", "--module", ENTRY_POINT, "--job", str(job_file)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", ENTRY_POINT, "--job", str(job_file)]  # fmt: skip


def launch_local(job: TrainJob, folder: JobFolder) -> None:
    """Run the job under the local launcher, following its steps; TrainingFailed with its last lines."""
    job_file = folder.scratch / "job.json"
    job_file.write_text(job.model_dump_json())
    command = launch_command(job.training, job_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if not _gpus():
        # Idle OpenMP threads sleep instead of spinning: on CPU cores that another process also
        # uses, spinning threads made a SmolLM2 step 12x slower (45 s against 3.8 s, measured).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    lines: list[str] = []
    console = progress.console()
    log = get_run_logger()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith(STEP_EVENT):
                row = TrainingStepRow.model_validate_json(line.removeprefix(STEP_EVENT))
                message = (f"step {row.step}: loss {row.loss:.4f}, {row.tokens_per_s_per_device:,.0f} tokens/s "
                           f"per device, {row.seconds:.2f} s")  # fmt: skip
                log.info("training %s", message)
                if console is not None:
                    console.print(f"  finetune {message}")
            elif line.startswith("autosafe-train:") and console is not None:
                console.print(f"  {line.removeprefix('autosafe-train: ')}")
        code = process.wait()
    put_whole(folder.fs, folder.path("launcher.log"), "\n".join(lines).encode())
    if code != 0:
        raise TrainingFailed(f"training exited with status {code}: {_cause(lines)}")


_EXCEPTION = re.compile(r"^(?:\[rank\d+\]: )?((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception)\b.*)$")


def _cause(lines: list[str]) -> str:
    """The trainer's own exception line from a launcher's output (not the launcher's summary of it)."""
    found = [m.group(1) for m in map(_EXCEPTION.match, lines) if m and "ChildFailedError" not in m.group(1)]
    return (found or [line for line in lines if line.strip()] or ["no output"])[-1].strip()


def join_ray(address: str, output: StorageConfig) -> None:
    """Connect to the cluster at `address`; UnsharedStorage when its nodes cannot all see `output`."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="autosafe", log_to_driver=True)
    check_cluster_storage(output)


def launch_ray(job: TrainJob) -> None:
    """Run the job on the Ray cluster `join_ray` joined, through Ray Train's TorchTrainer: one worker
    per GPU (or `processes`)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from autosafe_core.training.train import ray_worker

    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = job.training.processes or max(1, gpus)
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"job": job.model_dump_json()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=RunConfig(name=f"autosafe-finetune-{job.train_id}", **_ray_storage(job.output)),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; its first line names it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingFailed(f"Ray Train job failed: {first}") from exc


def _ray_storage(output: StorageConfig) -> dict[str, Any]:
    """Where Ray Train keeps its own run files: beside the job (shared storage, as multi-node Ray needs)."""
    fs, root = output.filesystem()
    path = join(root, "ray")
    if isinstance(fs, LocalFileSystem):
        return {"storage_path": path}
    import pyarrow.fs

    options: dict[str, Any] = {}
    if output.endpoint_url:
        options["endpoint_override"] = output.endpoint_url
    if output.region:
        options["region"] = output.region
    return {"storage_path": path.removeprefix("s3://"), "storage_filesystem": pyarrow.fs.S3FileSystem(**options)}


# -- what the run keeps ------------------------------------------------------------------------


def record(run: Run, config: FactoryConfig, job: TrainJob, folder: JobFolder, result: dict[str, Any]) -> dict[str, Any]:
    """Commit the step rows, draw the loss curve, and return the manifest's `training` entry."""
    training = config.training
    rows = [TrainingStepRow.model_validate_json(line) for line in folder.read_lines(METRICS) if line.strip()]
    last = {row.step: row for row in rows}  # a resumed job logged some steps twice: the later counts
    rows = [last[step] for step in sorted(last)]
    commit_shard(run, TABLE, STAGE, job.train_id, rows)
    title = f"run {run.run_id}: {training.method} on {Path(job.base_model).name}, job {job.train_id}"
    put_whole(folder.fs, folder.path("loss.png"), loss_plot(rows, title))
    timed = [r.tokens_per_s for r in rows[1:]] or [r.tokens_per_s for r in rows]
    per_device = [r.tokens_per_s_per_device for r in rows[1:]] or [r.tokens_per_s_per_device for r in rows]
    kind = "adapter" if training.method == "lora" else "model"
    return {
        "status": "done",
        "train_id": job.train_id,
        "method": training.method,
        kind: result[kind],
        "base_model": training.base_model or config.models.for_role("agent").model,
        "base_weights": job.base_model,
        "steps": result["steps"],
        "examples": result["examples"],
        "devices": result["devices"],
        "device": result["device"],
        "first_loss": rows[0].loss if rows else None,
        "final_loss": rows[-1].loss if rows else None,
        "tokens_per_s": statistics.median(timed) if timed else None,
        "tokens_per_s_per_device": statistics.median(per_device) if per_device else None,
        "seconds": result["seconds"],
        "loss_plot": folder.uri("loss.png"),
        "folder": folder.uri(),
        "config": training.content(),
    }
