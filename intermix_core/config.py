"""One typed configuration: dataset, model, strategy, optimisation, augmentation, attack, seed.

Defaults are the paper's (and, where the paper is silent, BC learning's reference code).
YAML files only override them; unknown keys and impossible values are rejected with the
field's name. Strategies are data: every method in the paper is a point of `StrategyConfig`.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DATASETS: dict[str, dict[str, int]] = {
    "esc10": {"num_classes": 10, "num_folds": 5},
    "esc50": {"num_classes": 50, "num_folds": 5},
    "urbansound8k": {"num_classes": 10, "num_folds": 10},
}
# clips per official fold (ESC-50 and ESC-10: equal folds; UrbanSound8K: its metadata's fold column)
FOLD_CLIPS: dict[str, tuple[int, ...]] = {
    "esc10": (80,) * 5,
    "esc50": (400,) * 5,
    "urbansound8k": (873, 888, 925, 990, 936, 823, 838, 806, 816, 837),
}
DatasetName = Literal["esc10", "esc50", "urbansound8k"]
# seeds are 0..2**32 - 1 (numpy's seed range); fold seeds (seed * 1000 + fold) then stay far below 2**63
MAX_SEED = 2**32 - 1
# what a clip whose every sample is zero does to a preparation (intermix_core.data, docs/data.md):
# kept as its zeros with one warning, left out, or an error
OnSilent = Literal["keep", "skip", "error"]
ON_SILENT: tuple[str, ...] = typing.get_args(OnSilent)

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 60, 60, 40, 8, 8, 6
_SHORT.maxlevel = 3


def short(value: Any) -> str:
    """repr(value) cut to a few dozen characters: how error messages show values a user wrote."""
    return _SHORT.repr(value)


def cut(text: str, limit: int = 400) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class _Strict(BaseModel):
    # allow_inf_nan=False: inf and nan are refused in every float field ("Input should be a finite number")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StrategyConfig(_Strict):
    """One mixing strategy as data (docs/method.md has the table of presets)."""

    name: str
    mix: bool = False
    # "r": weights r, 1-r (mixup, eq. 1); "p": the sound mixing ratio p from A-weighted levels (eq. 3)
    weighting: Literal["r", "p"] = "p"
    # divide by sqrt(w^2 + (1-w)^2) (eqs. 3-4)
    normalize: bool = True
    # add the interference term 2 sqrt(h_i' h_j') cos(phi) (eq. 5)
    interference: bool = False
    # the layer set L: one layer drawn per batch, uniformly; 0 is the waveform
    layers: tuple[int, ...] = (0,)
    # half-width of the phase distribution: phi_i, phi_j ~ U[-phase_max, phase_max]
    phase_max: float = Field(default=1.5707963267948966, ge=0.0)
    # sqrt of a negative product in eq. 5: "zero" clamps it to 0, "signed" uses sign(ab) sqrt(|ab|)
    negative_product: Literal["zero", "signed"] = "zero"
    # the sqrt in eq. 5 is exact in the forward pass; its backward slope 1/(2 sqrt(ab)) is capped at
    # 1/(2 sqrt(sqrt_eps)) below sqrt_eps, so gradients stay finite at every ReLU zero
    sqrt_eps: float = Field(default=1e-6, gt=0.0)
    # rotate each waveform's phase by its own phi_i before the model (section 3.1: "phase shifted data
    # samples"); the paper presets with interference set it, `intermix_no_rotation` is the ablation
    rotate_input_phase: bool = False
    # partners: "in_batch" (a random other-class sample of the same batch, B rows per step) or
    # "adjacent_pairs" (the authors' code: pairs drawn as (i, j) of different classes, rows 2k and 2k+1
    # mix with each other, optim.batch_size pairs = 2 x batch_size rows per step, N/2 pairs per epoch)
    pairing: Literal["in_batch", "adjacent_pairs"] = "in_batch"
    # authors'-code switches (all off for the paper)
    gains_on: Literal["input", "hidden"] = "input"
    detach_interference: bool = False

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(m < 0 for m in v):
            raise ValueError(f"layers must be a non-empty set of indices >= 0, got {short(list(v))}")
        return tuple(sorted(set(v)))


PAPER_L = (1, 2, 3, 4)

STRATEGIES: dict[str, StrategyConfig] = {
    s.name: s
    for s in [
        StrategyConfig(name="standard"),
        StrategyConfig(name="mixup", mix=True, weighting="r", normalize=False),
        StrategyConfig(name="bc", mix=True, weighting="p"),
        StrategyConfig(name="speechmix", mix=True, weighting="p", layers=PAPER_L),
        StrategyConfig(
            name="intermix", mix=True, weighting="p", interference=True, layers=PAPER_L, rotate_input_phase=True
        ),
        # Table 2 ablations: "Vanilla InterMix" (r-weighting, input space) and "+ Hidden Mixup"
        StrategyConfig(
            name="intermix_vanilla", mix=True, weighting="r", normalize=False, interference=True,
            rotate_input_phase=True,
        ),
        StrategyConfig(
            name="intermix_hidden", mix=True, weighting="r", normalize=False, interference=True, layers=PAPER_L,
            rotate_input_phase=True,
        ),
        # not in the paper: InterMix with phi only in cos(phi), the waveforms left unshifted
        StrategyConfig(name="intermix_no_rotation", mix=True, weighting="p", interference=True, layers=PAPER_L),
        # the authors' public code (scaleracademy/InterMix-ICASSP), where it departs from the paper
        StrategyConfig(
            name="intermix_official",
            mix=True,
            weighting="p",
            normalize=False,
            interference=True,
            layers=PAPER_L,  # their README runs --eligible 1 2 3 4
            gains_on="hidden",
            rotate_input_phase=True,
            detach_interference=True,
            pairing="adjacent_pairs",
        ),
    ]
}
# optimisation defaults that come with a preset (a value the user sets explicitly wins)
STRATEGY_OPTIM_DEFAULTS: dict[str, dict[str, Any]] = {"intermix_official": {"update_rule": "chainer"}}


def known_model(name: str) -> str:
    """`name` if it is a registered model; otherwise a ValueError listing the registered ones."""
    from intermix_core.models import list_models

    if not isinstance(name, str) or name not in list_models():
        raise ValueError(f"unknown model {short(name)}; expected one of: {', '.join(list_models())}")
    return name


def strategy_preset(name: str) -> StrategyConfig:
    """The named strategy preset; the error lists the valid names."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown strategy {short(name)}; expected one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


