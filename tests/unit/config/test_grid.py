"""Grid specs: validation before anything runs (field named, valid choices listed), expansion, grid ids."""

import json
from pathlib import Path

import pytest
import yaml

from intermix_core.config.grid import (
    GRIDS_DIR,
    GridError,
    expand,
    expected_folds,
    find_cell,
    grid_id,
    load_grid,
    packaged_grids,
    parse_grid,
    shards,
)
from intermix_core.results.paper import PUBLISHED_PROTOCOL

BASE = {
    "name": "tiny",
    "datasets": ["esc10"],
    "setups": ["piczak_cnn", {"name": "envnet_v2_aug", "model": "envnet_v2", "overrides": {"augment": {"scale": True}}}],
    "strategies": ["standard", "intermix"],
    "folds": [1, 2],
}


def _error(data: dict, source: str = "grid.yaml") -> str:
    with pytest.raises(GridError) as info:
        parse_grid(data, source=source)
    return str(info.value)


def test_packaged_grids_load():
    assert {"demo", "official", "paper", "sensitivity"} <= set(packaged_grids())


def test_paper_grid_makes_tables_1_2_and_3_in_520_cells_of_18_runs():
    grid = load_grid("paper")
    cells = expand(grid)
    assert len(cells) == 520 and len({c.key for c in cells}) == 520
    assert len(shards(grid)) == 18  # 3 datasets x 6 setups, one KFP run each
    assert {s.name for s in grid.setups} == {"m18", "soundnet5", "envnet", "piczak_cnn", "envnet_v2", "envnet_v2_aug"}
    assert expected_folds(grid) == {"esc10": [1, 2, 3, 4, 5], "esc50": [1, 2, 3, 4, 5], "urbansound8k": list(range(1, 11))}
    aug = next(c for c in cells if c.setup == "envnet_v2_aug")
    assert aug.config.augment.scale and aug.config.augment.gain and aug.config.model == "envnet_v2"
    assert aug.config.setup_name == "envnet_v2_aug"
    # Table 1: the four strategies on every setup; Table 2: the ablation on EnvNet-v2 + augmentation only,
    # every fold of every dataset (40 fold trainings); Table 3: FGSM after every fold
    table1 = {(c.dataset, c.setup) for c in cells if c.strategy in ("standard", "bc", "speechmix", "intermix")}
    assert len(table1) == 18 and len(cells) - 40 == 480
    ablation = [c for c in cells if c.strategy in ("intermix_vanilla", "intermix_hidden")]
    assert {c.setup for c in ablation} == {"envnet_v2_aug"} and len(ablation) == 40
    assert {(c.dataset, c.strategy) for c in ablation} == {(d, s) for d in ("esc10", "esc50", "urbansound8k")
                                                            for s in ("intermix_vanilla", "intermix_hidden")}
    assert all(c.config.optim.batch_size == 32 for c in cells)  # the paper's; the grid file names the switch to 64
    assert "# overrides: {optim: {batch_size: 64}}" in (GRIDS_DIR / "paper.yaml").read_text()


def test_paper_grid_evaluates_every_epoch_exactly_the_rows_published_as_the_best_epoch():
    """InterMix, Speechmix and Table 2's rows were published as the best epoch: every epoch; Standard/BC every 10th."""
    cells = expand(load_grid("paper"))
    every = {c.strategy: set() for c in cells}
    for c in cells:
        every[c.strategy].add(c.config.optim.eval_every)
    best = {s for s in every if PUBLISHED_PROTOCOL[s][0] == "best"}
    assert best == {"speechmix", "intermix", "intermix_vanilla", "intermix_hidden"}
    assert {s: e for s, e in every.items()} == {s: ({1} if s in best else {10}) for s in every}
    aug = [c for c in cells if c.setup == "envnet_v2_aug" and c.strategy == "intermix"]
    assert all(c.config.augment.scale and c.config.optim.eval_every == 1 for c in aug)  # setup and strategy both apply


