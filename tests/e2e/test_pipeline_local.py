"""End to end through KFP's real local runner: a tiny grid, a failed fold, a cached resubmission, a one-fold rerun;
the same local run against real servers (S3 store on SeaweedFS, an MLflow server); and the steps' cluster
path without KFP.

The failure is a real one: a corrupt checkpoint left in the grid store for one fold (what a node
killed mid-write on a non-atomic filesystem leaves behind) makes that fold's training refuse to
resume. Nothing in the code under test knows about the test.
"""

import re
from pathlib import Path

import pytest

from intermix_core.config.grid import find_cell, grid_id, parse_grid
from intermix_core.records import load_result
from intermix_core.results.statistics import Summary
from intermix_core.run.steps import CHECKPOINT, RESULT, cell_prefix
from intermix_core.store.storage import open_storage
from pipelines.local import Workdir, rerun_fold_local, run_grid_local
from pipelines.options import ClusterOptions

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "datasets": ["esc10"],
    "setups": ["piczak_cnn"],
    "strategies": ["standard", "bc"],
    "folds": [1, 2],
    "sources": {"esc10": "demo"},
    "overrides": {
        "optim": {"epochs": 1, "batch_size": 16, "eval_every": 1, "checkpoint_every": 1},
        "num_crops": 1,
        "attack": {"epsilons": [0.01]},
    },
}
NO_RETRY = ClusterOptions(retries=0)  # a retry would fail the same way; keep the test short


def _executed(log: Path) -> list[str]:
    """Cells whose train / FGSM component actually ran (cache hits print nothing)."""
    text = log.read_text()
    return sorted(re.findall(r"(?:trained|FGSM) (esc10/\S+/fold\d)", text))


def _summary(work: Workdir, gid: str) -> Summary:
    return Summary.model_validate_json((Path(work.store) / gid / "reports" / "summary.json").read_text())


def test_grid_failure_cached_resubmit_and_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what the local runner would set; restored after the test
    grid = parse_grid(TINY, source="tiny grid")
    gid = grid_id(grid)
    work = Workdir(tmp_path / "work")
    store = open_storage(work.store)
    broken = cell_prefix(gid, "esc10", "piczak_cnn", "bc", 2)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    store.upload_file(corrupt, f"{broken}/{CHECKPOINT}")

    # 1) the grid runs; bc fold 2 fails, every other fold finishes, the exit handler still aggregates
    first = run_grid_local(grid, work, tracking=False, progress=False, opts=NO_RETRY)
    assert not first.ok
    assert "train-fold" in first.outcomes["esc10/piczak_cnn"]
    finished = ["esc10/piczak_cnn/standard/fold1", "esc10/piczak_cnn/standard/fold2", "esc10/piczak_cnn/bc/fold1"]
    assert _executed(first.logs[-1]) == sorted(finished * 2)  # trained + FGSM of each
    failed = load_result(Path(work.store) / broken / RESULT)
    assert failed.status == "failed" and "not a loadable intermix checkpoint, refused" in failed.error
    bc = _summary(work, gid).cell("esc10", "piczak_cnn", "bc")
    assert set(bc.values) == {1} and set(bc.failed) == {2}

    # 2) after the cause is removed, resubmitting the same grid runs only the failed fold
    store.delete(f"{broken}/{CHECKPOINT}")
    second = run_grid_local(grid, work, tracking=False, progress=False, opts=NO_RETRY)
    assert second.ok, second.outcomes
    assert _executed(second.logs[-1]) == ["esc10/piczak_cnn/bc/fold2", "esc10/piczak_cnn/bc/fold2"]

    # 3) a one-fold rerun (same grid id) recomputes that fold only and re-aggregates the grid
    cell = find_cell(grid, "esc10", "piczak_cnn", "standard", 1)
    before = load_result(Path(work.store) / cell_prefix(gid, *cell.key[:3], 1) / RESULT)
    third = rerun_fold_local(grid, cell, work, restart=True, tracking=False, progress=False, opts=NO_RETRY)
    assert third.ok, third.outcomes
    assert _executed(third.logs[-1]) == ["esc10/piczak_cnn/standard/fold1"] * 2
    after = load_result(Path(work.store) / cell_prefix(gid, *cell.key[:3], 1) / RESULT)
    assert after.fgsm and after.train_seconds != before.train_seconds  # retrained from scratch

    # the final table has every fold exactly once, each with its FGSM error
    summary = _summary(work, gid)
    assert summary.n_results == 4 and summary.n_superseded == 0 and not summary.missing
    for strategy in ("standard", "bc"):
        c = summary.cell("esc10", "piczak_cnn", strategy)
        assert sorted(c.values) == [1, 2] and not c.failed
        assert sorted(summary.cell("esc10", "piczak_cnn", strategy, 0.01).values) == [1, 2]
    table = (Path(work.store) / gid / "reports" / "table1.csv").read_text().splitlines()
    assert len(table) == 3 and all(",2,2," in row for row in table[1:])  # n = n_expected = 2
    # the plots of this real (tiny) grid
    for plot in ("learning_curves.png", "fgsm.png", "fold_spread.png"):
        png = (Path(work.store) / gid / "reports" / plot).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, plot


