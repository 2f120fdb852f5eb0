"""Compile the paper grid and the rerun pipeline with the real KFP compiler; check structure and scale bounds."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from intermix_core.grid import find_cell, grid_id, load_grid
from pipelines.grid_pipeline import compile_grid
from pipelines.options import ClusterOptions, Toleration

# Bounds for one KFP run (DESIGN.md: compiled size and Argo node count per run must stay small)
MAX_RUN_YAML_BYTES = 64 * 1024
MAX_GRID_YAML_BYTES = 1024 * 1024
MAX_TASKS_PER_RUN = 100  # executed tasks: preprocess + strategies x folds x (train + FGSM) + aggregate
MAX_ARGO_NODES_PER_RUN = 400


def _docs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kubernetes platform spec or {})."""
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {}
    return docs[0], platform


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG, by component name + task name."""
    out = {}
    dags = [("root", spec["root"])] + [(n, c) for n, c in spec["components"].items() if "dag" in c]
    for owner, comp in dags:
        for name, task in comp["dag"]["tasks"].items():
            out[f"{owner}/{name}"] = task
    return out


def _executed_tasks(spec: dict[str, Any]) -> int:
    """Container tasks one run executes: loop bodies count once per item."""

    def count(comp: dict[str, Any]) -> int:
        n = 0
        for task in comp["dag"]["tasks"].values():
            child = spec["components"][task["componentRef"]["name"]]
            inner = count(child) if "dag" in child else 1
            items = task.get("parameterIterator", {}).get("items", {}).get("raw")
            n += inner * (len(yaml.safe_load(items)) if items else 1)
        return n

    return count(spec["root"])


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return compile_grid(load_grid("paper"), tmp_path_factory.mktemp("paper"))


def test_paper_grid_compiles_to_bounded_runs(paper: list[Path]):
    assert len(paper) == 18
    sizes = [p.stat().st_size for p in paper]
    assert max(sizes) < MAX_RUN_YAML_BYTES, max(sizes)
    assert sum(sizes) < MAX_GRID_YAML_BYTES, sum(sizes)
    executed = []
    for path in paper:
        spec, _ = _docs(path)
        n = _executed_tasks(spec)
        executed.append(n)
        # each task is a driver + an executor pod; each loop iteration and DAG adds a driver
        loops = [t for t in _tasks(spec).values() if "parameterIterator" in t]
        iterations = sum(len(yaml.safe_load(t["parameterIterator"]["items"]["raw"])) for t in loops)
        assert 2 * n + iterations + len(loops) + 2 < MAX_ARGO_NODES_PER_RUN
        assert n <= MAX_TASKS_PER_RUN
    # 480 folds x (train + FGSM) + one preprocess and one aggregate per run
    assert sum(executed) == 480 * 2 + 18 * 2
    assert max(executed) == 4 * 10 * 2 + 2  # UrbanSound8K: 4 strategies x 10 folds


def test_folds_are_parallel_for_loops_not_copies(paper: list[Path]):
    spec, _ = _docs(next(p for p in paper if p.name.endswith("-esc10-envnet-v2-aug.yaml")))
    tasks = _tasks(spec)
    loops = {t["taskInfo"]["name"]: t for t in tasks.values() if "parameterIterator" in t}
    assert set(loops) == {f"folds esc10/envnet_v2_aug/{s}" for s in ("standard", "bc", "speechmix", "intermix")}
    assert all(yaml.safe_load(t["parameterIterator"]["items"]["raw"]) == [1, 2, 3, 4, 5] for t in loops.values())
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {"train esc10/envnet_v2_aug/intermix", "fgsm esc10/envnet_v2_aug/intermix", "preprocess esc10@44100"} <= names
    assert f"aggregate {grid_id(load_grid('paper'))}" in names
    # kfp 2.17.3 local runs replace a loop's *parameter* inputs from outside tasks with the loop item:
    # loops take only artifacts and pipeline parameters from outside
    for t in loops.values():
        assert all("taskOutputParameter" not in p for p in t["inputs"].get("parameters", {}).values())


def test_gpu_retry_and_caching(paper: list[Path]):
    spec, _ = _docs(paper[0])
    executors = spec["deploymentSpec"]["executors"]
    for task in _tasks(spec).values():
        comp = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" not in comp:
            continue
        container = executors[comp["executorLabel"]]["container"]
        name = task["taskInfo"]["name"]
        gpu = name.startswith(("train ", "fgsm "))
        accel = container.get("resources", {}).get("accelerator")
        assert (accel == {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}) == gpu, name
        assert container["image"].endswith("-cuda" if gpu else "-cpu")
        assert task["retryPolicy"]["maxRetryCount"] == 2, name
        # aggregation must re-read the store every time; everything else is served from the cache
        assert task["cachingOptions"].get("enableCache", False) == (not name.startswith("aggregate")), name
        assert "pip install" not in " ".join(container["command"])  # packages come with the image
    agg = next(t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"].startswith("aggregate"))
    assert agg["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # exit handler: also after a failed fold


def test_node_selector_and_tolerations_only_when_configured(tmp_path: Path):
    grid = load_grid("demo")
    plain = compile_grid(grid, tmp_path / "plain")[0]
    _, platform = _docs(plain)
    assert not any("nodeSelector" in e or "tolerations" in e for e in platform.get("deploymentSpec", {}).get("executors", {}).values())
    opts = ClusterOptions(node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
                          tolerations=[Toleration.parse("nvidia.com/gpu:NoSchedule")], retries=3,
                          secret_env={"intermix-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]})
    spec, platform = _docs(compile_grid(grid, tmp_path / "gpu", opts)[0])
    executors = platform["deploymentSpec"]["executors"]
    gpu_execs = {k: v for k, v in executors.items() if re.match(r"exec-(train-fold|fgsm-attack)", k)}
    assert len(gpu_execs) == 8  # 4 strategies x (train, FGSM)
    for cfg in gpu_execs.values():
        assert cfg["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
        assert cfg["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert cfg["podMetadata"]["labels"]["intermix/strategy"] in {"standard", "bc", "speechmix", "intermix"}
    for name, cfg in executors.items():
        assert {e["secretNameParameter"]["runtimeValue"]["constant"] for e in cfg["secretAsEnv"]} == {"intermix-s3"}, name
        if name not in gpu_execs:
            assert "nodeSelector" not in cfg and "tolerations" not in cfg
    assert all(t["retryPolicy"]["maxRetryCount"] == 3 for t in _tasks(spec).values() if "retryPolicy" in t)


def test_rerun_pipeline_targets_one_fold(tmp_path: Path):
    from kfp import compiler

    from pipelines.rerun_pipeline import rerun_pipeline

    grid = load_grid("paper")
    cell = find_cell(grid, "urbansound8k", "envnet_v2_aug", "intermix", 7)
    path = tmp_path / "rerun.yaml"
    compiler.Compiler().compile(rerun_pipeline(grid, cell), str(path))
    spec, platform = _docs(path)
    tasks = {t["taskInfo"]["name"]: t for t in _tasks(spec).values()}
    assert {"train urbansound8k/envnet_v2_aug/intermix/fold7", "fgsm urbansound8k/envnet_v2_aug/intermix/fold7",
            "preprocess urbansound8k@44100", f"aggregate {grid_id(grid)}"} <= set(tasks)
    assert _executed_tasks(spec) == 4
    assert not any("parameterIterator" in t for t in tasks.values())
    # a rerun computes: train and FGSM never come from the cache; preprocessing may
    assert tasks["train urbansound8k/envnet_v2_aug/intermix/fold7"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["fgsm urbansound8k/envnet_v2_aug/intermix/fold7"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["preprocess urbansound8k@44100"]["cachingOptions"]["enableCache"] is True
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"store_root", "tracking_uri", "source", "restart"}
    labels = [e["podMetadata"]["labels"] for e in platform["deploymentSpec"]["executors"].values()]
    assert all(lab["intermix/fold"] == "7" and lab["intermix/grid-id"] == grid_id(grid) for lab in labels)
