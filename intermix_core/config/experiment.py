"""One typed configuration of a fold training: dataset, model, strategy, optimisation, augmentation, attack, seed.

Defaults are the paper's (and, where the paper is silent, BC learning's reference code). YAML files
only override them; unknown keys and impossible values are rejected with the field's name.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from intermix_core.common.names import check_name
from intermix_core.common.text import cut, short
from intermix_core.common.yamlfile import ConfigError, load_yaml
from intermix_core.config.presets import STRATEGIES, reference_schedule, strategy_preset
from intermix_core.config.sections import (
    DATASETS,
    EXECUTION_OPTIONS,
    MAX_CROPS,
    MAX_SEED,
    AttackConfig,
    AugmentConfig,
    DatasetName,
    OptimConfig,
    StrategyConfig,
    Strict,
)
from intermix_core.models import list_models, model_spec
from intermix_core.records import FoldResult


def known_model(name: str) -> str:
    """`name` if it is a registered model; otherwise a ValueError listing the registered ones."""
    if not isinstance(name, str) or name not in list_models():
        raise ValueError(f"unknown model {short(name)}; expected one of: {', '.join(list_models())}")
    return name


class ExperimentConfig(Strict):
    """Everything one fold training needs, with the paper's defaults."""

    dataset: DatasetName = "esc10"
    model: str = "envnet_v2"
    strategy: StrategyConfig = Field(default_factory=lambda: STRATEGIES["intermix"])
    # a name for the model configuration in tables, e.g. "envnet_v2_aug"; defaults to the model name
    setup: str | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    attack: AttackConfig = AttackConfig()
    num_crops: int = Field(default=10, ge=1, le=MAX_CROPS)
    # override the model's input length in samples (small demos); None keeps the model's own.
    # Each model accepts a range (StagedModel.min_input_length..max_input_length), checked below.
    input_length: int | None = Field(default=None, ge=1)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, v: Any) -> Any:
        # a preset by name, a preset with some fields overridden, or (any other name) a custom strategy
        name = v.get("name") if isinstance(v, dict) else None
        if isinstance(v, str) or (isinstance(v, dict) and set(v) == {"name"} and isinstance(name, str)):
            return strategy_preset(v if isinstance(v, str) else name)
        if isinstance(v, dict) and isinstance(name, str) and name in STRATEGIES:
            return {**STRATEGIES[name].model_dump(), **v}
        return v

    _setup = field_validator("setup")(classmethod(lambda cls, v: v if v is None else check_name(v, "setup")))
    _model = field_validator("model")(classmethod(lambda cls, v: known_model(v)))

    @field_validator("strategy")
    @classmethod
    def _layers_fit_model(cls, v: StrategyConfig, info: ValidationInfo) -> StrategyConfig:
        model = info.data.get("model")
        if model is not None and v.mix and max(v.layers) > model_spec(model).max_mix_layer:
            raise ValueError(f"strategy.layers contains {max(v.layers)}, but {model} has mixing points "
                             f"0..{model_spec(model).max_mix_layer}")
        return v

    @field_validator("input_length")
    @classmethod
    def _length_fits_model(cls, v: int | None, info: ValidationInfo) -> int | None:
        model = info.data.get("model")
        if v is None or model is None:
            return v
        m = model_spec(model)
        lo, hi = m.min_input_length, m.max_input_length
        if v < lo or (hi is not None and v > hi):
            accepted = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{v} samples do not fit {model}: it accepts {accepted} (its own length is "
                             f"{m.input_length})")
        return v

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> "ExperimentConfig":
        # a warm-up longer than the run never reaches its LR; the reference's own warm-up (EnvNet-v2: 10 epochs) is
        # let through, so a short demo of a reference schedule (and its resolved config in a checkpoint) stays valid
        warmup, epochs = self.optim.warmup, self.resolved_optim().epochs
        if warmup is not None and epochs is not None and warmup > epochs and \
                warmup != reference_schedule(self.dataset, self.model)[3]:
            raise ValueError(f"optim.warmup: {warmup} warm-up epochs, but the run has {epochs} epochs; expected at "
                             "most the epochs")
        return self

    @property
    def num_classes(self) -> int:
        """Classes of the configured dataset."""
        return DATASETS[self.dataset]["num_classes"]

    @property
    def num_folds(self) -> int:
        """Official cross-validation folds of the configured dataset."""
        return DATASETS[self.dataset]["num_folds"]

    @property
    def crop_length(self) -> int:
        """Input length T in samples: the override, else the model's own."""
        return self.input_length or model_spec(self.model).input_length

    @property
    def setup_name(self) -> str:
        """The model-configuration label used in tables and run names."""
        return self.setup or self.model

    def resolved_optim(self) -> OptimConfig:
        """Optimisation settings with reference defaults filled in and epochs doubled for mixing."""
        epochs, lr, schedule, warmup = reference_schedule(self.dataset, self.model)
        o = self.optim
        if o.epochs is None:
            base = o.standard_epochs or epochs
            epochs = base * (2 if (self.strategy.mix and o.double_epochs_for_mixing) else 1)
        else:
            epochs = o.epochs
        return o.model_copy(
            update=dict(
                epochs=epochs,
                lr=o.lr if o.lr is not None else lr,
                schedule=o.schedule if o.schedule is not None else schedule,
                warmup=o.warmup if o.warmup is not None else warmup,
            )
        )

    def on_paper_schedule(self) -> bool:
        """True when epochs, LR and its steps, warmup and the crop length are the reference's (what the paper's numbers need)."""
        epochs, lr, schedule, warmup = reference_schedule(self.dataset, self.model)
        o = self.resolved_optim()
        want = epochs * (2 if (self.strategy.mix and o.double_epochs_for_mixing) else 1)
        return (o.epochs, o.lr, tuple(o.schedule or ()), o.warmup, self.input_length) == (
            want, lr, tuple(schedule), warmup, None)

    def resolved(self) -> "ExperimentConfig":
        """This config with every reference default made explicit (what travels with a run)."""
        return self.model_copy(update=dict(optim=self.resolved_optim(), setup=self.setup_name))

    def resumes(self, stored: Any) -> bool:
        """Whether a checkpoint written under the config `stored` (its JSON) continues a run of this one.

        Equal but for the execution options (EXECUTION_OPTIONS: the same computation, run faster or slower), with
        fields added since the checkpoint was written at their defaults; a config that no longer validates does not.
        """
        try:
            other = ExperimentConfig.model_validate(stored)
        except (ValidationError, TypeError):
            return False

        def essence(cfg: ExperimentConfig) -> dict[str, Any]:
            data = cfg.model_dump(mode="json")
            for key in EXECUTION_OPTIONS:
                data["optim"].pop(key)
            return data

        return essence(self) == essence(other)

    def flat(self) -> dict[str, str]:
        """Flattened `section.key -> str(value)` view (for MLflow params)."""
        out: dict[str, str] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = str(list(obj) if isinstance(obj, tuple) else obj)

        walk("", self.resolved().model_dump(mode="json"))
        return out


