"""Where everything lives in a grid store (a local folder or an s3:// root), and how its small pointers are read.

    <root>/<grid_id>/grid.json                                  the grid spec (reruns find the grid by id)
    <root>/<grid_id>/<dataset>/<setup>/<strategy>/fold<k>/      checkpoint.pt, result.json (records.CHECKPOINT, RESULT)
    <root>/<grid_id>/reports/LATEST.json                        {"version", "prefix"}: the newest complete report
    <root>/<grid_id>/reports/versions/<version>/                one aggregation's reports, never rewritten
    <root>/<grid_id>/reports/*                                  a browsing copy of the newest version; it may lag
    <root>/<grid_id>/lanes/<dataset>-<setup>-<token>.done        a submitted run ended (its lane's next run starts)
    <root>/prepared/<dataset>/<rate>hz/v<format>/<fingerprint>[-skip]/
        CURRENT -> "<writer id>", <writer id>/ (fold*.npy, manifest.json), LEASE while one writer prepares

Every key of the store is built here; readers of reports go through LATEST (`read_pointer`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from intermix_core.records import RESULT, fold_label
from intermix_core.store.storage import Storage, StorageError

GRID_FILE = "grid.json"
REPORTS = "reports"
VERSIONS = "versions"
LATEST = "LATEST.json"
PREPARED = "prepared"
LANES = "lanes"
CURRENT = "CURRENT"
LEASE = "LEASE"


def cell_prefix(grid_id: str, dataset: str, setup: str, strategy: str, fold: int) -> str:
    """Store key prefix of one fold: '<grid_id>/<dataset>/<setup>/<strategy>/fold<k>'."""
    return f"{grid_id}/{fold_label(dataset, setup, strategy, fold)}"


def grid_spec_key(grid_id: str) -> str:
    """'<grid_id>/grid.json'."""
    return f"{grid_id}/{GRID_FILE}"


def reports_prefix(grid_id: str) -> str:
    """'<grid_id>/reports': the browsing copy of the newest report."""
    return f"{grid_id}/{REPORTS}"


def latest_key(grid_id: str) -> str:
    """'<grid_id>/reports/LATEST.json': the pointer to the newest complete report version."""
    return f"{grid_id}/{REPORTS}/{LATEST}"


def versions_prefix(grid_id: str) -> str:
    """'<grid_id>/reports/versions'."""
    return f"{grid_id}/{REPORTS}/{VERSIONS}"


def lane_marker_key(grid_id: str, dataset: str, setup: str, token: str) -> str:
    """'<grid_id>/lanes/<dataset>-<setup>-<token>.done': written when one submission's run of a shard ends."""
    return f"{grid_id}/{LANES}/{dataset}-{setup}-{token}.done"


def is_fold_result(key: str) -> bool:
    """True for a fold's result.json key (not a copy inside the reports)."""
    return key.endswith(f"/{RESULT}") and f"/{REPORTS}/" not in key


def prepared_prefix(dataset: str, sample_rate: int, format_version: int, fingerprint: str,
                    on_silent: str = "keep") -> str:
    """Store key prefix of one prepared dataset: 'prepared/<dataset>/<rate>hz/v<format>/<fingerprint[:20]>[-skip]'.

    on_silent 'keep' and 'error' share a preparation (they differ only in refusing silent clips); 'skip' has its own.
    """
    suffix = "-skip" if on_silent == "skip" else ""
    return f"{PREPARED}/{dataset}/{int(sample_rate)}hz/v{format_version}/{fingerprint[:20]}{suffix}"


def split_prepared_uri(uri: str) -> tuple[str, str]:
    """(store root URI, prepared prefix) of a prepared dataset's URI; (uri, "") if it is not in this layout.

    Objects are read through the store's root, where their (signed) keys are: never through a sub-prefix.
    """
    parts = uri.rstrip("/").split("/")
    if len(parts) >= 6 and parts[-5] == PREPARED:
        return "/".join(parts[:-5]) or "/", "/".join(parts[-5:])
    return uri, ""


def read_pointer(store: Storage, key: str) -> str | None:
    """The text of a small object that other writers may be replacing right now (a sealed object); None if absent.

    A pointer written by an earlier version (object plus marker) is still read, through its marker.
    """
    try:
        return store.get_sealed(key)
    except StorageError as err:
        if err.sealed:
            raise
    if not store.exists(key):
        return None
    with tempfile.TemporaryDirectory(prefix="intermix-ptr-") as tmp:
        return store.download_file(key, Path(tmp) / "pointer").read_text()


def write_pointer(store: Storage, key: str, text: str) -> None:
    """Write a small object that other writers may replace at the same moment: one sealed write, never torn."""
    store.put_sealed(key, text)
