"""Pydantic models as Arrow rows: one schema per model, derived, never written by hand.

Scalars map to Arrow scalars, lists to lists, nested models to structs, enums to
strings. Free-form mappings (`dict[...]`, `Any`) become JSON text, because their keys
differ row to row and Arrow structs need fixed fields. `to_row` and `from_row` are
exact inverses for every model in `autosafe_core.ots`.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, TypeVar, Union

import pyarrow as pa
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        raise TypeError(f"unions other than Optional have no Arrow type: {annotation}")
    return annotation


def _is_json_text(annotation: Any) -> bool:
    annotation = _strip_optional(annotation)
    return annotation is Any or annotation is dict or typing.get_origin(annotation) is dict


def _arrow_type(annotation: Any) -> pa.DataType:
    annotation = _strip_optional(annotation)
    if _is_json_text(annotation):
        return pa.string()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(_fields(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return pa.string()
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return pa.list_(_arrow_type(item))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise TypeError(f"no Arrow type for {annotation!r}")


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    return [
        pa.field(name, _arrow_type(info.annotation), nullable=True)
        for name, info in model.model_fields.items()
    ]


@cache
def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of `model`'s rows."""
    return pa.schema(_fields(model))


def _encode(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if _is_json_text(annotation):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {
            name: _encode(info.annotation, value.get(name))
            for name, info in annotation.model_fields.items()
        }
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return [_encode(item, v) for v in value]
    return value


def _decode(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if _is_json_text(annotation):
        return json.loads(value)
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {
            name: _decode(info.annotation, value.get(name))
            for name, info in annotation.model_fields.items()
        }
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return [_decode(item, v) for v in value]
    return value


def to_row(record: BaseModel) -> dict[str, Any]:
    """A dict that fits `arrow_schema(type(record))`."""
    data = record.model_dump(mode="json")
    return {name: _encode(info.annotation, data.get(name)) for name, info in type(record).model_fields.items()}


def from_row(model: type[M], row: dict[str, Any]) -> M:
    """The inverse of `to_row`; extra columns (run id, shard, ...) are ignored."""
    data = {name: _decode(info.annotation, row.get(name)) for name, info in model.model_fields.items()}
    return model.model_validate({k: v for k, v in data.items() if v is not None})


def to_table(records: list[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Rows of one model as an Arrow table with the derived schema."""
    return pa.Table.from_pylist([to_row(r) for r in records], schema=arrow_schema(model))


def from_table(model: type[M], table: pa.Table) -> list[M]:
    return [from_row(model, row) for row in table.to_pylist()]