def test_strategy_overrides_apply_to_their_strategy_only_and_are_checked():
    grid = parse_grid({**BASE, "strategy_overrides": {"intermix": {"optim": {"eval_every": 1}}}})
    assert {(c.strategy, c.config.optim.eval_every) for c in expand(grid)} == {("standard", 10), ("intermix", 1)}
    assert grid_id(grid) != grid_id(parse_grid(BASE))
    assert grid_id(parse_grid({**BASE, "strategy_overrides": {}})) == grid_id(parse_grid(BASE))  # older ids hold
    from pipelines.grid_pipeline import grid_json  # what travels to the aggregate task and into the store

    assert parse_grid(json.loads(grid_json(grid))) == grid
    assert "strategy_overrides" not in json.loads(grid_json(parse_grid(BASE)))  # compiled YAML of older grids unchanged
    assert "grid.yaml: strategy_overrides: 'bc' is not trained by this grid; expected one of: intermix, standard" in _error(
        {**BASE, "strategy_overrides": {"bc": {"optim": {"eval_every": 1}}}})
    assert "unknown strategy 'intermx'" in _error({**BASE, "strategy_overrides": {"intermx": {}}})
    assert "intermix: overrides may not set strategy" in _error(
        {**BASE, "strategy_overrides": {"intermix": {"strategy": "bc"}}})
    assert "esc10/piczak_cnn/intermix: optim.eval_every" in _error(
        {**BASE, "strategy_overrides": {"intermix": {"optim": {"eval_every": 0}}}})


def test_command_line_overrides_win_over_strategy_overrides(tmp_path: Path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "strategy_overrides": {"intermix": {"optim": {"eval_every": 1}}}}))
    tuned = load_grid(path, overrides={"optim": {"eval_every": 5}})
    assert {c.config.optim.eval_every for c in expand(tuned)} == {5}


def test_the_batch_size_switch_of_the_paper_grid_is_one_line():
    text = (GRIDS_DIR / "paper.yaml").read_text().replace("# overrides: {optim: {batch_size: 64}}",
                                                          "overrides: {optim: {batch_size: 64}}")
    grid = parse_grid(yaml.safe_load(text))
    assert {c.config.optim.batch_size for c in expand(grid)} == {64} and grid_id(grid) != grid_id(load_grid("paper"))


def test_official_grid_puts_the_authors_code_next_to_the_paper_on_envnet_v2():
    grid = load_grid("official")
    cells = expand(grid)
    assert len(cells) == 160
    assert {c.strategy for c in cells} == {"speechmix", "speechmix_official", "intermix", "intermix_official"}
    assert {c.config.model for c in cells} == {"envnet_v2"} and {c.setup for c in cells} == {"envnet_v2", "envnet_v2_aug"}
    # the authors' protocol: the test fold after every epoch (their main.py keeps the best of all epochs)
    assert {c.config.optim.eval_every for c in cells} == {1}
    assert {c.config.resolved_optim().update_rule for c in cells} == {"chainer"}


def test_sensitivity_grid_pairs_each_one_knob_cell_with_its_paper_preset():
    cells = expand(load_grid("sensitivity"))
    assert len(cells) == 120 and {c.setup for c in cells} == {"envnet_v2_aug"}
    assert {c.strategy for c in cells} == {"intermix", "intermix_detached", "intermix_vanilla", "intermix_vanilla_signed",
                                           "intermix_hidden", "intermix_hidden_linear"}
    assert {c.config.optim.eval_every for c in cells} == {1}
    assert all(c.config.augment.scale and c.config.augment.gain for c in cells)


