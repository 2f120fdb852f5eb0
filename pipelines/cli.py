# PYTHON_ARGCOMPLETE_OK  (shell completion through argcomplete, when installed: docs/pipelines.md)
"""`intermix`: prepare data, train/attack one fold, run a grid locally or on Kubeflow, watch it, read its report, rerun a fold.

User mistakes (a bad grid or config, a missing file, an unknown name) print one line per problem
naming the file/field/value and exit with status 2; a failed run exits with 1.
"""

import argparse
import difflib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from intermix_core import __version__
from intermix_core.common.redact import redact_uris
from intermix_core.common.text import cut
from intermix_core.config import DATASETS, ON_SILENT, STRATEGIES
from intermix_core.config.grid import packaged_grids
from pipelines.workdir import DEFAULT_WORKDIR

try:  # shell completion is optional (pip install 'intermix[completion]'); without it the CLI is the same
    import argcomplete
except ImportError:
    argcomplete = None

EXAMPLES = """examples:
  intermix run                                   # the demo grid, locally; prints the report to open
  intermix status                                # each fold of the demo grid: done, running, failed, ...
  intermix results                               # aggregate again: tables and report.html
  intermix rerun demo --dataset esc10 --setup m18 --strategy bc --fold 2
  intermix config demo --strategy intermix       # the resolved configuration of a cell, as YAML
  intermix show paper                            # grid id, cells and KFP runs of the paper grid
  intermix estimate paper                        # training samples and device-hours of the paper grid
  intermix compile paper -o compiled/            # one IR YAML per dataset x setup
  intermix submit paper --host https://kfp.example.org --store s3://bucket/intermix \\
      --tracking-uri http://mlflow:5000 --source esc10=s3://bucket/raw/ESC-50 ...
  intermix status paper --store s3://bucket/intermix --tracking-uri http://mlflow:5000 --host https://kfp.example.org

GRID is the same everywhere: a grid file, a packaged grid (demo, gpu-study, official, paper, sensitivity; default demo) or, where
a store is read (results, rerun, status), the id of a grid saved there (e.g. demo-0123456789).
"""
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
# the module of each subcommand by what it imports (every other one: pipelines.commands, which loads everything):
# prepare and study need torch but no MLflow or kfp (a bare GPU machine); show, config and estimate only read grid
# files; status reads the store and MLflow (kfp only with --host)
COMMAND_MODULES = {"cmd_prepare": "pipelines.local_commands", "cmd_study": "pipelines.local_commands",
                   "cmd_show": "pipelines.plan_commands", "cmd_config": "pipelines.plan_commands",
                   "cmd_estimate": "pipelines.plan_commands", "cmd_status": "pipelines.status_command"}


# ------------------------------------------------------------------------------------------ parser


def did_you_mean(word: str, choices: list[str], cutoff: float = 0.6) -> str:
    """'; did you mean status?' for a word close to one of `choices`, else ''."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]}?" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (no usage block), a suggestion for a typo, and where help is."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message>[; did you mean X?] (<prog> --help: the usage)` and exit 2."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # argparse quotes each choice ('a', 'b'), or our own --device message lists them plainly
            choices = [c.strip(" '") for c in re.split(r", | or ", choice.group(2))]
            hint = did_you_mean(choice.group(1), choices)
            if hint and len(choices) > 6:  # a long list (the subcommands): the suggestion instead of the list
                message = message[:choice.start(2) - len(" (choose from ")] + hint
            else:
                message += hint
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help`: the usage)\n")

    def unknown_options(self, extra: list[str]) -> NoReturn:
        """The usage error for arguments no parser took, each unknown --flag with its nearest flag of this command."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hints = [did_you_mean(e.split("=")[0], flags, cutoff=0.75)[2:] for e in extra if e.startswith("--")]
        self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {h}" for h in hints if h))


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


GRID_HELP = f"grid file, or a packaged grid: {', '.join(packaged_grids())} (default: demo)"
GRID_ID_HELP = GRID_HELP[:-len(" (default: demo)")] + ", or the id of a grid saved in the store (default: demo)"


def complete_grid(prefix: str, **_: object) -> list[str]:
    """Shell completion of GRID: the packaged grids and the grid files (*.yaml, *.yml) under the typed folder."""
    head = prefix[:prefix.rfind("/") + 1]  # the folder as typed ('' for the current one)
    folder = Path(head or ".")
    files = sorted(head + p.name + ("/" if p.is_dir() else "") for p in (folder.iterdir() if folder.is_dir() else [])
                   if p.is_dir() or p.suffix in (".yaml", ".yml"))
    return [g for g in packaged_grids() + files if g.startswith(prefix)]


