"""Walks the table of docs/hostile-inputs.md: every row is exercised, here or by the test it names.

Rows exercised here run `intermix` (in this process, through `pipelines.cli.main`) on a real
hostile input built in a temporary folder; the row's exit status and the text in backticks of its
"what the user sees" column are checked against what the command printed. The table and SCENARIOS
must name the same rows, so the documentation and the tests cannot drift apart.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from intermix_core.data import demo_data_dir
from pipelines.cli import main

from servers import MlflowServer, free_ports

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "hostile-inputs.md"
WALKER = "test_hostile_inputs.py"


@dataclass(frozen=True)
class Row:
    """One row of the table."""

    id: str
    sees: str  # the first text in backticks of "what the user sees" ("" if none); … is a wildcard
    exit: int | None
    by: str


def table_rows() -> list[Row]:
    """The rows of the table in docs/hostile-inputs.md."""
    rows = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 5, line
        ident, _, sees, code, by = cells
        fragment = re.search(r"`([^`]+)`", sees)
        assert fragment or by.strip("`") != WALKER, f"{ident}: no text in backticks in 'what the user sees'"
        rows.append(Row(ident.strip("`"), fragment.group(1) if fragment else "", None if code == "—" else int(code),
                        by.strip("`")))
    return rows


ROWS = table_rows()


def seen(fragment: str, text: str) -> bool:
    """True if `fragment` (… matching anything) occurs in `text`."""
    return re.search(".*?".join(re.escape(part) for part in fragment.split("…")), text) is not None


# ------------------------------------------------------------------ scenarios: each builds its input, returns argv

def bomb_text(levels: int = 9, width: int = 9) -> str:
    """A billion-laughs alias tree: `levels` levels of `width` aliases (9**9 values expanded)."""
    inner = "&a0 [" + ",".join(["1"] * width) + "]"
    for i in range(1, levels):
        inner = f"&a{i} [{inner}" + f",*a{i - 1}" * (width - 1) + "]"
    return inner


def bomb_grid(path: Path) -> Path:
    """The alias-bomb grid file (391 bytes)."""
    path.write_text(f"datasets: [esc10]\nsetups: [piczak_cnn]\nstrategies: [bc]\nfolds: {bomb_text()}\n")
    return path


TRAIN = ["train", "--data", "prepared", "--fold", "1", "--out", "out"]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _esc_copy(tmp: Path) -> Path:
    """A copy of the shipped demo dataset (ESC-50 layout) to damage."""
    return Path(shutil.copytree(demo_data_dir(), tmp / "esc"))


def _edit_csv(root: Path, edit: Callable[[list[str]], list[str]], encoding: str = "utf-8") -> None:
    path = root / "meta" / "esc50.csv"
    path.write_bytes("\n".join(edit(path.read_text().splitlines())).encode(encoding) + b"\n")


def _prepare(source: Path) -> list[str]:
    return ["prepare", "--dataset", "esc10", "--source", str(source), "--out", str(source.parent / "out"),
            "--sample-rate", "22050"]


def _set_cell(line: str, column: int, value: str) -> str:
    cells = line.split(",")
    cells[column] = value
    return ",".join(cells)


def _mlflow_down(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    (port,) = free_ports(1)
    monkeypatch.setenv("INTERMIX_MLFLOW_PATIENCE", "1")
    return ["train", "--dataset", "esc10", "--model", "piczak_cnn", "--data", str(tmp), "--fold", "1",
            "--out", str(tmp / "out"), "--tracking-uri", f"http://alice:pw@127.0.0.1:{port}"]


def _us8k_latin1(tmp: Path) -> list[str]:
    root = tmp / "us8k"
    _write(root / "metadata" / "UrbanSound8K.csv",
           "slice_file_name,fsID,start,end,salience,fold,classID,class\n".encode()
           + "100032-3-0-0.wav,100032,0,0.3,1,1,3,dog caf\xe9\n".encode("latin-1"))
    return ["prepare", "--dataset", "urbansound8k", "--source", str(root), "--out", str(tmp / "out"),
            "--sample-rate", "16000"]


SCENARIOS: dict[str, Callable[[Path, pytest.MonkeyPatch], list[str]]] = {
    "yaml-alias-bomb": lambda tmp, mp: ["show", str(bomb_grid(tmp / "bomb.yaml"))],
    "yaml-set-alias-bomb": lambda tmp, mp: [*TRAIN, "--set", f"attack.epsilons={bomb_text()}"],
    "yaml-recursive-alias": lambda tmp, mp: [*TRAIN, "--config", str(_write(tmp / "c.yaml", "optim: &o {epochs: *o}\n"))],
    "yaml-too-deep": lambda tmp, mp: ["show", str(_write(tmp / "deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000))],
    "yaml-too-big": lambda tmp, mp: ["show", str(_write(tmp / "big.yaml", "# padding\n" * 210_000))],
    "yaml-not-utf8": lambda tmp, mp: [*TRAIN, "--config", str(_write(tmp / "latin1.yaml",
                                                                     "dataset: esc10\n# caf\xe9\n".encode("latin-1")))],
    "yaml-invalid": lambda tmp, mp: [*TRAIN, "--config", str(_write(tmp / "bad.yaml", "dataset: [unclosed\n"))],
    "yaml-long-value": lambda tmp, mp: ["show", str(_write(
        tmp / "long.yaml", "datasets: [esc10]\nsetups: [piczak_cnn]\nstrategies: [bc]\nfolds: " + "x" * 200_000 + "\n"))],
    "grid-unknown-model": lambda tmp, mp: ["run", str(_write(
        tmp / "grid.yaml", "datasets: [esc10]\nsetups: [piczak_cnn, envnet3]\nstrategies: [standard]\n"))],
    "set-strategy-name-list": lambda tmp, mp: [*TRAIN, "--set", "strategy.name=[1]"],
    "set-extends-preset": lambda tmp, mp: [*TRAIN, "--strategy", "intermix", "--set", "strategy.layers=[99]"],
    "set-unknown-key": lambda tmp, mp: [*TRAIN, "--set", "optim.lerning_rate=0.1"],
    "set-not-a-section": lambda tmp, mp: [*TRAIN, "--dataset", "esc10", "--set", "dataset.x=1"],
    "set-bad-value": lambda tmp, mp: [*TRAIN, "--set", "optim.epochs=0"],
    "seed-negative": lambda tmp, mp: [*TRAIN, "--seed", "-1"],
    "seed-huge": lambda tmp, mp: [*TRAIN, "--seed", str(2**64)],
    "input-length-too-short": lambda tmp, mp: [*TRAIN, "--set", "input_length=256"],
    "lr-inf": lambda tmp, mp: [*TRAIN, "--set", "optim.lr=.inf"],
    "lr-nan": lambda tmp, mp: [*TRAIN, "--set", "optim.lr=.nan"],
    "unknown-model": lambda tmp, mp: [*TRAIN, "--model", "resnet50"],
    "bad-fold": lambda tmp, mp: ["train", "--dataset", "esc10", "--data", ".", "--fold", "9", "--out", "out"],
    "pack-size-zero": lambda tmp, mp: ["estimate", "paper", "--pack", "0"],
    "no-preparation": lambda tmp, mp: ["train", "--dataset", "esc10", "--model", "piczak_cnn", "--data",
                                       str((tmp / "empty").resolve()), "--fold", "1", "--out", str(tmp / "out")],
    "csv-not-utf8-esc": lambda tmp, mp: _prepare(_esc_csv(tmp, lambda ls: ls[:2] + [ls[2].replace("dog", "caf\xe9")] + ls[3:],
                                                          "latin-1")),
    "csv-not-utf8-us8k": lambda tmp, mp: _us8k_latin1(tmp),
    "csv-missing-column": lambda tmp, mp: _prepare(_esc_csv(tmp, lambda ls: [",".join(c for i, c in enumerate(x.split(","))
                                                                                     if i != 1) for x in ls])),
    "csv-bad-fold": lambda tmp, mp: _prepare(_esc_csv(tmp, lambda ls: [ls[0], _set_cell(ls[1], 1, "6"), *ls[2:]])),
    "audio-missing": lambda tmp, mp: _prepare(_esc_audio(tmp, lambda p: p.unlink())),
    "audio-broken": lambda tmp, mp: _prepare(_esc_audio(tmp, lambda p: p.write_bytes(p.read_bytes()[:3000]))),
    "mlflow-down-at-start": _mlflow_down,
    "yaml-control-char": lambda tmp, mp: [*TRAIN, "--config", str(_write(tmp / "ctl.yaml", "dataset: esc10\x07\n"))],
    "set-not-utf8": lambda tmp, mp: [*TRAIN, "--set", "optim.epochs=\udcff"],  # what Python makes of byte 0xff in argv
    "scale-max-absurd": lambda tmp, mp: [*TRAIN, "--set", "augment.scale_max=1e6"],
    "num-crops-absurd": lambda tmp, mp: [*TRAIN, "--set", "num_crops=100000000"],
    "setup-backslash": lambda tmp, mp: [*TRAIN, "--setup", "a\\b"],
    "grid-id-backslash": lambda tmp, mp: ["train", "--dataset", "esc10", "--model", "piczak_cnn", "--data",
                                          str(tmp / "empty"), "--fold", "1", "--out", str(tmp / "out"), "--grid-id",
                                          "a\\b"],
    "source-newline": lambda tmp, mp: ["show", str(_write(tmp / "grid.yaml", 'datasets: [esc10]\nsetups: [piczak_cnn]\n'
                                                           'strategies: [bc]\nsources: {esc10: "demo\\nx"}\n'))],
    "source-placeholder": lambda tmp, mp: ["run", "demo", "--no-tracking", "--source",
                                           "esc10={{$.inputs.parameters['store_root']}}"],
    "weight-decay-absurd": lambda tmp, mp: [*TRAIN, "--set", "optim.weight_decay=1e300"],
    "phase-max-absurd": lambda tmp, mp: [*TRAIN, "--strategy", "intermix", "--set", "strategy.phase_max=1e308"],
    "schedule-unsorted": lambda tmp, mp: [*TRAIN, "--set", "optim.schedule=[0.9, 0.3]"],
    "yaml-duplicate-key": lambda tmp, mp: ["show", str(_write(
        tmp / "grid.yaml", "datasets: [esc10]\nsetups: [piczak_cnn]\nstrategies: [bc]\ndatasets: [esc50]\n"))],
    "audio-rate-absurd": lambda tmp, mp: _prepare(_esc_audio(tmp, _one_hertz_wav)),
    "warmup-beyond-epochs": lambda tmp, mp: [*TRAIN, "--set", "optim.warmup=30", "--set", "optim.epochs=20"],
}
FORBIDDEN = {"mlflow-down-at-start": ["alice", ":pw@"]}


def _one_hertz_wav(path: Path) -> None:
    """A 200 KB WAV whose header declares 1 Hz (its resample asked for 17.6 GB), under the clip's name."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(1)
        w.writeframes(bytes(200_000))


