"""Compile the paper grid and the rerun pipeline with the real KFP compiler; check structure, scale bounds,
and what a real cluster needs from the compiled YAML (retry windows, resources, data as URIs, image
identity, lineage), read the way the KFP backend reads it (backend/src/v2/compiler/argocompiler)."""

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from intermix_core import __version__
from intermix_core.config.grid import find_cell, grid_id, load_grid, shards
from pipelines.gpu_budget import plan_gpus
from pipelines.grid_pipeline import compile_grid
from pipelines.options import (
    MAX_RETRY_WINDOW_S,
    MIN_RETRY_WINDOW_S,
    ClusterOptions,
    Toleration,
    expected_train_seconds,
    quantity_value,
)

# Bounds for one KFP run: compiled size and Argo node count per run must stay small (docs/pipelines.md,
# "Why this respects the KFP scale limits").
# Each run is one API request, so the per-run size is the limit that matters; the grid total
# only adds them up (18 requests). The node count is the bound the Argo limits set (#4175, #12131); the
# size and task bounds guard against a run growing by copies. They were 64 KiB and 100 tasks for runs of 4
# strategies; the paper grid's EnvNet-v2 + augmentation runs also train Table 2's two ablation strategies
# (6 loops: about 82 KB, and 6 x 10 x 2 + 2 = 122 tasks, 320 nodes, on UrbanSound8K), so they are 96 KiB and
# 128 tasks: room for 6 strategies, not for a loop per fold.
MAX_RUN_YAML_BYTES = 96 * 1024
MAX_GRID_YAML_BYTES = 1280 * 1024
MAX_TASKS_PER_RUN = 128  # executed tasks: preprocess + strategies x folds x (train + FGSM) + aggregate
MAX_ARGO_NODES_PER_RUN = 400
ROOT = Path(__file__).resolve().parents[2]


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


def _by_name(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["taskInfo"]["name"]: t for t in _tasks(spec).values()}


