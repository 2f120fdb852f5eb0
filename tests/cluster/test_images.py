"""The container images, built and run for real: docker/build-local.sh builds both targets with podman
from a debootstrap Debian base, then every component's real entry point runs inside the CPU image
through KFP's DockerRunner (on podman's Docker-API socket) as the image's non-root user, with a
read-only root filesystem and no network: preprocess the demo data, train one fold for one epoch,
FGSM, aggregate. The CUDA image (the cu130 flavour locally: PyPI's torch) starts and runs the
CPU-only paths, preprocess and aggregate, the same way; no GPU is needed for those.

Marker `images`: not part of the default run (pyproject's addopts deselect it). Run it with
`.venv/bin/python -m pytest -m images tests/cluster/test_images.py` as root on a machine with podman, runc
and debootstrap (apt-get install podman runc debootstrap); the first build takes about half an hour.
"""


import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import component_set
from components.image import resolve_images
from intermix_core.config.grid import expand, grid_id, parse_grid
from intermix_core.store.layout import latest_key, read_pointer
from intermix_core.store.storage import open_storage

pytestmark = [pytest.mark.images, pytest.mark.slow]  # -m "not slow" leaves it out too
ROOT = Path(__file__).resolve().parents[2]
UID = 10001
TINY = {
    "name": "image-smoke",
    "datasets": ["esc10"],
    "setups": ["piczak_cnn"],
    "strategies": ["standard"],
    "folds": [1],
    "sources": {"esc10": "demo"},
    "overrides": {"optim": {"epochs": 1, "batch_size": 16, "eval_every": 1, "checkpoint_every": 1},
                  "num_crops": 1, "attack": {"epsilons": [0.01]}},
}


def _podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / ".cache" / "images" / "containers.conf")}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build both targets (reusing what an earlier build left) and return target -> image reference."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed: apt-get install podman runc debootstrap")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and rootful podman need root")
    names = resolve_images("localhost/intermix", cuda="13.0")  # what the script tags: this checkout's inputs
    refs = {"cpu": names.cpu, "cuda": names.cuda}
    started = time.time()
    build = subprocess.run(["bash", "docker/build-local.sh"], cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"docker/build-local.sh: {time.time() - started:.0f} s")
    for target, ref in refs.items():
        size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref], env=_podman_env(),
                              capture_output=True, text=True, check=True).stdout.strip()
        print(f"{ref}: {int(size) / 1e9:.2f} GB")
    return refs


@pytest.fixture(scope="module")
def docker_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """podman's Docker-compatible API on a private socket, for KFP's DockerRunner."""
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=_podman_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cpu_image_runs_as_non_root_with_a_read_only_root(images: dict[str, str]):
    run = ["podman", "run", "--rm", "--read-only", "--network", "none", images["cpu"]]
    who = subprocess.run([*run, "sh", "-c", "id -u; touch /opt/venv/x 2>&1 || true"], env=_podman_env(),
                         capture_output=True, text=True, timeout=300)
    assert who.returncode == 0, who.stderr
    assert who.stdout.splitlines()[0] == str(UID)  # the image's USER, without --user
    assert "Read-only file system" in who.stdout
    found = subprocess.run([*run, "python", "-c", "import torch, torchaudio, kfp, intermix_core; print(torch.__version__)"],
                           env=_podman_env(), capture_output=True, text=True, timeout=300)
    assert found.returncode == 0 and found.stdout.strip().startswith("2.11.0"), found.stderr