def _grid_args(p: argparse.ArgumentParser, ids: bool = False, name: bool = True) -> None:
    p.add_argument("grid_pos", nargs="?", metavar="GRID",
                   help=GRID_ID_HELP if ids else GRID_HELP).completer = complete_grid  # type: ignore[attr-defined]
    p.add_argument("--grid", help="the same as GRID").completer = complete_grid  # type: ignore[attr-defined]
    if ids:
        p.add_argument("--grid-id", help="the same as GRID, for a grid id (kept for older scripts)")
    if name:
        p.add_argument("--name", help="grid name to use instead of the file's (it is part of the grid id)")


def device(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N (anything else is a usage error naming the choices)."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {DEVICE_CHOICES})")


def complete_device(prefix: str, **_: object) -> list[str]:
    """Shell completion of --device."""
    return [d for d in ("auto", "cpu", "cuda", "cuda:0") if d.startswith(prefix)]


def _device_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", type=device, default=default, metavar="{auto,cpu,cuda,cuda:N}",
                   help="where to train or attack: auto (default: cuda when usable, else cpu), cpu, cuda or cuda:N; "
                   "an explicit cuda that is not usable is an error").completer = complete_device  # type: ignore[attr-defined]


FROM_SCRATCH_HELP = ("discard the fold's checkpoint and result (in its folder and in the store) and train it from epoch 1; "
                     "without it an unfinished fold resumes from its newest checkpoint and a finished one is not "
                     "trained again")


def _from_scratch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-scratch", action="store_true", help=FROM_SCRATCH_HELP)
    p.add_argument("--restart", action="store_true", dest="restart_old", help=argparse.SUPPRESS)  # the old spelling


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text (for scripts)")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", metavar="DATASET=LOCATION",
                   help="raw data of a dataset: a folder, an s3:// URI or 'demo' (repeatable; overrides the grid's sources)")
    _on_silent_arg(p, None)


def _on_silent_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--on-silent", choices=ON_SILENT, default=default,
                   help="a clip whose every sample is zero: keep it as zeros with one warning (default), leave it out, "
                   "or stop with an error; listed in the preparation's manifest" +
                   ("" if default else " (overrides the grid's on_silent)"))


