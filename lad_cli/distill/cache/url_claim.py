"""`outputs.claim` for a cache at a URL: the same promises without rename or flock (see
`remote`'s docstring for the protocol). `claim_store` picks it or the local policy."""
import asyncio
import json
import os
import socket
import threading
import time
import uuid

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError

from ...errors import LadError
from ...outputs import CACHE, is_url
from ...outputs import claim as claim_path
from . import remote
from .remote import _get, _keys, _split, has_store, is_cache_url, location, object_store, request_failure, store_error


def claim_store(target, overwrite: bool, inputs, resume: bool, hint: str):
    """The claim on a cache's location: `outputs.claim` for a local path, `UrlClaim` for a URL."""
    if not is_url(target):
        return claim_path(location(target), CACHE, overwrite, inputs, resume=resume, hint=hint)
    return claim_url(location(target), overwrite, resume, hint)


class UrlClaim:
    """A cache being written at a URL (the interface of `outputs.Claim` that `build` uses)."""

    def __init__(self, target: str, where: str, replaces: bool, lock: "Lock"):
        self.target, self.where, self.replaces, self._lock = target, where, replaces, lock
        self.committed = False

    @property
    def staged(self) -> bool:
        return self.where != self.target

    def commit(self) -> None:
        if self.staged:
            parent, name = _split(self.target)
            store = object_store(parent)
            try:
                obstore.put(store, f".{name}.swap", b"copying .%s.partial over %s\n" % (name.encode(), name.encode()))
                _finish_swap(store, name)
            except BaseError as exc:
                raise LadError(f"{self.target}: cannot put the new cache in place ({request_failure(exc)}); "
                               f"it is in {self.where}") from None
        self.committed = True

    def release(self, discard: bool = True) -> None:
        if self.staged and not self.committed and discard:
            parent, name = _split(self.target)
            _remove(object_store(parent), f".{name}.partial")
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "UrlClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_url(target: str, overwrite: bool, resume: bool, hint: str) -> UrlClaim:
    """outputs.claim's decisions, on an object store (the messages are the same)."""
    parent, name = _split(target)
    remote.check_reachable(parent, target)
    store = object_store(parent)
    lock = Lock(store, f".{name}.lock", target)
    try:
        if _get(store, f".{name}.swap", target) is not None:  # a commit was killed: the partial is whole
            _finish_swap(store, name)
        partial = f"{parent}/.{name}.partial"
        if resume and has_store(partial):
            return UrlClaim(target, partial, True, lock)
        _remove(store, f".{name}.partial")  # left by a killed run of this output
        there = bool(_keys(store, name))
        if resume and there:
            return UrlClaim(target, target, False, lock)
        if there and not is_cache_url(target):
            raise LadError(f"{target}: exists and is not a cache lad wrote; lad replaces only its own "
                           "outputs, so choose another path (nothing was changed)")
        if there and not overwrite:
            raise LadError(f"{target}: a cache is already there; pass {hint}--overwrite to replace it")
        return UrlClaim(target, partial, there, lock)
    except BaseError as exc:
        lock.release()
        raise store_error(target, exc) from None
    except BaseException:
        lock.release()
        raise


def _finish_swap(store, name: str) -> None:
    """Copy `.NAME.partial/` over `NAME/` (objects of the old store it lacks deleted first, the
    group's zarr.json copied last), drop the marker, then the partial (its zarr.json first, so
    that a partial without one is never taken for a store)."""
    partial = f".{name}.partial"
    new, old = _keys(store, partial), _keys(store, name)
    _run_all([(obstore.delete_async, f"{name}/{k}") for k in old if k not in new], store)
    _run_all([(obstore.copy_async, f"{partial}/{k}", f"{name}/{k}") for k in new if k != "zarr.json"], store)
    if "zarr.json" in new:
        obstore.copy(store, f"{partial}/zarr.json", f"{name}/zarr.json")
    obstore.delete(store, f".{name}.swap")
    _remove(store, partial)


def _remove(store, prefix: str) -> None:
    keys = _keys(store, prefix)
    if "zarr.json" in keys:
        obstore.delete(store, f"{prefix}/zarr.json")
    _run_all([(obstore.delete_async, f"{prefix}/{k}") for k in keys if k != "zarr.json"], store)


def _run_all(requests: list, store, at_once: int = 16) -> None:
    """(obstore async function, its arguments after the store) each, `at_once` at a time."""
    async def run():  # obstore makes its futures in a running event loop only
        for i in range(0, len(requests), at_once):
            await asyncio.gather(*(call(store, *args) for call, *args in requests[i:i + at_once]))
    if requests:
        asyncio.run(run())


class Lock:
    """The lock object `.NAME.lock`: created only where absent; renewed by a thread every quarter
    of LOCK_LEASE; taken over, by a write conditional on its ETag, when its holder is gone."""

    def __init__(self, store, key: str, target: str):
        self.store, self.key, self.target = store, key, target
        self.body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}).encode()
        self.e_tag = self._take()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def _take(self) -> str:
        try:
            return obstore.put(self.store, self.key, self.body, mode="create")["e_tag"]
        except (AlreadyExistsError, PreconditionError):
            pass
        except BaseError as exc:
            raise store_error(self.target, exc) from None
        try:
            held = obstore.get(self.store, self.key)
            meta, holder = held.meta, json.loads(bytes(held.bytes()) or b"{}")
        except (NotFoundError, FileNotFoundError, ValueError):  # released meanwhile, or not a lock lad wrote
            meta, holder = None, {}
        if meta is not None and not _stale(holder, meta):
            raise LadError(f"{self.target}: another lad process is writing this cache now (it holds {self.key}); "
                           "wait for it, or write elsewhere")
        try:
            if meta is None:
                return obstore.put(self.store, self.key, self.body, mode="create")["e_tag"]
            return obstore.put(self.store, self.key, self.body, mode={"e_tag": meta["e_tag"]})["e_tag"]
        except (AlreadyExistsError, PreconditionError):
            raise LadError(f"{self.target}: another lad process is writing this cache now (it holds {self.key}); "
                           "wait for it, or write elsewhere") from None

    def _renew(self) -> None:
        while not self._stop.wait(remote.LOCK_LEASE / 4):
            try:
                self.e_tag = obstore.put(self.store, self.key, self.body, mode={"e_tag": self.e_tag})["e_tag"]
            except BaseError:  # taken over (or unreachable): the next renewal tries again
                pass

    def release(self) -> None:
        """Stop renewing, and delete the lock unless another process took it over meanwhile."""
        self._stop.set()
        try:
            if obstore.head(self.store, self.key)["e_tag"] == self.e_tag:
                obstore.delete(self.store, self.key)
        except (BaseError, FileNotFoundError):
            pass


def _stale(holder: dict, meta: dict) -> bool:
    """A lock whose holder died: a process of this host that is gone, or no renewal for LOCK_LEASE s."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return time.time() - meta["last_modified"].timestamp() > remote.LOCK_LEASE
