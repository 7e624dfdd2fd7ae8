"""Where runs live: a local (or NFS) folder, or a URI of any filesystem pyarrow or fsspec knows.

``open_location(text, endpoint)`` turns ``runs``, ``/mnt/nfs/runs``, ``s3://bucket/prefix``,
``gs://bucket/prefix`` (or any other URI) into a :class:`Location`: a ``pyarrow.fs`` filesystem
and a path on it, the pair Ray Train's own storage handling takes (``RunConfig(storage_path,
storage_filesystem)``), so that checkpoints reach remote storage only through Ray Train. The rest
of the runtime (listing and reading checkpoints, the run lease, TensorBoard files, ``eval`` and
``predict``) reads and writes through the same pair.

Schemes pyarrow knows natively (``s3``, ``gs``, ``hdfs``, ``file``) use its filesystems; any
other scheme fsspec knows (``memory``, ``abfs``, ...) is wrapped as a pyarrow filesystem
(``PyFileSystem(FSSpecHandler(...))``), as Ray Train does. Credentials come from the usual
environment of each node (``AWS_ACCESS_KEY_ID``..., ``AWS_PROFILE``, an instance role; Google's
application-default credentials), never from a spec, a run config or the URI: a URI carrying
them is refused. ``endpoint`` (``run.storage_endpoint``, ``--storage-endpoint``) points ``s3://``
at an S3-compatible store (MinIO, Ceph, a test server); without it, pyarrow and boto3 honour
``AWS_ENDPOINT_URL`` as usual.
"""
from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlsplit

from ..errors import UsageError, usage_error

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Query options of pyarrow's URI parser that would put a secret into a URI (and so into logs and
# the run config stored in every checkpoint).
_SECRET_OPTIONS = {"access_key", "secret_key", "session_token", "token", "credentials",
                   "access_token", "role_arn", "external_id"}


def scheme_of(text: str) -> str:
    """The URI scheme of ``text`` ('' for a local path; ``file://`` counts as local)."""
    match = _SCHEME.match(str(text))
    if match is None:
        return ""
    scheme = match.group(1).lower()
    return "" if scheme in ("file", "local") else scheme


def is_remote(text: Any) -> bool:
    return bool(scheme_of(str(text)))


class StorageUnreachable(UsageError):
    """Remote storage that does not answer (no connection, access denied): one error naming the
    location, never mistaken for a missing or corrupt file."""


# What pyarrow's and fsspec's filesystems say when the store cannot be reached or refuses access.
_UNREACHABLE = ("NETWORK_CONNECTION", "ACCESS_DENIED", "Could not connect", "Connection refused",
                "Could not resolve", "curlCode", "timed out")


@contextmanager
def _reaching(location: "Location") -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        text = str(exc)
        if location.local or not any(marker in text for marker in _UNREACHABLE):
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise StorageUnreachable(usage_error(location.uri, f"cannot reach storage {location.uri}: "
                                                           f"{first}").diagnostics) from None