def test_a_setup_may_name_its_own_strategies():
    data = {**BASE, "setups": ["piczak_cnn", {"name": "aug", "model": "envnet_v2", "strategies": ["bc", "intermix_vanilla"]}]}
    grid = parse_grid(data)
    assert {(c.setup, c.strategy) for c in expand(grid)} == {
        ("piczak_cnn", "standard"), ("piczak_cnn", "intermix"), ("aug", "bc"), ("aug", "intermix_vanilla")}
    assert find_cell(grid, "esc10", "aug", "bc", 1).config.strategy.name == "bc"
    with pytest.raises(GridError, match="strategy 'intermix' is not in the grid for aug; expected one of: bc, intermix_vanilla"):
        find_cell(grid, "esc10", "aug", "intermix", 1)
    # its list is part of what is trained (the grid id), in any order; a setup without one keeps older ids
    reordered = {**data, "setups": ["piczak_cnn", {"name": "aug", "model": "envnet_v2",
                                                    "strategies": ["intermix_vanilla", "bc"]}]}
    assert grid_id(parse_grid(reordered)) == grid_id(grid) != grid_id(parse_grid(
        {**data, "setups": ["piczak_cnn", {"name": "aug", "model": "envnet_v2", "strategies": ["bc"]}]}))
    assert "setups.1.strategies: unknown strategy 'bcc'" in _error(
        {**BASE, "setups": ["piczak_cnn", {"name": "aug", "model": "envnet_v2", "strategies": ["bcc"]}]})
    assert "listed twice" in _error({**BASE, "setups": [{"name": "a", "model": "m18", "strategies": ["bc", "bc"]}]})


def test_demo_grid_is_small_and_uses_the_shipped_data():
    grid = load_grid("demo")
    cells = expand(grid)
    assert len(cells) == 8
    assert {c.strategy for c in cells} == {"standard", "bc", "speechmix", "intermix"}
    assert grid.sources == {"esc10": "demo"}
    epochs = {c.strategy: c.config.resolved_optim().epochs for c in cells}
    assert epochs["standard"] <= 24 and all(epochs[s] == 2 * epochs["standard"] for s in ("bc", "speechmix", "intermix"))


def test_expand_merges_overrides_and_axes():
    data = {**BASE, "overrides": {"optim": {"epochs": 2, "lr": 0.5}}, "seed": 7}
    data["setups"] = [{"name": "pz", "model": "piczak_cnn", "overrides": {"optim": {"epochs": 3}}}]
    cells = expand(parse_grid(data))
    assert len(cells) == 4
    cfg = cells[0].config
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.seed, cfg.setup, cfg.model) == (3, 0.5, 7, "pz", "piczak_cnn")
    assert cells[0].label == "esc10/pz/standard/fold1"


@pytest.mark.parametrize(
    "change, field, names",
    [
        ({"setups": ["piczak_cnn", {"name": "x", "model": "resnet50"}]}, "setups.1.model", ["unknown model 'resnet50'", "envnet_v2", "m18"]),
        ({"strategies": ["standard", "intermixx"]}, "strategies", ["unknown strategy 'intermixx'", "speechmix", "bc"]),
        ({"datasets": ["esc100"]}, "datasets", ["unknown dataset 'esc100'", "esc50", "urbansound8k"]),
        ({"folds": [1, 6]}, "folds", ["fold 6 is not a fold of esc10", "1, 2, 3, 4, 5"]),
        ({"folds": {"esc50": [1]}}, "folds", ["'esc50' is not one of the grid's datasets"]),
        ({"overrides": {"model": "m18"}}, "overrides", ["may not set model"]),
        ({"colour": "blue"}, "colour", ["unknown key"]),
        ({"setups": ["piczak_cnn", "piczak_cnn"]}, "setups", ["listed twice"]),
        ({"name": "My Grid"}, "name", ["lower-case"]),
        ({"sources": {"esc50": "/data"}}, "sources", ["'esc50' is not one of the grid's datasets"]),
    ],
)
def test_invalid_grid_names_file_field_and_choices(change, field, names):
    msg = _error({**BASE, **change})
    assert msg.startswith(f"grid.yaml: {field}:"), msg
    for name in names:
        assert name in msg


