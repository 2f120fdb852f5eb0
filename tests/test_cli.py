"""The `intermix` CLI: help everywhere, one-line errors with exit 2, and submission to a KFP API test double."""

import subprocess
import sys
from pathlib import Path

import pytest

from kfp_api_double import kfp_api_double
from pipelines.cli import build_parser, main

COMMANDS = ["prepare", "train", "attack", "results", "aggregate", "show", "run", "compile", "submit", "rerun"]


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_on_every_command(capsys: pytest.CaptureFixture):
    parser = build_parser()
    assert set(COMMANDS) <= set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    for argv in [["--help"]] + [[c, "--help"] for c in COMMANDS]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert "usage: intermix" in capsys.readouterr().out


def test_console_script_help():
    exe = Path(sys.executable).parent / "intermix"
    if not exe.exists():
        pytest.skip("intermix console script not installed (pip install -e .)")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "rerun" in proc.stdout


def test_bad_model_exits_2_with_choices_and_no_traceback(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--model", "resnet50", "--dataset", "esc10",
         "--data", str(tmp_path), "--fold", "1", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "model: unknown model 'resnet50'; expected one of: envnet, envnet_v2, m18, piczak_cnn, soundnet5" in proc.stderr
    assert not (tmp_path / "out").exists()  # rejected before anything ran


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "no-such-grid.yaml"], "no-such-grid.yaml: no such grid file; packaged grids: demo, gpu-study, paper"),
        (["rerun", "--grid", "demo", "--dataset", "esc10", "--setup", "piczak_cnn", "--strategy", "bc", "--fold", "4"],
         "fold 4 is not in the grid for esc10; expected one of: 1, 2, 3"),
        (["rerun", "--grid", "demo", "--dataset", "esc10", "--model", "m18", "--strategy", "bc", "--fold", "1"],
         "--model m18: no setup of this grid uses it; give --setup, one of: piczak_cnn (piczak_cnn)"),
        (["train", "--set", "optim.epochs=0", "--data", ".", "--fold", "1", "--out", "x"],
         "command line: optim.epochs: Input should be greater than or equal to 1"),
        (["train", "--dataset", "esc10", "--data", ".", "--fold", "9", "--out", "x"],
         "--fold 9: not a fold of esc10; expected one of: 1, 2, 3, 4, 5"),
        (["submit", "demo", "--host", ""], "--host (or KFP_HOST) is required"),
        (["run", "demo", "--source", "esc100=/x"], "unknown dataset 'esc100'"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "intermix-work").exists()  # nothing ran


def test_bad_grid_file_names_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("datasets: [esc10]\nsetups: [piczak_cnn, envnet3]\nstrategies: [standard]\n")
    code, _, err = _run(["run", str(grid)], capsys)
    assert code == 2
    assert f"{grid}: setups.1.model: unknown model 'envnet3'; expected one of: envnet, envnet_v2" in err
    assert not (tmp_path / "intermix-work").exists()


def test_rerun_model_picks_the_setup_named_after_it(capsys: pytest.CaptureFixture):
    from pipelines.commands import _rerun_cell
    from intermix_core.grid import load_grid

    args = build_parser().parse_args(["rerun", "--dataset", "esc10", "--model", "envnet_v2", "--strategy", "bc", "--fold", "1"])
    assert _rerun_cell(args, load_grid("paper")).setup == "envnet_v2"  # not envnet_v2_aug, which uses it too


def test_show_prints_grid_id_and_runs(capsys: pytest.CaptureFixture):
    code, out, _ = _run(["show", "paper"], capsys)
    assert code == 0
    assert "480 fold trainings" in out and out.count("  run ") == 18


