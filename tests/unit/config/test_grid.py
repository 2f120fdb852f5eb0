"""Grid specs: validation before anything runs (field named, valid choices listed), expansion, grid ids."""

from pathlib import Path

import pytest
import yaml

from intermix_core.config.grid import (
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
    assert {"demo", "paper"} <= set(packaged_grids())


def test_paper_grid_has_480_cells_in_18_runs():
    grid = load_grid("paper")
    cells = expand(grid)
    assert len(cells) == 480
    assert len({c.key for c in cells}) == 480
    assert len(shards(grid)) == 18  # 3 datasets x 6 setups, one KFP run each
    assert {s.name for s in grid.setups} == {"m18", "soundnet5", "envnet", "piczak_cnn", "envnet_v2", "envnet_v2_aug"}
    assert expected_folds(grid) == {"esc10": [1, 2, 3, 4, 5], "esc50": [1, 2, 3, 4, 5], "urbansound8k": list(range(1, 11))}
    aug = next(c for c in cells if c.setup == "envnet_v2_aug")
    assert aug.config.augment.scale and aug.config.augment.gain and aug.config.model == "envnet_v2"
    assert aug.config.setup_name == "envnet_v2_aug"


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
    with pytest.raises(GridError, match="no such grid file; packaged grids: demo, gpu-study, paper"):
        load_grid(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**BASE, "strategies": ["bcc"]}))
    with pytest.raises(GridError, match=r"typo.yaml: strategies: unknown strategy 'bcc'; expected one of: standard, mixup"):
        load_grid(typo)


def test_find_cell_lists_the_grid_choices():
    grid = parse_grid(BASE)
    assert find_cell(grid, "esc10", "piczak_cnn", "intermix", 2).label == "esc10/piczak_cnn/intermix/fold2"
    with pytest.raises(GridError, match="fold 3 is not in the grid for esc10; expected one of: 1, 2"):
        find_cell(grid, "esc10", "piczak_cnn", "intermix", 3)
    with pytest.raises(GridError, match="unknown setup 'm18'; this grid has: piczak_cnn, envnet_v2_aug"):
        find_cell(grid, "esc10", "m18", "intermix", 1)
    with pytest.raises(GridError, match="strategy 'bc' is not in the grid; expected one of: standard, intermix"):
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
