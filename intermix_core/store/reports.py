"""Report versions of a grid in its store, published safely when several aggregations run at once (up to 18 KFP runs).

Each aggregation is one version, named by a sequence number (one more than the LATEST it saw
before reading the store: a later start has seen at least as many results), then when it started
and a random suffix. Versions are ordered by the sequence first, so no writer's clock decides
which is newest (a machine 2 days ahead pinned LATEST to a stale version for 2 days):

    <grid>/reports/versions/<version>/   one complete upload (Storage.upload_dir: manifest last)
    <grid>/reports/LATEST.json           {"version": ..., "prefix": ...}: the newest complete version
    <grid>/reports/*                     a copy of the newest version, for browsing; it may lag

A version is never rewritten, and LATEST only moves forward: a writer re-reads it after writing
and restores the newer version if an older aggregation overwrote it meanwhile (S3 has no
compare-and-swap; the re-check makes the newest version win). Readers go through LATEST.
Old versions beyond `keep` are removed by the winner. Key names: `intermix_core.store.layout`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from intermix_core.common.names import version_order
from intermix_core.store.layout import (
    latest_key,
    read_pointer,
    reports_prefix,
    versions_prefix,
    write_pointer,
)
from intermix_core.store.storage import Storage, StorageError

KEEP_VERSIONS = 10


def new_version(now: float | None = None, *, after: str | None = None) -> str:
    """A unique version name ordered after `after` (the LATEST version seen): sequence, UTC time, 8 random hex."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    seq = version_order(after)[0] + 1 if after is not None else 1
    return f"{seq:08d}-{stamp:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"


def next_version(store: Storage, grid_id: str) -> str:
    """The version name of an aggregation starting now: one after the grid's LATEST (take it before reading)."""
    latest = latest_version(store, grid_id)
    return new_version(after=latest["version"] if latest else None)


def latest_version(store: Storage, grid_id: str) -> dict[str, Any] | None:
    """The newest report version of a grid ({"version", "prefix", ...}), or None if nothing (of this grid) is there.

    LATEST.json, unless a newer complete version is in the store: an old pointer put back (with
    INTERMIX_STORE_KEY it is still validly signed) cannot pin the reports to an old version. A
    pointer that is not this grid's (copied from another grid, sealed for another key, pointing
    outside this grid's versions) is named on stderr and taken as absent: the next aggregation
    replaces it instead of failing on it for ever. An unreachable store still raises.
    """
    pointer = _pointer(store, grid_id)
    # an old pointer put back (signed, so accepted), or a foreign or deleted one, cannot hide a newer complete version
    newest = _newest_complete(store, grid_id)
    if newest is not None and (pointer is None or version_order(newest) > version_order(pointer["version"])):
        return {"version": newest, "prefix": f"{versions_prefix(grid_id)}/{newest}"}
    return pointer


def _pointer(store: Storage, grid_id: str) -> dict[str, Any] | None:
    """LATEST.json as it is (None if absent or foreign): what publishing compares and moves forward."""
    key = latest_key(grid_id)
    pointer = None
    try:
        text = read_pointer(store, key)
        if text:
            pointer = json.loads(text)
            version = pointer.get("version") if isinstance(pointer, dict) else None
            if not isinstance(version, str) or pointer.get("prefix") != f"{versions_prefix(grid_id)}/{version}":
                raise ValueError(f"not a pointer to a report version of grid {grid_id}")
    except StorageError as err:
        if err.transient:
            raise
        pointer = _foreign(store, key, err.reason)
    except ValueError as err:
        pointer = _foreign(store, key, str(err))
    return pointer


def _foreign(store: Storage, key: str, reason: str) -> None:
    print(f"intermix: warning: {store.uri(key)}: {reason}; ignored as foreign (the next aggregation replaces it)",
          file=sys.stderr)


def _newest_complete(store: Storage, grid_id: str) -> str | None:
    """The newest report version of the grid whose upload is complete (its manifest, signed with a store key)."""
    base = versions_prefix(grid_id)
    names = sorted({k[len(base) + 1:].split("/", 1)[0] for k in store.list(base)}, key=version_order, reverse=True)
    for name in names:
        try:
            if store.manifest(f"{base}/{name}") is not None:
                return name
        except StorageError:
            continue  # a damaged or unsigned version is not a candidate
    return None


def _point(store: Storage, grid_id: str, pointer: dict[str, Any]) -> None:
    write_pointer(store, latest_key(grid_id), json.dumps(pointer, indent=1, sort_keys=True))


def publish_reports(store: Storage, grid_id: str, out_dir: str | Path, version: str, *, keep: int = KEEP_VERSIONS,
                    rechecks: int = 3, settle_seconds: float = 0.5) -> bool:
    """Upload out_dir as one version and move LATEST to it unless a newer one is there; True if it is the latest."""
    prefix = f"{versions_prefix(grid_id)}/{version}"
    store.upload_dir(out_dir, prefix)
    mine = {"version": version, "prefix": prefix, "published": time.time()}
    for _ in range(rechecks):
        current = _pointer(store, grid_id)
        if current is not None and version_order(current["version"]) > version_order(version):
            return False
        if current is None or current["version"] != version:
            _point(store, grid_id, mine)
        time.sleep(settle_seconds)  # let a concurrent writer's pointer land, then look again
        current = _pointer(store, grid_id)
        if current is not None and current["version"] == version:
            break
    else:
        return False
    store.upload_dir(out_dir, reports_prefix(grid_id))  # the browsable copy, written by the newest only
    _prune(store, grid_id, keep, version)
    return True


def _prune(store: Storage, grid_id: str, keep: int, latest: str) -> None:
    base = versions_prefix(grid_id)
    names = sorted({k[len(base) + 1:].split("/", 1)[0] for k in store.list(base)}, key=version_order)
    for name in names[:-keep] if keep > 0 else []:
        if name != latest:
            store.delete(f"{base}/{name}")


def fetch_latest_reports(store: Storage, grid_id: str, dest: str | Path) -> str | None:
    """Download the newest complete version of a grid's reports into dest; return its version (None if none)."""
    pointer = latest_version(store, grid_id)
    if pointer is None:
        return None
    store.download_dir(pointer["prefix"], dest)
    return str(pointer["version"])


def fetch_latest_report_file(store: Storage, grid_id: str, name: str, dest: str | Path) -> tuple[str, Path] | None:
    """One file (e.g. summary.json) of the newest complete version, downloaded to dest: (the version's prefix, path)."""
    pointer = latest_version(store, grid_id)
    if pointer is None or not store.exists(f"{pointer['prefix']}/{name}"):
        return None
    return str(pointer["prefix"]), store.download_file(f"{pointer['prefix']}/{name}", Path(dest) / name)