def test_submit_to_kfp_api_test_double(capsys: pytest.CaptureFixture):
    with kfp_api_double() as api:
        code, out, err = _run([
            "submit", "demo", "--host", api.url, "--namespace", "team-a", "--existing-token", "secret-token",
            "--experiment", "intermix-demo", "--store", "s3://intermix-data/grids", "--tracking-uri", "http://mlflow:5000",
            "--node-selector", "nvidia.com/gpu.present=true", "--toleration", "nvidia.com/gpu:NoSchedule",
        ], capsys)
        assert code == 0, err
        exp_posts = [r for r in api.requests if r.method == "POST" and r.path.endswith("/experiments")]
        assert [r.body["display_name"] for r in exp_posts] == ["intermix-demo"]
        assert exp_posts[0].body["namespace"] == "team-a"
        runs = api.created_runs()
        assert len(runs) == 1  # the demo grid is one dataset x setup
        run = runs[0]
        assert run["experiment_id"] == next(iter(api.experiments))
        assert run["display_name"].endswith(" esc10/piczak_cnn")
        assert run["runtime_config"]["parameters"] == {
            "store_root": "s3://intermix-data/grids", "tracking_uri": "http://mlflow:5000", "source": "demo",
        }
        spec = run["pipeline_spec"]["pipeline_spec"]
        assert spec["pipelineInfo"]["name"].startswith("intermix-demo-")
        names = {t["taskInfo"]["name"] for c in spec["components"].values() if "dag" in c for t in c["dag"]["tasks"].values()}
        assert "train esc10/piczak_cnn/intermix" in names
        platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert platform["exec-train-fold"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert all(r.headers.get("authorization") == "Bearer secret-token" for r in api.requests)
        assert api.runs and next(iter(api.runs)) in out

        # a one-fold rerun of the same grid goes to the same experiment
        code, out, err = _run([
            "rerun", "--grid", "demo", "--dataset", "esc10", "--setup", "piczak_cnn", "--strategy", "bc", "--fold", "2",
            "--restart", "--host", api.url, "--namespace", "team-a", "--existing-token", "secret-token",
            "--experiment", "intermix-demo", "--store", "s3://intermix-data/grids",
        ], capsys)
        assert code == 0, err
        rerun = api.created_runs()[-1]
        assert rerun["runtime_config"]["parameters"]["restart"] is True
        assert "rerun esc10/piczak_cnn/bc/fold2" in rerun["display_name"]
        assert len(api.experiments) == 1


def test_compile_writes_one_yaml_per_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, out, _ = _run(["compile", "demo", "-o", str(tmp_path), "--gpus", "0"], capsys)
    assert code == 0
    files = list(tmp_path.glob("*.yaml"))
    assert len(files) == 1 and "accelerator" not in files[0].read_text()
    assert str(files[0]) in out


def test_submit_takes_store_tracking_and_placement_from_cluster_options(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")  # a port-forward: must not reach the tasks
    options = tmp_path / "cluster-options.yaml"
    options.write_text(
        "gpu_type: nvidia.com/gpu\ngpus: 1\nnode_selector: {pool: gpu}\n"
        "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n"
        "secret_env: {intermix-s3: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]}\n"
        "env: {INTERMIX_STORAGE_ROOT: 's3://intermix/intermix', MLFLOW_TRACKING_URI: 'http://intermix-mlflow.kf.svc:5000'}\n"
    )
    with kfp_api_double() as api:
        code, _, err = _run(["submit", "--grid", "demo", "--host", api.url, "--namespace", "kf",
                             "--cluster-options", str(options), "--retries", "4"], capsys)
        assert code == 0, err
        run = api.created_runs()[0]
    assert run["runtime_config"]["parameters"]["store_root"] == "s3://intermix/intermix"
    assert run["runtime_config"]["parameters"]["tracking_uri"] == "http://intermix-mlflow.kf.svc:5000"
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-fgsm-attack"]["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert executors["exec-fgsm-attack"]["tolerations"][0]["effect"] == "NoSchedule"
    spec = run["pipeline_spec"]["pipeline_spec"]
    env = spec["deploymentSpec"]["executors"]["exec-train-fold"]["container"]["env"]
    assert {"name": "INTERMIX_STORAGE_ROOT", "value": "s3://intermix/intermix"} in env
    retries = {t["retryPolicy"]["maxRetryCount"] for c in spec["components"].values() if "dag" in c
               for t in c["dag"]["tasks"].values() if "retryPolicy" in t}
    assert retries == {4}

    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: -1\nspot: true\n")
    code, _, err = _run(["compile", "demo", "-o", str(tmp_path / "c"), "--cluster-options", str(bad)], capsys)
    assert code == 2 and f"{bad}: gpus: Input should be greater than or equal to 0" in err and f"{bad}: spot: unknown key" in err
