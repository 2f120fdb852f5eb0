"""The `intermix` CLI: help everywhere, one-line errors with exit 2, and submission to a KFP API test double."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main

from kfp_api_double import kfp_api_double
from registry_double import RegistryDouble, registry_double

COMMANDS = ["prepare", "train", "attack", "results", "aggregate", "show", "status", "config", "run", "compile", "submit",
            "rerun", "estimate", "study"]


@pytest.fixture
def registry() -> RegistryDouble:
    """A registry test double holding every image: submissions name images there and find them."""
    with registry_double(every_image=True) as reg:
        yield reg


def _images(registry: RegistryDouble) -> list[str]:
    return ["--image-repository", f"{registry.host}/intermix"]


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
        (["run", "no-such-grid.yaml"], "no-such-grid.yaml: no such grid file; packaged grids: demo, gpu-study, official, paper, sensitivity"),
        (["rerun", "--grid", "demo", "--dataset", "esc10", "--setup", "m18", "--strategy", "bc", "--fold", "3"],
         "fold 3 is not in the grid for esc10; expected one of: 1, 2"),
        (["rerun", "--grid", "demo", "--dataset", "esc10", "--model", "envnet", "--strategy", "bc", "--fold", "1"],
         "--model envnet: no setup of this grid uses it; give --setup, one of: m18 (m18)"),
        (["train", "--set", "optim.epochs=0", "--data", ".", "--fold", "1", "--out", "x"],
         "command line: optim.epochs: Input should be greater than or equal to 1"),
        (["train", "--dataset", "esc10", "--data", ".", "--fold", "9", "--out", "x"],
         "--fold 9: not a fold of esc10; expected one of: 1, 2, 3, 4, 5"),
        (["submit", "demo", "--host", ""], "--host (or KFP_HOST) is required"),
        (["rerun", "demo", "--grid", "paper", "--dataset", "esc10", "--setup", "m18", "--strategy", "bc", "--fold", "1"],
         "two grids given: GRID demo and --grid paper"),
        (["results", "paper", "demo"], "results: paper, demo: one grid at a time"),
        (["config", "demo", "--strategy", "mixup"], "config: no cell of grid demo matches; its cells: esc10/m18/bc"),
        (["train", "--dataset", "esc10", "--model", "m18", "--strategy", "bc"], "train: give --data, --fold, --out"),
        (["run", "demo", "--source", "esc100=/x"], "unknown dataset 'esc100'"),
        (["compile", "demo", "--image-digest", "cuda=sha256:12ab"],
         "image digest cuda='sha256:12ab': expected sha256:<64 hex digits>"),
        (["compile", "demo", "--image-digest", "gpu=sha256:" + "0" * 64], "cluster options: image_digests.gpu.[key]: Input should be 'cpu' or 'cuda'"),
        (["compile", "demo", "--retry-max-duration", "3days"],
         "cluster options: retry_max_duration: '3days' is not a duration; expected a number and a unit s, m, h, d or w"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "intermix-work").exists()  # nothing ran


@pytest.mark.parametrize("argv, expected", [
    (["stauts"], "intermix: error: argument COMMAND: invalid choice: 'stauts'; did you mean status? "
                 "(`intermix --help`: the usage)"),
    (["frobnicate"], "invalid choice: 'frobnicate' (choose from 'prepare', 'train',"),  # nothing close: the list
    (["status", "--workdri", "w"], "intermix status: error: unrecognized arguments: --workdri; did you mean --workdir?"),
    (["estimate", "--device", "gpu"], "intermix estimate: error: argument --device: invalid choice: 'gpu' "
                                      "(choose from 'cpu', 'cuda'); did you mean cpu?"),
    (["prepare", "--dataset", "esc5", "--source", "demo", "--out", "x"], "did you mean esc50?"),
])
def test_usage_errors_are_one_line_with_a_suggestion(argv: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err  # no usage block


@pytest.mark.parametrize("argv, expected", [
    (["config", "demo", "--set", "optim.epoch=3"], "command line: optim.epoch: unknown key; did you mean optim.epochs?"),
    (["config", "demo", "--set", "augmnt.scale=true"], "command line: augmnt: unknown key; did you mean augment?"),
    (["config", "demo", "--set", "optim.lerning_rate=0.1"], "command line: optim.lerning_rate: unknown key\n"),
])
def test_an_unknown_config_key_near_a_known_one_is_named(argv: list[str], expected: str, capsys) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2 and expected in err, err


def test_a_typo_in_a_grid_file_gets_the_nearest_key(tmp_path: Path, capsys) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndatasets: [esc10]\nsetups: [{name: a, model: m18, overides: {}}]\nstrategies: [bc]\n")
    code, _, err = _run(["show", str(grid)], capsys)
    assert code == 2 and f"{grid}: setups.0.overides: unknown key; did you mean setups.0.overrides?" in err, err


def test_bad_grid_file_names_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("datasets: [esc10]\nsetups: [piczak_cnn, envnet3]\nstrategies: [standard]\n")
    code, _, err = _run(["run", str(grid)], capsys)
    assert code == 2
    assert f"{grid}: setups.1.model: unknown model 'envnet3'; expected one of: envnet, envnet_v2" in err
    assert not (tmp_path / "intermix-work").exists()


def test_rerun_model_picks_the_setup_named_after_it(capsys: pytest.CaptureFixture):
    from intermix_core.config.grid import load_grid
    from pipelines.commands import _rerun_cell

    args = build_parser().parse_args(["rerun", "--dataset", "esc10", "--model", "envnet_v2", "--strategy", "bc", "--fold", "1"])
    assert _rerun_cell(args, load_grid("paper")).setup == "envnet_v2"  # not envnet_v2_aug, which uses it too


def test_show_prints_grid_id_and_runs(capsys: pytest.CaptureFixture):
    code, out, _ = _run(["show", "paper"], capsys)
    assert code == 0
    assert "520 fold trainings" in out and out.count("  run ") == 18


def test_a_gpu_budget_below_the_run_count_chains_the_runs_in_lanes(capsys: pytest.CaptureFixture,
                                                                  registry: RegistryDouble):
    """--max-gpus 4 for the paper grid's 18 runs: 4 lanes. Each run gets the marker its end writes (lane_done, of this
    submission) and the marker it waits for (lane_after: the run before it in its lane, created before it); a
    resubmission keeps a run still RUNNING and the run after it waits for that run's own marker."""
    from intermix_core.config.grid import grid_id, load_grid

    gid = grid_id(load_grid("paper"))
    with kfp_api_double(tag_name="2.17.0") as api:
        args = ["submit", "paper", "--host", api.url, *_images(registry), "--store", "s3://bucket/grids",
                "--max-gpus", "4", *[w for d in ("esc10", "esc50", "urbansound8k") for w in ("--source", f"{d}=s3://raw/{d}")]]
        code, out, err = _run(args, capsys)
        assert code == 0, err
        assert "GPU tasks at once: at most 4, bounded by the compiled grid (18 runs in 4 lanes" in out
        order = [r["display_name"].split(" ", 1)[1] for r in api.created_runs()]
        params = {r["display_name"].split(" ", 1)[1]: r["runtime_config"]["parameters"] for r in api.created_runs()}
        assert len(params) == 18 and len({p["lane_done"] for p in params.values()}) == 18
        assert all(p["lane_done"].startswith(f"{gid}/lanes/") and p["lane_done"].endswith(".done") for p in params.values())
        heads = [label for label, p in params.items() if not p["lane_after"]]
        assert len(heads) == 4
        after = {label: next(b for b, q in params.items() if q["lane_done"] == p["lane_after"])
                 for label, p in params.items() if p["lane_after"]}
        assert all(order.index(before) < order.index(label) for label, before in after.items())
        assert len(set(after.values())) == 14  # each marker opens one gate: 4 chains

        kept = heads[0]
        follower = next(label for label, before in after.items() if before == kept)
        for label in params:
            api.set_state(f"{gid} {label}", "RUNNING" if label == kept else "FAILED")
        code, out, err = _run(args, capsys)
        assert code == 0, err
        again = {r["display_name"].split(" ", 1)[1]: r["runtime_config"]["parameters"] for r in api.created_runs()[18:]}
        assert len(again) == 17 and kept not in again
        assert again[follower]["lane_after"] == params[kept]["lane_done"]  # the kept run's own marker
        assert not {p["lane_done"] for p in again.values()} & {p["lane_done"] for p in params.values()}