def _container_tasks(spec: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task, its executor's container) for every task that runs a container."""
    executors = spec["deploymentSpec"]["executors"]
    out = []
    for task in _tasks(spec).values():
        comp = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" in comp:
            out.append((task, executors[comp["executorLabel"]]["container"]))
    return out


def _platform_of(spec: dict[str, Any], platform: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return platform["deploymentSpec"]["executors"][label]


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


ONE_FOLD = ClusterOptions(pack=1)  # one fold per GPU task (the default packs a cell's folds: see the packs tests)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The paper grid compiled with one fold per task."""
    return compile_grid(load_grid("paper"), tmp_path_factory.mktemp("paper"), ONE_FOLD)


@pytest.fixture(scope="module")
def paper_packs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The paper grid compiled with the default options: fold packs sized to an 80 GiB GPU."""
    return compile_grid(load_grid("paper"), tmp_path_factory.mktemp("paper_packs"))


def _shard_file(paper: list[Path], suffix: str) -> Path:
    return next(p for p in paper if p.name.endswith(suffix))


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
        # each task is a driver + an executor pod; each loop iteration and DAG (sub-pipeline) adds a driver
        loops = [t for t in _tasks(spec).values() if "parameterIterator" in t]
        iterations = sum(len(yaml.safe_load(t["parameterIterator"]["items"]["raw"])) for t in loops)
        dags = sum("dag" in c for c in spec["components"].values())
        assert 2 * n + iterations + len(loops) + dags + 2 < MAX_ARGO_NODES_PER_RUN
        assert n <= MAX_TASKS_PER_RUN
    # 520 folds x (train + FGSM) + one lane gate (the default budget, 8, is below the 18 runs), one preprocess and
    # one aggregate per run
    assert sum(executed) == 520 * 2 + 18 * 3
    assert max(executed) == 6 * 10 * 2 + 3  # UrbanSound8K, EnvNet-v2 + aug: 4 strategies and 2 ablations x 10 folds


def test_by_default_a_gpu_task_trains_every_fold_of_its_cell_as_one_pack(paper_packs: list[Path]):
    """80 GiB GPUs (the default gpu_memory_gib) hold every cell's folds: 78 loops of one pack each, train_pack ->
    fgsm_pack, a pack's retry window covering its folds one after another, the run within the size bounds."""
    assert len(paper_packs) == 18
    sizes = [p.stat().st_size for p in paper_packs]
    assert max(sizes) < MAX_RUN_YAML_BYTES and sum(sizes) < MAX_GRID_YAML_BYTES, sizes
    executed = [_executed_tasks(_docs(p)[0]) for p in paper_packs]
    assert sum(executed) == 78 * 2 + 18 * 3  # a pack per strategy loop (train + FGSM) + lane gate, preprocess, aggregate
    spec, _ = _docs(_shard_file(paper_packs, "-urbansound8k-envnet-v2.yaml"))
    tasks = _by_name(spec)
    loops = {n: t for n, t in tasks.items() if "parameterIterator" in t}
    assert set(loops) == {f"packs urbansound8k/envnet_v2/{s}" for s in ("standard", "bc", "speechmix", "intermix")}
    assert all(yaml.safe_load(t["parameterIterator"]["items"]["raw"]) == ["1 2 3 4 5 6 7 8 9 10"] for t in loops.values())
    train = tasks["train urbansound8k/envnet_v2/intermix"]
    assert train["componentRef"]["name"].startswith("comp-train-pack")
    assert tasks["fgsm urbansound8k/envnet_v2/intermix"]["componentRef"]["name"].startswith("comp-fgsm-pack")
    cfg = next(sh for sh in shards(load_grid("paper")) if sh.label == "urbansound8k/envnet_v2").configs["intermix"]
    window = int(train["retryPolicy"]["backoffMaxDuration"].rstrip("s"))
    assert window >= 3 * expected_train_seconds(cfg, ClusterOptions(), 10) > 3 * 10 * expected_train_seconds(cfg, ONE_FOLD) - 1


def test_packs_are_sized_to_the_gpus_memory_and_split_evenly(tmp_path: Path):
    """A 24 GiB GPU holds fewer EnvNet-v2 folds than a cell has: its loops split the folds evenly (10 -> 5 packs of 2 on
    UrbanSound8K), the plan counts packs, and `pack: 1` or a CPU task trains one fold per task."""
    grid = load_grid("paper")
    cfg = next(sh for sh in shards(grid) if sh.label == "urbansound8k/envnet_v2").configs["standard"]
    small = ClusterOptions(gpu_memory_gib=24)
    packs = small.packs(cfg, tuple(range(1, 11)))
    assert 1 < len(packs) < 10 and sorted(f for p in packs for f in p) == list(range(1, 11))
    assert max(map(len, packs)) - min(map(len, packs)) <= 1 and all(len(p) <= small.pack_size(cfg, 10) for p in packs)
    assert ClusterOptions(gpus=0).packs(cfg, (1, 2, 3)) == [[1], [2], [3]]
    assert ClusterOptions(pack=4).packs(cfg, tuple(range(1, 11))) == [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]
    assert ClusterOptions(pack=4).packs(cfg, (1, 2, 3), local=True) == [[1, 2, 3]]
    assert ClusterOptions().packs(cfg, (1, 2, 3), local=True) == [[1], [2], [3]]  # locally: one fold unless --pack
    path = next(p for p in compile_grid(grid, tmp_path, small) if p.name.endswith("-urbansound8k-envnet-v2.yaml"))
    loops = [t for t in _tasks(_docs(path)[0]).values() if "parameterIterator" in t]
    assert {len(yaml.safe_load(t["parameterIterator"]["items"]["raw"])) for t in loops} == {len(packs)}
    plan = plan_gpus(grid, ClusterOptions(gpu_memory_gib=24, max_gpus=0))
    assert plan.in_flight < plan_gpus(grid, ClusterOptions(pack=1, max_gpus=0)).in_flight == 520


def test_folds_are_parallel_for_loops_not_copies(paper: list[Path]):
    spec, _ = _docs(_shard_file(paper, "-esc10-envnet-v2-aug.yaml"))
    tasks = _tasks(spec)
    loops = {t["taskInfo"]["name"]: t for t in tasks.values() if "parameterIterator" in t}
    assert set(loops) == {f"folds esc10/envnet_v2_aug/{s}" for s in ("standard", "bc", "speechmix", "intermix_vanilla",
                                                                      "intermix_hidden", "intermix")}
    assert all(yaml.safe_load(t["parameterIterator"]["items"]["raw"]) == [1, 2, 3, 4, 5] for t in loops.values())
    # the default GPU budget (8) is below the paper grid's 18 runs: each loop runs one fold at a time, after the last
    assert {t["iteratorPolicy"]["parallelismLimit"] for t in loops.values()} == {1}
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {"train esc10/envnet_v2_aug/intermix", "fgsm esc10/envnet_v2_aug/intermix", "preprocess esc10@44100",
            "folds esc10/envnet_v2_aug"} <= names
    assert f"aggregate {grid_id(load_grid('paper'))}" in names
    # kfp 2.17.3 local runs replace a loop's *parameter* inputs from outside tasks with the loop item:
    # loops take only component inputs (the sub-pipeline's) and pipeline parameters from outside
    for t in loops.values():
        assert all("taskOutputParameter" not in p for p in t["inputs"].get("parameters", {}).values())


def test_gpu_retry_and_caching(paper: list[Path]):
    spec, _ = _docs(paper[0])
    for task, container in _container_tasks(spec):
        name = task["taskInfo"]["name"]
        gpu = name.startswith(("train ", "fgsm "))
        accel = container.get("resources", {}).get("accelerator")
        assert (accel == {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}) == gpu, name
        assert container["image"].endswith("-cuda12.8" if gpu else "-cpu")
        assert task["retryPolicy"]["maxRetryCount"] == 2, name
        # aggregation re-reads the store and preprocessing re-checks the raw data's fingerprint every
        # time (both cheap); train and FGSM are served from the cache
        assert task["cachingOptions"].get("enableCache", False) == gpu, name
        assert "pip install" not in " ".join(container["command"])  # packages come with the image
        if gpu:  # an explicit device: a GPU task without a usable GPU fails instead of training on the CPU
            assert task["inputs"]["parameters"]["device"]["runtimeValue"]["constant"] == "cuda", name
    agg = next(t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"].startswith("aggregate"))
    assert agg["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # exit handler: also after a failed fold


def test_backoff_max_duration_covers_each_cells_retries(paper: list[Path]):
    """Argo measures backoffMaxDuration from the first attempt's start and then refuses retries (and
    uses it as the retry pod's deadline): it must cover every attempt of the cell's training."""
    opts = ONE_FOLD
    grid = load_grid("paper")
    windows: dict[tuple[str, str, str], int] = {}
    for shard in shards(grid):
        path = next(p for p in paper if p.name.endswith(f"-{shard.dataset}-{shard.setup.replace('_', '-')}.yaml"))
        spec, _ = _docs(path)
        tasks = _by_name(spec)
        for strategy, cfg in shard.configs.items():
            policy = tasks[f"train {shard.label}/{strategy}"]["retryPolicy"]
            # the IR holds seconds, which the backend passes to Argo as backoff.maxDuration
            seconds = int(re.fullmatch(r"(\d+)s", policy["backoffMaxDuration"]).group(1))
            attempt = expected_train_seconds(cfg, opts)
            assert seconds >= (opts.retries + 1) * attempt, (shard.label, strategy)
            assert seconds >= MIN_RETRY_WINDOW_S > 3600  # never kfp's default hour
            windows[(shard.dataset, shard.setup, strategy)] = seconds
        for task, _ in _container_tasks(spec):
            if not task["taskInfo"]["name"].startswith("train "):
                assert int(task["retryPolicy"]["backoffMaxDuration"].rstrip("s")) >= MIN_RETRY_WINDOW_S
    # mixing strategies train twice the epochs: their window is larger; EnvNet-v2 on UrbanSound8K is the longest
    assert windows[("urbansound8k", "envnet_v2", "intermix")] > windows[("urbansound8k", "envnet_v2", "standard")]
    assert max(windows, key=windows.get)[:2] in {("urbansound8k", "envnet_v2"), ("urbansound8k", "envnet_v2_aug")}
    assert max(windows.values()) > 2 * 86400  # a multi-day window where a fold takes many hours


def test_retry_max_duration_overrides_every_task(tmp_path: Path):
    path = compile_grid(load_grid("demo"), tmp_path, ClusterOptions(retry_max_duration="72h", retries=1))[0]
    spec, _ = _docs(path)
    policies = [t["retryPolicy"] for t, _ in _container_tasks(spec)]
    assert {p["backoffMaxDuration"] for p in policies} == {f"{72 * 3600}s"}
    assert {p["maxRetryCount"] for p in policies} == {1}


def test_every_task_has_requests_limits_scratch_and_threads(paper: list[Path]):
    spec, platform = _docs(_shard_file(paper, "-urbansound8k-envnet-v2.yaml"))
    defaults = ClusterOptions().resources
    kinds = {"preprocess": "preprocess", "train": "train", "fgsm": "fgsm", "aggregate": "aggregate", "wait": "aggregate"}
    seen = set()
    for task, container in _container_tasks(spec):
        kind = kinds[task["taskInfo"]["name"].split(" ", 1)[0]]
        seen.add(kind)
        want = defaults[kind]
        res = container["resources"]
        assert res["resourceCpuRequest"] == want.cpu_request and res["resourceCpuLimit"] == want.cpu_limit
        assert res["resourceMemoryRequest"] == want.memory_request == res["resourceMemoryLimit"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["OMP_NUM_THREADS"] == str(math.ceil(quantity_value(want.cpu_request)))
        assert env["TMPDIR"] == "/scratch"
        mounts = _platform_of(spec, platform, task)["emptyDirMounts"]
        assert mounts == [{"mountPath": "/scratch", "sizeLimit": want.scratch, "volumeName": "scratch"}]
    assert seen == set(kinds.values())  # the lane gate ("wait for the lane") is sized as an aggregation


def test_no_task_takes_a_prepared_dataset_artifact(paper: list[Path]):
    """Data travels as a store URI (a string parameter), never as a KFP artifact downloaded per task."""
    for path in paper:
        spec, _ = _docs(path)
        for name, comp in spec["components"].items():
            for art in comp.get("inputDefinitions", {}).get("artifacts", {}).values():
                assert art["artifactType"]["schemaTitle"] != "system.Dataset", (path.name, name)
        tasks = _by_name(spec)
        loops = next(t for n, t in tasks.items() if n.startswith("folds ") and "parameterIterator" not in t)
        # the preprocess output enters the fold loops as the sub-pipeline's data_uri input
        assert loops["inputs"]["parameters"]["data_uri"]["taskOutputParameter"]["producerTask"] == "preprocess"
        for n, t in tasks.items():
            if n.startswith(("train ", "fgsm ")):
                assert t["inputs"]["parameters"]["data_uri"] == {"componentInputParameter": "pipelinechannel--data_uri"}
                assert set(t["inputs"].get("artifacts", {})) <= {"trained"}


def test_images_are_named_by_their_inputs_or_a_digest(paper: list[Path], tmp_path: Path):
    from components.image import content_tag

    spec, platform = _docs(paper[0])
    images = {c["image"] for _, c in _container_tasks(spec)}
    assert images == {f"ghcr.io/intermix-project/intermix:{content_tag()}-{t}" for t in ("cpu", "cuda12.8")}
    assert content_tag().startswith(f"{__version__}-")
    for task, container in _container_tasks(spec):
        assert _platform_of(spec, platform, task)["imagePullPolicy"] == "IfNotPresent"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["INTERMIX_IMAGE"] == container["image"]  # what the fold's MLflow run records
    digest = "sha256:" + "ab" * 32
    opts = ClusterOptions(image_repository="registry.example.org/lab/intermix", image_digests={"cuda": digest},
                          image_tag="v7", image_pull_policy="Always")
    spec, platform = _docs(compile_grid(load_grid("demo"), tmp_path, opts)[0])
    images = {c["image"] for _, c in _container_tasks(spec)}
    assert images == {"registry.example.org/lab/intermix:v7-cpu", f"registry.example.org/lab/intermix@{digest}"}
    spec, _ = _docs(compile_grid(load_grid("demo"), tmp_path / "cu126", ClusterOptions(image_tag="v7", cuda_version="12.6"))[0])
    assert {c["image"].rsplit(":", 1)[1] for _, c in _container_tasks(spec)} == {"v7-cpu", "v7-cuda12.6"}
    assert {_platform_of(spec, platform, t)["imagePullPolicy"] for t, _ in _container_tasks(spec)} == {"Always"}


def test_kfp_run_id_reaches_the_folds_mlflow_tags_through_the_pod_spec(paper: list[Path], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    spec, platform = _docs(paper[0])
    for task, _ in _container_tasks(spec):
        field_env = _platform_of(spec, platform, task)["fieldPathAsEnv"]
        assert field_env == [{"fieldPath": "metadata.labels['pipeline/runid']", "name": "KFP_RUN_ID"}]
        assert "KFP_RUN_ID" not in task["inputs"].get("parameters", {})  # not an input: it would break caching
    # the kubelet resolves the field path against the pod's labels (the API server labels every
    # workflow pod pipeline/runid, backend/src/apiserver/template/argo_template.go); the fold's
    # tracker then tags its MLflow run with it
    pod_labels = {"pipeline/runid": "6f1c1a2e-3b7d-4a9e-9f1e-0c2d3e4f5a6b"}
    path = re.fullmatch(r"metadata\.labels\['(.+)'\]", field_env[0]["fieldPath"]).group(1)
    monkeypatch.setenv(field_env[0]["name"], pod_labels[path])
    monkeypatch.chdir(tmp_path)
    from intermix_core.tracking.tracker import Tracker

    cfg = load_grid("demo")
    cell = find_cell(cfg, "esc10", "m18", "bc", 1)
    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.start_fold(cell.config, 1, grid_id(cfg))
    assert tracker.client.get_run(run_id).data.tags["intermix.kfp_run_id"] == pod_labels["pipeline/runid"]


def test_exit_handler_can_be_a_plain_last_task(tmp_path: Path):
    spec, _ = _docs(compile_grid(load_grid("demo"), tmp_path, ClusterOptions(exit_handler=False))[0])
    root = spec["root"]["dag"]["tasks"]
    agg = next(t for t in root.values() if t["taskInfo"]["name"].startswith("aggregate"))
    assert "triggerPolicy" not in agg
    assert [root[d]["taskInfo"]["name"] for d in agg["dependentTasks"]] == ["folds esc10/m18"]
    assert not any(n.startswith("exit-handler") for n in root)


def test_gpus_zero_runs_on_cpu_nodes_with_device_cpu(tmp_path: Path):
    spec, _ = _docs(compile_grid(load_grid("demo"), tmp_path, ClusterOptions(gpus=0))[0])
    for task, container in _container_tasks(spec):
        assert "accelerator" not in container["resources"]
        if "device" in task["inputs"]["parameters"]:
            assert task["inputs"]["parameters"]["device"]["runtimeValue"]["constant"] == "cpu"


def test_data_cache_volume_on_gpu_tasks_only(tmp_path: Path):
    opts = ClusterOptions(data_cache_pvc="intermix-data-cache", data_cache_max_gb=150)
    spec, platform = _docs(compile_grid(load_grid("demo"), tmp_path, opts)[0])
    for task, container in _container_tasks(spec):
        cfg = _platform_of(spec, platform, task)
        env = {e["name"]: e["value"] for e in container["env"]}
        if task["taskInfo"]["name"].startswith(("train ", "fgsm ")):
            assert cfg["pvcMount"] == [{"constant": "intermix-data-cache", "mountPath": "/var/cache/intermix",
                                        "pvcNameParameter": {"runtimeValue": {"constant": "intermix-data-cache"}}}]
            assert env["INTERMIX_DATA_CACHE"] == "/var/cache/intermix" and env["INTERMIX_DATA_CACHE_MAX_GB"] == "150"
        else:
            assert "pvcMount" not in cfg and "INTERMIX_DATA_CACHE" not in env


def test_node_selector_tolerations_and_pod_metadata_only_where_configured(tmp_path: Path):
    grid = load_grid("demo")
    plain = compile_grid(grid, tmp_path / "plain")[0]
    _, platform = _docs(plain)
    # by default: no node selector (the nvidia.com/gpu request places GPU tasks), and GPU tasks tolerate the
    # nvidia.com/gpu:NoSchedule taint GPU pools carry; CPU tasks tolerate nothing
    taint = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for name, e in platform["deploymentSpec"]["executors"].items():
        assert "nodeSelector" not in e, name
        assert e.get("tolerations") == (taint if re.match(r"exec-(train-fold|fgsm-attack|train-pack|fgsm-pack)", name) else None), name
    _, platform = _docs(compile_grid(grid, tmp_path / "bare", ClusterOptions(gpu_taint_toleration=False))[0])
    assert not any("tolerations" in e for e in platform["deploymentSpec"]["executors"].values())
    opts = ClusterOptions(node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
                          tolerations=[Toleration.parse("nvidia.com/gpu:NoSchedule")], retries=3,
                          secret_env={"intermix-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]},
                          pod_labels={"team": "audio"}, pod_annotations={"example.org/cost-center": "42"})
    spec, platform = _docs(compile_grid(grid, tmp_path / "gpu", opts)[0])
    executors = platform["deploymentSpec"]["executors"]
    gpu_execs = {k: v for k, v in executors.items() if re.match(r"exec-(train-fold|fgsm-attack|train-pack|fgsm-pack)", k)}
    assert len(gpu_execs) == 8  # 4 strategies x (train, FGSM)
    for cfg in gpu_execs.values():
        assert cfg["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
        assert cfg["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert cfg["podMetadata"]["labels"]["intermix/strategy"] in {"standard", "bc", "speechmix", "intermix"}
    for name, cfg in executors.items():
        assert {e["secretNameParameter"]["runtimeValue"]["constant"] for e in cfg["secretAsEnv"]} == {"intermix-s3"}, name
        assert cfg["podMetadata"]["labels"]["team"] == "audio"
        assert cfg["podMetadata"]["annotations"] == {"example.org/cost-center": "42"}
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
    tasks = _by_name(spec)
    assert {"train urbansound8k/envnet_v2_aug/intermix/fold7", "fgsm urbansound8k/envnet_v2_aug/intermix/fold7",
            "preprocess urbansound8k@44100", f"aggregate {grid_id(grid)}"} <= set(tasks)
    assert _executed_tasks(spec) == 4
    assert not any("parameterIterator" in t for t in tasks.values())
    # a rerun computes: nothing comes from the cache
    assert not any(t["cachingOptions"].get("enableCache", False) for t, _ in _container_tasks(spec))
    train = tasks["train urbansound8k/envnet_v2_aug/intermix/fold7"]
    assert int(train["retryPolicy"]["backoffMaxDuration"].rstrip("s")) >= 3 * expected_train_seconds(cell.config, ClusterOptions())
    assert train["inputs"]["parameters"]["data_uri"]["taskOutputParameter"]["producerTask"] == "preprocess"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"store_root", "tracking_uri", "source", "restart"}
    labels = [e["podMetadata"]["labels"] for e in platform["deploymentSpec"]["executors"].values()]
    assert all(lab["intermix/fold"] == "7" and lab["intermix/grid-id"] == grid_id(grid) for lab in labels)


def test_local_pipelines_name_no_cluster_paths(tmp_path: Path):
    """Built for the local runner (which applies env vars): no /scratch TMPDIR, no fixed thread count, device auto."""
    from kfp import compiler

    from pipelines.grid_pipeline import grid_pipelines

    (shard, pipe), = grid_pipelines(load_grid("demo"), local=True)
    compiler.Compiler().compile(pipe, str(tmp_path / "local.yaml"))
    spec, _ = _docs(tmp_path / "local.yaml")
    for task, container in _container_tasks(spec):
        env = {e["name"] for e in container.get("env", [])}
        assert not env & {"TMPDIR", "OMP_NUM_THREADS", "INTERMIX_IMAGE"}
        if "device" in task["inputs"]["parameters"]:
            assert task["inputs"]["parameters"]["device"]["runtimeValue"]["constant"] == "auto"
        assert container["image"].endswith((f":{__version__}-cpu", f":{__version__}-cuda"))


# ------------------------------------------------------------------ golden YAML (as the KFP samples test theirs)

GOLDEN = ROOT / "tests" / "cluster" / "golden" / "demo-grid.yaml"


def _normalised(text: str) -> str:
    """The compiled YAML without what changes with the code: the image tag's inputs hash, the SDK version line."""
    text = re.sub(r"(intermix:)[0-9][\w.]*?-[0-9a-f]{12}-(cpu|cuda[0-9.]+)", r"\1VERSION-INPUTS-\2", text)
    return "\n".join(line for line in text.splitlines() if not line.startswith("sdkVersion:")) + "\n"


def test_compiled_demo_grid_matches_the_golden_yaml(tmp_path: Path) -> None:
    """Any change to what the demo grid compiles to shows up as a diff of tests/cluster/golden/demo-grid.yaml.

    After an intended change: INTERMIX_UPDATE_GOLDEN=1 pytest tests/cluster/test_pipeline_compile.py -k golden, and
    review the diff like code.
    """
    import difflib
    import os

    paths = compile_grid(load_grid("demo"), tmp_path)
    assert len(paths) == 1
    got = _normalised(paths[0].read_text())
    if os.environ.get("INTERMIX_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    want = GOLDEN.read_text()
    diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "compiled"))[:80])
    assert got == want, f"the compiled demo grid changed (INTERMIX_UPDATE_GOLDEN=1 to accept):\n{diff}"


def test_on_silent_reaches_the_preprocess_task_and_only_skip_changes_the_grid_id(tmp_path: Path) -> None:
    demo = load_grid("demo")
    ids = {mode: grid_id(demo.model_copy(update={"on_silent": mode})) for mode in ("keep", "skip", "error")}
    assert ids["keep"] == ids["error"] == grid_id(demo) != ids["skip"]
    for mode in ("keep", "skip"):
        spec, _ = _docs(compile_grid(demo.model_copy(update={"on_silent": mode}), tmp_path / mode)[0])
        prep = next(t for t in _tasks(spec).values() if t["taskInfo"]["name"].startswith("preprocess"))
        assert prep["inputs"]["parameters"]["on_silent"]["runtimeValue"]["constant"] == mode


# ------------------------------------------------------------------ the KFP backend the compiled grid needs


def test_the_compiled_paper_grid_needs_kfp_2_14(paper: list[Path]) -> None:
    """Retries below the root DAG and per-strategy pod labels are what the grid compiles to; KFP before 2.14.0
    drops the first and shares the second (kubeflow/pipelines #11861, #12049): `submit` refuses such a backend."""
    from pipelines.submit import FULL_KFP_BACKEND, required_backend

    spec, platform = _docs(_shard_file(paper, "-esc50-envnet-v2.yaml"))
    root = set(spec["root"]["dag"]["tasks"])
    nested = {t["taskInfo"]["name"].split(" ", 1)[0] for n, c in spec["components"].items() if "dag" in c
              for k, t in c["dag"]["tasks"].items() if "retryPolicy" in t and not (n == "root" and k in root)}
    assert nested >= {"preprocess", "train", "fgsm"}  # inside the exit handler, the sub-pipeline, the fold loops
    strategies = {e["podMetadata"]["labels"]["intermix/strategy"]
                  for e in platform["deploymentSpec"]["executors"].values() if "strategy" in str(e.get("podMetadata"))}
    assert strategies == {"standard", "bc", "speechmix", "intermix"}
    need = required_backend(paper)
    assert need.version == FULL_KFP_BACKEND == (2, 14, 0)
    assert [r.rsplit("#", 1)[1] for r in need.reasons] == ["11861", "12049"]


def test_required_backend_follows_what_a_pipeline_uses(tmp_path: Path) -> None:
    """A pipeline with retries only at the root and one kind of pod metadata runs on the 2.5 floor; a pod label on
    one task of two, or a retry inside a loop, raises it to 2.14 (real kfp compilation of small pipelines)."""
    from kfp import compiler, dsl, kubernetes

    from pipelines.submit import BASE_KFP_BACKEND, required_backend

    @dsl.component(base_image="python:3.11")
    def step(n: int) -> int:
        return n

    @dsl.pipeline(name="flat")
    def flat():
        step(n=1).set_retry(num_retries=2)
        step(n=2).set_retry(num_retries=2)

    @dsl.pipeline(name="labelled")
    def labelled():
        kubernetes.add_pod_label(step(n=1), "team", "a")
        step(n=2)

    @dsl.pipeline(name="looped")
    def looped():
        with dsl.ParallelFor([1, 2]) as item:
            step(n=item).set_retry(num_retries=2)

    paths = {}
    for pipe in (flat, labelled, looped):
        paths[pipe.name] = tmp_path / f"{pipe.name}.yaml"
        compiler.Compiler().compile(pipe, str(paths[pipe.name]))
    assert required_backend([paths["flat"]]).version == BASE_KFP_BACKEND == (2, 5, 0)
    assert required_backend([paths["labelled"]]).reasons == ("pod labels that differ between tasks, kubeflow/pipelines #12049",)
    assert required_backend([paths["looped"]]).version == (2, 14, 0)
    assert required_backend(list(paths.values())).version == (2, 14, 0)  # the most any package needs


# ------------------------------------------------------------------ the grid's GPU budget


def _loop_limits(paths: list[Path]) -> dict[str, int]:
    """Fold-loop name -> its compiled parallelism (0: none), over every compiled run."""
    out = {}
    for path in paths:
        spec, _ = _docs(path)
        for t in _tasks(spec).values():
            if "parameterIterator" in t:
                out[t["taskInfo"]["name"]] = t.get("iteratorPolicy", {}).get("parallelismLimit", 0)
    return out


def test_a_gpu_budget_above_the_loop_count_bounds_the_whole_grid(tmp_path: Path) -> None:
    """max_gpus is split over the grid's 78 loops: together they never start more GPU tasks than it allows, each
    loop runs at least one and at most all of its folds, and the longest loops get the most."""
    grid = load_grid("paper")
    limits = _loop_limits(compile_grid(grid, tmp_path, ClusterOptions(max_gpus=144, pack=1)))
    assert len(limits) == sum(len(sh.configs) for sh in shards(grid)) == 78 and sum(limits.values()) == 144
    folds = {f"folds {sh.label}/{s}": len(sh.folds) for sh in shards(grid) for s in sh.configs}
    assert all(1 <= limits[name] <= folds[name] for name in limits)
    assert limits["folds urbansound8k/envnet_v2/intermix"] > limits["folds esc10/m18/intermix"] == 1
    # two GPUs per task: half the slots
    limits = _loop_limits(compile_grid(grid, tmp_path / "two", ClusterOptions(max_gpus=288, gpus=2, pack=1)))
    assert sum(limits.values()) == 144


def test_below_the_run_count_runs_wait_in_lanes_and_gpu_tasks_wait_for_no_gpu(paper: list[Path]) -> None:
    """At the default budget (8) for 18 runs, each run waits for the run before it in its lane (a CPU gate task before
    its preprocessing), so no GPU task waits for a GPU: every GPU task's window covers its attempts alone, and each
    gate waits at most for the runs before it in its lane."""
    from pipelines.gpu_budget import plan_gpus

    opts = ONE_FOLD
    grid = load_grid("paper")
    plan = plan_gpus(grid, opts)
    assert plan.queue_seconds == 0 and plan.in_flight == opts.max_gpus == 8
    attempts = {(sh.label, s): expected_train_seconds(cfg, opts) for sh in shards(grid) for s, cfg in sh.configs.items()}
    for path in paper:
        spec, _ = _docs(path)
        tasks = _by_name(spec)
        gate = tasks["wait for the lane"]
        label = next(sh.label for sh in shards(grid) if path.name.endswith(f"-{sh.dataset}-{sh.setup.replace('_', '-')}.yaml"))
        wait = plan.lane_wait_s[tuple(label.split("/"))]
        assert gate["inputs"]["parameters"]["max_wait_s"]["runtimeValue"]["constant"] == int(wait)
        assert gate["inputs"]["parameters"]["after"]["componentInputParameter"].endswith("lane_after")
        prep = next(t for n, t in tasks.items() if n.startswith("preprocess "))
        assert prep["dependentTasks"] == ["lane-gate"]
        aggregate = next(t for n, t in tasks.items() if n.startswith("aggregate "))
        assert aggregate["inputs"]["parameters"]["lane_done"]["componentInputParameter"].endswith("lane_done")
        for task, _ in _container_tasks(spec):
            name = task["taskInfo"]["name"]
            seconds = int(task["retryPolicy"]["backoffMaxDuration"].rstrip("s"))
            kind, rest = name.split(" ", 1)
            if kind == "train":
                dataset_setup, strategy = rest.rsplit("/", 1)
                assert seconds >= min((opts.retries + 1) * 2 * attempts[(dataset_setup, strategy)], MAX_RETRY_WINDOW_S)
            elif kind == "fgsm" or name.startswith(("preprocess", "aggregate")):
                assert seconds == MIN_RETRY_WINDOW_S, name  # no wait for a GPU counted: none is waited for


def test_without_a_budget_the_per_loop_cap_or_nothing_applies(tmp_path: Path) -> None:
    grid = load_grid("demo")
    assert set(_loop_limits(compile_grid(grid, tmp_path / "cap", ClusterOptions(max_gpus=0, parallelism=1))).values()) == {1}
    assert set(_loop_limits(compile_grid(grid, tmp_path / "free", ClusterOptions(max_gpus=0))).values()) == {0}
    with pytest.raises(Exception, match="max_gpus 1 is less than gpus 2 per task"):
        ClusterOptions(max_gpus=1, gpus=2)


def test_a_spot_gpu_pool_selector_and_toleration_reach_only_the_gpu_tasks(tmp_path: Path) -> None:
    """docs/cluster.md's AKS spot example (label and taint kubernetes.azure.com/scalesetpriority=spot) and a Kueue
    queue label: the selector and toleration land on train and FGSM only, the queue label on every task pod."""
    spot = "kubernetes.azure.com/scalesetpriority"
    opts = ClusterOptions(node_selector={spot: "spot"},
                          tolerations=[Toleration(key=spot, operator="Equal", value="spot", effect="NoSchedule")],
                          pod_labels={"kueue.x-k8s.io/queue-name": "gpu-queue"})
    (path,) = compile_grid(load_grid("demo"), tmp_path, opts)
    spec, platform = _docs(path)
    seen = set()
    for task, _ in _container_tasks(spec):
        kind = task["taskInfo"]["name"].split(" ", 1)[0]
        executor = _platform_of(spec, platform, task)
        assert executor["podMetadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue", kind
        if kind in ("train", "fgsm"):
            assert executor["nodeSelector"]["labels"] == {spot: "spot"}
            assert {"key": spot, "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in executor["tolerations"]
        else:
            assert "nodeSelector" not in executor and not executor.get("tolerations"), kind
        seen.add(kind)
    assert seen == {"preprocess", "train", "fgsm", "aggregate"}


def test_submit_names_the_gpu_bound_of_the_compiled_paper_grid() -> None:
    """At the default budget (8) the paper grid's 18 runs run in 8 lanes and at 144 its loops split the budget: either
    way the line names the compiled grid as the bound."""
    from pipelines.gpu_budget import plan_gpus

    grid = load_grid("paper")
    line = plan_gpus(grid, ClusterOptions()).bounds()
    assert line.startswith("GPU tasks at once: at most 8, bounded by the compiled grid (18 runs in 8 lanes")
    assert plan_gpus(grid, ClusterOptions(max_gpus=144, pack=1)).bounds().startswith("GPU tasks at once: at most 144, "
                                                                                      "bounded")
    # fold packs (the default): one task per loop, 78 for the whole grid, below a budget of 144
    assert plan_gpus(grid, ClusterOptions(max_gpus=144)).bounds().startswith("GPU tasks at once: at most 78, bounded")


def _gpu_tasks_at_once(paths: list[Path]) -> int:
    """GPU tasks the compiled grid can run at once, read from the YAML: per run, loops chained by dependentTasks
    run one after another (the chain's widest loop counts), loops side by side add up; 0 parallelism is every item."""
    total = 0
    for path in paths:
        spec, _ = _docs(path)
        for comp in spec["components"].values():
            tasks = comp.get("dag", {}).get("tasks", {})
            loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
            if not loops:
                continue
            width = {name: t.get("iteratorPolicy", {}).get("parallelismLimit", 0)
                     or len(yaml.safe_load(t["parameterIterator"]["items"]["raw"])) for name, t in loops.items()}
            chain_of = {name: name for name in loops}
            for name in loops:  # follow each loop back to the first loop of its chain
                first = name
                while (up := [d for d in loops[first].get("dependentTasks", []) if d in loops]):
                    first = up[0]
                chain_of[name] = first
            chains: dict[str, int] = {}
            for name, first in chain_of.items():
                chains[first] = max(chains.get(first, 0), width[name])
            total += sum(chains.values())
    return total


@pytest.mark.parametrize("max_gpus", [18, 40])
def test_the_compiled_paper_grid_starts_at_most_max_gpus_gpu_tasks_without_a_quota(tmp_path: Path, max_gpus: int) -> None:
    """From the run count (18) up, the compiled grid itself keeps within max_gpus, quota or not: runs narrower than
    their loops chain them (each loop's task waits for the previous loop), the rest split the budget side by side."""
    grid = load_grid("paper")
    paths = compile_grid(grid, tmp_path, ClusterOptions(max_gpus=max_gpus))
    at_once = _gpu_tasks_at_once(paths)
    assert at_once <= max_gpus and at_once >= min(max_gpus, 18)
    from pipelines.gpu_budget import plan_gpus

    assert plan_gpus(grid, ClusterOptions(max_gpus=max_gpus)).in_flight == at_once  # what submit prints


def test_below_the_run_count_the_lanes_start_at_most_max_gpus_runs(paper: list[Path]) -> None:
    """At the default budget (8) every run chains its loops (one GPU task at a time: 18 from the YAML alone), and the
    18 runs are dealt to 8 lanes, each run after the one before it in its lane: 8 GPU tasks at once, quota or not."""
    from pipelines.gpu_budget import plan_gpus

    assert _gpu_tasks_at_once(paper) == 18  # each run's own structure: one task at a time
    spec, _ = _docs(_shard_file(paper, "-esc10-envnet-v2-aug.yaml"))
    loops = [t for t in _tasks(spec).values() if "parameterIterator" in t]
    assert sum(1 for t in loops if not t.get("dependentTasks")) == 1  # one chain: the first loop waits for none
    grid = load_grid("paper")
    lanes = plan_gpus(grid, ClusterOptions()).lanes
    runs = [(sh.dataset, sh.setup) for sh in shards(grid)]
    assert list(lanes) == runs and sum(1 for before in lanes.values() if before is None) == 8
    assert all(runs.index(before) < runs.index(run) for run, before in lanes.items() if before)
    assert len({before for before in lanes.values() if before}) == 10  # 8 chains: each run opens one gate at most
    assert not plan_gpus(grid, ClusterOptions(max_gpus=18)).lanes  # from the run count up: no lanes
