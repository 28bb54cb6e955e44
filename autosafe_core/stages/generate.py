"""Stage 1 of the paper: the risk scenario set D_r, from the cells of the OTS grid.

`ots_grid` lists (toolkits, risk outcome, risk source) cells in a fixed order that
spreads early cells over toolkits, outcomes and sources, with each toolkit's own
risks first, so a run that takes the first N cells is already diverse.
`generate_scenarios` asks the generator for `scenarios_per_cell` scenarios per cell.
A scenario's id is fixed by (cell, index, seed), so a re-run makes the same ids and
never duplicates; its sampling seed derives from the id, so a re-run also samples
alike and hits the response cache.

Knows nothing about shards or storage.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.llm.base import ChatModel, SamplingParams
from autosafe_core.ots import OtsCell, RiskSource, Scenario, stable_id
from autosafe_core.roles import scenario_generator as generator
from autosafe_core.roles.toolbox import CatalogLike
from autosafe_core.stages.common import Books, StageResult, bounded_map, seed_for

STAGE = "generate"


class GenerateConfig(BaseModel):
    """Stage 1 settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scenarios_per_cell: int = Field(1, ge=1, le=1000, description="Scenarios written for each OTS cell.")
    concurrency: int = Field(64, ge=1, le=100_000, description="Generator calls in flight at most.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Generator sampling temperature.")
    seed: int = Field(0, description="Part of every scenario id and sampling seed: a new seed, new scenarios.")
    retries: int = Field(1, ge=0, le=5, description="Times a rejected answer is asked again, with the reason.")


def ots_grid(
    catalog: CatalogLike,
    toolkits: Sequence[str] | None = None,
    outcomes: Sequence[str] | None = None,
    sources: Sequence[RiskSource] | None = None,
    toolkits_per_cell: int = 1,
    limit: int | None = None,
) -> list[OtsCell]:
    """The OTS cells over these toolkits (combined `toolkits_per_cell` at a time), outcomes and sources.

    None means all the catalog holds. Toolkit combinations take turns; within one,
    outcomes its toolkits' risks name come first, and the source rotates with the
    outcome. ValueError names a toolkit or outcome the catalog lacks.
    """
    kit_names = list(toolkits) if toolkits else list(catalog.toolkits)
    outcome_ids = list(outcomes) if outcomes else list(catalog.outcomes)
    source_list = list(sources) if sources else list(RiskSource)
    for name in kit_names:
        if name not in catalog.toolkits:
            raise ValueError(f"toolkits: unknown toolkit {name!r}")
    for outcome in outcome_ids:
        if outcome not in catalog.outcomes:
            raise ValueError(f"outcomes: unknown risk outcome {outcome!r}")
    if not 1 <= toolkits_per_cell <= len(kit_names):
        raise ValueError(f"toolkits_per_cell: must be 1 to {len(kit_names)}, got {toolkits_per_cell}")

    queues = [
        _cells_of(list(combo), _by_relevance(catalog, combo, outcome_ids), source_list, offset=c)
        for c, combo in enumerate(itertools.combinations(kit_names, toolkits_per_cell))
    ]
    cells = [cell for turn in zip(*queues, strict=True) for cell in turn]
    return cells[:limit] if limit is not None else cells


def _by_relevance(catalog: CatalogLike, combo: Sequence[str], outcome_ids: list[str]) -> list[str]:
    named = {catalog.normalise_outcome(risk) for name in combo for risk in catalog.toolkits[name].risks}
    return [o for o in outcome_ids if o in named] + [o for o in outcome_ids if o not in named]


def _cells_of(combo: list[str], outcome_ids: list[str], sources: list[RiskSource], offset: int) -> list[OtsCell]:
    # Round r pairs outcome j with source (j + r + offset) mod |sources|: early cells vary
    # both, and the offset (the combination's index) varies the sources across combinations.
    return [
        OtsCell(toolkits=combo, risk_outcome=outcome, risk_source=sources[(j + r + offset) % len(sources)])
        for r in range(len(sources))
        for j, outcome in enumerate(outcome_ids)
    ]


def scenario_jobs(cells: Sequence[OtsCell], start: int, stop: int) -> list[tuple[OtsCell, int]]:
    """Scenarios `start` to `stop` of a run over `cells`: the cells in turn, then again with the next index.

    Scenario i is (cells[i mod n], i div n), so N scenarios cover min(N, n) cells evenly,
    and any slice of the run (a shard) is known without listing the rest.
    """
    if not cells:
        raise ValueError("cells: the OTS grid is empty")
    n = len(cells)
    return [(cells[i % n], i // n) for i in range(start, stop)]


def scenario_id(cell: OtsCell, index: int, seed: int) -> str:
    """The id of scenario `index` of `cell` under `seed`."""
    return stable_id("scenario", cell.id, index, seed)


async def generate_scenarios(
    cells: Sequence[OtsCell],
    model: ChatModel,
    catalog: CatalogLike,
    cfg: GenerateConfig | None = None,
) -> StageResult[Scenario]:
    """`cfg.scenarios_per_cell` scenarios for each cell; every rejected answer is a rejection row."""
    cfg = cfg or GenerateConfig()
    jobs = [(cell, index) for cell in cells for index in range(cfg.scenarios_per_cell)]
    return await generate_jobs(jobs, model, catalog, cfg)


async def generate_jobs(
    jobs: Sequence[tuple[OtsCell, int]],
    model: ChatModel,
    catalog: CatalogLike,
    cfg: GenerateConfig | None = None,
) -> StageResult[Scenario]:
    """Scenario `index` of `cell` for each (cell, index) job, e.g. one shard of `scenario_jobs`."""
    cfg = cfg or GenerateConfig()
    books = Books(STAGE, {generator.ROLE: (generator.prompt().version, model)})

    async def one(job: tuple[OtsCell, int]) -> Scenario | None:
        cell, index = job
        sid = scenario_id(cell, index, cfg.seed)
        ledger = books.open(sid)
        if cell.risk_outcome not in catalog.outcomes:
            ledger.reject("input", f"cell {cell.id}: unknown risk outcome {cell.risk_outcome!r}")
            return None
        toolbox = ledger.toolbox(catalog, cell.toolkits, f"cell {cell.id}")
        if toolbox is None:
            return None
        ledger.uses(generator.ROLE)
        sampling = SamplingParams(
            temperature=cfg.temperature, max_tokens=generator.SAMPLING.max_tokens, seed=seed_for(sid)
        )
        scenario = await ledger.ask(
            generator.ROLE,
            lambda retry_of: generator.generate_scenario(
                model, cell, catalog, toolbox, scenario_id=sid, index=index, sampling=sampling, retry_of=retry_of
            ),
            cfg.retries,
        )
        if scenario is None:
            return None
        return scenario.model_copy(update={"provenance": ledger.provenance()})

    results = await bounded_map(jobs, one, cfg.concurrency)
    return books.result([s for s in results if s is not None])
