"""What an aggregation reads from a grid store is bound to where it reads it, and it never publishes from nothing.

Real stores (a local folder and SeaweedFS), with and without a store key (INTERMIX_STORE_KEY):

- a result of another grid copied (bytes and marker) under this grid's prefix, or a result relabelled to
  another fold, is left out and named, never counted;
- an aggregation that finds no result writes nothing anywhere (no files, no report version, no MLflow run)
  and fails in one line;
- aggregations of one grid running at once each publish a complete version (no 0-byte or torn file), and
  the local report folder they share holds complete files.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from intermix_core.records import RESULT, EpochRecord, save_result
from intermix_core.run.aggregate import NoResults, aggregate_step
from intermix_core.store.layout import cell_prefix, read_pointer
from intermix_core.store.reports import latest_version
from intermix_core.store.storage import SIDECAR, SIGNING_KEY_ENV, Storage
from pipelines.cli import main

from fake_results import MIX, STD, grid
from raw_store import raw_get, raw_put
from together import at_once

EXPECTED = [["esc10", "envnet_v2", s, f] for s in ("standard", "intermix") for f in range(1, 6)]


def _publish_results(store: Storage, gid: str, tmp: Path, errors: dict[str, list[float]]) -> None:
    """Fold results of `gid` written into the store as train_step leaves them."""
    for r in grid(errors):
        history = [EpochRecord(epoch=e, lr=0.01, train_loss=2.0 / e, train_error=80.0 / e,
                               val_error=r.test_error if e == 3 else None) for e in (1, 2, 3)]
        fgsm = {"0.0": r.test_error, "0.01": r.test_error + 30.0}
        r = r.model_copy(update={"grid_id": gid, "history": history, "fgsm": fgsm, "fgsm_crop": fgsm})
        path = tmp / f"{gid}-{r.strategy}-{r.fold}.json"
        save_result(r, path)
        store.upload_file(path, f"{cell_prefix(gid, r.dataset, r.setup, r.strategy, r.fold)}/{RESULT}")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "store-key"])
def test_a_result_moved_from_another_grid_or_fold_is_left_out(storage: Storage, tmp_path: Path, signed: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if signed:
        monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    _publish_results(storage, "grid-a", tmp_path, {"standard": [90.0] * 5, "intermix": [90.0] * 5})
    _publish_results(storage, "grid-b", tmp_path, {"standard": STD, "intermix": MIX[:4]})  # fold 5 of intermix missing
    src = f"{cell_prefix('grid-a', 'esc10', 'envnet_v2', 'intermix', 5)}/{RESULT}"
    dst = f"{cell_prefix('grid-b', 'esc10', 'envnet_v2', 'intermix', 5)}/{RESULT}"
    for suffix in ("", SIDECAR):  # what someone with write access but without the key can do: copy bytes and marker
        raw_put(storage, dst + suffix, raw_get(storage, src + suffix))
    relabelled = f"{cell_prefix('grid-b', 'esc10', 'envnet_v2', 'standard', 1)}/{RESULT}"
    moved_to = f"{cell_prefix('grid-b', 'esc10', 'envnet_v2', 'standard', 9)}/{RESULT}"
    for suffix in ("", SIDECAR):
        raw_put(storage, moved_to + suffix, raw_get(storage, relabelled + suffix))

    summary = aggregate_step([], tmp_path / "out", EXPECTED, grid_id="grid-b", store_root=storage.uri(""))
    cell = summary.cell("esc10", "envnet_v2", "intermix")
    assert sorted(cell.values) == [1, 2, 3, 4] and cell.mean == pytest.approx(sum(MIX[:4]) / 4)  # grid-a's 90 % is out
    assert summary.cell("esc10", "envnet_v2", "standard").mean == pytest.approx(sum(STD) / 5)
    notes = " ".join(summary.notes)
    assert "intermix/fold5/result.json" in notes and "standard/fold9/result.json" in notes and "left out" in notes
    if signed:
        assert "no valid signature" in notes
    else:
        assert "a result of grid grid-a, not of grid grid-b" in notes
        assert "the result of esc10/envnet_v2/standard/fold1, not of the fold its key names" in notes


def test_nothing_found_publishes_nothing_anywhere(storage: Storage, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty store prefix, an empty work directory, a foreign folder: one line, exit 2, nothing written."""
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    with pytest.raises(NoResults, match="no fold results there; nothing aggregated and nothing written"):
        aggregate_step([], tmp_path / "out", EXPECTED, tracking_uri=uri, grid_id="grid-e", store_root=storage.uri(""))
    assert not (tmp_path / "out").exists() and storage.list("grid-e") == [] and latest_version(storage, "grid-e") is None
    assert not db.exists() or not sqlite3.connect(db).execute(
        "select count(*) from runs").fetchone()[0]  # no summary run
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "notes.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(NoResults):
        aggregate_step([foreign], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["results", "--grid", "demo", "--workdir", str(tmp_path / "empty-work")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no fold results there" in err[0]
    assert not any(p.is_file() for p in (tmp_path / "empty-work").rglob("*") if "store" not in p.parts)


def test_concurrent_aggregations_publish_only_complete_files(storage: Storage, tmp_path: Path) -> None:
    """Four aggregations of one grid at once, sharing one --out folder: every published version and the folder
    hold complete, parseable files (two versions used to hold a 0-byte learning_curves.png or fgsm.png)."""
    _publish_results(storage, "grid-c", tmp_path, {"standard": STD, "intermix": MIX})
    out = tmp_path / "shared-out"
    errors = at_once([lambda: aggregate_step([], out, EXPECTED, grid_id="grid-c", store_root=storage.uri(""))] * 4)
    assert not errors, errors
    versions = sorted({k.split("/")[3] for k in storage.list("grid-c/reports/versions")})
    assert len(versions) == 4
    for version in versions:
        prefix = f"grid-c/reports/versions/{version}"
        manifest = storage.manifest(prefix)
        assert manifest and {"table1.md", "summary.json", "learning_curves.png", "fgsm.png"} <= set(manifest)
        for name in manifest:
            data = storage.download_file(f"{prefix}/{name}", tmp_path / "check" / version / name).read_bytes()
            assert data, f"{version}/{name} is empty"
            if name.endswith(".png"):
                assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.rstrip().endswith(b"IEND\xaeB`\x82")
        json.loads(storage.download_file(f"{prefix}/summary.json", tmp_path / "s.json").read_text())
    assert json.loads(read_pointer(storage, "grid-c/reports/LATEST.json"))["version"] == versions[-1]
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert files["learning_curves.png"].startswith(b"\x89PNG") and json.loads(files["summary.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shared-out.staging-")]  # staging cleaned up


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "store-key"])
def test_an_older_result_put_back_beside_a_newer_checkpoint_is_left_out(storage: Storage, tmp_path: Path, signed: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A result records its final checkpoint's digest. Someone without the key keeps an old result.json and its
    (validly signed) marker, the fold is trained again, and they put the old pair back: the stored checkpoint is the
    new one, so the old result is named and left out; the results that match their checkpoints all count."""
    from intermix_core.method.checkpoint import checkpoint_digest

    if signed:
        monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    gid = "grid-r"
    _publish_results(storage, gid, tmp_path, {"standard": STD, "intermix": MIX})
    prefix = cell_prefix(gid, "esc10", "envnet_v2", "intermix", 3)

    def train_again(weights: bytes, error: float) -> None:  # what train_step stores: the checkpoint first, the result last
        ckpt = tmp_path / "checkpoint.pt"
        ckpt.write_bytes(weights)
        storage.upload_file(ckpt, f"{prefix}/checkpoint.pt")
        path = tmp_path / "again.json"
        path.write_text((tmp_path / f"{gid}-intermix-3.json").read_text())
        r = json.loads(path.read_text())
        r.update(test_error=error, checkpoint_sha256=checkpoint_digest(ckpt), fgsm={"0.0": error}, fgsm_crop={"0.0": error})
        path.write_text(json.dumps(r))
        storage.upload_file(path, f"{prefix}/{RESULT}")

    train_again(b"first weights", 40.0)
    old = {suffix: raw_get(storage, f"{prefix}/{RESULT}{suffix}") for suffix in ("", SIDECAR)}
    summary = aggregate_step([], tmp_path / "out1", EXPECTED, grid_id=gid, store_root=storage.uri(""))
    assert summary.cell("esc10", "envnet_v2", "intermix").values[3] == pytest.approx(40.0)  # its own checkpoint: counted
    train_again(b"second weights", 12.0)
    for suffix, data in old.items():
        raw_put(storage, f"{prefix}/{RESULT}{suffix}", data)
    summary = aggregate_step([], tmp_path / "out2", EXPECTED, grid_id=gid, store_root=storage.uri(""))
    cell = summary.cell("esc10", "envnet_v2", "intermix")
    assert sorted(cell.values) == [1, 2, 4, 5]
    notes = " ".join(summary.notes)
    assert "intermix/fold3/result.json" in notes and "an older result put back" in notes and "left out" in notes
