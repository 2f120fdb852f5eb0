"""Static checks of the container image and the Helm chart: no Docker engine or cluster needed.

Tools: helm (from .tools/bin or PATH), hadolint and kubernetes-validate (from the venv or PATH);
`bash .ci/cluster_tools.sh` installs all of them. A test whose tool is missing is skipped, saying so.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.image import IMAGE_CPU, IMAGE_GPU, IMAGE_REPOSITORY
from intermix_core import __version__

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "intermix"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
MULTI_USER_VALUES = CHART / "ci" / "multi-user-values.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCS = ROOT / "docs" / "cluster.md"
K8S_VERSION = "1.33.0"
NAMESPACE = "kubeflow"

# value sets the chart must render for: defaults, the GPU example, and an external database with
# chart-created Secrets (credentials passed with --set, as docs/cluster.md shows)
RENDERS = {
    "default": (),
    "gpu": ("-f", str(GPU_VALUES)),
    # Istio, pod labels/annotations, MLflow auth, the data cache volume and a GPU quota
    "multi-user": ("-f", str(MULTI_USER_VALUES)),
    # the same, split into what a profile owner installs and what a cluster admin applies
    "tenant": ("-f", str(MULTI_USER_VALUES), "-f", str(CHART / "tenant-values.yaml")),
    "admin": ("-f", str(MULTI_USER_VALUES), "-f", str(CHART / "admin-values.yaml")),
    "external-db": (
        "--set", "postgresql.enabled=false", "--set", "externalDatabase.host=db.example.internal",
        "--set", "externalDatabase.password=pw", "--set", "s3.existingSecret=",
        "--set", "s3.accessKeyId=ak", "--set", "s3.secretAccessKey=sk",
    ),
}


def _tool(name: str) -> str | None:
    """The tool from .tools/bin, the venv running the tests, or PATH."""
    for folder in (ROOT / ".tools" / "bin", Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def _require(name: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"{name} not found in .tools/bin, the venv or PATH: run `bash .ci/cluster_tools.sh`")
    return path


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


@functools.cache
def _template_text(*args: str) -> str:
    result = _run(_require("helm"), "template", "intermix", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _render(*args: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_template_text(*args)) if doc]


def _template_error(*args: str) -> str:
    result = _run(_require("helm"), "template", "intermix", str(CHART), *args)
    assert result.returncode != 0, "rendering was expected to fail"
    return result.stderr


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(resource name, pod metadata, pod spec) of every workload and bare Pod."""
    specs = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            template = doc["spec"]["template"]
            specs.append((doc["metadata"]["name"], template["metadata"], template["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc["metadata"], doc["spec"]))
    return specs


# ---------------------------------------------------------------- Dockerfile


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", rest, re.IGNORECASE)
            current = match.group(1) if match else rest
            stages[current] = []
        stages[current].append((keyword, rest.strip()))
    return stages


def _stage_chain(stages: dict[str, list[tuple[str, str]]], name: str) -> list[str]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [name]
    while True:
        base = stages[chain[-1]][0][1].split()[0]
        if base not in stages:
            return chain
        chain.append(base)


def test_hadolint_passes() -> None:
    result = _run(_require("hadolint"), str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_cpu_and_cuda_targets_running_as_non_root() -> None:
    stages = _dockerfile_stages()
    for target in ("cpu", "cuda"):
        assert target in stages, f"no `FROM ... AS {target}` stage"
        users = [args for stage in _stage_chain(stages, target) for kw, args in stages[stage] if kw == "USER"]
        assert users, f"target {target} never sets USER"
        user = users[0].split(":")[0]
        assert user not in ("root", "0"), f"target {target} runs as {users[0]}"


def test_every_path_the_runtime_writes_is_under_tmp() -> None:
    """HOME, matplotlib's and torch.compile's caches: under /tmp, the one writable path of a read-only root
    filesystem, and named without a user lookup (a pod may run under a UID that has no passwd entry)."""
    stages = _dockerfile_stages()
    env = " ".join(args for kw, args in stages["runtime"] if kw == "ENV")
    for name in ("HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR"):
        match = re.search(rf"\b{name}=(\S+)", env)
        assert match and match.group(1).startswith("/tmp"), f"{name} is not set under /tmp in the runtime stage"


def _arg_default(stage: list[tuple[str, str]], name: str) -> str | None:
    for keyword, args in stage:
        if keyword == "ARG" and args.split("=", 1)[0] == name:
            return args.split("=", 1)[1].strip('"') if "=" in args else None
    return None


def test_dockerfile_pins_torch_and_every_pip_install() -> None:
    stages = _dockerfile_stages()
    # where torch comes from is a build argument; the defaults are the PyTorch indexes (CPU, the CUDA flavour's)
    indexes = {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "https://download.pytorch.org/whl/${CUDA_FLAVOUR}"}
    for target, venv in (("cpu", "venv-cpu"), ("cuda", "venv-cuda")):
        assert any(kw == "COPY" and f"--from={venv}" in args for kw, args in stages[target])
        installs = " ".join(args for kw, args in stages[venv] if kw == "RUN")
        assert "torch==2.11.0" in installs and "torchaudio==2.11.0" in installs, venv
        arg = f"TORCH_{target.upper()}_INDEX_URL"
        assert _arg_default(stages[venv], arg) == indexes[target], venv
        assert f'${{{arg}:+--index-url "${arg}"}}' in installs, venv  # empty: PyPI
        # everything else from the lock, unresolved, and the set proven consistent
        assert "--no-deps -r /wheels/requirements.lock" in installs and "/opt/venv/bin/pip check" in installs, venv
        assert any(kw == "COPY" and args == "docker/requirements.lock /wheels/requirements.lock" for kw, args in stages[venv])
    # the cuda build fails unless the installed torch is the CUDA_FLAVOUR build the tag will name
    cuda_run = " ".join(args for kw, args in stages["venv-cuda"] if kw == "RUN")
    assert "got = 'cu' + (torch.version.cuda" in cuda_run and "got == '${CUDA_FLAVOUR}'" in cuda_run
    for stage, instructions in stages.items():
        for keyword, args in instructions:
            for command in re.findall(r"pip install ([^&;]+)", args) if keyword == "RUN" else []:
                tokens = command.split()
                packages = [
                    t for i, t in enumerate(tokens)
                    if not t.startswith(("-", "$")) and not tokens[i - 1].endswith("-url")
                ]
                for package in packages:
                    package = package.strip("\"'")
                    pinned = "==" in package or package.endswith((".whl", "requirements.lock"))
                    assert pinned, f"{stage}: unpinned `{package}`"


def test_build_local_script_builds_both_targets_offline() -> None:
    script = (ROOT / "docker" / "build-local.sh").read_text()
    assert "debootstrap --variant=minbase" in script and "podman import" in script
    for flag in ("--build-arg PYTHON_IMAGE=", "--build-arg PIP_NO_INDEX=1", "--network none", "--runtime runc"):
        assert flag in script
    assert 'TARGETS="${TARGETS:-cpu cuda}"' in script
    result = _run("bash", "-n", str(ROOT / "docker" / "build-local.sh"))
    assert result.returncode == 0, result.stderr


def test_dockerfile_installs_nothing_at_run_time() -> None:
    for stage, instructions in _dockerfile_stages().items():
        for keyword, args in instructions:
            if keyword in ("CMD", "ENTRYPOINT"):
                assert "pip" not in args and "install" not in args, f"{stage}: {keyword} {args}"


def test_image_version_agrees_with_package_and_components() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", text, re.MULTILINE)
    assert 'org.opencontainers.image.version="${VERSION}"' in text
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.MULTILINE), "base not pinned"
    assert IMAGE_CPU.endswith(f":{__version__}-cpu") and IMAGE_GPU.endswith(f":{__version__}-cuda")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


def test_docs_build_and_push_the_tags_the_pipelines_use() -> None:
    docs = DOCS.read_text()
    # the names come from components.image (by their inputs), never typed by hand
    assert "eval \"$(.venv/bin/python -m components.image --shell)\"" in docs
    for target, variable in (("cpu", "IMAGE_CPU"), ("cuda", "IMAGE_GPU")):
        assert re.search(rf"docker buildx build [^\n]*--target {target}\b[^`]*--tag \"\${variable}\"", docs, re.S)
    assert '--build-arg VERSION="$VERSION"' in docs and '--build-arg GIT_COMMIT="$GIT_COMMIT"' in docs
    # the cuda image is built with the flavour its name carries
    assert re.search(r'docker buildx build [^\n]*--target cuda\b[^`]*--build-arg CUDA_FLAVOUR="\$CUDA_FLAVOUR"[^`]*'
                     r'--tag "\$IMAGE_GPU"', docs, re.S)
    assert IMAGE_REPOSITORY in docs and "--image-repository" in docs


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line[0] == "#"]
    assert lines[0] == "*", "allow-list expected: exclude everything, then re-include"
    for needed in ("pyproject.toml", "intermix_core/", "components/", "pipelines/"):
        assert f"!{needed}" in lines


# ---------------------------------------------------------------- chart: lint, schema, values


@pytest.mark.parametrize("values", [(), ("-f", str(GPU_VALUES)), ("-f", str(MULTI_USER_VALUES))],
                         ids=["default", "gpu", "multi-user"])
def test_helm_lint_strict(values: tuple[str, ...]) -> None:
    result = _run(_require("helm"), "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("render", RENDERS)
def test_rendered_manifests_validate_against_kubernetes_schemas(render: str) -> None:
    validate = _require("kubernetes-validate")
    docs = _render(*RENDERS[render])
    core = [d for d in docs if not d["apiVersion"].startswith(ISTIO_API)]
    result = _run(validate, "--strict", "-k", K8S_VERSION, "-", stdin=yaml.safe_dump_all(core))
    assert result.returncode == 0, result.stdout + result.stderr
    # an empty stream also "passes": count that every document was checked
    passed = len(re.findall(r"passed for resource", result.stdout + result.stderr))
    assert passed == len(core) > 0
    for doc in docs:
        if doc["apiVersion"].startswith(ISTIO_API):
            _validate_istio(doc)


ISTIO_API = "security.istio.io/"


def _validate_istio(doc: dict) -> None:
    """Validate an Istio resource against Istio's own API models (cloudcoil-models-istio, generated from
    the Istio CRDs), strictly: a field the model does not know is an error, not silently dropped."""
    models = pytest.importorskip("cloudcoil.models.istio.security.v1", reason="pip install cloudcoil-models-istio")
    model = getattr(models, doc["kind"])
    parsed = model.model_validate(doc)

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if v not in (None, {}, [])}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    assert strip(parsed.model_dump(by_alias=True, exclude_none=True, mode="json")) == strip(doc), doc["kind"]


@pytest.mark.parametrize("override", ["unknownKey=1", "mlflow.unknownKey=1", "mlflow.resources.limits.gpu=1"])
def test_schema_rejects_unknown_keys(override: str) -> None:
    assert "not allowed" in _template_error("--set", override)


def test_schema_is_closed_at_every_level() -> None:
    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties", True) is not True, f"{path} accepts any key"
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(json.loads((CHART / "values.schema.json").read_text()), "")


def test_every_value_is_documented() -> None:
    # children of these keys are one documented value (e.g. a resources block), as in helm-docs
    whole_values = {"resources", "securityContext", "nodeSelector", "tolerations", "annotations"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        # a plain group (`image:`) only holds documented keys; a whole value is documented itself
        is_group = line.rstrip().endswith(":") and key not in whole_values
        if not any(k in whole_values for _, k in parents) and not is_group:
            comment = []
            for above in reversed(lines[:number]):
                if not above.strip().startswith("#"):
                    break
                comment.append(above)
            assert any("# --" in c for c in comment), f"values.yaml:{number + 1} `{key}` has no `# --` comment"
        parents.append((indent, key))


# ---------------------------------------------------------------- chart: rendered templates


@pytest.mark.parametrize("render", RENDERS)
def test_every_container_is_non_root_read_only_and_bounded(render: str) -> None:
    for name, _, spec in _pod_specs(_render(*RENDERS[render])):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where


@pytest.mark.parametrize("render", RENDERS)
def test_servers_have_probes(render: str) -> None:
    for doc in _render(*RENDERS[render]):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert probe in container, f"{doc['metadata']['name']}/{container['name']} lacks {probe}"


@pytest.mark.parametrize("render", RENDERS)
def test_network_policies_cover_every_server(render: str) -> None:
    docs = _render(*RENDERS[render])
    selectors = [d["spec"]["podSelector"]["matchLabels"] for d in docs if d["kind"] == "NetworkPolicy"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(s.items() <= labels.items() for s in selectors), f"{doc['metadata']['name']} is unprotected"


def test_default_render_holds_no_secret() -> None:
    docs = _render()
    assert not [d for d in docs if d["kind"] == "Secret"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    secret_names = {values["s3"]["existingSecret"], values["postgresql"]["existingSecret"]}
    # the docs create exactly the Secrets the defaults reference
    for name in secret_names:
        assert re.search(rf"kubectl -n \S+ create secret generic {name}\b", DOCS.read_text()), name


def test_inline_credentials_become_secrets_the_pods_reference() -> None:
    docs = _render(*RENDERS["external-db"])
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets["intermix-s3"]["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(secrets["intermix-postgresql"]["stringData"]) == {"password"}
    assert not [d for d in docs if d["kind"] == "StatefulSet" and "postgresql" in d["metadata"]["name"]]
    referenced = set(re.findall(r"secretKeyRef:\s+name: (\S+)", _template_text(*RENDERS["external-db"])))
    assert referenced == set(secrets)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("s3.existingSecret=",), "s3.accessKeyId is required"),
        (("s3.existingSecret=", "s3.accessKeyId=a"), "s3.secretAccessKey is required"),
        (("postgresql.existingSecret=",), "postgresql.password is required"),
        (("postgresql.enabled=false",), "externalDatabase.host is required"),
        (("postgresql.enabled=false", "externalDatabase.host=db"), "externalDatabase.password is required"),
    ],
)
def test_missing_credentials_fail_with_a_clear_message(overrides: tuple[str, ...], message: str) -> None:
    args = [arg for override in overrides for arg in ("--set", override)]
    assert message in _template_error(*args)


def test_mlflow_server_command() -> None:
    deployment = next(d for d in _render() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["command"] + container["args"])
    assert command.startswith("mlflow server --backend-store-uri $(MLFLOW_BACKEND_STORE_URI)")
    assert "--artifacts-destination s3://intermix/mlflow --host 0.0.0.0 --port 5000" in command
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://mlflow:$(DB_PASSWORD)@intermix-postgresql:5432/mlflow"
    assert container["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"
    # MLflow rejects unknown Host headers: the in-cluster name the pipeline uses must be allowed
    assert f"intermix-mlflow.{NAMESPACE}.svc.cluster.local:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


@pytest.mark.parametrize("render", ["default", "gpu"])
def test_pipeline_configmap(render: str) -> None:
    docs = _render(*RENDERS[render])
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "intermix-mlflow")
    port = service["spec"]["ports"][0]["port"]
    assert data["MLFLOW_TRACKING_URI"] == f"http://intermix-mlflow.{NAMESPACE}.svc.cluster.local:{port}"
    assert data["INTERMIX_STORAGE_ROOT"] == ("s3://my-lab-intermix/intermix" if render == "gpu" else "s3://intermix/intermix")
    options = yaml.safe_load(data["cluster-options.yaml"])
    assert options["env"] == {k: v for k, v in data.items() if k != "cluster-options.yaml"}
    assert options["secret_env"] == {"intermix-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}
    gpu = yaml.safe_load(GPU_VALUES.read_text())["pipeline"]["gpu"] if render == "gpu" else {}
    assert options["gpu_type"] == "nvidia.com/gpu"
    assert options["node_selector"] == gpu.get("nodeSelector", {})
    assert options["tolerations"] == gpu.get("tolerations", [])


def test_a_store_key_secret_reaches_every_task_as_intermix_store_key() -> None:
    """pipeline.storeKeySecret: the signing key of the store's markers comes from a Secret, never from values."""
    docs = _render(*RENDERS["default"], "--set", "pipeline.storeKeySecret=intermix-store-key")
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    options = yaml.safe_load(data["cluster-options.yaml"])
    assert options["secret_env"]["intermix-store-key"] == ["INTERMIX_STORE_KEY"]
    assert "INTERMIX_STORE_KEY" not in data


def test_cluster_options_load_into_the_pipeline_model() -> None:
    """The ConfigMap's document is what pipelines.options.ClusterOptions accepts (it forbids unknown keys)."""
    options_module = pytest.importorskip("pipelines.options")
    data = next(d for d in _render(*RENDERS["gpu"]) if d["kind"] == "ConfigMap")["data"]
    options = options_module.ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
    assert options.gpus == 1 and options.max_gpus == 4 and options.cuda_version == "12.8"
    assert [t.key for t in options.gpu_tolerations()] == ["nvidia.com/gpu", "dedicated"]
    assert options.pack == 0 and options.gpu_memory_gib == 80  # fold packs sized to an 80 GiB GPU
    data = next(d for d in _render(*RENDERS["gpu"], "--set", "pipeline.gpu.memoryGib=24", "--set",
                                   "pipeline.gpu.foldsPerTask=2") if d["kind"] == "ConfigMap")["data"]
    options = options_module.ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
    assert options.pack == 2 and options.gpu_memory_gib == 24


# ---------------------------------------------------------------- chart: cluster hardening (issue 10)


def _workload_pods(docs: list[dict]) -> dict[str, dict]:
    """Component name -> pod template labels of the chart's workloads."""
    return {doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]:
            doc["spec"]["template"]["metadata"]["labels"]
            for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")}


def test_istio_policies_admit_sidecar_less_pipeline_pods() -> None:
    docs = _render(*RENDERS["multi-user"])
    pods = _workload_pods(docs)
    istio = [d for d in docs if d["apiVersion"].startswith(ISTIO_API)]
    (peer,) = [d for d in istio if d["kind"] == "PeerAuthentication"]
    assert peer["spec"]["mtls"]["mode"] == "PERMISSIVE"  # plaintext from pods without a sidecar is accepted
    assert all(peer["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels in pods.values())
    policies = {d["metadata"]["name"]: d["spec"] for d in istio if d["kind"] == "AuthorizationPolicy"}
    assert set(policies) == {"intermix-mlflow", "intermix-s3", "intermix-postgresql"}
    for name, spec in policies.items():
        assert spec["action"] == "ALLOW"
        # each policy selects exactly its own server
        assert [c for c, labels in pods.items() if spec["selector"]["matchLabels"].items() <= labels.items()] == [name.split("-", 1)[1]]
    assert policies["intermix-mlflow"]["rules"] == [{"to": [{"operation": {"ports": ["5000"]}}]}]
    service_account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    assert policies["intermix-postgresql"]["rules"] == [{
        "from": [{"source": {"principals": [f"cluster.local/ns/{NAMESPACE}/sa/{service_account}"]}}],
        "to": [{"operation": {"ports": ["5432"]}}],
    }]
    assert policies["intermix-s3"]["rules"] == [{"to": [{"operation": {"ports": ["8333"]}}]}]
    # an external S3 needs no policy here; without istio.enabled nothing Istio is rendered
    external = _render("-f", str(MULTI_USER_VALUES), "--set", "s3.enabled=false", "--set", "s3.endpoint=https://s3.example.org")
    assert "intermix-s3" not in {d["metadata"]["name"] for d in external if d["kind"] == "AuthorizationPolicy"}
    assert not [d for d in _render() if d["apiVersion"].startswith(ISTIO_API)]


# what a Kubeflow profile owner may create in their namespace (kubeflow/manifests common/kubeflow-roles,
# kubeflow-edit): no cluster-scoped object, no ResourceQuota, no Istio security policy
TENANT_KINDS = {"ConfigMap", "Deployment", "StatefulSet", "Service", "Secret", "ServiceAccount", "NetworkPolicy",
                "PersistentVolumeClaim", "Pod"}
ADMIN_KINDS = {"PersistentVolume", "ResourceQuota", "PeerAuthentication", "AuthorizationPolicy"}


def test_the_tenant_part_needs_no_cluster_admin_and_the_admin_part_completes_it() -> None:
    """A profile owner's `helm install` with tenant-values.yaml renders only namespaced objects a profile may create;
    the admin part renders the rest; together they are the whole chart, names and all."""
    def key(doc: dict) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    whole = {key(d) for d in _render(*RENDERS["multi-user"])}
    tenant, admin = _render(*RENDERS["tenant"]), _render(*RENDERS["admin"])
    assert {d["kind"] for d in tenant} <= TENANT_KINDS
    assert not [d for d in tenant if d["apiVersion"].startswith(ISTIO_API)]
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in tenant if d["kind"] != "Pod") and tenant
    assert {d["kind"] for d in admin} == ADMIN_KINDS  # the multi-user example has all four
    assert {key(d) for d in tenant} | {key(d) for d in admin} == whole
    assert not {key(d) for d in tenant} & {key(d) for d in admin}
    # the admin's volume is bound to the tenant's claim
    (volume,) = [d for d in admin if d["kind"] == "PersistentVolume"]
    (claim,) = [d for d in tenant if d["kind"] == "PersistentVolumeClaim"]
    assert volume["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": claim["metadata"]["name"]}
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"]


def test_istio_without_native_sidecars_neither_blocks_mlflow_nor_the_helm_test() -> None:
    """Kubeflow 1.9's Istio 1.22 starts sidecars as plain containers: an init container's traffic would go to an
    Envoy not yet running, and a test pod's sidecar would keep it from completing."""
    def mlflow_pod(docs: list[dict]) -> dict:
        return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "intermix-mlflow")

    docs = _render(*RENDERS["multi-user"])
    (init,) = mlflow_pod(docs)["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "wait-for-database" and init["securityContext"]["runAsUser"] == 1337  # not redirected
    (server,) = mlflow_pod(docs)["spec"]["template"]["spec"]["containers"]
    assert "runAsUser" not in server.get("securityContext", {}) or server["securityContext"]["runAsUser"] != 1337
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert test_pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    # without Istio neither is there
    plain = _render()
    assert "runAsUser" not in mlflow_pod(plain)["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]
    assert "sidecar.istio.io/inject" not in next(d for d in plain if d["kind"] == "Pod")["metadata"].get("annotations", {})


def test_pod_labels_and_annotations_on_every_chart_pod() -> None:
    values = yaml.safe_load(MULTI_USER_VALUES.read_text())
    specs = _pod_specs(_render(*RENDERS["multi-user"]))
    assert {name for name, _, _ in specs} >= {"intermix-mlflow", "intermix-postgresql", "intermix-test"}
    for name, meta, _ in specs:
        assert values["podLabels"].items() <= meta["labels"].items(), name
        assert values["podAnnotations"].items() <= meta.get("annotations", {}).items(), name
    for _, meta, _ in _pod_specs(_render()):
        assert "team" not in meta["labels"] and "example.org/owner" not in meta.get("annotations", {})


@pytest.mark.parametrize("component", ["s3", "postgresql"])
def test_statefulsets_are_governed_by_headless_services(component: str) -> None:
    docs = _render()
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == f"intermix-{component}")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_seaweedfs_is_sized_for_the_paper_grid() -> None:
    docs = _render()
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "intermix-s3")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert "-s3.concurrentUploadLimitMB=2048" in container["args"]  # uploads queue instead of exhausting memory
    limits = container["resources"]["limits"]
    assert _quantity(limits["memory"]) > 2048 * 2**20 and _quantity(limits["cpu"]) >= 2
    # ~170 GB of checkpoints + prepared datasets (docs/cluster.md, sizing)
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert _quantity(claim) >= 200 * 2**30


def _quantity(text: str) -> float:
    from pipelines.options import quantity_value

    return quantity_value(str(text))


@pytest.mark.parametrize("render", ["default", "multi-user"])
def test_task_resources_and_fan_out_reach_the_pipeline(render: str) -> None:
    from pipelines.options import ClusterOptions

    values = yaml.safe_load((CHART / "values.yaml").read_text())["pipeline"]
    data = next(d for d in _render(*RENDERS[render]) if d["kind"] == "ConfigMap")["data"]
    options = ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
    for kind, res in values["resources"].items():
        got = options.resources[kind]
        assert (got.cpu_request, got.cpu_limit, got.memory_request, got.memory_limit, got.scratch) == (
            res["cpuRequest"], res["cpuLimit"], res["memoryRequest"], res["memoryLimit"], res["scratch"])
    assert options.parallelism == values["parallelism"] == 0  # no per-loop cap: the GPU budget decides
    assert options.max_gpus == (16 if render == "multi-user" else values["gpu"]["max"])
    assert (options.retries, options.retry_backoff, options.retry_max_duration) == (2, "60s", None)
    if render == "multi-user":
        assert options.image_repository == "registry.example.org/lab/intermix"
        assert options.pod_labels == {"team": "audio-ml"}
        # the pipelines log in to MLflow with the auth Secret's account
        assert options.secret_env["intermix-mlflow-auth"] == ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
        assert options.data_cache_pvc == "intermix-data-cache" and options.data_cache_max_gb == 150


def test_data_cache_is_a_hostpath_volume_bound_to_one_claim() -> None:
    docs = _render(*RENDERS["multi-user"])
    (pv,) = [d for d in docs if d["kind"] == "PersistentVolume"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    # one folder per namespace: pods of another profile (the same uid 10001) never see this one's datasets
    assert pv["spec"]["hostPath"] == {"path": f"/var/lib/intermix-cache/{NAMESPACE}", "type": "DirectoryOrCreate"}
    other = _render(*RENDERS["multi-user"], "--namespace", "kubeflow-user-b")  # the later --namespace wins
    (pv_b,) = [d for d in other if d["kind"] == "PersistentVolume"]
    assert pv_b["spec"]["hostPath"]["path"] == "/var/lib/intermix-cache/kubeflow-user-b" != pv["spec"]["hostPath"]["path"]
    assert "nodeAffinity" not in pv["spec"]  # every pod mounts its own node's folder
    assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": pvc["metadata"]["name"]}
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"] and NAMESPACE in pv["metadata"]["name"]
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_gpu_quota_limits_only_the_gpu_resource() -> None:
    (quota,) = [d for d in _render(*RENDERS["multi-user"]) if d["kind"] == "ResourceQuota"]
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "16"}  # no CPU/memory: KFP's driver pods have no requests
    assert not [d for d in _render("--set", "pipeline.gpu.quota=false") if d["kind"] == "ResourceQuota"]
    assert not [d for d in _render("--set", "pipeline.gpu.max=0") if d["kind"] == "ResourceQuota"]


@pytest.mark.parametrize("gpus", [8, 144])
def test_the_quota_and_the_compiled_fan_out_come_from_one_number(gpus: int, tmp_path: Path) -> None:
    """pipeline.gpu.max renders the namespace's GPU quota and the compiler's budget; the compiled paper grid's
    loops start at most that many GPU tasks once the budget covers its loops (below it the quota holds
    the excess, and the retry windows count the wait: test_pipeline_compile.py)."""
    from intermix_core.config.grid import load_grid, shards
    from pipelines.grid_pipeline import compile_grid
    from pipelines.options import DEFAULT_MAX_GPUS, ClusterOptions

    assert yaml.safe_load((CHART / "values.yaml").read_text())["pipeline"]["gpu"]["max"] == DEFAULT_MAX_GPUS
    docs = _render("--set", f"pipeline.gpu.max={gpus}")
    (quota,) = [d for d in docs if d["kind"] == "ResourceQuota"]
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    options = ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
    assert int(quota["spec"]["hard"]["requests.nvidia.com/gpu"]) == options.max_gpus == gpus
    limits = []
    for path in compile_grid(load_grid("paper"), tmp_path, options):
        spec = yaml.safe_load(path.read_text().split("\n---\n")[0])
        limits += [t["iteratorPolicy"]["parallelismLimit"] for c in spec["components"].values() if "dag" in c
                   for t in c["dag"]["tasks"].values() if "parameterIterator" in t]
    loops = sum(len(sh.configs) for sh in shards(load_grid("paper")))  # one fold loop per strategy of each shard
    # GPU tasks: one per fold pack (by default a cell's folds all fit in an 80 GiB GPU: one per loop)
    tasks = sum(len(options.packs(cfg, sh.folds)) for sh in shards(load_grid("paper")) for cfg in sh.configs.values())
    assert len(limits) == loops == 78 and sum(limits) == max(min(gpus, tasks), loops) and min(limits) >= 1


def test_gpu_tasks_rely_on_the_gpu_resource_and_tolerate_its_taint(tmp_path: Path) -> None:
    """The default values place GPU tasks by the nvidia.com/gpu request alone (no node label a managed pool may
    lack) and tolerate the nvidia.com/gpu:NoSchedule taint; the values' examples keep that."""
    from intermix_core.config.grid import load_grid
    from pipelines.grid_pipeline import compile_grid
    from pipelines.options import ClusterOptions

    for render in ("default", "gpu", "multi-user"):
        data = next(d for d in _render(*RENDERS[render]) if d["kind"] == "ConfigMap")["data"]
        options = ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
        assert options.node_selector == {} and options.gpu_taint_toleration, render
        path = compile_grid(load_grid("demo"), tmp_path / render, options)[0]
        platform = list(yaml.safe_load_all(path.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, executor in platform.items():
            gpu = name.startswith(("exec-train-fold", "exec-fgsm-attack", "exec-train-pack", "exec-fgsm-pack"))
            assert "nodeSelector" not in executor, name
            tolerations = executor.get("tolerations", [])
            assert ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations) == gpu, name
    assert "nvidia.com/gpu.present" not in GPU_VALUES.read_text().split("#")[0]  # no GPU Operator label required


def test_the_cuda_choices_of_the_chart_are_the_images() -> None:
    from intermix_core.method.devices import CUDA_BUILDS, DEFAULT_CUDA

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["pipeline"]["properties"]["image"]["properties"]["cuda"]["enum"] == list(CUDA_BUILDS)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["pipeline"]["image"]["cuda"] == DEFAULT_CUDA


def test_mlflow_auth_takes_its_accounts_from_the_secret() -> None:
    deployment = next(d for d in _render(*RENDERS["multi-user"]) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_TRACKING_USERNAME"),
                      ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "intermix-mlflow-auth", "key": key}
    script = container["args"][0]
    assert "exec mlflow server --app-name basic-auth" in script and "$MLFLOW_AUTH_CONFIG_PATH" in script
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/tmp/")  # the writable emptyDir


def test_mlflow_auth_start_script_runs(tmp_path: Path) -> None:
    """The rendered start script, run for real (sqlite instead of PostgreSQL, a free port): the server
    comes up behind basic auth, /health stays open for the probes, the Secret's account logs in."""
    import base64
    import os
    import signal
    import urllib.error
    import urllib.request

    from servers import free_ports

    deployment = next(d for d in _render(*RENDERS["multi-user"]) if d["kind"] == "Deployment")
    script = deployment["spec"]["template"]["spec"]["containers"][0]["args"][0]
    (port,) = free_ports(1)
    script = script.replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}").replace('"2"', '"1"')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
           "AUTH_DEFAULT_PERMISSION": "READ", "MLFLOW_AUTH_ADMIN_USERNAME": "pipelines",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-test-password-1", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "HOME": str(tmp_path)}
    proc = subprocess.Popen(["/bin/sh", "-ec", script], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=open(tmp_path / "log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "log").read_text()[-3000:])
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(api, timeout=10)
        assert denied.value.code == 401
        token = base64.b64encode(b"pipelines:a-long-test-password-1").decode()
        with urllib.request.urlopen(urllib.request.Request(api, headers={"Authorization": f"Basic {token}"}), timeout=10) as r:
            assert r.status == 200
        assert (tmp_path / "auth.ini").stat().st_mode & 0o077 == 0  # written with umask 077
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
