"""Experiment grids: datasets x setups (model configurations) x strategies x folds, as one typed spec.

A grid file names the axes; `expand` turns it into one validated `ExperimentConfig` per
dataset x setup x strategy and one `FoldCell` per fold. A setup may name its own strategies (the
paper grid trains Table 2's ablation on EnvNet-v2 + augmentation only). Every mistake (unknown
model, strategy, dataset, fold; a bad override) is reported before anything runs, naming the file
and field.

Grid id: `<name>-<10 hex digits>`, the digits being the SHA-256 of the grid's canonical content
(axes sorted, folds written out, overrides, per-strategy overrides where set, and seed; `name` and `sources` excluded). Reformatting
the YAML, reordering its lists or spelling `folds: all` out does not change it; any change to
what is trained does. See docs/pipelines.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from intermix_core.common.names import check_name, check_pipeline_value
from intermix_core.common.text import short
from intermix_core.common.yamlfile import ConfigError, load_yaml
from intermix_core.config.experiment import ExperimentConfig, format_validation_error, known_model, parse_config
from intermix_core.config.presets import STRATEGIES
from intermix_core.config.sections import DATASETS, MAX_SEED, OnSilent
from intermix_core.models import model_spec
from intermix_core.records import fold_label

GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"  # the packaged grids: intermix_core/grids/*.yaml
# keys a grid sets itself on every cell; overrides may not set them
_AXES = ("dataset", "model", "strategy", "setup", "seed")

class GridError(ConfigError):
    """A grid file or grid selection is invalid; the message names the file, field and valid choices."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetupSpec(_Strict):
    """One model configuration: a table label, the registered model, config overrides, and its own strategies if any."""

    name: str
    model: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    # the strategies this setup trains, instead of the grid's (e.g. Table 2's ablation on EnvNet-v2 + aug only)
    strategies: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "setup name")

    _model = field_validator("model")(classmethod(lambda cls, v: known_model(v)))

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides(v)

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_strategies(v)


def _check_strategies(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("expected at least one strategy")
    for s in v:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {short(s)}; expected one of: {', '.join(STRATEGIES)}")
    return _unique(v, "strategy")


def _check_overrides(v: dict[str, Any]) -> dict[str, Any]:
    axes = [k for k in _AXES if k in v]
    if axes:
        raise ValueError(f"overrides may not set {', '.join(axes)}: the grid's axes set them")
    return v


class GridSpec(_Strict):
    """An experiment grid; every field is validated, and each cell's config is checked by `expand`."""

    name: str = "grid"
    datasets: list[str] = Field(min_length=1)
    setups: list[SetupSpec] = Field(min_length=1)
    strategies: list[str] = Field(min_length=1)
    # written "all", one list for every dataset, or per dataset ("all" or a list); held as dataset -> folds
    folds: dict[str, list[int]] = Field(default="all", validate_default=True)
    overrides: dict[str, Any] = Field(default_factory=dict)
    # per strategy, on top of `overrides` and under each setup's (e.g. evaluating every epoch only the rows the paper
    # published as the best epoch); in the grid id only when set, so grids without it keep their ids
    strategy_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # raw data per dataset: a folder, an s3:// URI, or "demo" (the shipped ESC-10 subset); not in the grid id
    sources: dict[str, str] = Field(default_factory=dict)
    # a clip whose every sample is zero: kept as zeros (with a warning), left out, or an error (intermix_core.data);
    # in the grid id only as 'skip', the one choice that changes the data
    on_silent: OnSilent = "keep"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "grid name")

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: list[str]) -> list[str]:
        for d in v:
            if d not in DATASETS:
                raise ValueError(f"unknown dataset {short(d)}; expected one of: {', '.join(DATASETS)}")
        return _unique(v, "dataset")

    @field_validator("setups", mode="before")
    @classmethod
    def _setup_shorthand(cls, v: Any) -> Any:
        # a bare model name is the setup of that model with no overrides
        if isinstance(v, list):
            return [{"name": s, "model": s} if isinstance(s, str) else s for s in v]
        return v

    @field_validator("setups")
    @classmethod
    def _setups(cls, v: list[SetupSpec]) -> list[SetupSpec]:
        _unique([s.name for s in v], "setup name")
        return v

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        return _check_strategies(v)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides(v)

    @field_validator("strategy_overrides")
    @classmethod
    def _strategy_overrides(cls, v: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        trained = set(info.data.get("strategies") or ()).union(*(s.strategies or () for s in info.data.get("setups") or ()))
        for strategy, over in v.items():
            _check_strategies([strategy])
            if trained and strategy not in trained:
                raise ValueError(f"{short(strategy)} is not trained by this grid; expected one of: {', '.join(sorted(trained))}")
            try:
                _check_overrides(over)
            except ValueError as err:
                raise ValueError(f"{strategy}: {err}") from None
        return v

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, v: Any, info: ValidationInfo) -> dict[str, list[int]]:
        datasets = info.data.get("datasets")
        if datasets is None:  # the datasets themselves were invalid; that error is reported
            return {}
        if isinstance(v, dict):
            for d in v:
                if d not in datasets:
                    raise ValueError(f"{short(d)} is not one of the grid's datasets ({', '.join(datasets)})")
            per = {d: v.get(d, "all") for d in datasets}
        elif v == "all" or isinstance(v, list):
            per = {d: v for d in datasets}
        else:
            raise ValueError(f"expected 'all', a list of fold numbers, or dataset -> 'all' | list, got {short(v)}")
        return {d: _fold_list(d, choice) for d, choice in per.items()}

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        datasets = info.data.get("datasets") or []
        for d, source in v.items():
            if d not in datasets:
                raise ValueError(f"{short(d)} is not one of the grid's datasets ({', '.join(datasets)})")
            check_pipeline_value(source, f"source of {d}")  # it becomes a default of the compiled pipeline
        return v

    def folds_for(self, dataset: str) -> list[int]:
        """The folds this grid trains for `dataset`, sorted."""
        return self.folds[dataset]

    def strategies_for(self, setup: str) -> list[str]:
        """The strategies the setup called `setup` trains: its own list, else the grid's."""
        return self.setup(setup).strategies or self.strategies

    def setup(self, name: str) -> SetupSpec:
        """The setup called `name`; the error lists the grid's setups."""
        for s in self.setups:
            if s.name == name:
                return s
        raise GridError(f"unknown setup {short(name)}; this grid has: {', '.join(s.name for s in self.setups)}")