def _esc_csv(tmp: Path, edit: Callable[[list[str]], list[str]], encoding: str = "utf-8") -> Path:
    root = _esc_copy(tmp)
    _edit_csv(root, edit, encoding)
    return root


def _esc_audio(tmp: Path, damage: Callable[[Path], object]) -> Path:
    root = _esc_copy(tmp)
    damage(root / "audio" / "1-100032-A-0.ogg")
    return root


# ------------------------------------------------------------------ the walk

def test_table_and_scenarios_name_the_same_rows() -> None:
    """Every row the walker claims has a scenario, and every scenario is a row of the table."""
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate ids in docs/hostile-inputs.md"
    assert {r.id for r in ROWS if r.by == WALKER} == set(SCENARIOS)


@pytest.mark.parametrize("row", [r for r in ROWS if r.by == WALKER], ids=lambda r: r.id)
def test_row(row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The command of the row exits as the table says and prints what it says, in one line, without a traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "empty").mkdir()
    argv = SCENARIOS[row.id](tmp_path, monkeypatch)
    start = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == row.exit, err[-2000:]
    assert seen(row.sees, err), f"expected {row.sees!r} in:\n{err[-2000:]}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("intermix: error:")]
    assert len(errors) == 1 and len(errors[0]) < 500, errors
    assert time.monotonic() - start < 60
    for secret in FORBIDDEN.get(row.id, []):
        assert secret not in err


