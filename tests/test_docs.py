"""The docs stand alone: every relative link and every repository path they name exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("docker/*.md"), *ROOT.glob("charts/*/README.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# `intermix_core/method/train.py`, `docs/method.md`, `tests/unit/method/test_bank.py`, `scripts/gpu_study.sh`, `charts/intermix/values.yaml` ...
REPO_PATH = re.compile(
    r"`((?:intermix_core|pipelines|components|docs|tests|benchmarks|scripts|docker|charts|\.ci)/[\w./-]+?)(?::\w+)?`"
)


def _anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_resolve(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text and "REFERENCE.md" not in text and "DESIGN.md" not in text, (
        f"{doc.name} points outside the repository")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name}: link {target} -> {resolved} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved.read_text()), f"{doc.name}: no heading #{anchor} in {resolved.name}"
    for path in REPO_PATH.findall(text):
        if "*" in path or "<" in path:
            continue
        assert (ROOT / path.rstrip("/")).exists(), f"{doc.name}: names {path}, which is not in the repository"


def test_every_doc_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ROOT.glob("docs/*.md"):
        assert f"docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"


def test_the_readme_names_every_package_and_benchmark() -> None:
    """README's "What is where" matches the tree: every package of intermix_core and every benchmark is named."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What is where"):readme.index("## The method in one table")]
    packages = [p for p in (ROOT / "intermix_core").iterdir() if (p / "__init__.py").is_file()]
    assert len(packages) >= 9
    for package in packages:
        assert f"`intermix_core/{package.name}/`" in section, f"README.md does not name intermix_core/{package.name}/"
    for bench in (ROOT / "benchmarks").glob("*.py"):
        assert f"`benchmarks/{bench.name}`" in section, f"README.md does not name benchmarks/{bench.name}"


def test_the_readme_cluster_block_fits_the_chart_and_the_cli() -> None:
    """README "## Cluster": one namespace for the chart, its Secrets and its ConfigMap (where KFP runs the pipeline
    pods); the store it names is the chart's default bucket and prefix; every `intermix` line parses as written;
    the rerun section of docs/cluster.md names --from-scratch (the old --restart is only mentioned as such)."""
    import shlex

    import yaml

    from pipelines.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Cluster"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    assert "export NAMESPACE=kubeflow" in block and "create namespace" not in block
    for line in lines:
        if line.startswith(("kubectl", "helm")) and "svc/ml-pipeline-ui" not in line:
            assert '-n "$NAMESPACE"' in line, line  # the chart's objects: only visible in the pipeline pods' namespace
    values = yaml.safe_load((ROOT / "charts/intermix/values.yaml").read_text())
    store = f"s3://{values['s3']['bucket']}/{values['pipeline']['dataPrefix']}"
    parser = build_parser()
    commands = [line.split("#")[0] for line in lines if line.startswith("intermix ")]
    assert len(commands) == 4
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # parses: no typo, no removed flag
        if getattr(args, "store", None):
            assert args.store == store, command
    assert "pipeline.image.repository=\"$IMAGE_REPOSITORY\"" in block and '--repository="$IMAGE_REPOSITORY"' in block
    rerun = (ROOT / "docs/cluster.md").read_text().split("## 7. Rerun one fold")[1].split("## 8.")[0]
    assert "--from-scratch" in rerun and rerun.count("--restart") == 1  # "the old spelling, still accepted"