def test_invalid_cell_config_names_the_cell_and_field():
    msg = _error({**BASE, "overrides": {"optim": {"epochs": 0}}})
    assert "grid.yaml: esc10/piczak_cnn/standard: optim.epochs" in msg
    msg = _error({**BASE, "overrides": {"optim": {"epoch": 3}}})
    assert "optim.epoch: unknown key" in msg


def test_load_grid_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [esc10\n")
    with pytest.raises(GridError, match="bad.yaml: not valid YAML"):
        load_grid(bad)
    with pytest.raises(GridError, match="no such grid file; packaged grids: demo, gpu-study, official, paper, sensitivity"):
        load_grid(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**BASE, "strategies": ["bcc"]}))
    with pytest.raises(GridError, match=r"typo.yaml: strategies: unknown strategy 'bcc'; expected one of: standard, mixup"):
        load_grid(typo)


def test_command_line_overrides_win_in_every_cell_and_change_the_grid_id(tmp_path: Path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "overrides": {"optim": {"epochs": 2, "lr": 0.5}}}))
    plain = load_grid(path)
    tuned = load_grid(path, overrides={"optim": {"cudnn_benchmark": True, "epochs": 4}})
    for cell in expand(tuned):  # the setup with its own overrides (augment) gets them too, and keeps its own
        assert (cell.config.optim.cudnn_benchmark, cell.config.optim.epochs, cell.config.optim.lr) == (True, 4, 0.5)
    assert expand(tuned)[-1].config.augment.scale is True
    assert not any(c.config.optim.cudnn_benchmark for c in expand(plain))
    assert grid_id(tuned) != grid_id(plain) and load_grid(path, overrides={}) == plain
    with pytest.raises(GridError, match="optim.cudnn_benchmrk: unknown key"):
        load_grid(path, overrides={"optim": {"cudnn_benchmrk": True}})


def test_find_cell_lists_the_grid_choices():
    grid = parse_grid(BASE)
    assert find_cell(grid, "esc10", "piczak_cnn", "intermix", 2).label == "esc10/piczak_cnn/intermix/fold2"
    with pytest.raises(GridError, match="fold 3 is not in the grid for esc10; expected one of: 1, 2"):
        find_cell(grid, "esc10", "piczak_cnn", "intermix", 3)
    with pytest.raises(GridError, match="unknown setup 'm18'; this grid has: piczak_cnn, envnet_v2_aug"):
        find_cell(grid, "esc10", "m18", "intermix", 1)
    with pytest.raises(GridError, match="strategy 'bc' is not in the grid for piczak_cnn; expected one of: standard, intermix"):
        find_cell(grid, "esc10", "piczak_cnn", "bc", 1)


def test_grid_id_is_deterministic_and_content_addressed():
    gid = grid_id(parse_grid(BASE))
    assert gid == grid_id(parse_grid(dict(BASE)))
    assert gid.startswith("tiny-") and len(gid) == len("tiny-") + 10
    # order, spelling out folds and data locations do not change what is trained
    reordered = {**BASE, "strategies": ["intermix", "standard"], "setups": list(reversed(BASE["setups"]))}
    assert grid_id(parse_grid(reordered)) == gid
    assert grid_id(parse_grid({**BASE, "sources": {"esc10": "demo"}})) == gid
    full = {**BASE, "folds": "all"}
    assert grid_id(parse_grid(full)) == grid_id(parse_grid({**full, "folds": [1, 2, 3, 4, 5]}))
    # what is trained, and the user-given name, do
    assert grid_id(parse_grid({**BASE, "seed": 1})) != gid
    assert grid_id(parse_grid({**BASE, "overrides": {"optim": {"epochs": 2}}})) != gid
    assert grid_id(parse_grid({**BASE, "folds": [1]})) != gid
    assert grid_id(parse_grid(BASE, name="other")) == "other-" + gid.split("-", 1)[1]