def test_local_run_uses_the_configured_store_and_mlflow_server(tmp_path: Path, s3_server, mlflow_tracking, monkeypatch,
                                                             capsys):
    """`intermix run --store s3://... --tracking-uri http://...`: the embedded default's commands on real servers.

    The tracking URI carries a password (the server ignores it): no file the run leaves holds it, nor its output
    (the local runner's task log printed it six times)."""
    import mlflow

    from pipelines.cli import main

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(str({**TINY, "strategies": ["standard"], "folds": [1]}).replace("'", '"'))
    root = f"s3://intermix-data/local-run-{tmp_path.name}"
    secret = "s3cret-pw-7d1f"
    with_password = mlflow_tracking.url.replace("http://", f"http://alice:{secret}@")
    code = main(["run", str(grid_file), "--store", root, "--tracking-uri", with_password, "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert secret not in out.out + out.err
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert len(list((tmp_path / "intermix-work" / "logs").iterdir())) >= 1 and leaked == [], leaked
    gid = grid_id(parse_grid({**TINY, "strategies": ["standard"], "folds": [1]}))
    store = open_storage(root)
    assert store.exists(f"{cell_prefix(gid, 'esc10', 'piczak_cnn', 'standard', 1)}/{RESULT}")
    assert store.exists(f"{gid}/reports/summary.json") and "Table 1" in out.out
    assert not (tmp_path / "intermix-work" / "store").exists() and not (tmp_path / "intermix-work" / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking.url)
    exp = client.get_experiment_by_name("intermix")
    runs = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{gid}' and tags.`intermix.kind` = 'fold'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # results from the same store and server, as the laptop would read them after a cluster run
    assert main(["results", "--grid", str(grid_file), "--store", root]) == 0
    assert "Standard" in capsys.readouterr().out


def test_steps_on_an_s3_store_with_an_mlflow_server(tmp_path: Path, s3_server, mlflow_tracking, monkeypatch):
    """The cluster path of the steps, without KFP: S3 grid store (SeaweedFS), MLflow server, a retried fold."""
    import mlflow

    from intermix_core.run.aggregate import grid_aggregate_step
    from intermix_core.run.steps import attack_step, preprocess_step, train_step

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    grid = parse_grid({**TINY, "strategies": ["intermix"], "folds": [1]}, source="tiny grid")
    gid, cell = grid_id(grid), find_cell(grid, "esc10", "piczak_cnn", "intermix", 1)
    root = f"s3://intermix-data/test-steps-{tmp_path.name}"
    store = open_storage(root)
    data = tmp_path / "prepared"
    preprocess_step("demo", "esc10", 22050, data)

    trained = train_step(cell.config.model_dump_json(), data, 1, tmp_path / "node1", gid, mlflow_tracking.url, root,
                         keep_checkpoint=False)
    prefix = cell_prefix(gid, "esc10", "piczak_cnn", "intermix", 1)
    assert store.exists(f"{prefix}/{CHECKPOINT}") and not (tmp_path / "node1" / CHECKPOINT).exists()
    # a retry on another node finds the finished fold in the store and does not train again
    again = train_step(cell.config.model_dump_json(), data, 1, tmp_path / "node2", gid, mlflow_tracking.url, root)
    assert again.train_seconds == trained.train_seconds and (tmp_path / "node2" / CHECKPOINT).exists()

    attacked = attack_step(tmp_path / "node1", data, 1, tmp_path / "fgsm", gid, mlflow_tracking.url, root)
    assert set(attacked.fgsm) == set(attacked.fgsm_crop) == {"0.0", "0.01"}
    _, summary = grid_aggregate_step(grid.model_dump_json(), tmp_path / "reports", root, mlflow_tracking.url)
    assert summary.n_results == 1 and not summary.missing
    assert store.exists(f"{gid}/reports/table1.md") and store.exists(f"{gid}/grid.json")

    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking.url)
    exp = client.get_experiment_by_name("intermix")
    runs = client.search_runs([exp.experiment_id], f"tags.`intermix.grid_id` = '{gid}'")
    folds = [r for r in runs if r.data.tags.get("intermix.kind") == "fold"]
    assert len(folds) == 1 and folds[0].data.metrics["fgsm_error_eps_0.01"] == attacked.fgsm["0.01"]
    assert folds[0].data.metrics["fgsm_crop_error_eps_0.01"] == attacked.fgsm_crop["0.01"]
    assert any(r.data.tags.get("intermix.kind") == "summary" for r in runs)


def test_a_grid_of_fold_packs_runs_each_fold_as_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`pack` 2 on three folds: KFP's local runner trains packs '1 2' and '3' (train_pack -> fgsm_pack); each fold
    ends as a lone one would: its result with FGSM in the store, its own FINISHED MLflow run, its aggregated value;
    a one-fold rerun afterwards (a pack of one) finds the fold a pack trained."""
    from mlflow import MlflowClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grid = parse_grid({**TINY, "strategies": ["standard"], "folds": [1, 2, 3]}, source="tiny grid")
    gid = grid_id(grid)
    work = Workdir(tmp_path / "work")
    run = run_grid_local(grid, work, progress=False, opts=ClusterOptions(retries=0, pack=2))
    assert run.ok, run.outcomes
    log = run.logs[-1].read_text()
    assert "train-pack" in log and "train-fold" not in log and "fgsm-pack" in log
    assert _executed(run.logs[-1]) == sorted([f"esc10/piczak_cnn/standard/fold{f}" for f in (1, 2, 3)] * 2)
    for fold in (1, 2, 3):
        result = load_result(Path(work.store) / cell_prefix(gid, "esc10", "piczak_cnn", "standard", fold) / RESULT)
        assert result.status == "ok" and result.fold == fold and result.fgsm, fold
    assert set(_summary(work, gid).cell("esc10", "piczak_cnn", "standard").values) == {1, 2, 3}
    client = MlflowClient(tracking_uri=work.tracking_uri)
    exp = client.get_experiment_by_name("intermix")
    folds = {r.data.tags["mlflow.runName"]: r.info.status for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("intermix.kind") == "fold"}
    assert folds == {f"esc10/piczak_cnn/standard/fold{f}": "FINISHED" for f in (1, 2, 3)}, folds
    again = rerun_fold_local(grid, find_cell(grid, "esc10", "piczak_cnn", "standard", 2), work, progress=False,
                             opts=ClusterOptions(retries=0))
    assert again.ok, again.outcomes
