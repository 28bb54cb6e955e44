"""Stage 2 as a Prefect task: the rollouts of one committed shard of scenarios."""

from __future__ import annotations

from autosafe_core.stages import generate, rollout as stage
from autosafe_core.store import Run, ShardRef, read_records
from tasks.common import already, catalog, commit_result, role_models, shard_task
from tasks.engines import EngineRef

TABLE = "trajectories"
STAGE = stage.STAGE


@shard_task(STAGE)
async def rollout_shard(
    run: Run, shard_id: str, cfg: stage.RolloutConfig, engines: dict[str, EngineRef]
) -> ShardRef:
    """One trajectory per scenario of scenarios shard `shard_id`, committed under the same id."""
    done = already(run, TABLE, STAGE, shard_id)
    if done is not None:
        return done
    scenarios = read_records(run, "scenarios", stages=[generate.STAGE], shards=[shard_id])
    models = role_models(engines, ("agent", "simulator", "evaluator"))
    result = await stage.rollout(
        scenarios, stage.RolloutModels(models["agent"], models["simulator"], models["evaluator"]), catalog(), cfg
    )
    return commit_result(run, TABLE, STAGE, shard_id, result, models)