def _local_args(p: argparse.ArgumentParser, servers: bool = True) -> None:
    p.add_argument("--workdir", default=_env("INTERMIX_WORKDIR", DEFAULT_WORKDIR),
                   help="local work directory: store, MLflow, KFP outputs, logs (default: ./intermix-work, env INTERMIX_WORKDIR)")
    if servers:  # rerun has them from _kfp_args, with the same local meaning
        p.add_argument("--store", help="grid store: a folder or s3://bucket/prefix (default: <workdir>/store; S3 endpoint "
                       "and credentials from INTERMIX_S3_ENDPOINT_URL / AWS_* as elsewhere)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://mlflow:5000 (default: MLFLOW_TRACKING_URI, "
                       "else sqlite in <workdir>)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="stream the local runner's task logs instead of a progress bar")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster placement (compiled into the pipeline; ignored by the local runner)")
    g.add_argument("--cluster-options", metavar="FILE", help="ClusterOptions YAML, e.g. cluster-options.yaml of the Helm "
                   "chart's ConfigMap (flags below add to / override it; its env also gives --store, --tracking-uri)")
    g.add_argument("--gpu-type", help="accelerator resource of train/FGSM tasks (default: nvidia.com/gpu)")
    g.add_argument("--gpus", type=int, help="GPUs per train/FGSM task; 0 for CPU-only nodes (default: 1)")
    g.add_argument("--node-selector", action="append", metavar="KEY=VALUE", help="node selector of GPU tasks (repeatable)")
    g.add_argument("--toleration", action="append", metavar="KEY[=VALUE][:EFFECT]", help="toleration of GPU tasks (repeatable)")
    g.add_argument("--retries", type=int, help="retries of a failed task (default: 2)")
    g.add_argument("--retry-max-duration", metavar="DURATION", help="how long after a task's first start it may "
                   "still be retried, e.g. 72h (default: from each task's expected duration)")
    g.add_argument("--max-gpus", type=int, help="GPUs the whole grid may use at once, split into fold-loop "
                   "parallelism (default: 8; 0: no bound; the chart's GPU quota takes the same number)")
    g.add_argument("--parallelism", type=int, help="at most this many tasks (folds or packs) at once per strategy loop, "
                   "on top of --max-gpus (default: 0, no such cap)")
    g.add_argument("--pack", type=int, metavar="K", help="folds of a cell each GPU task trains as one fold pack (default "
                   "0: as many as fit in one GPU's memory, --gpu-memory-gib; 1 on CPU tasks)")
    g.add_argument("--gpu-memory-gib", type=float, metavar="GIB", help="memory of one GPU, sizing the default packs "
                   "(default: 80, an H100; 16 for a T4, 24 for an A10)")
    g.add_argument("--cpu-limit", help="CPU limit of train/FGSM tasks, e.g. 8")
    g.add_argument("--memory-limit", help="memory request and limit of train/FGSM tasks, e.g. 32Gi")
    g.add_argument("--image-repository", help="repository of the intermix images (default: ghcr.io/intermix-project/intermix)")
    g.add_argument("--image-tag", help="image tag prefix instead of <version>-<hash of the image inputs>: "
                   "<TAG>-cpu, <TAG>-cuda<CUDA>")
    g.add_argument("--cuda", dest="cuda_version", help="CUDA build of the cuda image: 12.6, 12.8 or 13.0 "
                   "(default: 12.8; docs/cluster.md, driver matrix)")
    g.add_argument("--image-digest", action="append", metavar="TARGET=sha256:DIGEST",
                   help="pin the cpu or cuda image by digest (repeatable)")
    g.add_argument("--no-exit-handler", action="store_true", help="aggregate as a plain last task (only after every "
                   "fold succeeded) instead of an exit handler; `intermix results` gives the tables either way")
    g.add_argument("--secret-env", action="append", metavar="SECRET:KEY[,KEY]", help="expose Secret keys as env vars on every task (repeatable)")
    g.add_argument("--env", action="append", metavar="NAME=VALUE", help="env var on every task, e.g. MLFLOW_S3_ENDPOINT_URL=... (repeatable)")


def _kfp_args(p: argparse.ArgumentParser, required_host: bool) -> None:
    g = p.add_argument_group("Kubeflow Pipelines endpoint")
    g.add_argument("--host", default=_env("KFP_HOST"), help="KFP API URL, e.g. https://kfp.example.org/pipeline (env KFP_HOST)"
                   + ("" if required_host else "; without it the rerun runs locally"))
    g.add_argument("--namespace", default=_env("KFP_NAMESPACE"), help="Kubernetes namespace of a multi-user KFP (env KFP_NAMESPACE)")
    g.add_argument("--existing-token", default=_env("KFP_EXISTING_TOKEN"), help="bearer token for the KFP API (env KFP_EXISTING_TOKEN)")
    g.add_argument("--cookies", default=_env("KFP_COOKIES"), help="session cookies for a KFP behind a login, e.g. "
                   "'oauth2_proxy_kubeflow=...' (env KFP_COOKIES)")
    g.add_argument("--skip-version-check", action="store_true",
                   help="submit even to a KFP backend older than intermix supports, below 2.5.0 (it warns instead of refusing)")
    g.add_argument("--skip-image-check", action="store_true",
                   help="do not ask the registries whether the images exist (e.g. one only the cluster can reach)")
    g.add_argument("--ssl-ca-cert", default=_env("KFP_SSL_CA_CERT"), help="CA bundle to verify the KFP endpoint (env KFP_SSL_CA_CERT)")
    g.add_argument("--experiment", default=_env("KFP_EXPERIMENT"), help="KFP experiment (default: the grid id; env KFP_EXPERIMENT)")
    g.add_argument("--service-account", help="Kubernetes service account of the runs")
    g.add_argument("--store", help="grid store the tasks use, s3://bucket/prefix (default: INTERMIX_STORAGE_ROOT "
                   "from --cluster-options, else from this shell; locally: <workdir>/store)")
    g.add_argument("--tracking-uri", help="MLflow URI as the tasks reach it (default: MLFLOW_TRACKING_URI from "
                   "--cluster-options; this shell's is not used, it is often a port-forward; locally: "
                   "MLFLOW_TRACKING_URI, else sqlite in <workdir>)")


def _fold_cell_args(p: argparse.ArgumentParser, in_grid: bool = False) -> None:
    p.add_argument("--dataset", choices=list(DATASETS), help="dataset" + (" of the grid" if in_grid else ""))
    p.add_argument("--model", help="the setup named after this model, else the only setup using it" if in_grid else
                   "model name, e.g. envnet_v2 (an unknown name is rejected with the list of models)")
    p.add_argument("--strategy", choices=list(STRATEGIES), help="strategy preset")
    p.add_argument("--setup", help="setup of the grid (a row of the tables)" if in_grid else
                   "setup label in tables (default: the model name)")


def build_parser() -> argparse.ArgumentParser:
    """The `intermix` argument parser."""
    parser = Parser(prog="intermix", description=__doc__.splitlines()[0],
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"intermix {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="prepare a raw dataset into per-fold arrays")
    p.add_argument("--dataset", required=True, choices=list(DATASETS), help="which dataset the raw data is")
    p.add_argument("--source", required=True, help="raw dataset: a folder (ESC-50 / UrbanSound8K layout), s3:// URI, or 'demo'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="take the sample rate of this model")
    p.add_argument("--sample-rate", type=int, help="sample rate in Hz")
    _on_silent_arg(p, "keep")
    p.set_defaults(func="cmd_prepare")

    p = sub.add_parser("train", help="train one fold")
    p.add_argument("--config", help="ExperimentConfig YAML (optional; flags below override it)")
    _fold_cell_args(p)
    p.add_argument("--seed", type=int, help="random seed of the run (default: 0); each fold derives its own from it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. optim.epochs=2 (repeatable)")
    p.add_argument("--data", help="prepared dataset folder (from `intermix prepare`); required unless --print-config")
    p.add_argument("--fold", type=int, nargs="+", help="test fold (the others train); several: one pack, trained as one "
                   "fused model, each fold in OUT/fold<N>/; required unless --print-config")
    p.add_argument("--out", help="output folder: checkpoint.pt, result.json (resumes from a checkpoint there; with "
                   "several folds, one folder per fold in it); required unless --print-config")
    _from_scratch_arg(p)
    p.add_argument("--print-config", "--cfg", action="store_true",
                   help="print the resolved configuration as YAML and exit without training (Hydra's --cfg job)")
    p.set_defaults(func="cmd_train")

    p = sub.add_parser("attack", help="FGSM evaluation of one trained fold")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--trained", help="folder written by `intermix train` (checkpoint.pt, result.json)")
    g.add_argument("--checkpoint", help="a checkpoint.pt (with result.json beside it, that result is updated)")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--fold", type=int, help="test fold (default: the trained fold)")
    p.add_argument("--out", help="where to write the updated result.json (default: --trained)")
    p.set_defaults(func="cmd_attack")

    for name in ("train", "attack"):
        p = sub.choices[name]
        p.add_argument("--grid-id", default="local", help="grid id for tracking and the store (default: local)")
        p.add_argument("--store", help="grid store root (folder or s3://) to sync the fold with")
        p.add_argument("--tracking-uri", default=_env("MLFLOW_TRACKING_URI"), help="MLflow URI (env MLFLOW_TRACKING_URI)")
        _device_arg(p)

    for name in ("results", "aggregate"):
        p = sub.add_parser(name, help="aggregate a grid's results and print its tables" + (" (alias of results)" if name == "aggregate" else ""))
        p.add_argument("items", nargs="*", metavar="GRID|PATH", help=GRID_ID_HELP + "; or result files and folders "
                       "(*.json, folders of them) to aggregate instead of a grid")
        p.add_argument("--grid", help="the same as GRID")
        p.add_argument("--grid-id", help="the same as GRID, for a grid id (kept for older scripts)")
        p.add_argument("--store", help="grid store root: a folder or s3:// (default: <workdir>/store)")
        p.add_argument("--workdir", default=_env("INTERMIX_WORKDIR", DEFAULT_WORKDIR), help="local work directory (default: ./intermix-work)")
        p.add_argument("--out", help="report folder (default: <workdir>/reports/<grid id>)")
        p.add_argument("--tracking-uri", default=_env("MLFLOW_TRACKING_URI"),
                       help="also log the summary to this MLflow (default: MLFLOW_TRACKING_URI)")
        p.set_defaults(func="cmd_results")

    p = sub.add_parser("show", help="print a grid's id, cells and KFP runs (the plan; `status` says how far it got)")
    _grid_args(p)
    _json_arg(p)
    p.set_defaults(func="cmd_show")

    p = sub.add_parser("status", help="each fold of a grid: done, running (epoch, heartbeat, samples/s), failed (why), "
                       "stopped, superseded or not started; the time left; rerun commands")
    _grid_args(p, ids=True, name=False)
    p.add_argument("--workdir", default=_env("INTERMIX_WORKDIR", DEFAULT_WORKDIR),
                   help="local work directory whose store and MLflow are read (default: ./intermix-work, env INTERMIX_WORKDIR)")
    p.add_argument("--store", help="grid store root: a folder or s3://bucket/prefix (default: <workdir>/store)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in <workdir>)")
    g = p.add_argument_group("Kubeflow Pipelines (optional: adds each run's state)")
    g.add_argument("--host", default=_env("KFP_HOST"), help="KFP API URL (env KFP_HOST)")
    g.add_argument("--namespace", default=_env("KFP_NAMESPACE"), help="namespace of a multi-user KFP (env KFP_NAMESPACE)")
    g.add_argument("--existing-token", default=_env("KFP_EXISTING_TOKEN"), help="bearer token (env KFP_EXISTING_TOKEN)")
    g.add_argument("--cookies", default=_env("KFP_COOKIES"), help="session cookies for a KFP behind a login (env KFP_COOKIES)")
    g.add_argument("--ssl-ca-cert", default=_env("KFP_SSL_CA_CERT"), help="CA bundle of the KFP endpoint (env KFP_SSL_CA_CERT)")
    g.add_argument("--experiment", default=_env("KFP_EXPERIMENT"), help="KFP experiment (default: the grid id; env KFP_EXPERIMENT)")
    _json_arg(p)
    p.set_defaults(func="cmd_status")

    p = sub.add_parser("config", help="print the resolved configuration of a grid's cells as YAML (every default explicit)")
    _grid_args(p, name=False)
    _fold_cell_args(p, in_grid=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value on top, e.g. optim.epochs=2 (repeatable)")
    p.add_argument("--print", action="store_true", help="print it (what the command does anyway; for Hydra habits)")
    p.set_defaults(func="cmd_config")

    p = sub.add_parser("study", help="train one dataset x setup's folds concurrently on one device inside a time budget")
    _grid_args(p)
    p.add_argument("--data", required=True, help="prepared dataset folder at the setup's sample rate (intermix prepare)")
    p.add_argument("--out", default="study", help="output folder: fold results, reports/, study.json (default: ./study)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds; workers stop after the epoch that passes it")
    p.add_argument("--concurrency", type=int, default=4, help="folds (or packs) trained at once (worker processes)")
    p.add_argument("--pack", type=int, default=1, metavar="K", help="folds of one cell each worker trains as one "
                   "fused model (intermix_core.method.pack; default 1: one fold per worker)")
    _device_arg(p, "auto")
    p.add_argument("--throughput", metavar="FILE", help="bench_throughput.py --save records for the time estimate")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value of every cell, e.g. "
                   "optim.cudnn_benchmark=true (repeatable; part of the grid id)")
    p.set_defaults(func="cmd_study")

    p = sub.add_parser("estimate", help="training samples and device-hours of a grid, from measured throughput")
    _grid_args(p)
    p.add_argument("--throughput", metavar="FILE", help="records from benchmarks/bench_throughput.py --save "
                   "(default: the figures shipped in the package)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="estimate for this device type: use only its "
                   "measurements (default: the type measured for most of the grid's cells, a GPU on a tie)")
    p.add_argument("--max-gpus", type=int, metavar="N", help="also the wall-clock time with N devices at once, "
                   "one fold each (as `submit --max-gpus N` runs the grid)")
    p.add_argument("--pack", type=int, default=1, metavar="K", help="folds of a cell trained as one pack (default 1): "
                   "the hours count packs, from records of bench_throughput.py --pack K")
    _json_arg(p)
    p.set_defaults(func="cmd_estimate")

    p = sub.add_parser("run", help="run a grid locally with KFP's local runner (default: the demo grid)")
    _grid_args(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value of every cell, e.g. "
                   "optim.precision=fp32 (repeatable; part of the grid id)")
    p.add_argument("--pack", type=int, default=1, metavar="K", help="folds of a cell each task trains as one fold pack "
                   "(intermix_core.method.pack; default 1: on a CPU one fold keeps the cores busy; not part of the grid id)")
    _source_args(p)
    _local_args(p)
    p.set_defaults(func="cmd_run")

    p = sub.add_parser("compile", help="compile a grid to IR YAML, one pipeline per dataset x setup")
    _grid_args(p)
    p.add_argument("-o", "--output", default="compiled", help="output folder (default: ./compiled)")
    p.add_argument("--check-images", action="store_true",
                   help="also ask each image's registry whether it exists (as submit does)")
    _cluster_args(p)
    p.set_defaults(func="cmd_compile")

    p = sub.add_parser("submit", help="submit a grid to Kubeflow Pipelines (one run per dataset x setup)")
    _grid_args(p)
    _source_args(p)
    _kfp_args(p, required_host=True)
    p.add_argument("--no-cache", action="store_true", help="recompute every task (default: finished tasks come from the cache)")
    _cluster_args(p)
    p.set_defaults(func="cmd_submit")

    p = sub.add_parser("rerun", help="rerun one fold of an earlier grid, locally or on --host, and update its tables",
                       description="Rerun one fold of an earlier grid (same grid id and store), then re-aggregate the "
                       "grid's tables. Without --from-scratch a fold whose training finished is NOT trained again: its "
                       "stored checkpoint and result are kept and only FGSM and the aggregation run again; a fold "
                       "that did not finish resumes from its stored checkpoint (or starts, if it has none). With "
                       "--from-scratch the fold's stored checkpoint and result are deleted and it trains from scratch, "
                       "then FGSM and the aggregation run; the earlier MLflow run is marked superseded.")
    _grid_args(p, ids=True, name=False)
    _fold_cell_args(p, in_grid=True)
    p.add_argument("--fold", type=int, required=True, help="the fold to train again (its test fold)")
    _from_scratch_arg(p)
    _source_args(p)
    _local_args(p, servers=False)
    _kfp_args(p, required_host=False)
    _cluster_args(p)
    p.set_defaults(func="cmd_rerun")
    return parser


def _print_error(err: BaseException, max_lines: int = 20) -> None:
    """The error as `intermix: error: ...` lines: credentials in URIs removed, long lines and many lines cut."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    for line in lines[:max_lines]:  # messages cut user values already; this bounds anything that slipped through
        print(f"intermix: error: {cut(redact_uris(line), 500)}", file=sys.stderr)
    if len(lines) > max_lines:
        print(f"intermix: error: ... and {len(lines) - max_lines} more lines", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `intermix` console script."""
    parser = build_parser()
    if argcomplete is not None:  # answers a shell's completion request (_ARGCOMPLETE set) and exits; else nothing
        argcomplete.autocomplete(parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = parser._subparsers._group_actions[0].choices.get(args.command) if args.command else None  # noqa: SLF001
        (sub or parser).unknown_options(extra)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "rerun" and (args.dataset is None or args.strategy is None or (args.setup or args.model) is None):
        print("intermix rerun: error: give --dataset, --strategy, --fold and --setup (or --model)", file=sys.stderr)
        return 2
    if getattr(args, "restart_old", False):
        print(f"intermix: note: --restart is now --from-scratch (the same in `train` and `rerun`): {FROM_SCRATCH_HELP}",
              file=sys.stderr)
        args.from_scratch = True

    # the subcommands' modules are loaded only once the command line parsed, each with what it needs: `intermix
    # --help`, usage errors and completion load none of them, and `show`, `config`, `estimate` and `status` answer
    # without torch (tests/e2e/test_cli_imports.py)
    commands = importlib.import_module(COMMAND_MODULES.get(args.func, "pipelines.commands"))
    try:
        return getattr(commands, args.func)(args)
    except commands.USER_ERRORS as err:
        # ValueError: what the core raises for inputs that do not fit (e.g. a fold the prepared data lacks);
        # OSError: the machine refused (a full disk, a missing or unwritable folder), named by the message
        if args.debug:
            raise
        _print_error(err)
        return 2
    except commands.SERVICE_ERRORS as err:
        # MLflow unreachable, or another attempt at the fold took over: not the user's mistake, one line
        if args.debug:
            raise
        _print_error(err)
        return 1
    except KeyboardInterrupt as err:  # a fold stopped by SIGINT/SIGTERM says which, with its checkpoint saved
        if isinstance(err, commands.SIGNALLED):
            print(f"intermix: {err}", file=sys.stderr)
            return 128 + err.signum
        print("intermix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
