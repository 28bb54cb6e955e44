"""A job's folder in storage: checkpoints, metrics, the final adapter, and the result written last.

Layout under the job's URI (a local folder or s3://.../runs/<run_id>/training/<train_id>):

    checkpoints/<tag>/...      DeepSpeed checkpoints (trainable weights, optimizer, scheduler, step)
    checkpoints/latest.json    {"tag", "step"} of the newest complete checkpoint, written after it
    metrics.jsonl              one TrainingStepRow per optimizer step, rewritten at each checkpoint
    adapter/ (or model/)       the final LoRA adapter (or full model) with the tokenizer
    result.json                written last: the job is complete when it exists

DeepSpeed writes checkpoints to a local folder: on a local store that is the store itself; on
object storage it is a scratch folder that the first process of each node uploads (every rank's
shards reach storage, one node at a time) and downloads again to resume. A checkpoint counts
once `latest.json` names it, so a crash mid-upload leaves the previous one in charge.

This module knows nothing about models or DeepSpeed's file names.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from autosafe_core.store.location import StorageConfig, join, put_whole

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
PLAN = "plan.json"
"""The micro-batch and checkpointing a job resolved from auto at its first start."""


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


class JobFolder:
    """The job's folder in its store, and this node's scratch folder beside it."""

    def __init__(self, output: StorageConfig, scratch: Path):
        self.output = output
        self.fs, self.root = output.filesystem()
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.scratch = scratch

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """What a person or a backend opens: an absolute path on a local store, else a URI."""
        path = self.path(*parts)
        return os.path.abspath(path) if self.is_local else self.fs.unstrip_protocol(path)

    # -- small JSON files -------------------------------------------------------------

    def read_json(self, *parts: str) -> Any:
        try:
            return json.loads(self.fs.cat_file(self.path(*parts)))
        except FileNotFoundError:
            return None

    def write_json(self, data: Any, *parts: str) -> None:
        put_whole(self.fs, self.path(*parts), json.dumps(data, indent=1).encode())

    def read_lines(self, *parts: str) -> list[str]:
        try:
            return self.fs.cat_file(self.path(*parts)).decode().splitlines()
        except FileNotFoundError:
            return []

    def write_lines(self, lines: list[str], *parts: str) -> None:
        put_whole(self.fs, self.path(*parts), "".join(f"{line}\n" for line in lines).encode())

    # -- checkpoints --------------------------------------------------------------------

    def checkpoint_dir(self) -> str:
        """Where DeepSpeed saves and loads on this node (it adds the tag)."""
        if self.is_local:
            return self.path(CHECKPOINTS)
        return str(self.scratch / CHECKPOINTS)

    def latest(self) -> dict[str, Any] | None:
        """{"tag", "step"} of the newest complete checkpoint, or None."""
        return self.read_json(CHECKPOINTS, LATEST)

    def upload_checkpoint(self, tag: str) -> None:
        """This node's files of checkpoint `tag` to storage (a no-op on a local store)."""
        if self.is_local:
            return
        local = self.scratch / CHECKPOINTS / tag
        self._put_tree(local, self.path(CHECKPOINTS, tag))
        shutil.rmtree(local, ignore_errors=True)

    def download_checkpoint(self, tag: str) -> None:
        """Checkpoint `tag` from storage into this node's scratch (a no-op on a local store)."""
        if self.is_local:
            return
        local = self.scratch / CHECKPOINTS / tag
        shutil.rmtree(local, ignore_errors=True)
        remote = self.path(CHECKPOINTS, tag)
        for path in self.fs.find(remote):
            target = local / path[len(remote) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))

    def commit_checkpoint(self, tag: str, step: int, keep: int) -> None:
        """Name `tag` the latest checkpoint, then delete all but the newest `keep`."""
        self.write_json({"tag": tag, "step": step}, CHECKPOINTS, LATEST)
        tags = sorted(name for name in self._names(CHECKPOINTS) if name.startswith("step-"))
        for old in tags[:-keep]:
            if old != tag:
                self.fs.rm(self.path(CHECKPOINTS, old), recursive=True)

    def _names(self, *parts: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(*parts), detail=False)]
        except FileNotFoundError:
            return []

    # -- the result ---------------------------------------------------------------------

    def publish_dir(self, local: Path, name: str) -> str:
        """Copy a finished local folder (the adapter) to `name` in storage, replacing what is there; its URI."""
        target = self.path(name)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copytree(local, target)
        else:
            self._put_tree(local, target)
        return self.uri(name)

    def _put_tree(self, local: Path, remote: str) -> None:
        """Every file under `local` to the same relative path under `remote` (merging with what is there)."""
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            self.fs.put_file(str(file), join(remote, file.relative_to(local).as_posix()))