def test_every_component_runs_in_the_cpu_image(images: dict[str, str], docker_api: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    from kfp import dsl, local

    monkeypatch.setenv("DOCKER_HOST", docker_api)
    work = tmp_path / "work"  # mounted at the same path into every task container (KFP's pipeline root)
    store = work / "store"
    store.mkdir(parents=True)
    tracking = f"sqlite:///{work}/mlflow.db"
    import mlflow

    from intermix_core.tracking.tags import EXPERIMENT_KIND

    # as the local runner does (pipelines/local.py): artifacts beside the database, not in the read-only image
    mlflow.MlflowClient(tracking).create_experiment("intermix", artifact_location=(work / "mlartifacts").as_uri(),
                                                    tags=dict([EXPERIMENT_KIND]))
    for path in [work, *work.rglob("*")]:
        os.chown(path, UID, UID)
    local.init(
        runner=local.DockerRunner(read_only=True, user=f"{UID}:{UID}", network_mode="none",
                                  tmpfs={"/tmp": "rw,size=2g,mode=1777"}, environment={"OMP_NUM_THREADS": "2"}),
        pipeline_root=str(work), raise_on_error=True,
    )
    comps = component_set(images["cpu"], images["cpu"])  # train and FGSM too: the CPU image, device cpu
    grid = parse_grid(TINY, source="image smoke grid")
    gid = grid_id(grid)
    (cell,) = expand(grid)

    # the shard pipeline's task chain (KFP's local runner passes artifacts between tasks of a pipeline)
    @dsl.pipeline(name="image-smoke")
    def smoke(store_root: str, tracking_uri: str):
        prep = comps.preprocess(source="demo", dataset="esc10", sample_rate=22050, store_root=store_root)
        train = comps.train_fold(config_json=cell.config.model_dump_json(), fold=1, grid_id=gid,
                                 tracking_uri=tracking_uri, store_root=store_root, data_uri=prep.outputs["Output"],
                                 device="cpu")
        attack = comps.fgsm_attack(fold=1, grid_id=gid, tracking_uri=tracking_uri, store_root=store_root,
                                   data_uri=prep.outputs["Output"], trained=train.outputs["trained"], device="cpu")
        comps.aggregate(grid_json=grid.model_dump_json(), store_root=store_root, tracking_uri=tracking_uri).after(attack)

    smoke(store_root=str(store), tracking_uri=tracking)

    (data_uri,) = (store / "prepared" / "esc10" / "22050hz").glob("v*/*")
    result = json.loads((store / gid / "esc10" / "piczak_cnn" / "standard" / "fold1" / "result.json").read_text())
    assert result["status"] == "ok" and "0.01" in result["fgsm"]
    latest = json.loads(read_pointer(open_storage(str(store)), latest_key(gid)))  # a sealed pointer
    assert (store / latest["prefix"] / "table1.md").is_file()
    # written by the image's non-root user
    assert (store / gid / "esc10").stat().st_uid == UID and data_uri.stat().st_uid == UID

    runs = mlflow.MlflowClient(tracking).search_runs(
        [mlflow.MlflowClient(tracking).get_experiment_by_name("intermix").experiment_id],
        "tags.`intermix.kind` = 'fold'")
    revision = subprocess.run(["podman", "image", "inspect", "--format",
                               '{{index .Labels "org.opencontainers.image.revision"}}', images["cpu"]],
                              env=_podman_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert len(revision) == 40
    assert len(runs) == 1 and runs[0].data.tags["intermix.git_commit"] == revision  # the image's commit, in MLflow


def test_cuda_image_starts_and_runs_the_cpu_only_paths(images: dict[str, str], docker_api: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """The train/FGSM image, without a GPU: it starts as uid 10001, its torch is the flavour its tag names, and
    preprocess, a one-epoch training on the CPU and aggregate run in it through KFP's DockerRunner (read-only root,
    no network)."""
    from kfp import dsl, local

    run = ["podman", "run", "--rm", "--read-only", "--network", "none", images["cuda"]]
    probe = subprocess.run([*run, "python", "-c", "import os, torch; from intermix_core.method.devices import "
                            "cuda_driver_note; print(os.getuid(), torch.version.cuda, cuda_driver_note())"],
                           env=_podman_env(), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(UID), images["cuda"].rsplit("-cuda", 1)[1], "None"]  # no driver: no note
    monkeypatch.setenv("DOCKER_HOST", docker_api)
    work = tmp_path / "work"
    store = work / "store"
    store.mkdir(parents=True)
    for path in [work, store]:
        os.chown(path, UID, UID)
    local.init(runner=local.DockerRunner(read_only=True, user=f"{UID}:{UID}", network_mode="none",
                                         tmpfs={"/tmp": "rw,size=2g,mode=1777"}), pipeline_root=str(work),
               raise_on_error=True)
    comps = component_set(images["cuda"], images["cuda"])
    grid = parse_grid(TINY, source="image smoke grid")

    (cell,) = expand(grid)

    @dsl.pipeline(name="cuda-image-cpu-paths")
    def cpu_paths(store_root: str):
        prep = comps.preprocess(source="demo", dataset="esc10", sample_rate=22050, store_root=store_root)
        train = comps.train_fold(config_json=cell.config.model_dump_json(), fold=1, grid_id=grid_id(grid),
                                 tracking_uri="", store_root=store_root, data_uri=prep.outputs["Output"], device="cpu")
        comps.aggregate(grid_json=grid.model_dump_json(), store_root=store_root, tracking_uri="").after(train)

    cpu_paths(store_root=str(store))
    (data_uri,) = (store / "prepared" / "esc10" / "22050hz").glob("v*/*")
    assert data_uri.stat().st_uid == UID
    latest = json.loads(read_pointer(open_storage(str(store)), latest_key(grid_id(grid))))  # a sealed pointer
    assert (store / latest["prefix"] / "summary.json").is_file()  # the report of the one fold trained on the CPU
