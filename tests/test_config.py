"""Configuration: paper defaults, reference schedules, and errors that name the field."""

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