def test_submit_to_kfp_api_test_double(capsys: pytest.CaptureFixture, registry: RegistryDouble):
    with kfp_api_double(multi_user=True, tag_name="2.17.0") as api:
        code, out, err = _run([
            "submit", "demo", "--host", api.url, "--namespace", "team-a", "--existing-token", "secret-token", *_images(registry),
            "--experiment", "intermix-demo", "--store", "s3://intermix-data/grids", "--tracking-uri", "http://mlflow:5000",
            "--node-selector", "nvidia.com/gpu.present=true", "--toleration", "nvidia.com/gpu:NoSchedule",
        ], capsys)
        assert code == 0, err
        # a current backend: only the note on the 2.17 manifests' Argo template defaults (#13485)
        assert [line for line in err.splitlines() if "warning" in line] == [
            line for line in err.splitlines() if "templateDefaults.retryStrategy" in line] and "warning" in err
        assert "GPU tasks at once: at most " in out and "bounded by the compiled grid" in out and "budget of 8" in out
        exp_posts = [r for r in api.requests if r.method == "POST" and r.path.endswith("/experiments")]
        assert [r.body["display_name"] for r in exp_posts] == ["intermix-demo"]
        assert exp_posts[0].body["namespace"] == "team-a"
        runs = api.created_runs()
        assert len(runs) == 1  # the demo grid is one dataset x setup
        run = runs[0]
        assert run["experiment_id"] == next(iter(api.experiments))
        assert run["display_name"].endswith(" esc10/m18")
        assert run["runtime_config"]["parameters"] == {
            "store_root": "s3://intermix-data/grids", "tracking_uri": "http://mlflow:5000", "source": "demo",
        }
        spec = run["pipeline_spec"]["pipeline_spec"]
        assert spec["pipelineInfo"]["name"].startswith("intermix-demo-")
        names = {t["taskInfo"]["name"] for c in spec["components"].values() if "dag" in c for t in c["dag"]["tasks"].values()}
        assert "train esc10/m18/intermix" in names
        platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert platform["exec-train-pack"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert all(r.headers.get("authorization") == "Bearer secret-token" for r in api.requests)
        assert api.runs and next(iter(api.runs)) in out

        # a one-fold rerun of the same grid goes to the same experiment
        rerun_args = [
            "rerun", "--grid", "demo", "--dataset", "esc10", "--setup", "m18", "--strategy", "bc", "--fold", "2",
            "--restart", "--host", api.url, "--namespace", "team-a", "--existing-token", "secret-token",
            "--experiment", "intermix-demo", "--store", "s3://intermix-data/grids", *_images(registry),
        ]
        code, out, err = _run(rerun_args, capsys)
        assert code == 0, err
        assert "--restart is now --from-scratch" in err  # the old spelling still works, with a note
        rerun = api.created_runs()[-1]
        assert rerun["runtime_config"]["parameters"]["restart"] is True
        assert "rerun esc10/m18/bc/fold2" in rerun["display_name"]
        assert len(api.experiments) == 1
        # the same rerun again while the first one is still pending: reported, not duplicated
        code, out, err = _run(rerun_args, capsys)
        assert code == 0, err
        assert "already pending" in out and len(api.runs) == 2


@pytest.mark.parametrize(
    "behaviour, argv, expected",
    [
        (dict(multi_user=True), [], "this KFP is multi-user: give --namespace"),
        # Kubeflow 1.9's KFP 2.3.0 cannot pass train's artifact to FGSM inside the fold loop (#11627): refused
        (dict(tag_name="2.3.0"), [], "KFP backend 2.3.0 is too old; intermix needs 2.5.0 or newer (artifacts passed "
         "inside a ParallelFor, kubeflow/pipelines #11627); upgrade KFP inside your Kubeflow"),
        (dict(v2=False), [], "KFP backend 1.8.5 has no v2 API; intermix needs KFP 2.5.0 or newer"),
        (dict(auth={"cookie": "oauth2_proxy_kubeflow=abc"}), [], "redirected to /dex/auth?client_id=kubeflow (a login page?)"),
    ],
    ids=["multi-user-without-namespace", "kubeflow-1.9-kfp-2.3", "kfp-v1", "login-page"],
)
def test_submit_refuses_a_server_it_cannot_use(behaviour, argv, expected, capsys, tmp_path, monkeypatch, registry):
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    with kfp_api_double(**behaviour) as api:
        code, out, err = _run(["submit", "demo", "--host", api.url, "--store", "s3://b/p", *_images(registry), *argv],
                              capsys)
        assert code == 2, out + err
        assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not api.experiments and not api.runs  # refused before anything was created


@pytest.mark.parametrize(
    "behaviour, argv, warning",
    [
        # 2.17's manifests make Argo merge retryPolicy OnError into every template (#13485): the operator's fix
        (dict(tag_name="2.17.0"), [], "retryPolicy: OnError"),
        (dict(tag_name="2.14.3"), [], "before 2.17.0 the UI can show a finished fold loop as running"),
        (dict(tag_name="unknown"), [], "KFP backend version 'unknown' is not a release tag"),
        (dict(tag_name="2.4.1"), ["--skip-version-check"], "KFP backend 2.4.1 is too old"),
        (dict(multi_user=True, tag_name="2.14.0"), ["--namespace", "team-b"], "before 2.17.0"),
        # Kubeflow 1.10's KFP 2.5.0: submitted, with one warning naming what the grid loses (#11861, #12049)
        (dict(multi_user=True, tag_name="2.5.0"), ["--namespace", "team-b"], "KFP backend 2.5.0 runs this grid without"),
        (dict(multi_user=True, tag_name="2.16.1", auth={"cookie": "oauth2_proxy_kubeflow=abc"}),
         ["--namespace", "team-b", "--cookies", "oauth2_proxy_kubeflow=abc"], "before 2.17.0"),
    ],
    ids=["single-user-2.17", "single-user-2.14", "dev-build", "old-forced", "multi-user-2.14", "kubeflow-1.10-kfp-2.5",
         "multi-user-cookies"],
)
def test_submit_to_single_and_multi_user_old_and_new_servers(behaviour, argv, warning, capsys, monkeypatch, registry):
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    with kfp_api_double(**behaviour) as api:
        code, out, err = _run(["submit", "demo", "--host", api.url, "--store", "s3://b/p", *_images(registry), *argv],
                              capsys)
        assert code == 0, err
        assert len(api.runs) == 1
        warnings = [line for line in err.splitlines() if line.startswith("intermix: warning:")]
        assert len(warnings) == 1 and warning in warnings[0], warnings  # once, not per run
        namespace = argv[argv.index("--namespace") + 1] if "--namespace" in argv else None
        assert (next(iter(api.experiments.values())).get("namespace") or None) == namespace
        if "--cookies" in argv:
            assert all(r.headers.get("cookie") == "oauth2_proxy_kubeflow=abc" for r in api.requests)


def test_submit_to_kubeflow_1_10_warns_once_naming_what_the_grid_loses(capsys, monkeypatch, registry, tmp_path):
    """KFP 2.5.0 (Kubeflow 1.10) compiles no retries below the root DAG and one pod-label set per run
    (kubeflow/pipelines #11861, #12049): every run is created, and one warning names both losses and the recovery."""
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    grid = tmp_path / "two.yaml"
    grid.write_text("name: two\ndatasets: [esc10]\nsetups: [piczak_cnn, m18]\nstrategies: [bc, intermix]\n"
                    "folds: [1, 2]\nsources: {esc10: demo}\n")
    with kfp_api_double(tag_name="2.5.0") as api:
        code, out, err = _run(["submit", str(grid), "--host", api.url, "--store", "s3://b/p", *_images(registry)],
                              capsys)
        assert code == 0, err
        assert len(api.created_runs()) == 2  # not refused
    warnings = [line for line in err.splitlines() if line.startswith("intermix: warning:")]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert "KFP backend 2.5.0 runs this grid without what 2.14.0 adds" in line
    assert "no retries inside the fold loops" in line and "#11861" in line
    assert "one set of pod labels for every pod of a run" in line and "#12049" in line
    assert "submit the same grid again: unfinished folds resume from their checkpoints" in line
    assert "retryPolicy: OnError" not in err  # the 2.17 manifests' note is for 2.17 and newer


def test_submit_after_a_partial_failure_creates_only_the_missing_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      registry: RegistryDouble):
    grid = tmp_path / "three.yaml"
    grid.write_text("name: three\ndatasets: [esc10]\nsetups: [piczak_cnn, m18, envnet]\nstrategies: [bc]\n"
                    "folds: [1]\nsources: {esc10: demo}\n")
    argv = ["submit", str(grid), "--store", "s3://b/p", *_images(registry)]
    with kfp_api_double(fail_runs_after=1) as api:
        code, _, err = _run([*argv, "--host", api.url], capsys)
        assert code == 1
        first = next(iter(api.runs.values()))
        # which runs exist, which failed, which were not tried, and what to do
        assert f"created: {first['run_id']}  {first['display_name']}" in err
        assert "creating the run of esc10/m18 failed: " in err and "not created: esc10/m18, esc10/envnet" in err
        assert "submit the same command again" in err and "Traceback" not in err

        api.fail_runs_after = None  # the server recovers; the same command again
        code, out, err = _run([*argv, "--host", api.url], capsys)
        assert code == 0, err
        assert sorted(r["display_name"].split()[-1] for r in api.runs.values()) == ["esc10/envnet", "esc10/m18", "esc10/piczak_cnn"]
        assert "(2 created, 1 already there)" in out and "(existing, PENDING)" in out

        code, out, _ = _run([*argv, "--host", api.url], capsys)  # nothing is duplicated
        assert code == 0 and len(api.runs) == 3 and "(0 created, 3 already there)" in out

        api.set_state(first["display_name"], "FAILED")  # a failed run is submitted again (the cache skips done folds)
        code, out, _ = _run([*argv, "--host", api.url], capsys)
        assert code == 0 and len(api.runs) == 4 and "(1 created, 2 already there)" in out
        assert len(api.experiments) == 1


