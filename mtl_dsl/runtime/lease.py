"""Ownership of a run folder in remote storage: a lease object, renewed while the run lives.

A folder in object storage has no OS locks, so ``runlock.FileLock`` cannot hold it. ``Lease``
implements the same ``RunLock`` interface with one object, ``RUN/.lock``, holding JSON that names
the holder (host, PID, start time), a random token, and when it was last renewed:

* ``acquire()`` creates the object only if it is absent (a conditional write). If it exists and
  is live, the run is refused naming its holder, as for a local folder. A lease is stale when its
  holder's host is this machine and that PID is gone, or when it was not renewed for ``ttl``
  seconds (by the renewal time written in it, so the hosts' clocks must agree to well within
  ``ttl``; NTP does); a stale lease is taken over by a write conditional on its version, so of
  two runs taking it over at once exactly one wins.
* A background thread renews it every ``ttl / 4`` seconds, conditional on the version it wrote
  last. If that condition fails, another run has taken the folder over (this one stalled past
  ``ttl``): ``lost`` then names that run, and the launcher stops this one.
* ``release()`` deletes the object if it still holds this run's token.

The conditional writes come from the store. S3 and S3-compatible stores have them
(``If-None-Match: *`` to create, ``If-Match: ETag`` to replace; boto3 is the client, pyarrow's
filesystem has no conditional writes): ``S3LeaseStore``. Other filesystems (``gs://``, anything
fsspec knows) get ``VerifiedLeaseStore``: it writes only when the object is absent or unchanged,
then reads it back after a settling interval and gives up if another run's write replaced it.
Without a true compare-and-swap, two runs started within that interval can both pass the check
in the worst interleaving; the renewal then finds the other run's token within ``ttl / 4`` and
stops one of them (``lost``). Local and NFS folders keep ``runlock.FileLock``.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import Optional

from ..errors import usage_error
from .runlock import LOCK_FILE, FileLock, RunLock, describe, pid_alive
from .storage import Location

DEFAULT_TTL = 60.0  # seconds a lease stays live without renewal


class LeaseStore(ABC):
    """One object with versioned, conditional writes."""

    @abstractmethod
    def create(self, data: bytes) -> Optional[str]:
        """Write ``data`` if the object is absent; its version, or None if it exists."""

    @abstractmethod
    def read(self) -> Optional[tuple[bytes, str]]:
        """(contents, version), or None if absent."""

    @abstractmethod
    def replace(self, data: bytes, version: str) -> Optional[str]:
        """Write ``data`` if the object is still at ``version``; the new version, or None."""

    @abstractmethod
    def delete(self) -> None:
        """Delete the object (the caller has checked it is its own)."""


class S3LeaseStore(LeaseStore):
    """S3 conditional writes through boto3 (credentials from the environment, as everywhere)."""

    def __init__(self, location: Location):
        import boto3

        bucket, _, key = location.path.partition("/")
        self.bucket, self.key, self.where = bucket, key, str(location)
        endpoint = location.endpoint
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        self.client = boto3.client("s3", endpoint_url=endpoint or None)

    def _call(self, method: str, refused: tuple[str, ...], **kwargs):
        """The response, or None if S3 answered with one of the ``refused`` error codes (a
        failed condition, an absent object); any other error is one line naming the lease."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in refused:
                return None
            raise usage_error(self.where, f"cannot use the run lease {self.where}: {exc}") from None
        except BotoCoreError as exc:
            raise usage_error(self.where, f"cannot reach storage for the run lease "
                                          f"{self.where}: {exc}") from None

    _CONDITION = ("PreconditionFailed", "ConditionalRequestConflict")

    def create(self, data: bytes) -> Optional[str]:
        response = self._call("put_object", self._CONDITION, Body=data, IfNoneMatch="*")
        return None if response is None else response["ETag"]

    def read(self) -> Optional[tuple[bytes, str]]:
        response = self._call("get_object", ("NoSuchKey",))
        return None if response is None else (response["Body"].read(), response["ETag"])

    def replace(self, data: bytes, version: str) -> Optional[str]:
        response = self._call("put_object", (*self._CONDITION, "NoSuchKey"), Body=data, IfMatch=version)
        return None if response is None else response["ETag"]

    def delete(self) -> None:
        self._call("delete_object", ("NoSuchKey",))


