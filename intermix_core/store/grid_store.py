"""A grid's records in its store: the grid spec (reruns find a grid by id) and every fold's result.json."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from intermix_core.common.names import check_name
from intermix_core.config import result_problem
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result
from intermix_core.store.layout import GRID_FILE, cell_prefix, grid_spec_key, is_fold_result
from intermix_core.store.storage import Storage, StorageError, open_storage


def save_grid_spec(store_root: str, grid_id: str, spec: dict[str, Any]) -> None:
    """Persist the grid spec as `<root>/<grid_id>/grid.json` so a rerun can find it by id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GRID_FILE
        path.write_text(json.dumps(spec, indent=2, sort_keys=True))
        open_storage(store_root).upload_file(path, grid_spec_key(grid_id))


def load_grid_spec(store_root: str, grid_id: str) -> dict[str, Any]:
    """The grid spec saved by `save_grid_spec` (raises FileNotFoundError naming the location)."""
    check_name(grid_id, "grid id")
    store = open_storage(store_root)
    key = grid_spec_key(grid_id)
    if not store.exists(key):
        raise FileNotFoundError(f"{store.uri(key)}: no grid saved under this id (run or submit the grid first)")
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(store.download_file(key, Path(tmp) / GRID_FILE).read_text())


def fetch_grid_results(store_root: str, grid_id: str, dest: str | Path) -> tuple[list[Path], list[str]]:
    """Download every fold result.json under `<store_root>/<grid_id>/` to dest (same layout).

    Returns (the files, one line per result refused). A result is read only where it belongs: its grid id
    (when it has one), dataset, setup, strategy and fold must be the ones its key names; one that is not
    (another grid's result copied here, a relabelled file), or that fails its checksum or signature, is
    left out and named, instead of changing the tables.
    """
    store = open_storage(store_root)
    files, refused = [], []
    for key in store.list(grid_id):
        if not is_fold_result(key):
            continue
        path = Path(dest) / key
        try:
            store.download_file(key, path)
            result = load_result(path)
            problem = _misplaced(result, key, grid_id) or _not_of_its_checkpoint(store, result, key)
        except (StorageError, ValueError) as err:
            problem = err.reason if isinstance(err, StorageError) else str(err)
        if problem:
            path.unlink(missing_ok=True)
            refused.append(f"{store.uri(key)}: {problem}; left out")
        else:
            files.append(path)
    return files, refused


def _not_of_its_checkpoint(store: Storage, result: FoldResult, key: str) -> str | None:
    """Why `result` is not the one of the checkpoint stored beside it (None if it is, or if either says nothing).

    A result records the digest of the final checkpoint it came from, and the fold's writer stores
    that checkpoint first, its result last. A result whose stored checkpoint is another one is an
    older result put back (with INTERMIX_STORE_KEY its old marker is still validly signed: a rollback)
    or a checkpoint replaced after it; either way not this fold's current outcome.
    """
    if result.checkpoint_sha256 is None:
        return None  # written before results recorded it
    stored = store.checksum(key.rsplit("/", 1)[0] + f"/{CHECKPOINT}")
    if stored is None or stored == result.checkpoint_sha256:
        return None
    return (f"written for the checkpoint {result.checkpoint_sha256[:12]}, but the checkpoint stored beside it is "
            f"{stored[:12]} (an older result put back, or the fold trained again since): rerun the fold")


def _misplaced(result: FoldResult, key: str, grid_id: str) -> str | None:
    """Why `result` does not belong at `key` of grid `grid_id` (None if it does)."""
    where = (grid_id, result.dataset, result.setup, result.strategy, result.fold)
    if key != f"{cell_prefix(*where)}/{RESULT}":
        return f"the result of {result.label}, not of the fold its key names"
    if result.grid_id is not None and result.grid_id != grid_id:
        return f"a result of grid {result.grid_id}, not of grid {grid_id}"
    return result_problem(result)