def test_compile_writes_one_yaml_per_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, out, _ = _run(["compile", "demo", "-o", str(tmp_path), "--gpus", "0"], capsys)
    assert code == 0
    files = list(tmp_path.glob("*.yaml"))
    assert len(files) == 1 and "accelerator" not in files[0].read_text()
    assert str(files[0]) in out


def test_submit_takes_store_tracking_and_placement_from_cluster_options(tmp_path: Path, capsys, monkeypatch, registry):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")  # a port-forward: must not reach the tasks
    options = tmp_path / "cluster-options.yaml"
    options.write_text(
        "gpu_type: nvidia.com/gpu\ngpus: 1\nnode_selector: {pool: gpu}\n"
        "tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n"
        "secret_env: {intermix-s3: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]}\n"
        "env: {INTERMIX_STORAGE_ROOT: 's3://intermix/intermix', MLFLOW_TRACKING_URI: 'http://intermix-mlflow.kf.svc:5000'}\n"
    )
    with kfp_api_double() as api:
        code, _, err = _run(["submit", "--grid", "demo", "--host", api.url, "--namespace", "kf", *_images(registry),
                             "--cluster-options", str(options), "--retries", "4"], capsys)
        assert code == 0, err
        run = api.created_runs()[0]
    assert run["runtime_config"]["parameters"]["store_root"] == "s3://intermix/intermix"
    assert run["runtime_config"]["parameters"]["tracking_uri"] == "http://intermix-mlflow.kf.svc:5000"
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-fgsm-pack"]["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert executors["exec-fgsm-pack"]["tolerations"][0]["effect"] == "NoSchedule"
    spec = run["pipeline_spec"]["pipeline_spec"]
    env = spec["deploymentSpec"]["executors"]["exec-train-pack"]["container"]["env"]
    assert {"name": "INTERMIX_STORAGE_ROOT", "value": "s3://intermix/intermix"} in env
    retries = {t["retryPolicy"]["maxRetryCount"] for c in spec["components"].values() if "dag" in c
               for t in c["dag"]["tasks"].values() if "retryPolicy" in t}
    assert retries == {4}

    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: -1\nspot: true\n")
    code, _, err = _run(["compile", "demo", "-o", str(tmp_path / "c"), "--cluster-options", str(bad)], capsys)
    assert code == 2 and f"{bad}: gpus: Input should be greater than or equal to 0" in err and f"{bad}: spot: unknown key" in err


