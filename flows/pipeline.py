"""The shard pipeline that every data flow runs: plan shards, start engines, submit one
task per (stage, shard) with each shard's stages chained, follow progress, sum up.

Shards flow through the stages independently: the rollout of shard 3 starts when its
scenarios are committed, not when every shard's are. Committed shards are skipped
before anything is submitted, so re-running a finished run submits nothing. A shard
that fails after its task's retries is reported and the others go on; re-running the
run id redoes exactly the failed shards.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prefect import get_run_logger
from prefect.futures import PrefectFuture
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autosafe_core.roles import prompt_versions
from autosafe_core.stages import generate, rollout, safe_actions
from autosafe_core.store import Run, RunManifest, ShardRef, committed_shards, config_hash, read_manifest, update_manifest
from flows.config import FactoryConfig
from flows.progress import console as progress_console
from flows.runtime import check_cluster_storage
from flows.summary_artifact import publish_summary
from tasks import dataset
from tasks.common import catalog
from tasks.dataset import dataset_shards
from tasks.engines import EngineRef, engine_stats, engines
from tasks.generate import generate_shard
from tasks.rollout import rollout_shard
from tasks.safe_actions import safe_actions_shard

SHARD_STAGES = (generate.STAGE, rollout.STAGE, safe_actions.STAGE)
ALL_STAGES = (*SHARD_STAGES, dataset.STAGE)
TABLE_OF = {generate.STAGE: "scenarios", rollout.STAGE: "trajectories", safe_actions.STAGE: "safe_samples"}
ROLES_OF = {
    generate.STAGE: ("generator",),
    rollout.STAGE: ("agent", "simulator", "evaluator"),
    safe_actions.STAGE: ("agent", "evaluator", "reflector"),
    dataset.STAGE: (),
}


class MissingInput(ValueError):
    """A stage was asked for before the stage it reads from committed its shards."""


class ShardsFailed(RuntimeError):
    """Some shards failed after their retries; re-running the run id redoes them."""


def make_run(config: FactoryConfig) -> Run:
    """The store's view of the run: where it lives and the lineage its rows carry."""
    return Run(
        run_id=config.run_id,
        storage=config.storage,
        config_hash=config_hash(config.content()),
        prompt_versions=prompt_versions(),
        model_ids={role: spec.model for role, spec in config.models.by_role().items()},
    )


@dataclass
class StageProgress:
    """Shards and records done per stage, for the progress bar and the summary."""

    started: float = field(default_factory=time.monotonic)
    records: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    began: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)

    def seconds(self) -> dict[str, float]:
        """Wall time per stage: its first task submitted to its last one finished."""
        return {stage: self.ended[stage] - began for stage, began in self.began.items() if stage in self.ended}

    def rate(self, stage: str) -> float:
        return self.records.get(stage, 0) / max(1e-9, time.monotonic() - self.started)


def run_pipeline(config: FactoryConfig, stages: Iterable[str]) -> RunManifest:
    """Run `stages` (in pipeline order) of the run `config` describes; returns its manifest.

    Progress bars go to `flows.progress.console()` when the CLI set one.
    """
    wanted = [s for s in ALL_STAGES if s in set(stages)]
    config.check_against(catalog())
    if config.runner == "ray":
        check_cluster_storage(config.storage)
    run = make_run(config)
    update_manifest(run, config=config.content())  # refuses a run id made under another config
    todo = _todo(run, config, wanted)
    roles = sorted({role for stage in wanted if todo[stage] for role in ROLES_OF[stage]})
    placement = "ray" if config.runner == "ray" else "local"
    progress = StageProgress()
    with engines({r: config.models.for_role(r) for r in roles}, placement, config.engine_replicas) as refs:
        slots = _ray_slots if placement == "ray" else None
        _follow(_Shards(run, config, wanted, todo, refs, progress, slots), todo, progress, progress_console())
        stats = engine_stats(refs) if refs else {}
    _raise_for_failures(run, progress)
    if dataset.STAGE in wanted:
        progress.began[dataset.STAGE] = time.monotonic()
        dataset_shards.submit(run, config.dataset).result()
        progress.ended[dataset.STAGE] = time.monotonic()
    manifest = update_manifest(run, extra={"engines": _add_stats(read_manifest(run), stats)})
    publish_summary(run, manifest, progress.seconds())
    get_run_logger().info(
        "run %s: %s", run.run_id, ", ".join(f"{name} {t.rows} rows" for name, t in manifest.tables.items())
    )
    return manifest


def _todo(run: Run, config: FactoryConfig, wanted: list[str]) -> dict[str, list[tuple[str, int, int]]]:
    """The shards each stage still has to commit; MissingInput when a stage's input is not there."""
    shards = config.shards()
    todo: dict[str, list[tuple[str, int, int]]] = {}
    previous: str | None = None
    for stage in SHARD_STAGES:
        done = committed_shards(run, TABLE_OF[stage], stage)
        if stage in wanted:
            todo[stage] = [s for s in shards if s[0] not in done]
            if previous is not None and previous not in wanted:
                have = committed_shards(run, TABLE_OF[previous], previous)
                missing = [s[0] for s in todo[stage] if s[0] not in have]
                if missing:
                    raise MissingInput(
                        f"{stage}: {len(missing)} of {len(shards)} shards of run {run.run_id} have no committed "
                        f"{TABLE_OF[previous]} (first: shard {missing[0]}); run the {previous} stage first"
                    )
        previous = stage
    todo[dataset.STAGE] = []
    return todo


