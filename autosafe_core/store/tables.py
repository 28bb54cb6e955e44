"""The tables of a run: one registry of names, row models, lineage columns and Arrow schemas.

Each table stores one row model (`autosafe_core.rows` derives its Arrow schema) plus the
lineage columns that every row of every table carries: which run, stage and shard wrote
it, under which configuration, prompts and models, and when. Flows hand a table its
records (a trajectory table takes `Trajectory` objects and stores one row per step) and
get the same records back. A column that a row model shares with the lineage (a
rejection's `stage`) must hold the lineage's value. This module knows nothing about files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from autosafe_core.ots import Record, Rejection, SafeSample, Scenario, Trajectory, Usage
from autosafe_core.rows import arrow_schema, from_table, to_row
from autosafe_core.store.records import (
    DatasetRow,
    EvalRow,
    FingerprintRow,
    TrainingStepRow,
    TrajectoryStepRow,
    trajectories_from_rows,
    trajectory_rows,
)


class Lineage(Record):
    """The columns added to every row of every table."""

    run_id: str
    stage: str
    shard: str
    config_hash: str = ""
    prompt_versions: dict[str, str] = Field(default_factory=dict, description="JSON text in Arrow.")
    model_ids: dict[str, str] = Field(default_factory=dict, description="JSON text in Arrow.")
    created_at: str = Field(description="When the shard was written: ISO 8601, UTC.")


LINEAGE_COLUMNS: tuple[str, ...] = tuple(Lineage.model_fields)


def _same(records: Sequence[BaseModel]) -> list[BaseModel]:
    return list(records)


def _flatten_trajectories(records: Sequence[Trajectory]) -> list[BaseModel]:
    return [row for t in records for row in trajectory_rows(t)]


@dataclass(frozen=True)
class Table:
    """A table: the records flows commit (`record`) and how they become rows (`row`)."""

    name: str
    record: type[BaseModel]
    row: type[BaseModel]
    to_rows: Callable[[Sequence[Any]], list[BaseModel]] = _same
    from_rows: Callable[[list[Any]], list[Any]] = _same

    @property
    def schema(self) -> pa.Schema:
        return _schema(self.row)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("scenarios", Scenario, Scenario),
        Table("trajectories", Trajectory, TrajectoryStepRow, _flatten_trajectories, trajectories_from_rows),
        Table("safe_samples", SafeSample, SafeSample),
        Table("dataset", DatasetRow, DatasetRow),
        Table("training", TrainingStepRow, TrainingStepRow),
        Table("eval", EvalRow, EvalRow),
        Table("rejections", Rejection, Rejection),
        Table("fingerprints", FingerprintRow, FingerprintRow),
    )
}


def table(name: str) -> Table:
    """The registered table `name`, or ValueError listing the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None


@cache
def _schema(row: type[BaseModel]) -> pa.Schema:
    """The row model's fields, then the lineage fields it does not already have."""
    own = arrow_schema(row)
    lineage = arrow_schema(Lineage)
    for name in set(own.names) & set(lineage.names):
        if own.field(name).type != lineage.field(name).type:
            raise TypeError(f"{row.__name__}.{name} clashes with the lineage column of that name")
    return pa.schema([*own, *(f for f in lineage if f.name not in own.names)])


def to_arrow(name: str, records: Sequence[BaseModel], lineage: Lineage) -> pa.Table:
    """The records of table `name` as Arrow rows with the lineage columns filled in."""
    spec = table(name)
    for i, record in enumerate(records):
        if not isinstance(record, spec.record):
            raise ValueError(f"{name}: record {i} is a {type(record).__name__}, expected {spec.record.__name__}")
    fill = to_row(lineage)
    rows = []
    for i, row in enumerate(to_row(r) for r in spec.to_rows(records)):
        for column in fill.keys() & row.keys():
            if row[column] != fill[column]:
                raise ValueError(
                    f"{name}: record {i} field {column!r} is {row[column]!r}, "
                    f"but the shard's {column} is {fill[column]!r}"
                )
        rows.append({**row, **fill})
    return pa.Table.from_pylist(rows, schema=spec.schema)


def from_arrow(name: str, data: pa.Table) -> list[Any]:
    """The records of table `name` from its Arrow rows (lineage columns are ignored)."""
    spec = table(name)
    return spec.from_rows(from_table(spec.row, data))


def usage_of(records: Sequence[BaseModel]) -> Usage:
    """The token usage of records that carry provenance (others count nothing)."""
    total = Usage()
    for record in records:
        provenance = getattr(record, "provenance", None)
        if provenance is not None:
            total = total + provenance.usage
    return total
