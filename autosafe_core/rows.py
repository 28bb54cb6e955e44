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
from collections.abc import Callable
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


Codec = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _json_value(value: Any) -> Any:
    return None if value is None else json.loads(value)


@cache
def _codec(annotation: Any, decode: bool) -> Codec:
    """The converter of one annotation's values (a row value from a dumped value, or back),
    built once per annotation: a shard converts thousands of rows of the same few models."""
    if _is_json_text(annotation):
        return _json_value if decode else _json_text
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = _field_codecs(annotation, decode)
        return lambda value: None if value is None else {name: code(value.get(name)) for name, code in fields}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        code = _codec(item, decode)
        if code is _identity:
            return _identity
        return lambda value: None if value is None else [code(v) for v in value]
    return _identity


@cache
def _field_codecs(model: type[BaseModel], decode: bool) -> tuple[tuple[str, Codec], ...]:
    return tuple((name, _codec(info.annotation, decode)) for name, info in model.model_fields.items())


def to_row(record: BaseModel) -> dict[str, Any]:
    """A dict that fits `arrow_schema(type(record))`."""
    data = record.model_dump(mode="json")
    return {name: code(data.get(name)) for name, code in _field_codecs(type(record), False)}


def from_row(model: type[M], row: dict[str, Any]) -> M:
    """The inverse of `to_row`; extra columns (run id, shard, ...) are ignored."""
    data = {name: code(row.get(name)) for name, code in _field_codecs(model, True)}
    return model.model_validate({k: v for k, v in data.items() if v is not None})


def to_table(records: list[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Rows of one model as an Arrow table with the derived schema."""
    return pa.Table.from_pylist([to_row(r) for r in records], schema=arrow_schema(model))


def from_table(model: type[M], table: pa.Table) -> list[M]:
    return [from_row(model, row) for row in table.to_pylist()]
