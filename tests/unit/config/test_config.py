"""Configuration: paper defaults, reference schedules, and errors that name the field."""

import re

import pytest

from intermix_core.config import ConfigError, ExperimentConfig, load_config, parse_config


def test_defaults_are_the_papers():
    cfg = ExperimentConfig()
    o = cfg.resolved_optim()
    assert (o.batch_size, o.momentum, o.weight_decay, o.nesterov) == (32, 0.9, 5e-4, True)
    assert cfg.strategy.name == "intermix" and cfg.strategy.layers == (1, 2, 3, 4)
    assert cfg.attack.epsilons == (1e-2, 1e-3, 1e-4, 1e-5)


def test_reference_schedule_and_doubled_epochs():
    std = parse_config({"dataset": "esc50", "model": "envnet_v2", "strategy": "standard"}).resolved_optim()
    mix = parse_config({"dataset": "esc50", "model": "envnet_v2", "strategy": "bc"}).resolved_optim()
    assert (std.epochs, std.lr, std.schedule, std.warmup) == (1000, 0.1, (0.3, 0.6, 0.9), 10)
    assert mix.epochs == 2000
    us = parse_config({"dataset": "urbansound8k", "model": "envnet", "strategy": "standard"}).resolved_optim()
    assert (us.epochs, us.lr) == (400, 0.01)
    fixed = parse_config({"strategy": "intermix", "optim": {"epochs": 7}}).resolved_optim()
    assert fixed.epochs == 7
    # a shorter schedule keeps the paper's ratio: mixing strategies train twice Standard's epochs
    short = {"optim": {"standard_epochs": 18}}
    assert parse_config({"strategy": "standard", **short}).resolved_optim().epochs == 18
    assert parse_config({"strategy": "intermix", **short}).resolved_optim().epochs == 36
    same = {"optim": {"standard_epochs": 18, "double_epochs_for_mixing": False}}
    assert parse_config({"strategy": "bc", **same}).resolved_optim().epochs == 18


@pytest.mark.parametrize(
    "data, field",
    [
        ({"optim": {"batch_size": 1}}, "optim.batch_size"),
        ({"optim": {"schedule": [0.5, 1.5]}}, "optim.schedule"),
        ({"optim": {"lerning_rate": 0.1}}, "optim.lerning_rate"),
        ({"dataset": "esc100"}, "dataset"),
        ({"model": "resnet"}, "model"),
        ({"strategy": "cutmix"}, "strategy"),
        ({"attack": {"epsilons": [-1.0]}}, "attack.epsilons"),
        ({"strategy": {"name": "custom", "mix": True, "layers": [9]}, "model": "envnet"}, "layers"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="my.yaml")
    assert f"my.yaml: {field}" in str(err.value) or (field in str(err.value) and "my.yaml" in str(err.value))


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ConfigError, match="expected one of: .*speechmix"):
        parse_config({"strategy": "cutmix"})
    with pytest.raises(ConfigError, match="expected one of: .*envnet_v2"):
        parse_config({"model": "resnet"})


def test_yaml_overrides_and_strategy_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset: esc50\nmodel: envnet\nstrategy:\n  name: intermix\n  negative_product: signed\nseed: 3\n")
    cfg = load_config(p)
    assert cfg.dataset == "esc50" and cfg.seed == 3
    assert cfg.strategy.interference and cfg.strategy.negative_product == "signed"
    (tmp_path / "bad.yaml").write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_flat_params_hold_the_resolved_config():
    flat = parse_config({"dataset": "esc10", "model": "envnet", "strategy": "bc"}).flat()
    assert flat["optim.epochs"] == "1200" and flat["strategy.name"] == "bc" and flat["setup"] == "envnet"


def test_yaml_anchors_are_allowed_but_expansion_is_bounded(tmp_path):
    p = tmp_path / "anchors.yaml"
    p.write_text("optim: &o {epochs: 3}\nattack: {epsilons: &e [0.1, 0.01]}\nstrategy: {name: bc}\n")
    assert load_config(p).optim.epochs == 3
    # nine levels of nine aliases: 9**9 values once expanded, refused before anything is built
    inner = "&a0 [" + ",".join(["1"] * 9) + "]"
    for i in range(1, 9):
        inner = f"&a{i} [{inner}" + f",*a{i - 1}" * 8 + "]"
    p.write_text(f"attack: {{epsilons: {inner}}}\n")
    with pytest.raises(ConfigError, match=r"anchors.yaml: YAML too large: more than 10000 values"):
        load_config(p)
    p.write_text("optim: &o {epochs: *o}\n")
    with pytest.raises(ConfigError, match="recursive alias"):
        load_config(p)
    p.write_text("a: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)


def test_yaml_size_encoding_and_scalar_problems_name_the_file(tmp_path):
    from intermix_core.common.yamlfile import MAX_YAML_BYTES

    p = tmp_path / "c.yaml"
    p.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"c.yaml: larger than 1 MiB"):
        load_config(p)
    p.write_bytes("dataset: esc10\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8 text \(byte 0xe9 at offset 20\)"):
        load_config(p)
    p.write_text("seed: " + "9" * 5000 + "\n")  # int() refuses more than 4300 digits
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML \(.*4300"):
        load_config(p)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as err:
        parse_config({"model": "x" * 100_000, "strategy": {"name": "custom", "layers": [-1] * 100_000},
                      "k" * 5000: 1, "optim": {"schedule": [2.0] * 100_000}})
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and all(len(line) < 300 for line in lines), lines
    assert any("unknown model 'xxxx" in line for line in lines)


@pytest.mark.parametrize("data, expected", [
    ({"optim": {"lr": float("inf")}}, "optim.lr: Input should be a finite number"),
    ({"optim": {"lr": float("nan")}}, "optim.lr: Input should be a finite number"),
    ({"attack": {"epsilons": [0.1, float("inf")]}}, "attack.epsilons.1: Input should be a finite number"),
    ({"augment": {"gain_db": float("-inf")}}, "augment.gain_db: Input should be a finite number"),
    ({"strategy": {"name": "intermix", "phase_max": float("nan")}}, "strategy.phase_max: Input should be a finite"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
    ({"strategy": {"name": [1]}}, "strategy.name: Input should be a valid string"),
    ({"input_length": 256}, "input_length: 256 samples do not fit envnet_v2: it accepts 60510..66653"),
])
def test_non_finite_absurd_and_mistyped_values_are_refused(data, expected):
    with pytest.raises(ConfigError, match=re.escape(f"config: {expected}")):
        parse_config(data)
    # the largest seed is fine; a huge but finite LR is left to training, which fails the fold at a non-finite loss
    assert parse_config({"seed": 2**32 - 1, "optim": {"lr": 1e30}}).seed == 2**32 - 1


def test_resumes_ignores_only_the_execution_options():
    from intermix_core.config import EXECUTION_OPTIONS

    base = parse_config({"model": "m18", "strategy": "bc"})
    stored = base.model_dump(mode="json")
    assert base.resumes(stored)
    for key in EXECUTION_OPTIONS:  # the same computation, run another way
        assert base.model_copy(update={"optim": base.optim.model_copy(update={key: True})}).resumes(stored)
    assert not parse_config({"model": "m18", "strategy": "bc", "optim": {"precision": "bf16"}}).resumes(stored)
    assert not parse_config({"model": "m18", "strategy": "intermix"}).resumes(stored)
    older = {**stored, "optim": {k: v for k, v in stored["optim"].items() if k != "cudnn_benchmark"}}
    assert base.resumes(older)  # written before the field existed: it takes its default
    assert not base.resumes({**stored, "colour": "blue"}) and not base.resumes("not a config")
