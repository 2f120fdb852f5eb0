"""A grid's records in its store: the grid spec (reruns find a grid by id) and every fold's result.json."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from intermix_core.store.layout import GRID_FILE, grid_spec_key, is_fold_result
from intermix_core.store.storage import open_storage


def save_grid_spec(store_root: str, grid_id: str, spec: dict[str, Any]) -> None:
    """Persist the grid spec as `<root>/<grid_id>/grid.json` so a rerun can find it by id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GRID_FILE
        path.write_text(json.dumps(spec, indent=2, sort_keys=True))
        open_storage(store_root).upload_file(path, grid_spec_key(grid_id))


def load_grid_spec(store_root: str, grid_id: str) -> dict[str, Any]:
    """The grid spec saved by `save_grid_spec` (raises FileNotFoundError naming the location)."""
    store = open_storage(store_root)
    key = grid_spec_key(grid_id)
    if not store.exists(key):
        raise FileNotFoundError(f"{store.uri(key)}: no grid saved under this id (run or submit the grid first)")
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(store.download_file(key, Path(tmp) / GRID_FILE).read_text())


def fetch_grid_results(store_root: str, grid_id: str, dest: str | Path) -> list[Path]:
    """Download every fold result.json under `<store_root>/<grid_id>/` to dest (same layout); return the files."""
    store = open_storage(store_root)
    files = []
    for key in store.list(grid_id):
        if is_fold_result(key):
            files.append(store.download_file(key, Path(dest) / key))
    return files