def _fold_list(dataset: str, choice: Any) -> list[int]:
    n = DATASETS[dataset]["num_folds"]
    if choice == "all":
        return list(range(1, n + 1))
    if not isinstance(choice, list) or not choice or not all(isinstance(f, int) and not isinstance(f, bool) for f in choice):
        raise ValueError(f"{dataset}: expected 'all' or a non-empty list of fold numbers, got {short(choice)}")
    for f in choice:
        if not 1 <= f <= n:
            raise ValueError(f"fold {short(f)} is not a fold of {dataset}; expected one of: {', '.join(map(str, range(1, n + 1)))}")
    return sorted(set(choice))


def _unique(v: list[str], what: str) -> list[str]:
    seen = set()
    for x in v:
        if x in seen:
            raise ValueError(f"{what} {short(x)} is listed twice")
        seen.add(x)
    return v


@dataclass(frozen=True)
class FoldCell:
    """One fold training of the grid: dataset x setup x strategy x fold, with its validated config."""

    dataset: str
    setup: str
    strategy: str
    fold: int
    config: ExperimentConfig

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(dataset, setup, strategy, fold), the key of its FoldResult."""
        return (self.dataset, self.setup, self.strategy, self.fold)

    @property
    def label(self) -> str:
        """'esc10/envnet_v2/intermix/fold3': how the cell is named in task names, paths and runs."""
        return fold_label(self.dataset, self.setup, self.strategy, self.fold)


@dataclass(frozen=True)
class Shard:
    """One dataset x setup: the unit that becomes one KFP run (its strategies x folds as loops)."""

    dataset: str
    setup: str
    model: str
    sample_rate: int
    configs: dict[str, ExperimentConfig]  # strategy -> config
    folds: tuple[int, ...]

    @property
    def label(self) -> str:
        """'esc10/envnet_v2'."""
        return f"{self.dataset}/{self.setup}"


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cell_config(grid: GridSpec, dataset: str, setup: str, strategy: str, source: str = "grid") -> ExperimentConfig:
    """The validated ExperimentConfig of one dataset x setup x strategy (raises GridError naming the cell)."""
    s = grid.setup(setup)
    data = _deep_merge(_deep_merge(grid.overrides, grid.strategy_overrides.get(strategy, {})), s.overrides)
    data.update(dataset=dataset, model=s.model, strategy=strategy, setup=s.name, seed=grid.seed)
    try:
        return parse_config(data, source=f"{source}: {dataset}/{s.name}/{strategy}")
    except ConfigError as err:
        raise GridError(str(err)) from None


def shards(grid: GridSpec, source: str = "grid") -> list[Shard]:
    """The grid's dataset x setup shards, in file order, each with one config per strategy."""
    out = []
    for d in grid.datasets:
        for s in grid.setups:
            configs = {st: cell_config(grid, d, s.name, st, source) for st in grid.strategies_for(s.name)}
            out.append(Shard(d, s.name, s.model, model_spec(s.model).sample_rate, configs, tuple(grid.folds_for(d))))
    return out


def expand(grid: GridSpec, source: str = "grid") -> list[FoldCell]:
    """Every cell of the grid (dataset x setup x strategy x fold), each with its validated config."""
    return [
        FoldCell(sh.dataset, sh.setup, strategy, fold, cfg)
        for sh in shards(grid, source)
        for strategy, cfg in sh.configs.items()
        for fold in sh.folds
    ]