def test_prepare_train_attack_round_trip_on_real_clips(tmp_path: Path, capsys: pytest.CaptureFixture):
    """prepare -> train -> attack --trained (result updated) -> attack --checkpoint of a lone copy (printed only)."""
    import shutil

    from intermix_core.records import load_result
    from intermix_core.testing import demo_subset

    src = demo_subset(tmp_path / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
    data, out = tmp_path / "prep", tmp_path / "fold1"
    code, stdout, err = _run(["prepare", "--dataset", "esc10", "--source", str(src), "--model", "piczak_cnn",
                              "--out", str(data), "--on-silent", "error"], capsys)
    assert code == 0 and "20 clips" in stdout, err
    code, stdout, err = _run(["train", "--dataset", "esc10", "--model", "piczak_cnn", "--strategy", "bc",
                              "--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "num_crops=2",
                              "--set", "attack.epsilons=[0.01]", "--data", str(data), "--fold", "1",
                              "--out", str(out)], capsys)
    assert code == 0 and stdout.startswith("esc10/piczak_cnn/bc/fold1: test error"), err
    code, stdout, err = _run(["attack", "--trained", str(out), "--data", str(data)], capsys)
    assert code == 0 and stdout.startswith("esc10/piczak_cnn/bc/fold1:") and "0.01" in stdout, err
    assert set(load_result(out / "result.json").fgsm) == {"0.0", "0.01"}  # eps 0: the clean error, same code path
    lone = tmp_path / "lone" / "weights.pt"
    lone.parent.mkdir()
    shutil.copyfile(out / "checkpoint.pt", lone)
    code, stdout, err = _run(["attack", "--checkpoint", str(lone), "--data", str(data), "--fold", "1"], capsys)
    assert code == 0 and stdout.startswith(f"{lone}:") and "0.01" in stdout, err
    assert sorted(p.name for p in lone.parent.iterdir()) == ["weights.pt"]  # nothing written beside it


def test_every_flag_has_help_and_device_choices_are_shown_and_enforced(capsys: pytest.CaptureFixture):
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name, sub in subparsers.items():
        for action in sub._actions:  # noqa: SLF001
            if action.help == "==SUPPRESS==" or isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            assert action.help and action.help.strip(), f"intermix {name} {'/'.join(action.option_strings) or action.dest}: no help"
    for name in ("train", "attack", "study"):
        text = subparsers[name].format_help()
        assert "--device {auto,cpu,cuda,cuda:N}" in text, name
        with pytest.raises(SystemExit) as info:
            main([name, "--device", "gpu"])
        assert info.value.code == 2
        assert "argument --device: invalid choice: 'gpu' (choose from auto, cpu, cuda or cuda:N)" in capsys.readouterr().err
    assert "--device {cpu,cuda}" in subparsers["estimate"].format_help()
    assert "--from-scratch" in subparsers["train"].format_help() and "--from-scratch" in subparsers["rerun"].format_help()
    assert "--restart" not in subparsers["train"].format_help()  # the old spelling is accepted, not advertised


def test_config_prints_the_resolved_cell_as_yaml_that_reads_back(capsys: pytest.CaptureFixture):
    import yaml

    from intermix_core.config import parse_config
    from intermix_core.config.grid import expand, load_grid

    code, out, _ = _run(["config", "demo", "--strategy", "intermix", "--set", "optim.lr=0.05"], capsys)
    assert code == 0 and out.startswith("# demo-")
    data = yaml.safe_load(out)
    cell = next(c for c in expand(load_grid("demo")) if c.strategy == "intermix")
    assert parse_config(data) == parse_config({**cell.config.resolved().model_dump(mode="json"),
                                               "optim": {**cell.config.resolved().optim.model_dump(mode="json"), "lr": 0.05}})
    assert data["optim"]["epochs"] == 36 and data["input_length"] == 12000  # every default explicit
    code, out, _ = _run(["config", "demo"], capsys)
    assert code == 0 and out.count("---\n") == 3  # four cells, one document each
    code, out, _ = _run(["train", "--dataset", "esc10", "--model", "m18", "--strategy", "bc", "--set", "optim.epochs=2",
                         "--cfg"], capsys)
    assert code == 0 and yaml.safe_load(out)["optim"]["epochs"] == 2


def test_results_takes_the_grid_positionally_and_names_the_report(tmp_path: Path, capsys: pytest.CaptureFixture):
    from intermix_core.config.grid import grid_id, load_grid
    from intermix_core.records import FoldResult, save_result
    from intermix_core.store.layout import cell_prefix
    from intermix_core.store.storage import open_storage

    gid = grid_id(load_grid("demo"))
    store = open_storage(str(tmp_path / "work" / "store"))
    for strategy, errs in (("standard", (50.0, 45.0)), ("bc", (40.0, 42.5))):
        for fold, err in enumerate(errs, start=1):
            path = tmp_path / f"{strategy}{fold}.json"
            save_result(FoldResult(dataset="esc10", setup="m18", model="m18", strategy=strategy, fold=fold,
                                   test_error=err), path)
            store.upload_file(path, f"{cell_prefix(gid, 'esc10', 'm18', strategy, fold)}/result.json")
    for grid in ("demo", gid):  # a packaged grid, or the id of a grid saved in the store
        if grid == gid:
            store.upload_file(_spec_file(tmp_path), f"{gid}/grid.json")
        code, out, err = _run(["results", grid, "--workdir", str(tmp_path / "work")], capsys)
        assert code == 0, err
        report = tmp_path / "work" / "reports" / gid / "report.html"
        assert f"report: {report}" in out and report.is_file()
        assert "Table 2" not in out and "the figures: in report.html" in out
        html = report.read_text()
        assert "intermix rerun " + gid + " --dataset esc10 --setup m18 --strategy speechmix --fold 1 --workdir" in html
    # `run` and `rerun` end with the same path: the newest published report installed in the same folder
    from pipelines.commands import _print_summary
    from pipelines.workdir import Workdir

    report.unlink()
    _print_summary(Workdir(tmp_path / "work"), gid)
    assert f"report: {report}" in capsys.readouterr().out and report.read_text() == html


def _spec_file(tmp_path: Path) -> Path:
    import json

    from intermix_core.config.grid import load_grid

    path = tmp_path / "grid.json"
    path.write_text(json.dumps(load_grid("demo").model_dump(mode="json")))
    return path


def test_estimate_never_prints_hours_it_did_not_measure(capsys: pytest.CaptureFixture, tmp_path: Path):
    import json

    bf16 = tmp_path / "bf16.yaml"  # no bf16 record of M18 ships: its hours are unknown
    demo = Path(__file__).resolve().parents[2] / "intermix_core" / "grids" / "demo.yaml"
    bf16.write_text(demo.read_text().replace("precision: auto", "precision: bf16"))
    code, out, _ = _run(["estimate", str(bf16)], capsys)
    assert code == 0 and "0.0" not in out and "device-hours unknown: no throughput measured for m18/bf16/plain" in out
    code, out, _ = _run(["estimate", str(bf16), "--json"], capsys)
    assert json.loads(out)["total_hours"] is None
    code, out, _ = _run(["estimate", "demo", "--json"], capsys)  # precision auto: estimated on the fp32 records
    assert json.loads(out)["total_hours"] > 0
    code, out, _ = _run(["estimate", "paper", "--json"], capsys)
    assert json.loads(out)["total_hours"] > 1000
    code, out, _ = _run(["show", "paper", "--json"], capsys)
    assert len(json.loads(out)["runs"]) == 18 and json.loads(out)["fold_trainings"] == 520


def test_estimate_on_the_gpu_from_the_shipped_h200_records_with_the_wall_clock_time(capsys) -> None:
    import json

    from intermix_core.run.estimate import SetupEstimate, wall_hours

    code, out, _ = _run(["estimate", "paper", "--device", "cuda", "--max-gpus", "8"], capsys)
    assert code == 0
    total = next(line for line in out.splitlines() if line.startswith("grid paper:"))
    assert total.startswith("grid paper: at least 244.7 GPU-hours on NVIDIA H200")  # EnvNet and EnvNet-v2 only
    assert "not measured (hours left out of the total): m18/fp32/plain, piczak_cnn/fp32/plain" in out
    assert "with --max-gpus 8: about " in out and "h wall-clock for the 280 measured folds (each fold on one device, 8 " \
        "at a time" in out
    code, out, _ = _run(["estimate", "paper", "--device", "cuda", "--max-gpus", "8", "--json"], capsys)
    data = json.loads(out)
    assert data["max_gpus"] == 8 and data["total_hours"] / 8 <= data["wall_hours"] < data["total_hours"] / 8 + 2
    code, out, _ = _run(["estimate", "paper"], capsys)  # most of the paper grid is measured on the CPU only
    assert "device-hours on AMD EPYC, 1 thread(s)" in out and "H200" not in out
    # folds of 5, 4, 3, 3 and 1 h on 2 devices: 5 + 3 and 4 + 3 + 1 -> 8 h; on one device their sum
    rows = [SetupEstimate("esc10", "a", "envnet", task_hours=[5.0, 3.0, 1.0]), SetupEstimate("esc10", "b", "m18",
                                                                                           task_hours=[4.0, 3.0])]
    assert wall_hours(rows, 2) == 8.0 and wall_hours(rows, 1) == 16.0 and wall_hours(rows, 10) == 5.0
    # packs of 5 folds: each holds one device for its folds' hours, 56 packs of the 280 folds, 8 at a time
    code, out, _ = _run(["estimate", "paper", "--device", "cuda", "--max-gpus", "8", "--pack", "5", "--json"], capsys)
    packed = json.loads(out)
    assert packed["wall_hours"] >= max(packed["total_hours"] / 8, data["wall_hours"])  # whole packs: never shorter
    code, out, _ = _run(["estimate", "paper", "--device", "cuda", "--max-gpus", "8", "--pack", "5"], capsys)
    assert "for the 280 measured folds (in 56 packs, each pack on one device, 8 at a time" in out
    code, _, err = _run(["estimate", "paper", "--max-gpus", "0"], capsys)
    assert code == 2 and "--max-gpus 0: expected a number of GPUs, at least 1" in err


# ------------------------------------------------------------------ images checked in their registry before anything


def test_submit_names_a_missing_image_and_its_build_command(capsys: pytest.CaptureFixture):
    from components.image import resolve_images

    with registry_double() as reg, kfp_api_double() as api:
        images = resolve_images(f"{reg.host}/intermix")
        reg.has(images.cpu)  # the CPU image was pushed, the CUDA one was not
        code, out, err = _run(["submit", "demo", "--host", api.url, "--store", "s3://b/p", *_images(reg)], capsys)
        assert code == 2, out + err
        line, = err.strip().splitlines()  # one line, no traceback
        assert f"image {images.cuda} is not in its registry" in line
        assert ("docker buildx build -f docker/Dockerfile --target cuda --platform linux/amd64 --build-arg VERSION="
                in line and "--build-arg CUDA_FLAVOUR=cu128" in line and f"--tag {images.cuda} --push ." in line)
        assert not api.requests and not api.runs  # refused before the KFP API was even asked
        asked = {path for method, path, _ in reg.requests if method == "HEAD"}
        assert asked == {f"/v2/intermix/manifests/{ref.rsplit(':', 1)[1]}" for ref in (images.cpu, images.cuda)}

        reg.has(images.cuda)  # pushed: the same command goes through
        code, _, err = _run(["submit", "demo", "--host", api.url, "--store", "s3://b/p", *_images(reg)], capsys)
        assert code == 0, err
        assert len(api.runs) == 1


def test_compile_check_images_and_an_unreachable_registry(tmp_path: Path, capsys: pytest.CaptureFixture):
    with registry_double() as reg:
        code, _, err = _run(["compile", "demo", "-o", str(tmp_path / "a"), "--check-images", *_images(reg)], capsys)
        assert code == 2 and "is not in its registry" in err and "--target cpu" in err  # cpu sorts first
        reg.requests.clear()
        code, _, err = _run(["compile", "demo", "-o", str(tmp_path / "b"), *_images(reg)], capsys)
        assert code == 0, err  # without --check-images compile asks no registry
        assert not reg.requests
        dead = reg.host
    with kfp_api_double() as api:
        argv = ["submit", "demo", "--host", api.url, "--store", "s3://b/p", "--image-repository", f"{dead}/intermix"]
        code, _, err = _run(argv, capsys)
        assert code == 2 and f"cannot reach its registry {dead}" in err and "--skip-image-check" in err
        assert not api.runs
        code, _, err = _run([*argv, "--skip-image-check"], capsys)  # a registry only the cluster reaches
        assert code == 0, err
        assert len(api.runs) == 1


def _complete(line: str, tmp_path: Path, cwd: Path | None = None) -> list[str]:
    """What the shell would offer for `line` (argcomplete's protocol: _ARGCOMPLETE and COMP_LINE in, words out)."""
    out = tmp_path / "completions.txt"
    env = {"PATH": "/usr/bin:/bin", "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli"], cwd=cwd or tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [word.rstrip(" ") for word in out.read_text().split("\x0b")]  # a sole completion ends with a space


def test_shell_completion_offers_subcommands_grids_flags_and_choices(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "notes.txt").write_text("not a grid\n")
    assert _complete("intermix st", tmp_path) == ["status", "study"]
    offered = _complete("intermix run ", tmp_path)  # the grids, then the flags (GRID is optional)
    assert {"demo", "gpu-study", "official", "paper", "mine.yaml", "--workdir"} <= set(offered)
    assert "notes.txt" not in offered
    assert _complete("intermix run mi", tmp_path) == ["mine.yaml"]
    assert _complete("intermix status pa", tmp_path) == ["paper"]
    assert _complete("intermix train --device c", tmp_path) == ["cpu", "cuda", "cuda:0"]
    assert _complete("intermix run --on-silent ", tmp_path) == ["keep", "skip", "error"]
    assert "--from-scratch" in _complete("intermix rerun --f", tmp_path)


def test_train_several_folds_as_a_pack_writes_one_folder_per_fold(tmp_path: Path, capsys: pytest.CaptureFixture):
    """`train --fold 1 2 --out DIR`: DIR/fold1 and DIR/fold2, each what `--fold N --out DIR/foldN` holds; attack works
    on a fold's folder; a fold named twice is refused in one line."""
    from intermix_core.method.checkpoint import load_checkpoint
    from intermix_core.records import load_result
    from intermix_core.testing import demo_subset

    src = demo_subset(tmp_path / "src", per_class_per_fold=1, folds=(1, 2), seconds=2.0)
    data, out = tmp_path / "prep", tmp_path / "pack"
    code, _, err = _run(["prepare", "--dataset", "esc10", "--source", str(src), "--model", "piczak_cnn",
                         "--out", str(data)], capsys)
    assert code == 0, err
    flags = ["train", "--dataset", "esc10", "--model", "piczak_cnn", "--strategy", "bc", "--set", "optim.epochs=1",
             "--set", "optim.batch_size=4", "--set", "num_crops=2", "--set", "attack.epsilons=[0.01]",
             "--data", str(data)]
    code, stdout, err = _run([*flags, "--fold", "1", "1", "--out", str(out)], capsys)
    assert code == 2 and "--fold 1 1: a fold is named twice" in err and not out.exists()
    code, stdout, err = _run([*flags, "--fold", "1", "2", "--out", str(out)], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["esc10/piczak_cnn/bc/fold1", "esc10/piczak_cnn/bc/fold2"]
    assert sorted(p.name for p in out.iterdir()) == ["fold1", "fold2"]
    for fold in (1, 2):
        assert sorted(p.name for p in (out / f"fold{fold}").iterdir() if not p.name.startswith(".")) == [
            "checkpoint.pt", "result.json"]  # and the fold lock, as `--fold N` leaves it
        assert load_result(out / f"fold{fold}" / "result.json").fold == fold
        assert load_checkpoint(out / f"fold{fold}" / "checkpoint.pt")["fold"] == fold
    code, stdout, err = _run(["attack", "--trained", str(out / "fold2"), "--data", str(data)], capsys)
    assert code == 0 and stdout.startswith("esc10/piczak_cnn/bc/fold2:") and "0.01" in stdout, err


def test_a_printed_command_names_the_work_directory_store_and_mlflow_it_came_from() -> None:
    """What `run` and `rerun` print to resume or watch: the defaults stay implicit, the rest is named, no password."""
    from pipelines.commands import _local_command
    from pipelines.workdir import DEFAULT_WORKDIR, Workdir

    assert Workdir(Path(DEFAULT_WORKDIR)).arguments() == []
    work = Workdir(Path("/tmp/my work"), store_uri="s3://bucket/grids", tracking="http://ann:secret@mlflow:5000")
    assert work.arguments() == ["--workdir", "/tmp/my work", "--store", "s3://bucket/grids",
                                "--tracking-uri", "http://***@mlflow:5000"]
    assert _local_command("status", "g1", work) == ("intermix status g1 --workdir '/tmp/my work' --store "
                                                   "s3://bucket/grids --tracking-uri 'http://***@mlflow:5000'")
    assert _local_command("run", "g1", Workdir(Path(DEFAULT_WORKDIR)), grid_arg="demo", sets=["optim.epochs=2"]) == (
        "intermix run demo --set optim.epochs=2")
