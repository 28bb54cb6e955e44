"""Stage 3 as a Prefect task: safe actions at the risk triggers of one shard of trajectories."""

from __future__ import annotations

from autosafe_core.stages import generate, rollout, safe_actions as stage
from autosafe_core.store import Run, ShardRef, read_records
from tasks.common import already, catalog, commit_result, role_models, shard_task
from tasks.engines import EngineRef

TABLE = "safe_samples"
STAGE = stage.STAGE


@shard_task(STAGE)
async def safe_actions_shard(
    run: Run, shard_id: str, cfg: stage.SafeActionConfig, engines: dict[str, EngineRef]
) -> ShardRef:
    """Safe samples for trajectories shard `shard_id`, committed under the same id."""
    done = already(run, TABLE, STAGE, shard_id)
    if done is not None:
        return done
    trajectories = read_records(run, "trajectories", stages=[rollout.STAGE], shards=[shard_id])
    scenarios = read_records(run, "scenarios", stages=[generate.STAGE], shards=[shard_id])
    models = role_models(engines, ("agent", "evaluator", "reflector"))
    result = await stage.sample_safe_actions(
        trajectories,
        {s.id: s for s in scenarios},
        stage.SafeActionModels(models["agent"], models["evaluator"], models["reflector"]),
        catalog(),
        cfg,
    )
    return commit_result(run, TABLE, STAGE, shard_id, result, models)