@pytest.mark.parametrize("row", [r for r in ROWS if r.by != WALKER], ids=lambda r: r.id)
def test_other_rows_name_a_test_that_exists(row: Row) -> None:
    """A row exercised elsewhere names `file.py::test_function`, and that test exists."""
    file, sep, name = row.by.partition("::")
    assert sep and name.startswith("test_"), f"{row.id}: 'exercised by' must be file.py::test_name, got {row.by!r}"
    found = sorted((ROOT / "tests").rglob(file))
    assert len(found) == 1, f"{row.id}: {file} is not one file under tests/ (found {len(found)})"
    tree = ast.parse(found[0].read_text())
    assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, f"{row.id}: {row.by} not found"


# ------------------------------------------------------------------ rows measured by their own tests

def _measure(argv: list[str]) -> tuple[int, float, float, str]:
    """Run `intermix argv` as a process: (exit status, seconds, peak RSS in MiB, stderr)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss / 1024, err


def test_alias_bomb_is_refused_in_seconds_with_bounded_memory(tmp_path: Path) -> None:
    """The 391-byte billion-laughs grid: refused in seconds, with the memory of `intermix show demo`, one short line."""
    bomb = bomb_grid(tmp_path / "bomb.yaml")
    assert len(bomb.read_bytes()) < 400
    code, seconds, rss, err = _measure(["show", str(bomb)])
    base_code, base_seconds, base_rss, _ = _measure(["show", "demo"])
    print(f"alias bomb: {seconds:.1f} s, peak RSS {rss:.0f} MiB; `intermix show demo`: {base_seconds:.1f} s, "
          f"{base_rss:.0f} MiB")
    assert (code, base_code) == (2, 0)
    assert seconds < 30 and rss < base_rss + 64
    assert err.count("\n") == 1 and len(err) < 300 and "YAML too large" in err


def test_credentials_in_the_tracking_uri_are_never_printed(mlflow_tracking: MlflowServer, capfd: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the tracking URI: runs are logged, MLflow's own "View run" line is silenced, ours shows ***."""
    from fake_results import run_fold

    from intermix_core.tracking.tracker import Tracker

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)  # quiet_run_links sets it
    host = mlflow_tracking.url.removeprefix("http://")
    t = Tracker(f"http://alice:s3cret-pw@{host}", experiment="credentials")
    run_id = run_fold(t, "bc", 1, "creds", 11.0)
    out = capfd.readouterr()
    assert "s3cret" not in out.out + out.err and "alice" not in out.out + out.err
    assert f"View run esc10/envnet_v2/bc/fold1 at: http://***@{host}/#/experiments/{t.experiment_id}/runs/{run_id}" in out.out
    assert t.client.get_run(run_id).info.status == "FINISHED"


def test_no_aws_key_reaches_the_compiled_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """`intermix compile` with AWS keys in its environment writes none of them into the pipeline IR."""
    secret, key_id = "wJalrXUtnFEMI-test-secret-0123456789", "AKIATESTKEYID0123456"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert main(["compile", "demo", "-o", str(tmp_path / "ir"), "--secret-env",
                 "intermix-s3:AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"]) == 0
    files = list((tmp_path / "ir").rglob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text()
        assert secret not in text and key_id not in text, path
        assert "intermix-s3" in text  # the Secret is referenced by name
    out = capsys.readouterr()
    assert secret not in out.out + out.err