# Reference schedules (BC learning code, standard learning; mixing strategies double the epochs).
# Models other than EnvNet-v2 use EnvNet's schedule: the paper gives none for them.
_SCHEDULES: dict[tuple[str, str], tuple[int, float, tuple[float, ...], int]] = {
    ("esc50", "envnet"): (600, 0.01, (0.5, 0.75), 0),
    ("esc10", "envnet"): (600, 0.01, (0.5, 0.75), 0),
    ("urbansound8k", "envnet"): (400, 0.01, (0.5, 0.75), 0),
    ("esc50", "envnet_v2"): (1000, 0.1, (0.3, 0.6, 0.9), 10),
    ("esc10", "envnet_v2"): (600, 0.01, (0.5, 0.75), 0),
    ("urbansound8k", "envnet_v2"): (600, 0.1, (0.3, 0.6, 0.9), 10),
}


# PiczakCNN has no batch norm: at EnvNet's LR 0.01 its training collapsed to the class prior within
# two epochs here (Standard, Speechmix and InterMix alike, ESC-10); at 0.002 it trains.
_MODEL_LR = {"piczak_cnn": 0.002}


def reference_schedule(dataset: str, model: str) -> tuple[int, float, tuple[float, ...], int]:
    """(epochs for standard learning, LR, schedule, warm-up) from the reference code."""
    family = "envnet_v2" if model == "envnet_v2" else "envnet"
    epochs, lr, schedule, warmup = _SCHEDULES[(dataset, family)]
    return epochs, _MODEL_LR.get(model, lr), schedule, warmup


class OptimConfig(_Strict):
    """Nesterov SGD and the step schedule. None means: take the reference value."""

    # epochs of this run as given; None: standard_epochs (else the reference value), doubled for mixing
    epochs: int | None = Field(default=None, ge=1)
    # Standard learning's epochs for a shorter schedule than the reference; mixing strategies then train
    # twice as many (with double_epochs_for_mixing), as the paper does. Ignored when `epochs` is set.
    standard_epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0.0)
    schedule: tuple[float, ...] | None = None
    warmup: int | None = Field(default=None, ge=0)
    double_epochs_for_mixing: bool = True
    batch_size: int = Field(default=32, ge=2)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    nesterov: bool = True
    # "pytorch": torch.optim.SGD (Nesterov); "chainer": Chainer's NesterovAG, which both reference
    # repositories use (intermix_core.optim); None: the strategy preset's default, else "pytorch"
    update_rule: Literal["pytorch", "chainer"] | None = None
    # "bf16": autocast the model's forward pass to bfloat16 (mixing, levels and loss stay float32)
    precision: Literal["fp32", "bf16"] = "fp32"
    # GPU-speed options, off until measured on the GPU that runs the grid (benchmarks/bench_options.py):
    # channels-last memory for the 2-D convolutions (EnvNet, EnvNet-v2, PiczakCNN), and each stage and the
    # head compiled with torch.compile (mixing between stages stays eager). Results are the same to float
    # tolerance; checkpoints are interchangeable.
    channels_last: bool = False
    compile: bool = False
    # 10-crop evaluation of the test fold every N epochs (and always at the last epoch)
    eval_every: int = Field(default=10, ge=1)
    # checkpoint every N epochs (and at the last epoch)
    checkpoint_every: int = Field(default=5, ge=1)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and any(not 0.0 < s < 1.0 for s in v):
            raise ValueError(f"schedule entries are fractions of the epochs in (0, 1), got {short(list(v))}")
        return v


