"""Run storage: where a run's outputs live, reachable the same way from the driver and from every
learner rank, on any node.

A run's location is a folder path or a URI that pyarrow.fs opens (`file://`, `s3://`, `gs://`,
`hdfs://`; e.g. `s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http`). Every process
writes into a local folder first (atomically, as ever), then publishes what it wrote:

- a folder path (local, or a shared filesystem mounted at the same path on every node): the local
  folder *is* the storage; publishing does nothing;
- a URI: the local folder is a staging mirror on each node (`$TMPDIR/wavalign-staging/...`); a
  published file is copied to the storage under a temporary name and then moved over its final
  name, so a reader sees the old file or the whole new one (an object store's move is one
  server-side copy). `fetch` brings stored files into the mirror (resume, on a fresh node).

A `RunStore` is a small picklable value: the driver makes it and hands it to the learner ranks.
pyarrow is imported only when a URI is used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class StorageError(ValueError):
    pass


def is_uri(location: str) -> bool:
    """
    >>> is_uri("s3://bucket/runs"), is_uri("/data/runs"), is_uri("runs")
    (True, False, False)
    """
    return urlsplit(location).scheme in URI_SCHEMES


def join(location: str, *parts: str) -> str:
    """A path or URI with parts appended (a URI keeps its query, e.g. the endpoint to use).

    >>> join("s3://b/runs?scheme=http", "r1", "metrics.parquet")
    's3://b/runs/r1/metrics.parquet?scheme=http'
    >>> join("/data/runs", "r1")
    '/data/runs/r1'
    """
    if not is_uri(location):
        return str(Path(location, *parts))
    url = urlsplit(location)
    path = "/".join([url.path.rstrip("/"), *parts])
    return urlunsplit((url.scheme, url.netloc, path, url.query, url.fragment))


def name_of(location: str) -> str:
    """The last component of a path or URI.

    >>> name_of("s3://b/runs/r1-20260101?scheme=http"), name_of("/data/runs/r1/")
    ('r1-20260101', 'r1')
    """
    path = urlsplit(location).path if is_uri(location) else location
    return Path(path.rstrip("/")).name


def resolve_output_dir(output_dir: str, submitted: bool, key: str = "run.output_dir") -> str:
    """The storage location of run.output_dir: a URI as given, a path made absolute. A relative path
    in a submitted job would land in Ray's temporary copy of the job's working directory, on one node:
    an error with the fix."""
    if is_uri(output_dir):
        return output_dir
    if not os.path.isabs(output_dir) and submitted:
        raise StorageError(
            f"{key}: {output_dir!r} is relative, and a job submitted with `ray job submit` runs in Ray's "
            "temporary copy of its working directory (removed with the session, and not on the other nodes): "
            f"give a folder every node mounts at the same path (--set {key}=/shared/runs) or a URI "
            f"(--set {key}=s3://bucket/runs)"
        )
    return str(Path(output_dir).resolve())


def running_as_submitted_job() -> bool:
    """Whether this driver is a `ray job submit` entrypoint (Ray's job supervisor sets this variable
    for the process it starts)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