class _Shards:
    """Submits each shard's stages one after another: a stage's task is submitted when the
    same shard's previous stage has committed, never before.

    Submitting a whole chain at once with `wait_for` would let Ray start a downstream
    task whose upstream is still running; it then blocks inside its worker, Ray lends
    its CPU to a fresh worker process, and every such wait costs a process start.

    At most `slots()` tasks are in flight (on Ray: the cluster's CPUs plus one, asked
    again at each refill, so a cluster that grows gets more), and a started shard's next
    stage goes before a new shard. Ray starts queued tasks in an order of its own: with
    every shard submitted at once, a shard's first stage could wait until the end of the
    run, and its chain then runs alone on an otherwise idle cluster.
    """

    def __init__(
        self,
        run: Run,
        config: FactoryConfig,
        wanted: list[str],
        todo: dict,
        refs: dict[str, EngineRef],
        progress: StageProgress,
        slots: Callable[[], int] | None = None,
    ):
        self.run = run
        self.slots = slots
        self.progress = progress
        self.refs = refs
        self.gen_cfg, self.roll_cfg, self.safe_cfg = config.stage_configs()
        self.grid = config.grid()
        self.ranges = {shard_id: (start, stop) for shard_id, start, stop in config.shards()}
        # Each shard's stages still to do, in pipeline order.
        self.chains: dict[str, list[str]] = {}
        for stage in SHARD_STAGES:
            if stage in wanted:
                for shard_id, _, _ in todo[stage]:
                    self.chains.setdefault(shard_id, []).append(stage)
        self.waiting = collections.deque(self.chains)  # shards with nothing submitted yet
        self.done: queue.SimpleQueue[tuple[str, str, PrefectFuture]] = queue.SimpleQueue()
        self.in_flight = 0

    def start(self) -> None:
        self._fill()

    def advance(self, shard_id: str) -> None:
        """After a task of the shard finished: its next stage, if it has one left, then new
        shards into the slots still free."""
        self._submit_next(shard_id)
        self._fill()

    def _fill(self) -> None:
        limit = self.slots() if self.slots else None
        while self.waiting and (limit is None or self.in_flight < limit):
            self._submit_next(self.waiting.popleft())

    def _submit_next(self, shard_id: str) -> None:
        chain = self.chains[shard_id]
        if not chain:
            return
        stage = chain.pop(0)
        self.progress.began.setdefault(stage, time.monotonic())
        role_refs = {role: self.refs[role] for role in ROLES_OF[stage]}
        if stage == generate.STAGE:
            start, stop = self.ranges[shard_id]
            future = generate_shard.submit(self.run, shard_id, start, stop, self.grid, self.gen_cfg, role_refs)
        elif stage == rollout.STAGE:
            future = rollout_shard.submit(self.run, shard_id, self.roll_cfg, role_refs)
        else:
            future = safe_actions_shard.submit(self.run, shard_id, self.safe_cfg, role_refs)
        self.in_flight += 1
        future.add_done_callback(lambda f: self.done.put((stage, shard_id, f)))

    def finished(self) -> Iterator[tuple[str, str, PrefectFuture]]:
        """Each task as it finishes; the caller says, through `advance`, whether its shard goes on."""
        while self.in_flight:
            item = self.done.get()
            self.in_flight -= 1
            yield item

    def abandon(self, shard_id: str) -> list[str]:
        """The shard's later stages, which will not run now (their input is missing)."""
        left, self.chains[shard_id] = self.chains[shard_id], []
        return left


def _ray_slots() -> int:
    """Tasks in flight on Ray: one per CPU of the cluster, and one waiting to start."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1)) + 1


def _follow(shards: _Shards, todo: dict, progress: StageProgress, console: Console | None) -> None:
    """Run every shard's chain, with a progress bar per stage: shards, records/s and an ETA."""
    bar = Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards  {task.fields[records]} rows  {task.fields[rate]:.1f} rows/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=console is None,
    )
    with bar:
        ids = {
            stage: bar.add_task(stage, total=len(todo[stage]), records=0, rate=0.0)
            for stage in SHARD_STAGES
            if todo.get(stage)
        }
        shards.start()
        for stage, shard_id, future in shards.finished():
            progress.ended[stage] = time.monotonic()
            try:
                ref: ShardRef = future.result()
            except Exception as exc:  # the task failed after its retries
                progress.failed.setdefault(stage, []).append(f"{shard_id}: {str(exc).splitlines()[0][:200]}")
                bar.update(ids[stage], advance=1)
                for later in shards.abandon(shard_id):
                    progress.failed.setdefault(later, []).append(f"{shard_id}: not run, {stage} failed")
                    bar.update(ids[later], advance=1)
                shards.advance(shard_id)  # nothing left of this shard: its slot goes to a new one
                continue
            progress.records[stage] = progress.records.get(stage, 0) + ref.records
            progress.shards[stage] = progress.shards.get(stage, 0) + 1
            bar.update(ids[stage], advance=1, records=progress.records[stage], rate=progress.rate(stage))
            shards.advance(shard_id)


def _raise_for_failures(run: Run, progress: StageProgress) -> None:
    if not progress.failed:
        return
    count = sum(len(v) for v in progress.failed.values())
    first_stage, first = next(iter(progress.failed.items()))
    raise ShardsFailed(
        f"run {run.run_id}: {count} shard(s) failed (first: {first_stage} shard {first[0]}); "
        "committed shards are kept: re-run the same run id to redo the rest"
    )


def _add_stats(manifest: RunManifest | None, stats: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Engine counters summed over every invocation of the run (a resumed run adds to them)."""
    total = {k: dict(v) for k, v in ((manifest.extra.get("engines") if manifest else None) or {}).items()}
    for engine, counters in stats.items():
        into = total.setdefault(engine, {})
        for key, value in counters.items():
            into[key] = max(into.get(key, 0), value) if key == "peak_in_flight" else into.get(key, 0) + value
    return total
