"""Submit grid and rerun pipelines to a Kubeflow Pipelines endpoint: one run per shard, one KFP experiment.

Every pipeline is compiled before anything is created; then each image the pipelines name is looked
up in its registry (pipelines/registry.py: a missing one is named with the command that builds it),
and the server is asked what it is (`GET /apis/v2beta1/healthz`: `tag_name` and `multi_user`,
kubeflow/pipelines backend/src/apiserver/main.go): a backend below BASE_KFP_BACKEND is refused, one
older than what the compiled pipelines use (required_backend) gets one warning naming what the grid
loses there, a multi-user one needs --namespace, and a login page instead of the API says the
credentials are missing.
Submission is idempotent: a run of the same name that is pending, running or succeeded in the
experiment is reported, not created again; a failure midway says which runs exist.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kfp
import yaml
from kfp import compiler
from pydantic import BaseModel, ConfigDict

from intermix_core.common.names import check_pipeline_args
from intermix_core.config.grid import FoldCell, GridSpec, grid_id
from intermix_core.store.layout import lane_marker_key
from pipelines.gpu_budget import plan_gpus
from pipelines.grid_pipeline import grid_pipelines
from pipelines.options import ClusterOptions
from pipelines.registry import check_images, compiled_images
from pipelines.rerun_pipeline import rerun_pipeline

# What a compiled pipeline needs from the KFP backend (docs/cluster.md, "Minimum versions"); required_backend
# reads it from the compiled IR. Every intermix pipeline needs BASE_KFP_BACKEND, below which submit refuses:
#   2.3  scratch emptyDirs at /gcs, /minio, /s3 (needed by the non-root images)
#   2.4.1/2.5  upstream artifacts inside ParallelFor (#11520, fixed by #11627: train -> FGSM inside the fold
#        loop), DAG status after all tasks (#11651, 2.5.0 only); exit handler as an Argo lifecycle hook (#11470).
#   So Kubeflow 1.9 (KFP 2.3.0) is refused: its FGSM tasks would not get their train task's artifact.
BASE_KFP_BACKEND = (2, 5, 0)
# Retries of a task below the root DAG (inside the exit handler, a sub-pipeline or a ParallelFor):
# before 2.14.0 the Argo compiler looks a task's retry policy up in the ROOT dag only
# (backend/src/v2/compiler/argocompiler/container.go at 2.5.0, getTaskRetryPolicySpec), so nested
# tasks get no retryStrategy at all; 2.14.0 reads it from the task itself (#11861, and #11908 for
# sub-pipelines). Below it the grid runs, degraded: submit warns (DEGRADED_RECOVERY).
NESTED_RETRY_BACKEND = (2, 14, 0)
# Different pod labels or annotations per task: before 2.14.0 every task without a root-level retry
# shares one executor template, and the pod metadata lands on it once, from the first task compiled
# (container.go at 2.5.0, extendPodMetadata on "system-container-impl"); 2.14.0 passes it per task (#12049).
POD_METADATA_BACKEND = (2, 14, 0)
# The oldest backend submit accepts (a grid that needs more is submitted with a warning naming what is lost)
MIN_KFP_BACKEND = BASE_KFP_BACKEND
# The oldest backend on which every grid intermix compiles runs as designed (nested retries, per-strategy labels)
FULL_KFP_BACKEND = max(BASE_KFP_BACKEND, NESTED_RETRY_BACKEND, POD_METADATA_BACKEND)
# What a lost feature means for the grid, by the reason required_backend gives (one warning names them all)
LOST_ON_OLD_BACKEND = {
    "11861": "no retries inside the fold loops: a train, FGSM or preprocess pod that fails, is OOM-killed, "
             "evicted or preempted fails its fold at once",
    "12049": "one set of pod labels for every pod of a run (the first strategy's intermix/strategy; a Kueue "
             "queue label lands on the CPU pods too)",
}
DEGRADED_RECOVERY = ("to finish the folds that failed, submit the same grid again: unfinished folds resume from "
                     "their checkpoints, finished ones come from the cache (docs/cluster.md, \"KFP 2.5 to 2.13\")")
# ParallelFor status propagation to the ExitHandler group (#13321, #11979; fixed by #13322 in 2.17.0)
RECOMMENDED_KFP_BACKEND = (2, 17, 0)
# KFP 2.17.0's manifests (#13485) add to the Argo workflow-controller-configmap's workflowDefaults
# `templateDefaults.retryStrategy {limit: 2, retryPolicy: OnError}` and `ttlStrategy.secondsAfterCompletion: 3600`
# (manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml). Argo merges
# templateDefaults into every template field by field, the template's own values winning (argo-workflows
# workflow/controller/operator.go, mergedTemplateDefaultsInto; docs/template-defaults.md): the KFP compiler
# writes limit and backoff but no retryPolicy, so a train task's retries become OnError (a non-zero exit or an
# OOM kill is not retried, a deleted pod is), and the drivers and DAG templates get 2 retries of their own.
TEMPLATE_DEFAULTS_BACKEND = (2, 17, 0)
TEMPLATE_DEFAULTS_WARNING = (
    "KFP {version}: if the cluster runs the KFP 2.17 manifests' Argo workflowDefaults (kubeflow/pipelines #13485), "
    "Argo merges templateDefaults.retryStrategy {{retryPolicy: OnError}} into every task: a fold that exits non-zero "
    "or is OOM-killed is not retried, and finished workflows are deleted after an hour. Cluster admin's fix: "
    "set templateDefaults.retryStrategy.retryPolicy: Always (or remove it) under workflowDefaults in "
    "`kubectl -n kubeflow edit configmap workflow-controller-configmap` (docs/cluster.md, \"KFP 2.17 and Argo's "
    "template defaults\")"
)
# runs in these states are not created again by a second submit (a failed or canceled one is)
KEEP_STATES = {"PENDING", "RUNNING", "SUCCEEDED", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED"}
ACTIVE_STATES = {"PENDING", "RUNNING", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED"}
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


class KfpServerError(Exception):
    """The KFP endpoint cannot take this submission (unreachable, refused credentials, too old, needs a namespace)."""


class PartialSubmitError(Exception):
    """Some runs of a grid were created (or existed) before a failure; the message lists them."""

    def __init__(self, done: list["SubmittedRun"], failed: str, reason: str, pending: list[str]) -> None:
        self.done, self.failed, self.reason, self.pending = done, failed, reason, pending
        lines = [f"creating the run of {failed} failed: {reason}"]
        lines += [f"  {r.status}: {r.run_id}  {r.run_name}" for r in done]
        if pending:
            lines.append(f"  not created: {failed}" + "".join(f", {p}" for p in pending))
        lines.append("submit the same command again: existing runs are kept, only the missing ones are created")
        super().__init__("\n".join(lines))


class KfpEndpoint(BaseModel):
    """Where and how to reach the KFP API (the CLI fills it from flags and KFP_* environment variables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    namespace: str | None = None
    existing_token: str | None = None
    cookies: str | None = None  # e.g. "oauth2_proxy_kubeflow=..." from a browser session (multi-user Kubeflow)
    ssl_ca_cert: str | None = None
    experiment: str | None = None  # default: the grid id
    service_account: str | None = None
    skip_version_check: bool = False


@dataclass(frozen=True)
class ServerInfo:
    """What the KFP API server says about itself."""

    version: tuple[int, int, int] | None
    tag_name: str
    multi_user: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SubmittedRun:
    """One KFP run of a submission: created now, or found in the experiment ('existing')."""

    label: str
    run_id: str
    run_name: str
    status: str = "created"
    state: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect is reported, not followed
        return None


def _headers(endpoint: KfpEndpoint) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if endpoint.existing_token:
        headers["Authorization"] = f"Bearer {endpoint.existing_token}"
    if endpoint.cookies:
        headers["Cookie"] = endpoint.cookies
    return headers


def _get(endpoint: KfpEndpoint, path: str) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of GET host+path; redirects are not followed."""
    host = endpoint.host if endpoint.host.startswith(("http://", "https://")) else f"https://{endpoint.host}"  # as kfp.Client
    url = host.rstrip("/") + path
    context = ssl.create_default_context(cafile=endpoint.ssl_ca_cert) if endpoint.ssl_ca_cert else None
    handlers: list[Any] = [_NoRedirect()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers=_headers(endpoint)), timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers or {})
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise KfpServerError(f"--host {endpoint.host}: cannot reach the KFP API ({reason})") from None


def parse_version(tag: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a KFP release tag such as '2.5.0' or 'v2.14.3'; None for 'unknown' or a dev build."""
    m = _VERSION.match(tag.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class BackendNeed:
    """The oldest KFP backend that runs a set of compiled pipelines, and the features that set it."""

    version: tuple[int, int, int]
    reasons: tuple[str, ...] = ()

    def text(self) -> str:
        """'2.14.0 or newer (retries of ...; pod labels ...)'."""
        return f"{_text(self.version)} or newer" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def required_backend(packages: list[Path]) -> BackendNeed:
    """The oldest backend that runs every compiled package (KFP IR YAML), read from what the packages use."""
    needs: dict[str, tuple[int, int, int]] = {}
    for path in packages:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        spec = docs[0]
        platform = docs[1].get("platforms", {}).get("kubernetes", {}) if len(docs) > 1 else {}
        nested = [task for name, comp in spec.get("components", {}).items()
                  for task in comp.get("dag", {}).get("tasks", {}).values() if "retryPolicy" in task]
        if nested:
            needs["retries of tasks inside loops and sub-pipelines, kubeflow/pipelines #11861"] = NESTED_RETRY_BACKEND
        executors = platform.get("deploymentSpec", {}).get("executors", {})
        metadata = {json.dumps(executors.get(label, {}).get("podMetadata"), sort_keys=True)
                    for label in spec.get("deploymentSpec", {}).get("executors", {})}
        if len(metadata) > 1:
            needs["pod labels that differ between tasks, kubeflow/pipelines #12049"] = POD_METADATA_BACKEND
    version = max([BASE_KFP_BACKEND, *needs.values()])
    return BackendNeed(version, tuple(r for r, v in needs.items() if v == version and v > BASE_KFP_BACKEND))


def degraded_warning(version: tuple[int, int, int], need: BackendNeed) -> str:
    """One line: what a grid that needs `need` loses on an older (but accepted) backend, and how to recover."""
    lost = []
    for reason in need.reasons:
        number = reason.rsplit("#", 1)[-1]
        lost.append(f"{LOST_ON_OLD_BACKEND.get(number, reason)} (kubeflow/pipelines #{number})")
    return (f"KFP backend {_text(version)} runs this grid without what {_text(need.version)} adds: "
            + "; ".join(lost or [need.text()]) + f"; and the UI can show a finished fold loop as running (#13321); "
            + DEGRADED_RECOVERY)


def probe_server(endpoint: KfpEndpoint, need: BackendNeed | None = None) -> ServerInfo:
    """Ask the KFP API for its version and mode; KfpServerError with one line naming what is wrong.

    `need` is what the pipelines to submit use (required_backend; default: FULL_KFP_BACKEND): below
    BASE_KFP_BACKEND submit refuses, below `need` it warns once, naming what the grid loses there.
    """
    need = need or BackendNeed(FULL_KFP_BACKEND)
    host = endpoint.host
    status, body, headers = _get(endpoint, "/apis/v2beta1/healthz")
    if status in (301, 302, 303, 307, 308):
        raise KfpServerError(f"--host {host}: the KFP API redirected to {headers.get('Location', '?')} (a login page?): "
                             "authenticate with --existing-token TOKEN or --cookies 'NAME=VALUE'")
    if status in (401, 403):
        raise KfpServerError(f"--host {host}: the KFP API refused the credentials (HTTP {status}): "
                             "give a valid --existing-token or --cookies")
    if status == 404:
        old_status, old_body, _ = _get(endpoint, "/apis/v1beta1/healthz")
        tag = _healthz(old_body).get("tag_name", "") if old_status == 200 else ""
        if old_status == 200:
            raise KfpServerError(f"--host {host}: KFP backend {tag or '(version unknown)'} has no v2 API; "
                                 f"intermix needs KFP {_text(BASE_KFP_BACKEND)} or newer")
        raise KfpServerError(f"--host {host}: no KFP API there (HTTP 404 on /apis/v2beta1/healthz); expected the "
                             "KFP endpoint, e.g. http://localhost:8080 (port-forward of svc/ml-pipeline-ui) or "
                             "https://KUBEFLOW/pipeline")
    data = _healthz(body)
    if status != 200 or "multi_user" not in data:
        what = "a web page (a login page?)" if "<html" in body[:500].lower() else f"HTTP {status}"
        raise KfpServerError(f"--host {host}: expected the KFP API's healthz answer, got {what}; "
                             "check --host and authenticate with --existing-token or --cookies")
    tag = str(data.get("tag_name") or "unknown")
    version = parse_version(tag)
    warnings = []
    if version is None:
        warnings.append(f"KFP backend version {tag!r} is not a release tag; intermix needs "
                        f"{_text(BASE_KFP_BACKEND)} or newer ({_text(need.version)} for everything) and cannot check it")
    elif version < BASE_KFP_BACKEND:
        message = (f"--host {host}: KFP backend {_text(version)} is too old; intermix needs "
                   f"{_text(BASE_KFP_BACKEND)} or newer (artifacts passed inside a ParallelFor, kubeflow/pipelines "
                   "#11627); upgrade KFP inside your Kubeflow: docs/cluster.md section 1")
        if not endpoint.skip_version_check:
            raise KfpServerError(message + "; --skip-version-check submits anyway")
        warnings.append(message.split(": ", 1)[1] + " (submitting anyway: --skip-version-check)")
    elif version < need.version:
        warnings.append(degraded_warning(version, need))
    elif version < RECOMMENDED_KFP_BACKEND:
        warnings.append(f"KFP backend {_text(version)}: before {_text(RECOMMENDED_KFP_BACKEND)} the UI can show a "
                        "finished fold loop as running (kubeflow/pipelines #13321); runs and results are unaffected, "
                        "and `intermix results --store ...` gives the tables from the store")
    if version is not None and version >= TEMPLATE_DEFAULTS_BACKEND:
        warnings.append(TEMPLATE_DEFAULTS_WARNING.format(version=_text(version)))
    multi_user = bool(data["multi_user"])
    if multi_user and not endpoint.namespace:
        raise KfpServerError(f"--host {host}: this KFP is multi-user: give --namespace (or KFP_NAMESPACE), your "
                             "profile namespace, e.g. kubeflow-user-example-com")
    return ServerInfo(version=version, tag_name=tag, multi_user=multi_user, warnings=warnings)


def _healthz(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def kfp_client(endpoint: KfpEndpoint) -> Any:
    """A kfp.Client for the endpoint (bearer token or cookies)."""
    return kfp.Client(
        host=endpoint.host, namespace=endpoint.namespace or "kubeflow", existing_token=endpoint.existing_token,
        cookies=endpoint.cookies, ssl_ca_cert=endpoint.ssl_ca_cert,
    )


def _experiment_id(client: Any, endpoint: KfpEndpoint, name: str) -> str:
    return client.create_experiment(name=name, namespace=endpoint.namespace).experiment_id  # get or create


def existing_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """display name -> the newest non-archived run of that name in the experiment."""
    found: dict[str, Any] = {}
    token = ""
    while True:
        page = client.list_runs(experiment_id=experiment_id, page_size=100, page_token=token, sort_by="created_at desc")
        for run in page.runs or []:
            if str(getattr(run, "storage_state", "") or "").upper() == "ARCHIVED":
                continue
            found.setdefault(run.display_name, run)
        token = page.next_page_token or ""
        if not token:
            return found


def _state(run: Any) -> str:
    return str(getattr(run, "state", "") or "RUNTIME_STATE_UNSPECIFIED").upper()


def _compile(pipeline: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return path


def _create(client: Any, endpoint: KfpEndpoint, experiment_id: str, path: Path, run_name: str,
            arguments: dict[str, Any], enable_caching: bool | None) -> str:
    run = client.create_run_from_pipeline_package(
        str(path), arguments=arguments, run_name=run_name, experiment_id=experiment_id,
        namespace=endpoint.namespace, enable_caching=enable_caching, service_account=endpoint.service_account,
    )
    return run.run_id


def _lane_marker(run: Any) -> str:
    """The lane marker an existing run writes when it ends (its `lane_done` argument; '' if it has none)."""
    params = getattr(getattr(run, "runtime_config", None), "parameters", None) or {}
    value = params.get("lane_done", "") if isinstance(params, dict) else ""
    return value if isinstance(value, str) else ""


def _submit(client: Any, endpoint: KfpEndpoint, experiment: str,
            jobs: list[tuple[str, str, Path, dict[str, Any]]], keep: set[str],
            enable_caching: bool | None, lanes: dict[str, tuple[str, str | None]] | None = None) -> list[SubmittedRun]:
    """Create the runs of `jobs` (label, run name, package, arguments) that are not already there in a `keep` state.

    `lanes` (label -> (the marker its end writes, the label of the run before it in its lane)): each created run gets
    `lane_done`, a marker of this submission, and `lane_after`, the marker of the run before it: the one this
    submission creates, or the kept run's own (pipelines/gpu_budget.py).
    """
    for _, _, _, args in jobs:  # what reaches the pipelines' parameters: no newline, no KFP placeholder
        check_pipeline_args(args)
    exp_id = _experiment_id(client, endpoint, experiment)
    there = existing_runs(client, exp_id)
    done: list[SubmittedRun] = []
    markers: dict[str, str] = {}
    for i, (label, name, path, args) in enumerate(jobs):
        old = there.get(name)
        if old is not None and _state(old) in keep:
            markers[label] = _lane_marker(old)
            done.append(SubmittedRun(label, old.run_id, name, "existing", _state(old)))
            continue
        if lanes and label in lanes:
            mine, before = lanes[label]
            markers[label] = mine
            args = {**args, "lane_done": mine, "lane_after": markers.get(before, "") if before else ""}
        try:
            run_id = _create(client, endpoint, exp_id, path, name, args, enable_caching)
        except Exception as err:  # the API client raises many types; all end the submission the same way
            reason = str(getattr(err, "body", "") or err).strip().splitlines()[0][:300]
            raise PartialSubmitError(done, label, reason, [j[0] for j in jobs[i + 1:]]) from None
        done.append(SubmittedRun(label, run_id, name))
    return done


def submit_grid(
    grid: GridSpec, endpoint: KfpEndpoint, store_root: str, tracking_uri: str = "",
    sources: dict[str, str] | None = None, opts: ClusterOptions | None = None, enable_caching: bool | None = None,
    client: Any = None, on_server: Callable[[ServerInfo], None] | None = None, verify_images: bool = True,
) -> list[SubmittedRun]:
    """Create one KFP run per dataset x setup of `grid` under one experiment (default: the grid id), at most once.

    verify_images=False skips asking the registries (e.g. one only the cluster can reach).
    """
    gid = grid_id(grid)
    sources = {**grid.sources, **(sources or {})}
    with tempfile.TemporaryDirectory(prefix="intermix-submit-") as tmp:
        jobs = []
        for shard, pipe in grid_pipelines(grid, opts):  # everything compiles before anything is created
            name = f"{gid} {shard.label}"
            args = {"store_root": store_root, "tracking_uri": tracking_uri, "source": sources.get(shard.dataset, "")}
            jobs.append((shard.label, name, _compile(pipe, Path(tmp), f"{shard.dataset}-{shard.setup}"), args))
        if verify_images:
            check_images(compiled_images(job[2] for job in jobs))
        info = probe_server(endpoint, required_backend([job[2] for job in jobs]))
        if on_server:
            on_server(info)
        client = client or kfp_client(endpoint)
        plan = plan_gpus(grid, opts or ClusterOptions())
        token = uuid.uuid4().hex[:12]  # this submission's: a lane marker of an earlier one never opens a gate
        lanes = {f"{ds}/{setup}": (lane_marker_key(gid, ds, setup, token), f"{before[0]}/{before[1]}" if before else None)
                 for (ds, setup), before in plan.lanes.items()}
        return _submit(client, endpoint, endpoint.experiment or gid, jobs, KEEP_STATES, enable_caching, lanes)


def submit_rerun(
    grid: GridSpec, cell: FoldCell, endpoint: KfpEndpoint, store_root: str, tracking_uri: str = "",
    source: str | None = None, restart: bool = False, opts: ClusterOptions | None = None, client: Any = None,
    on_server: Callable[[ServerInfo], None] | None = None, verify_images: bool = True,
) -> SubmittedRun:
    """Create the KFP run that reruns one fold of `grid` and re-aggregates it (not while one is in progress).

    Without `restart` a finished fold is taken from the store and only FGSM runs again; an unfinished one
    resumes from its stored checkpoint. `restart` deletes the fold's stored checkpoint and result first.
    """
    gid = grid_id(grid)
    name = f"{gid} rerun {cell.label}"
    args = {"store_root": store_root, "tracking_uri": tracking_uri,
            "source": source or grid.sources.get(cell.dataset, ""), "restart": restart}
    with tempfile.TemporaryDirectory(prefix="intermix-submit-") as tmp:
        path = _compile(rerun_pipeline(grid, cell, opts), Path(tmp), "rerun")
        if verify_images:
            check_images(compiled_images([path]))
        info = probe_server(endpoint, required_backend([path]))
        if on_server:
            on_server(info)
        client = client or kfp_client(endpoint)
        return _submit(client, endpoint, endpoint.experiment or gid, [(cell.label, name, path, args)],
                       ACTIVE_STATES, None)[0]
