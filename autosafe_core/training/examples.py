"""Where SFT examples come from, read as a stream: a run's `dataset` table, or a Parquet/JSONL file.

A source knows how many examples it holds without reading them (commit records, Parquet
metadata; a JSONL file is counted line by line) and yields them in its stored order, a
record batch at a time, so a worker never holds a whole dataset. Files may hold our own
rows (`messages` and `target`), exported chats (`messages` ending with the assistant's
reply), or the usual instruction sets (`prompt`/`response`, `instruction`/`input`/`output`).

This module knows nothing about tokenizers, mixing or batching.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from autosafe_core.store.location import join
from autosafe_core.store.run import Run
from autosafe_core.store.shards import committed, run_dir

TABLE = "dataset"
BATCH_ROWS = 256


@dataclass(frozen=True)
class Example:
    """Prompt turns and the assistant reply to learn."""

    messages: list[dict[str, str]]
    target: str


class RunSource:
    """One split of a run's committed `dataset` table (one shard per split)."""

    def __init__(self, run: Run, split: str):
        self.run, self.split = run, split
        self.name = f"run {run.run_id} {TABLE}[{split}]"

    def _refs(self):
        return [ref for ref in committed(self.run, TABLE, shards=[self.split]) if ref.path]

    def count(self) -> int:
        return sum(ref.rows for ref in self._refs())

    def __iter__(self) -> Iterator[Example]:
        fs, run_path = run_dir(self.run)
        for ref in self._refs():
            with fs.open(join(run_path, ref.path), "rb") as f:
                yield from _parquet_examples(f, f"{self.name} {ref.path}")


class FileSource:
    """A Parquet (`.parquet`) or JSONL (any other name) file, local or at an fsspec URI."""

    def __init__(self, uri: str):
        self.uri = uri
        self.name = uri
        self.parquet = uri.rstrip("/").endswith(".parquet")

    def count(self) -> int:
        try:
            with fsspec.open(self.uri, "rb") as f:
                if self.parquet:
                    return pq.ParquetFile(f).metadata.num_rows
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            raise ValueError(f"{self.uri}: no such file") from None

    def __iter__(self) -> Iterator[Example]:
        with fsspec.open(self.uri, "rb") as f:
            if self.parquet:
                yield from _parquet_examples(f, self.uri)
                return
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.uri}: line {number}: not JSON ({exc.msg})") from None
                yield to_example(row, f"{self.uri}: line {number}")

    def check(self) -> int:
        """The number of examples, after reading the first one; ValueError naming the file and row if bad."""
        n = self.count()
        if n == 0:
            raise ValueError(f"{self.uri}: no examples")
        next(iter(self))
        return n


def _parquet_examples(f: Any, where: str) -> Iterator[Example]:
    parquet = pq.ParquetFile(f)
    index = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield to_example(row, f"{where}: row {index}")
            index += 1


def to_example(row: dict[str, Any], where: str) -> Example:
    """One stored row as an Example; ValueError starting with `where` and naming the field if it is none."""
    messages = row.get("messages")
    if isinstance(messages, str):  # a JSON column
        messages = json.loads(messages)
    if messages is not None:
        turns = [_turn(m, f"{where}: messages[{i}]") for i, m in enumerate(messages)]
        target = row.get("target")
        if target:
            if not turns:
                raise ValueError(f"{where}: field 'messages' is empty")
            return Example(turns, str(target))
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise ValueError(f"{where}: field 'messages' must end with an assistant turn after a prompt (or give 'target')")
        return Example(turns[:-1], turns[-1]["content"])
    if row.get("prompt") is not None:
        reply = row.get("response", row.get("completion"))
        if not reply:
            raise ValueError(f"{where}: field 'response' missing or empty")
        return Example([{"role": "user", "content": str(row["prompt"])}], str(reply))
    if row.get("instruction") is not None:
        if not row.get("output"):
            raise ValueError(f"{where}: field 'output' missing or empty")
        extra = row.get("input") or ""
        prompt = f"{row['instruction']}\n\n{extra}" if extra else str(row["instruction"])
        return Example([{"role": "user", "content": prompt}], str(row["output"]))
    raise ValueError(f"{where}: no 'messages', 'prompt'/'response' or 'instruction'/'output' fields")


def _turn(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message.get("content") is None:
        raise ValueError(f"{where}: a turn is an object with 'role' and 'content'")
    return {"role": message["role"], "content": str(message["content"])}