def setup_of_model(grid: GridSpec, model: str, source: str = "--model") -> str:
    """The setup a model name stands for: the setup named after it, else the only setup that uses it."""
    matches = [s.name for s in grid.setups if s.name == model] or [s.name for s in grid.setups if s.model == model]
    if len(matches) != 1:
        choices = ", ".join(f"{s.name} ({s.model})" for s in grid.setups)
        raise GridError(f"{source} {model}: {'no' if not matches else 'more than one'} setup of this grid uses it; "
                        f"give --setup, one of: {choices}")
    return matches[0]


def find_cell(grid: GridSpec, dataset: str, setup: str, strategy: str, fold: int, source: str = "grid") -> FoldCell:
    """The one cell named by its coordinates; errors list the grid's valid choices."""
    if dataset not in grid.datasets:
        raise GridError(f"{source}: dataset {short(dataset)} is not in the grid; expected one of: {', '.join(grid.datasets)}")
    strategies = grid.strategies_for(setup)
    if strategy not in strategies:
        raise GridError(f"{source}: strategy {short(strategy)} is not in the grid for {setup}; expected one of: "
                        f"{', '.join(strategies)}")
    folds = grid.folds_for(dataset)
    if fold not in folds:
        raise GridError(f"{source}: fold {fold} is not in the grid for {dataset}; expected one of: {', '.join(map(str, folds))}")
    return FoldCell(dataset, setup, strategy, fold, cell_config(grid, dataset, setup, strategy, source))


def expected_folds(grid: GridSpec) -> dict[str, list[int]]:
    """dataset -> the folds the grid trains (what aggregation expects)."""
    return {d: grid.folds_for(d) for d in grid.datasets}


def canonical(grid: GridSpec) -> dict[str, Any]:
    """The content the grid id hashes: axes sorted, folds explicit, without name and sources."""
    return {
        "datasets": sorted(grid.datasets),
        "setups": sorted((_canonical_setup(s) for s in grid.setups), key=lambda s: s["name"]),
        "strategies": sorted(grid.strategies),
        "folds": {d: grid.folds_for(d) for d in sorted(grid.datasets)},
        "overrides": grid.overrides,
        **({"strategy_overrides": grid.strategy_overrides} if grid.strategy_overrides else {}),
        "seed": grid.seed,
        **({"on_silent": "skip"} if grid.on_silent == "skip" else {}),
    }


def _canonical_setup(setup: SetupSpec) -> dict[str, Any]:
    """A setup as the grid id hashes it: its own strategies sorted, and left out when it has none (older ids hold)."""
    data = setup.model_dump(mode="json", exclude={"strategies"})
    return data | ({"strategies": sorted(setup.strategies)} if setup.strategies is not None else {})


def grid_id(grid: GridSpec) -> str:
    """Deterministic id `<name>-<sha256 of canonical content, 10 hex>`: same content, same name -> same id."""
    blob = json.dumps(canonical(grid), sort_keys=True, separators=(",", ":"))
    return f"{grid.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def parse_grid(data: Any, source: str = "grid", name: str | None = None) -> GridSpec:
    """Validate a mapping into a GridSpec and every cell config; `name` overrides the file's name."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: expected a mapping with datasets, setups, strategies, got {type(data).__name__}")
    if name is not None:
        data = {**data, "name": name}
    try:
        grid = GridSpec.model_validate(data)
    except ValidationError as err:
        raise GridError(format_validation_error(err, source, model=GridSpec)) from None
    shards(grid, source)  # validates every dataset x setup x strategy config up front
    return grid


def packaged_grids() -> list[str]:
    """Names of the grids shipped with the package (intermix_core/grids/*.yaml)."""
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def resolve_grid_path(path_or_name: str | Path) -> Path:
    """A grid file path, or a packaged grid's file for a bare name like 'paper'."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    if str(path_or_name) in packaged_grids():
        return GRIDS_DIR / f"{path_or_name}.yaml"
    raise GridError(f"{p}: no such grid file; packaged grids: {', '.join(packaged_grids())}")


def load_grid(path_or_name: str | Path, name: str | None = None, overrides: dict[str, Any] | None = None) -> GridSpec:
    """Load and fully validate a grid file (or packaged grid name); errors name the file and field.

    `overrides` (the command line's `--set`) go on top of the grid's overrides and every setup's own, so they win in
    every cell; they are part of the grid, hence of its id.
    """
    path = resolve_grid_path(path_or_name)
    try:
        data = load_yaml(path)
    except ConfigError as err:
        raise GridError(str(err)) from None
    if overrides and isinstance(data, dict):
        data = {**data, "overrides": _deep_merge(data.get("overrides") or {}, overrides)}
        if isinstance(data.get("strategy_overrides"), dict):
            data["strategy_overrides"] = {k: _deep_merge(v, overrides) if isinstance(v, dict) else v
                                          for k, v in data["strategy_overrides"].items()}
        if isinstance(data.get("setups"), list):
            data["setups"] = [{**s, "overrides": _deep_merge(s["overrides"], overrides)}
                              if isinstance(s, dict) and isinstance(s.get("overrides"), dict) else s
                              for s in data["setups"]]
    return parse_grid(data, source=str(path), name=name)