def _keys_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at `loc` (a path of field names and list indexes) of `model` accepts; [] if unknown."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        kinds = [field.annotation, *typing.get_args(field.annotation)]
        kinds += [k for a in kinds[1:] for k in typing.get_args(a)]  # list[Setup] | None and the like
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def format_validation_error(err: ValidationError, source: str, max_lines: int = 20,
                            model: type[BaseModel] | None = None) -> str:
    """One short line per problem: `source: field.path: message` (long keys and values cut); with the `model`
    validated, an unknown key close to a known one is followed by `did you mean optim.epochs?`."""
    lines = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(p if isinstance(p, str) and len(p) <= 60 else short(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            key = e["loc"][-1] if e["loc"] else None
            close = difflib.get_close_matches(key, _keys_at(model, e["loc"][:-1]), n=1) if isinstance(key, str) else []
            if close:
                msg += f"; did you mean {'.'.join(str(p) for p in (*e['loc'][:-1], close[0]))}?"
        lines.append(cut(f"{source}: {loc}: {msg}"))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"{source}: ... and {len(lines) - max_lines} more problems"]
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a mapping into an ExperimentConfig, raising ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, model=ExperimentConfig)) from None


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Load an ExperimentConfig from YAML (keys override the defaults), then apply `overrides`."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return parse_config({**data, **overrides}, source=str(path))


def _percent_problem(what: str, value: float | None, nan_ok: bool = False) -> str | None:
    if value is None or (nan_ok and math.isnan(value)):
        return None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        return f"{what} {value!r} is not a percentage (expected 0..100)"
    return None


def result_problem(result: FoldResult) -> str | None:
    """Why a fold result read from a file or a store cannot be published (None if it can).

    Its names must be known (dataset, model) or valid (setup, strategy, grid id), its fold one of
    its dataset's, every error a percentage, its confusion matrix the dataset's size: a crafted
    `result.json` (`test_error: -50`, fold 999 of ESC-10) never reaches a table. A NaN test error is
    let through: the tables report it as a failed fold.
    """
    try:
        if result.dataset not in DATASETS:
            return f"unknown dataset {short(result.dataset)}; expected one of: {', '.join(DATASETS)}"
        known_model(result.model)
        check_name(result.setup, "setup")
        check_name(result.strategy, "strategy")
        if result.grid_id is not None:
            check_name(result.grid_id, "grid id")
    except ValueError as err:
        return str(err)
    info = DATASETS[result.dataset]
    if not 1 <= result.fold <= info["num_folds"]:
        return f"fold {result.fold} is not a fold of {result.dataset} (1..{info['num_folds']})"
    if not 0 <= result.seed <= MAX_SEED:
        return f"seed {result.seed} is out of range (0..{MAX_SEED})"
    checks = [("test_error", result.test_error, True), ("best_val_error", result.best_val_error, False)]
    for name, values in (("fgsm", result.fgsm), ("fgsm_crop", result.fgsm_crop)):
        checks += [(f"{name}[{eps!r}]", v, False) for eps, v in values.items()]
        for eps in values:
            try:
                ok = 0.0 <= float(eps) <= 2.0
            except ValueError:
                ok = False
            if not ok:
                return f"{name} epsilon {short(eps)} is not an epsilon (expected a number in 0..2)"
    for h in result.history:
        checks += [(f"history epoch {h.epoch} train_error", h.train_error, False),
                   (f"history epoch {h.epoch} val_error", h.val_error, False)]
    for name, value, nan_ok in checks:
        if problem := _percent_problem(name, value, nan_ok):
            return problem
    for name, value in (("train_seconds", result.train_seconds), ("samples_per_second", result.samples_per_second)):
        if value is not None and (not math.isfinite(value) or value < 0):
            return f"{name} {value!r} is not a non-negative number"
    classes = info["num_classes"]
    if result.confusion is not None and (len(result.confusion) != classes or any(
            len(row) != classes or any(c < 0 for c in row) for row in result.confusion)):
        return f"the confusion matrix is not {classes} x {classes} counts"
    return None