class AugmentConfig(_Strict):
    """Scale and gain augmentation (the paper's 'EnvNet-v2 + augmentation')."""

    scale: bool = False
    scale_max: float = Field(default=1.25, ge=1.0)  # factor = scale_max ** U(-1, 1)
    gain: bool = False
    gain_db: float = Field(default=6.0, ge=0.0)  # gain = 10 ** (U(-gain_db, gain_db) / 20)


class AttackConfig(_Strict):
    """FGSM (eq. 7) on the test crops."""

    epsilons: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)
    # clip x_adv to [-1, 1], the range of a 16-bit recording divided by 32,768 (the paper is silent)
    clip: bool = True

    @field_validator("epsilons")
    @classmethod
    def _eps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(e < 0 for e in v):
            raise ValueError(f"epsilons must be >= 0, got {short(list(v))}")
        return v


class ExperimentConfig(_Strict):
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
    num_crops: int = Field(default=10, ge=1)
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

    _model = field_validator("model")(classmethod(lambda cls, v: known_model(v)))

    @field_validator("strategy")
    @classmethod
    def _layers_fit_model(cls, v: StrategyConfig, info: ValidationInfo) -> StrategyConfig:
        from intermix_core.models import model_class

        model = info.data.get("model")
        if model is not None and v.mix and max(v.layers) > model_class(model).max_mix_layer:
            raise ValueError(f"strategy.layers contains {max(v.layers)}, but {model} has mixing points "
                             f"0..{model_class(model).max_mix_layer}")
        return v

    @field_validator("input_length")
    @classmethod
    def _length_fits_model(cls, v: int | None, info: ValidationInfo) -> int | None:
        from intermix_core.models import model_class

        model = info.data.get("model")
        if v is None or model is None:
            return v
        m = model_class(model)
        lo, hi = m.min_input_length, m.max_input_length
        if v < lo or (hi is not None and v > hi):
            accepted = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{v} samples do not fit {model}: it accepts {accepted} (its own length is "
                             f"{m.input_length})")
        return v

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
        from intermix_core.models import model_class

        return self.input_length or model_class(self.model).input_length

    @property
    def setup_name(self) -> str:
        """The model-configuration label used in tables and run names."""
        return self.setup or self.model

    def resolved_optim(self) -> OptimConfig:
        """Optimisation settings with reference defaults filled in and epochs doubled for mixing."""
        epochs, lr, schedule, warmup = reference_schedule(self.dataset, self.model)
        o = self.optim
        rule = o.update_rule or STRATEGY_OPTIM_DEFAULTS.get(self.strategy.name, {}).get("update_rule", "pytorch")
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
                update_rule=rule,
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


class ConfigError(ValueError):
    """A configuration file or value a user wrote is invalid; the message says where and why."""


def format_validation_error(err: ValidationError, source: str, max_lines: int = 20) -> str:
    """One short line per problem: `source: field.path: message` (long keys and values cut)."""
    lines = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(p if isinstance(p, str) and len(p) <= 60 else short(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
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
        raise ConfigError(format_validation_error(err, source)) from None


# Limits on YAML a user hands us (configs, grids, cluster options, --set values). Anchors and aliases
# are allowed (handy in grids), but the document they expand to is bounded: a "billion laughs" file of
# a few hundred bytes would otherwise expand to billions of values in memory.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 32


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely and boundedly, raising ConfigError naming `source` on any problem."""
    loader = yaml.SafeLoader(text)
    loader.name = source  # marks in PyYAML's messages name the file, not "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, source)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
    except (yaml.YAMLError, ValueError, TypeError) as err:  # ValueError/TypeError: e.g. a bad date, a 5000-digit int
        raise ConfigError(f"{source}: not valid YAML ({cut(' '.join(str(err).split()), 300)})") from None
    finally:
        loader.dispose()


def _check_yaml_size(root: yaml.Node, source: str) -> None:
    """Refuse a document deeper than MAX_YAML_DEPTH or larger than MAX_YAML_NODES once aliases are expanded."""
    sizes: dict[int, int] = {}  # expanded size per node: an alias is the same node object as its anchor

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)")
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise ConfigError(f"{source}: a YAML alias refers to a node that contains it (recursive alias)")
            return sizes[id(node)]
        sizes[id(node)] = -1  # in progress
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            total = 1
        if total > MAX_YAML_NODES:
            raise ConfigError(f"{source}: YAML too large: more than {MAX_YAML_NODES} values once anchors and aliases "
                              "are expanded (a config or grid has a few hundred)")
        sizes[id(node)] = total
        return total

    size(root, 0)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (UTF-8, at most 1 MiB, bounded alias expansion), raising ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot be read ({err.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_YAML_BYTES // (1 << 20)} MiB; a config, grid or options file "
                          "is a few KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    return parse_yaml(text, str(p)) or {}


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Load an ExperimentConfig from YAML (keys override the defaults), then apply `overrides`."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return parse_config({**data, **overrides}, source=str(path))
