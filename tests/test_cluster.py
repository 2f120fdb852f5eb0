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
from pathlib import Path

import pytest
import yaml

from components.image import IMAGE_CPU, IMAGE_GPU
from intermix_core import __version__

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "intermix"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCS = ROOT / "docs" / "cluster.md"
K8S_VERSION = "1.33.0"
NAMESPACE = "kubeflow"

# value sets the chart must render for: defaults, the GPU example, and an external database with
# chart-created Secrets (credentials passed with --set, as docs/cluster.md shows)
RENDERS = {
    "default": (),
    "gpu": ("-f", str(GPU_VALUES)),
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


def test_dockerfile_pins_torch_and_every_pip_install() -> None:
    stages = _dockerfile_stages()
    for target, venv in (("cpu", "venv-cpu"), ("cuda", "venv-cuda")):
        assert any(kw == "COPY" and f"--from={venv}" in args for kw, args in stages[target])
        installs = " ".join(args for kw, args in stages[venv] if kw == "RUN")
        assert "torch==2.11.0" in installs and "torchaudio==2.11.0" in installs, venv
        cpu_index = "--index-url https://download.pytorch.org/whl/cpu" in installs
        assert cpu_index == (target == "cpu"), f"{venv}: torch index is wrong for the {target} target"
    for stage, instructions in stages.items():
        for keyword, args in instructions:
            for command in re.findall(r"pip install ([^&;]+)", args) if keyword == "RUN" else []:
                tokens = command.split()
                packages = [
                    t for i, t in enumerate(tokens)
                    if not t.startswith("-") and not tokens[i - 1].endswith("-url")
                ]
                for package in packages:
                    package = package.strip("\"'")
                    assert "==" in package or package.endswith(".whl"), f"{stage}: unpinned `{package}`"


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


def test_docs_build_and_push_the_tags_the_components_use() -> None:
    docs = DOCS.read_text()
    assert IMAGE_CPU in docs and IMAGE_GPU in docs
    for target, variable in (("cpu", "IMAGE_CPU"), ("cuda", "IMAGE_GPU")):
        assert re.search(rf"docker buildx build [^\n]*--target {target}\b[^`]*--tag \"\${variable}\"", docs, re.S)
        assert f"from components.image import {variable}" in docs
    assert "--build-arg VERSION=" in docs


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line[0] == "#"]
    assert lines[0] == "*", "allow-list expected: exclude everything, then re-include"
    for needed in ("pyproject.toml", "intermix_core/", "components/", "pipelines/"):
        assert f"!{needed}" in lines


# ---------------------------------------------------------------- chart: lint, schema, values


@pytest.mark.parametrize("values", [(), ("-f", str(GPU_VALUES))], ids=["default", "gpu"])
def test_helm_lint_strict(values: tuple[str, ...]) -> None:
    result = _run(_require("helm"), "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("render", RENDERS)
def test_rendered_manifests_validate_against_kubernetes_schemas(render: str) -> None:
    validate = _require("kubernetes-validate")
    text = _template_text(*RENDERS[render])
    result = _run(validate, "--strict", "-k", K8S_VERSION, "-", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    # an empty stream also "passes": count that every document was checked
    passed = len(re.findall(r"passed for resource", result.stdout + result.stderr))
    assert passed == len(_render(*RENDERS[render])) > 0


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


def test_cluster_options_load_into_the_pipeline_model() -> None:
    """The ConfigMap's document is what pipelines.options.ClusterOptions accepts (it forbids unknown keys)."""
    options_module = pytest.importorskip("pipelines.options")
    data = next(d for d in _render(*RENDERS["gpu"]) if d["kind"] == "ConfigMap")["data"]
    options = options_module.ClusterOptions.model_validate(yaml.safe_load(data["cluster-options.yaml"]))
    assert options.gpus == 1 and options.tolerations[0].key == "nvidia.com/gpu"