@dataclass(frozen=True)
class RunStore:
    """One run's storage location, and this process's local folder for it."""

    location: str  # the run's folder: an absolute path or a URI
    mirror: str = ""  # a URI's staging mirror of its own (a learner rank's), beside the driver's

    def private(self, tag: str) -> RunStore:
        """The same storage through a staging mirror of its own, for a writer that shares a node with
        others (each learner rank publishes exactly the files it wrote)."""
        return RunStore(self.location, tag)

    @property
    def remote(self) -> bool:
        return is_uri(self.location)

    @property
    def local(self) -> Path:
        """Where this process writes the run's files (the run's folder itself, or its staging mirror)."""
        if not self.remote:
            return Path(self.location)
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
        mirror = f"{name_of(self.location)}-{digest}" + (f"-{self.mirror}" if self.mirror else "")
        return Path(tempfile.gettempdir(), "wavalign-staging", mirror)

    def drop_local(self, relative: str | Path) -> None:
        """Removes a staged copy once it is in the storage (a URI's mirror only: a folder path's local
        files are the run itself)."""
        if self.remote:
            shutil.rmtree(self.local / relative, ignore_errors=True)

    def uri(self, relative: str) -> str:
        return join(self.location, *Path(relative).parts)

    def publish(self, relative: str | Path) -> None:
        """The local file or folder at `relative` (in the run) into the storage; each file complete
        or not at all."""
        if not self.remote:
            return
        source = self.local / relative
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        fs, base = self._filesystem()
        for file in files:
            target = f"{base}/{file.relative_to(self.local).as_posix()}"
            parent = target.rsplit("/", 1)[0]
            fs.create_dir(parent, recursive=True)
            partial = f"{parent}/.{uuid.uuid4().hex[:8]}.partial"
            with open(file, "rb") as data, fs.open_output_stream(partial) as out:
                shutil.copyfileobj(data, out, length=8 << 20)
            fs.move(partial, target)

    def fetch(self, relative: str | Path) -> Path:
        """The stored file or folder at `relative` into the local folder (a no-op for a folder path).
        Returns its local path; raises FileNotFoundError naming the location when it is not stored."""
        target = self.local / relative
        if not self.remote:
            if not target.exists():
                raise FileNotFoundError(f"{target} does not exist")
            return target
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        where = _under(base, relative)
        info = fs.get_file_info(where)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri(str(relative))} does not exist")
        entries = (
            [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(where, recursive=True))
        )
        for entry in entries:
            if entry.type != pafs.FileType.File or entry.base_name.endswith(".partial"):
                continue
            local = self.local / entry.path[len(base) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(entry.path) as data, open(local, "wb") as out:
                shutil.copyfileobj(data, out, length=8 << 20)
        return target

    def remove(self, relative: str | Path) -> None:
        """A file or folder of the run, locally and in the storage (checkpoint pruning, truncation on
        resume)."""
        local = self.local / relative
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        else:
            local.unlink(missing_ok=True)
        if self.remote:
            import pyarrow.fs as pafs

            fs, base = self._filesystem()
            where = _under(base, relative)
            kind = fs.get_file_info(where).type
            if kind == pafs.FileType.Directory:
                fs.delete_dir(where)
            elif kind == pafs.FileType.File:
                fs.delete_file(where)

    def list(self, relative: str | Path) -> list[str]:
        """The names in a folder of the run (empty when it is not there)."""
        if not self.remote:
            folder = self.local / relative
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        selector = pafs.FileSelector(_under(base, relative), allow_not_found=True)
        return sorted(e.base_name for e in fs.get_file_info(selector) if not e.base_name.endswith(".partial"))

    def sizes(self, relative: str | Path = "") -> dict[str, int]:
        """Every stored file under `relative` (its path below it) and its size in bytes, in name order."""
        if not self.remote:
            folder = self.local / relative
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            return {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        where = _under(base, relative)
        entries = fs.get_file_info(pafs.FileSelector(where, recursive=True, allow_not_found=True))
        files = {e.path[len(where) + 1 :]: e.size for e in entries if e.type == pafs.FileType.File}
        return {name: files[name] for name in sorted(files) if not name.endswith(".partial")}

    def exists(self, relative: str | Path) -> bool:
        if not self.remote:
            return (self.local / relative).exists()
        import pyarrow.fs as pafs

        fs, base = self._filesystem()
        return fs.get_file_info(_under(base, relative)).type != pafs.FileType.NotFound

    def _filesystem(self):
        return _opened(self.location)


@functools.cache
def _opened(location: str):
    """(pyarrow filesystem, base path) of a URI, opened once per process: every publish of every step
    goes through it, and opening an object store builds a client."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise StorageError(f"{location}: {' '.join(str(err).split())}") from None


def _under(base: str, relative: str | Path) -> str:
    """
    >>> _under("bucket/runs/r1", "checkpoints/latest"), _under("bucket/runs/r1", "")
    ('bucket/runs/r1/checkpoints/latest', 'bucket/runs/r1')
    """
    relative = Path(relative).as_posix()
    return base if relative in ("", ".") else f"{base}/{relative}"
