"""Where a run's files live: a URI turned into an fsspec filesystem, and whole-object writes.

A local folder (`./autosafe-data`, the default) or `s3://bucket/prefix` on AWS S3 or any
S3-compatible store (MinIO, Ceph, moto) through s3fs. Credentials are never part of the
configuration: s3fs finds them where boto does (environment, profile, instance role), so
they cannot reach a row, a manifest or a log. `put_whole` is the one write primitive the
commit protocol needs: readers see the old object or the new one, never a part of it.
This module knows nothing about tables, shards or runs.
"""

from __future__ import annotations

import os
import uuid

import fsspec.core
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_URI = "./autosafe-data"


class StorageConfig(BaseModel):
    """Where every table goes; no secret belongs here (boto's usual chain supplies them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(DEFAULT_URI, description="A local folder, or s3://bucket/prefix.")
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph...); none means AWS S3."
    )
    region: str | None = Field(None, description="S3 region; none lets boto decide.")
    anon: bool = Field(False, description="Unsigned S3 requests (public buckets).")
    profile: str | None = Field(None, description="A named profile of ~/.aws for credentials.")
    conditional_writes: bool = Field(
        True,
        description="Commit records with If-None-Match (AWS S3, MinIO); turn off for stores "
        "without it, and then the last of two racing writers of one shard wins.",
    )

    @field_validator("uri")
    @classmethod
    def _uri_shape(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        if v.startswith("s3://") and not v.removeprefix("s3://").strip("/"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return v

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith(("s3://", "s3a://"))

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """The fsspec filesystem and the root path inside it (no protocol, no trailing slash)."""
        options: dict = {}
        if self.is_s3:
            client_kwargs: dict = {}
            if self.endpoint_url:
                client_kwargs["endpoint_url"] = self.endpoint_url
            if self.region:
                client_kwargs["region_name"] = self.region
            # Other processes commit shards while this one runs: a cached listing would hide them.
            options = {"client_kwargs": client_kwargs, "anon": self.anon, "use_listings_cache": False}
            if self.profile:
                options["profile"] = self.profile
        # fsspec keeps one instance per set of options, so calling this again is cheap.
        fs, root = fsspec.core.url_to_fs(self.uri, **options)
        return fs, root.rstrip("/")


def join(first: str, *rest: str) -> str:
    """A path inside a filesystem from its parts ('/'-separated on every store)."""
    return "/".join([first.rstrip("/"), *(p.strip("/") for p in rest if p.strip("/"))])


def put_whole(fs: AbstractFileSystem, path: str, data: bytes, *, exclusive: bool = False) -> None:
    """Write `data` at `path` so readers see all of it or nothing.

    exclusive: fail with FileExistsError when `path` exists (first writer wins).
    """
    if isinstance(fs, LocalFileSystem):
        _put_local(path, data, exclusive=exclusive)
    elif exclusive:
        # One S3 PUT is atomic; If-None-Match makes it first-writer-wins (FileExistsError).
        fs.pipe_file(path, data, mode="create")
    else:
        fs.pipe_file(path, data)


def _put_local(path: str, data: bytes, *, exclusive: bool) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    # Hidden, unique, in the same directory: the rename below stays on one file system.
    tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        if exclusive:
            os.link(tmp, path)  # atomic, and fails when the name is taken
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_temporary(name: str) -> bool:
    """Whether a file name is an unfinished `put_whole` (a crash can leave one behind)."""
    return name.startswith(".") and ".tmp-" in name