@dataclass
class Location:
    """A folder (or file) on a filesystem: ``uri`` as shown to people, ``fs`` and ``path`` for
    pyarrow. A local location's ``uri`` is its absolute path."""

    uri: str
    fs: Any  # pyarrow.fs.FileSystem
    path: str
    scheme: str = ""
    endpoint: Optional[str] = None

    @property
    def local(self) -> bool:
        return not self.scheme

    @property
    def local_path(self) -> Path:
        if not self.local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def parent(self) -> "Location":
        path = posixpath.dirname(self.path.rstrip("/"))
        uri = self.uri.rstrip("/").rsplit("/", 1)[0] if not self.local else path
        return Location(uri=uri, fs=self.fs, path=path, scheme=self.scheme, endpoint=self.endpoint)

    def child(self, *names: str) -> "Location":
        path = posixpath.join(self.path, *names)
        uri = posixpath.join(self.uri, *names) if not self.local else path
        return Location(uri=uri, fs=self.fs, path=path, scheme=self.scheme, endpoint=self.endpoint)

    def __str__(self) -> str:
        return self.uri

    # --- queries ---------------------------------------------------------------------------------
    def _info(self):
        with _reaching(self):
            return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        return int(self._info().size or 0)

    def children(self) -> list["Location"]:
        """The entries directly inside this folder (none if it does not exist)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        with _reaching(self):
            infos = self.fs.get_file_info(selector)
        return sorted((self.child(posixpath.basename(i.path.rstrip("/"))) for i in infos),
                      key=lambda loc: loc.name)

    def child_dirs(self) -> list["Location"]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        with _reaching(self):
            infos = self.fs.get_file_info(selector)
        return sorted((self.child(posixpath.basename(i.path.rstrip("/")))
                       for i in infos
                       if i.type == pafs.FileType.Directory), key=lambda loc: loc.name)

    # --- reading and writing -------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with _reaching(self), self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_range(self, offset: int, length: int) -> bytes:
        with _reaching(self), self.fs.open_input_file(self.path) as f:
            return f.read_at(length, offset)

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file (on object stores one PUT: readers see the old or the new object)."""
        parent = posixpath.dirname(self.path)
        if parent and self.local:
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def delete(self) -> None:
        """Delete this file or folder (with its contents); nothing if it does not exist."""
        import pyarrow.fs as pafs

        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)

    def make_dir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def download(self, target: Path) -> Path:
        """Copy this folder's files into the local folder ``target``."""
        import pyarrow.fs as pafs

        target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(target), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem(), use_threads=False)
        return target

    def upload(self, source: Path) -> None:
        """Copy the local folder (or file) ``source`` to this location, replacing same-named files."""
        import pyarrow.fs as pafs

        if source.is_dir():
            self.fs.create_dir(self.path, recursive=True)
        pafs.copy_files(str(source), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs, use_threads=False)

    @contextmanager
    def fetched(self) -> Iterator[Path]:
        """This folder (or file) as a local path: itself if local, else a temporary copy under
        the same name (removed after)."""
        if self.local:
            yield self.local_path
            return
        import pyarrow.fs as pafs

        tmp = Path(tempfile.mkdtemp(prefix="mtl-dsl-fetch-"))
        try:
            target = tmp / (self.name or "data")
            if self.is_file():
                pafs.copy_files(self.path, str(target), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem(), use_threads=False)
                yield target
            else:
                yield self.download(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- for Ray Train ---------------------------------------------------------------------------
    def ray_storage(self) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``."""
        if self.local:
            return self.path, None
        return self.path, self.fs


def refuse_secrets(text: str, where: str) -> None:
    """Refuse a URI that carries credentials (user:secret@, or key options in its query)."""
    if not scheme_of(text):
        return
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise usage_error(where, f"storage URI {_redacted(text)} carries credentials; give them "
                                 f"through the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                 f"AWS_PROFILE, an instance role), never in a URI or config")
    secret = sorted(k for k, _ in parse_qsl(parts.query) if k.lower() in _SECRET_OPTIONS)
    if secret:
        raise usage_error(where, f"storage URI {_redacted(text)} carries credentials "
                                 f"({', '.join(secret)}); give them through the environment "
                                 f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an "
                                 f"instance role), never in a URI or config")


def _redacted(text: str) -> str:
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")


def _s3_with_endpoint(text: str, endpoint: str, where: str):
    import pyarrow.fs as pafs

    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise usage_error(where, f"storage endpoint '{endpoint}' is not an http(s) URL such as "
                                 f"http://127.0.0.1:9000")
    options = dict(parse_qsl(urlsplit(text).query))
    fs = pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme,
                           region=options.get("region") or _default_region(),
                           allow_bucket_creation=False)
    target = urlsplit(text)
    path = f"{target.netloc}{target.path}".rstrip("/")
    return fs, path


def _default_region() -> str:
    import os

    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def open_location(text: str | Path, endpoint: Optional[str] = None,
                  where: str = "run.storage") -> Location:
    """A :class:`Location` for a local path or a URI; ``UsageError`` (naming ``where``) if the
    scheme is unknown, the URI carries credentials, or the endpoint is malformed."""
    text = str(text)
    scheme = scheme_of(text)
    if not scheme:
        import pyarrow.fs as pafs

        raw = text[len("file://"):] if text.lower().startswith("file://") else text
        path = Path(raw).expanduser().resolve()
        return Location(uri=str(path), fs=pafs.LocalFileSystem(), path=str(path))
    refuse_secrets(text, where)
    if endpoint and scheme not in ("s3", "s3a"):
        raise usage_error(where, f"run.storage_endpoint applies to s3:// storage, not {scheme}://")
    uri = text.split("?", 1)[0].rstrip("/")
    if endpoint:
        fs, path = _s3_with_endpoint(text.replace("s3a://", "s3://", 1), endpoint, where)
        return Location(uri=uri, fs=fs, path=path, scheme="s3", endpoint=endpoint)
    fs, path = _from_uri(text, scheme, where)
    return Location(uri=uri, fs=fs, path=path.rstrip("/"), scheme="s3" if scheme == "s3a" else scheme)


def _from_uri(text: str, scheme: str, where: str):
    import pyarrow
    import pyarrow.fs as pafs

    if scheme == "s3a":
        text = "s3://" + text[len("s3a://"):]
    try:
        return pafs.FileSystem.from_uri(text)
    except pyarrow.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc) and "unrecognized" not in str(exc).lower():
            raise usage_error(where, f"cannot open storage {_redacted(text)}: {exc}") from None
    except (OSError, pyarrow.ArrowException) as exc:
        raise usage_error(where, f"cannot open storage {_redacted(text)}: {exc}") from None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ValueError, ImportError) as exc:
        raise usage_error(where, f"unknown storage scheme '{scheme}://' ({exc}); use a local or "
                                 f"NFS path, s3://, gs://, or a scheme fsspec knows") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


__all__ = ["Location", "StorageUnreachable", "open_location", "is_remote", "scheme_of",
           "refuse_secrets"]
