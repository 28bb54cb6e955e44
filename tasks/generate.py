"""Stage 1 as a Prefect task: scenarios [start, stop) of the run's OTS grid, one shard."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.ots import RiskSource
from autosafe_core.stages import generate as stage
from autosafe_core.store import Run, ShardRef
from tasks.common import already, catalog, commit_result, role_models, shard_task
from tasks.engines import EngineRef

TABLE = "scenarios"
STAGE = stage.STAGE


class Grid(BaseModel):
    """Which OTS cells a run draws scenarios from (empty lists mean the whole catalog)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    toolkits: list[str] = Field(default_factory=list)
    risk_outcomes: list[str] = Field(default_factory=list)
    risk_sources: list[RiskSource] = Field(default_factory=list)
    toolkits_per_cell: int = Field(1, ge=1)

    def cells(self):
        return stage.ots_grid(
            catalog(), self.toolkits or None, self.risk_outcomes or None, self.risk_sources or None,
            self.toolkits_per_cell,
        )


@shard_task(STAGE)
async def generate_shard(
    run: Run,
    shard_id: str,
    start: int,
    stop: int,
    grid: Grid,
    cfg: stage.GenerateConfig,
    engines: dict[str, EngineRef],
) -> ShardRef:
    """Scenarios `start` to `stop` of the run, committed as shard `shard_id` of `scenarios`."""
    done = already(run, TABLE, STAGE, shard_id)
    if done is not None:
        return done
    models = role_models(engines, ("generator",))
    jobs = stage.scenario_jobs(grid.cells(), start, stop)
    result = await stage.generate_jobs(jobs, models["generator"], catalog(), cfg)
    return commit_result(run, TABLE, STAGE, shard_id, result, models)
