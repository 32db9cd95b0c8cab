"""Caches on object storage: `--cache s3://bucket/prefix/c.zarr` (or gs://, az://, http(s)://).

The zarr store is zarr's `ObjectStore` over obstore (chosen by measurement against FsspecStore
over s3fs: 2-4x faster to create, write a shard and read an entry; see docs/scaling.md, "Clusters
without a shared file system"). Credentials, endpoint and region come from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...). Every
request is retried at most twice and gives up within seconds: a missing bucket, refused
credentials or an unreachable endpoint end in one line.

The output policy of `outputs.claim`, without rename or flock (object stores have neither):
- one writer: a lock object `.NAME.lock` beside the store, created only if absent (`If-None-Match: *`);
  its holder renews it; one whose holder died (same host, process gone) or that was not renewed
  for LOCK_LEASE seconds is taken over by a write conditional on its ETag, so one taker wins;
- a replacement (and a new store) is written under `.NAME.partial/`, then copied over NAME
  (server-side copies, `zarr.json` last) while a marker object `.NAME.swap` says so: a reader
  that sees the marker reads the partial (whole), and the next writer finishes the copy. A kill
  at any point leaves the old store whole, or the new one whole.
"""
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import obstore
from obstore.exceptions import BaseError, NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import from_url
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.storage import ObjectStore, WrapperStore

from ...errors import LadError
from ...outputs import CACHE_FORMAT, is_url

LOCK_LEASE = 60.0  # seconds a lock lives without renewal (renewed every quarter of it)
READ_CACHE_BYTES = 512 << 20  # whole shard objects a reader keeps (per process)


def location(text) -> Path | str:
    """A cache location as the rest of the cache code takes it: a URL stays a string (never a
    Path: `Path('s3://b/c')` is the local `s3:/b/c`), anything else is a local Path."""
    return str(text).rstrip("/") if is_url(text) else Path(text)


def object_store(url: str):
    """obstore's store rooted at `url`: environment credentials, bounded retries and timeouts."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    return from_url(url, client_options={"connect_timeout": timedelta(seconds=2), "timeout": timedelta(seconds=60),
                                         "allow_http": endpoint.startswith("http://")},
                    retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=8),
                                  "backoff": {"init_backoff": timedelta(milliseconds=100),
                                              "max_backoff": timedelta(seconds=1), "base": 2}})


def zarr_store(where: Path | str, read_only: bool = False):
    """What zarr opens: a local folder as always (zarr's LocalStore from the path), a URL as an
    ObjectStore."""
    if not is_url(where):
        return str(where)
    return ObjectStore(object_store(str(where)), read_only=read_only)


class ShardObjects(WrapperStore):
    """A read-only store that fetches each object whole, once, and answers byte ranges of it from
    memory: zarr's sharded reads (the shard's index, then one chunk: two requests per entry)
    become one request per shard for the life of the reader. Least recently used objects go
    beyond READ_CACHE_BYTES."""

    def __init__(self, store):
        super().__init__(store)
        self._objects: dict = {}
        self._bytes = 0
        self.fetched_bytes = 0  # what came over the network (benchmarks/loader.py reports it)

    async def get(self, key, prototype, byte_range=None):
        whole = self._objects.pop(key, None)
        if whole is None:
            whole = await self._store.get(key, prototype)
            if whole is None:
                return None
            self.fetched_bytes += len(whole)
            self._bytes += len(whole)
            while self._objects and self._bytes > READ_CACHE_BYTES:
                self._bytes -= len(self._objects.pop(next(iter(self._objects))))
        self._objects[key] = whole  # most recently used last
        size = len(whole)
        if byte_range is None:
            return whole
        if isinstance(byte_range, RangeByteRequest):
            return whole[byte_range.start:min(byte_range.end, size)]
        if isinstance(byte_range, OffsetByteRequest):
            return whole[byte_range.offset:]
        if isinstance(byte_range, SuffixByteRequest):
            return whole[max(0, size - byte_range.suffix):]
        raise TypeError(f"unexpected byte range {byte_range!r}")


def store_error(url: str, exc: Exception) -> LadError:
    """One line for a failed request to the object store."""
    return LadError(f"{url}: {request_failure(exc)}")


# The status in a message, not the digits of a port or an address ("127.0.0.1:40317" is no 403).
_HTTP_403 = re.compile(r"(?<![\w:.])403(?!\d)")


def request_failure(exc: Exception) -> str:
    """What went wrong with a request to the object store, in a few words."""
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        why = "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    elif isinstance(exc, NotFoundError) or "NoSuchBucket" in str(exc):
        why = "no such bucket"
    elif "InvalidAccessKeyId" in str(exc) or "SignatureDoesNotMatch" in str(exc) or _HTTP_403.search(str(exc)):
        why = "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    else:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        why = f"cannot reach the object store ({first[:160]})"
    return why


def check_reachable(url: str, name: str | None = None) -> None:
    """One listing request: the bucket is there and the credentials are accepted, else a LadError
    (naming `name`, by default `url`)."""
    try:
        next(iter(obstore.list(object_store(url), chunk_size=1)), None)
    except BaseError as exc:
        raise store_error(name or url, exc) from None


def _split(url: str) -> tuple[str, str]:
    """(the URL of the folder holding the store, the store's name)."""
    parent, _, name = url.rpartition("/")
    if not name or parent.endswith(":/"):
        raise LadError(f"{url}: give the store a name inside the bucket (s3://BUCKET/NAME.zarr)")
    return parent, name


def _keys(store, prefix: str) -> dict[str, int]:
    """Stored objects under `prefix/` and their sizes, keyed relative to it."""
    return {meta["path"][len(prefix) + 1:]: meta["size"]
            for chunk in obstore.list(store, prefix=prefix) for meta in chunk}


def has_store(where: Path | str) -> bool:
    """A (possibly unfinished) cache is at `where`: its group's zarr.json is stored."""
    if not is_url(where):
        return (Path(where) / "zarr.json").exists()
    parent, name = _split(where)
    return _get(object_store(parent), f"{name}/zarr.json", where) is not None


def stored_bytes(where: Path | str) -> tuple[int, int]:
    """(total bytes, number of stored files or objects) of a store."""
    if not is_url(where):
        files = [p for p in Path(where).rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files), len(files)
    parent, name = _split(where)
    try:
        sizes = _keys(object_store(parent), name)
    except BaseError as exc:
        raise store_error(where, exc) from None
    return sum(sizes.values()), len(sizes)


def _get(store, key: str, url: str) -> bytes | None:
    try:
        return bytes(obstore.get(store, key).bytes())
    except (NotFoundError, FileNotFoundError):  # obstore raises the latter for a missing object
        return None
    except BaseError as exc:
        raise store_error(url, exc) from None


def reading_location(url: str) -> str:
    """Where a reader finds the whole store at `url`: its replacement `.NAME.partial` while a
    swap is copying it over (marker `.NAME.swap`), else `url` itself."""
    parent, name = _split(url)
    swapping = _get(object_store(parent), f".{name}.swap", url) is not None
    return f"{parent}/.{name}.partial" if swapping else url


def is_cache_url(url: str) -> bool:
    """A store lad wrote: its zarr.json's `format` attribute, read from the bucket."""
    parent, name = _split(url)
    try:
        doc = json.loads(_get(object_store(parent), f"{name}/zarr.json", url) or b"{}")
    except ValueError:
        return False
    attributes = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attributes, dict) and attributes.get("format") == CACHE_FORMAT