class VerifiedLeaseStore(LeaseStore):
    """Write-then-verify on a filesystem without conditional writes (see the module docstring)."""

    def __init__(self, location: Location, settle: float = 2.0):
        self.location, self.settle = location, settle

    @staticmethod
    def _version(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _write_verified(self, data: bytes) -> Optional[str]:
        self.location.write_bytes(data)
        time.sleep(self.settle)
        now = self.read()
        return now[1] if now is not None and now[0] == data else None

    def create(self, data: bytes) -> Optional[str]:
        if self.location.exists():
            return None
        return self._write_verified(data)

    def read(self) -> Optional[tuple[bytes, str]]:
        try:
            data = self.location.read_bytes()
        except (FileNotFoundError, OSError):
            if self.location.exists():
                raise
            return None
        return data, self._version(data)

    def replace(self, data: bytes, version: str) -> Optional[str]:
        now = self.read()
        if now is None or now[1] != version:
            return None
        return self._write_verified(data)

    def delete(self) -> None:
        self.location.delete()


def store_for(location: Location) -> LeaseStore:
    if location.scheme == "s3":
        return S3LeaseStore(location)
    return VerifiedLeaseStore(location)


class Lease(RunLock):
    """The ``RunLock`` of a run folder in remote storage."""

    def __init__(self, run_dir: Location, ttl: float = DEFAULT_TTL,
                 store: Optional[LeaseStore] = None):
        self.run_dir = run_dir
        self.location = run_dir.child(LOCK_FILE)
        self.ttl = float(ttl)
        self.store = store if store is not None else store_for(self.location)
        self.token = uuid.uuid4().hex
        self.lost: Optional[str] = None  # set when another run took the folder over
        self._version: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.strftime("%Y-%m-%d %H:%M:%S")

    # --- the record ----------------------------------------------------------------------------
    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": self._started,
                           "token": self.token, "renewed": time.time(), "ttl": self.ttl}).encode()

    @staticmethod
    def _parse(data: bytes) -> dict:
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _stale(self, record: dict) -> bool:
        if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
            if not pid_alive(record["pid"]):
                return True
        try:
            renewed, ttl = float(record["renewed"]), float(record.get("ttl", self.ttl))
        except (KeyError, TypeError, ValueError):
            return True  # not a lease this program wrote: unreadable, so nobody holds it
        return time.time() > renewed + ttl

    # --- RunLock -------------------------------------------------------------------------------
    def acquire(self) -> None:
        if self._version is not None:
            return
        for _ in range(3):  # the object may vanish or change between our reads
            version = self.store.create(self._record())
            if version is not None:
                self._hold(version)
                return
            current = self.store.read()
            if current is None:
                continue
            holder = self._parse(current[0])
            if not self._stale(holder):
                raise usage_error(str(self.run_dir), f"run folder {self.run_dir} is in use by "
                                                     f"another run ({describe(holder)}); wait for "
                                                     f"it to end or choose another --run-name")
            version = self.store.replace(self._record(), current[1])
            if version is not None:
                self.took_over = holder
                self._hold(version)
                return
        raise usage_error(str(self.run_dir), f"run folder {self.run_dir}: another run is taking "
                                             f"it at the same moment; try again")

    def _hold(self, version: str) -> None:
        self._version = version
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="mtl-dsl-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease once; False (and ``lost`` set) if another run holds it now."""
        if self._version is None or self.lost is not None:
            return False
        version = self.store.replace(self._record(), self._version)
        if version is not None:
            self._version = version
            return True
        current = self.store.read()
        holder = self._parse(current[0]) if current is not None else {}
        self.lost = (f"another run took over run folder {self.run_dir} "
                     f"({describe(holder) if holder else 'its lease was deleted'})")
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.renew():
                    return
            except Exception:  # storage unreachable for a moment: try again at the next beat
                continue

    def release(self) -> None:
        if self._version is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._version = None
        if self.lost is not None:
            return
        current = self.store.read()
        if current is not None and self._parse(current[0]).get("token") == self.token:
            self.store.delete()


def lock_for(run_dir) -> RunLock:
    """The lock of a run folder: ``runlock.FileLock`` for a local (or NFS) path, a ``Lease`` for
    a folder in remote storage (a ``storage.Location``)."""
    if isinstance(run_dir, Location):
        if not run_dir.local:
            return Lease(run_dir)
        run_dir = run_dir.local_path
    return FileLock(run_dir)
