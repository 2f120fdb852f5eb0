"""What goes in: the typed configuration of a fold training, the paper's presets, and grid files.

`from intermix_core.config import ExperimentConfig, parse_config, STRATEGIES, ...` is the public face;
the sections live in `sections`, the paper's presets and schedules in `presets`, the whole
configuration in `experiment`, grid files (dataset x setup x strategy x fold) in `grid`.
"""

from intermix_core.common.yamlfile import ConfigError
from intermix_core.config.experiment import (
    ExperimentConfig,
    format_validation_error,
    known_model,
    load_config,
    parse_config,
    result_problem,
)
from intermix_core.config.presets import (
    PAPER_L,
    STRATEGIES,
    reference_schedule,
    strategy_preset,
)
from intermix_core.config.sections import (
    DATASETS,
    EXECUTION_OPTIONS,
    FOLD_CLIPS,
    MAX_SEED,
    ON_SILENT,
    SPEED_OPTIONS,
    AttackConfig,
    AugmentConfig,
    DatasetName,
    OnSilent,
    OptimConfig,
    StrategyConfig,
)

__all__ = [
    "ConfigError", "ExperimentConfig", "format_validation_error", "known_model", "load_config", "parse_config",
    "result_problem",
    "PAPER_L", "STRATEGIES", "reference_schedule", "strategy_preset",
    "DATASETS", "EXECUTION_OPTIONS", "FOLD_CLIPS", "MAX_SEED", "ON_SILENT", "SPEED_OPTIONS", "AttackConfig",
    "AugmentConfig", "DatasetName", "OnSilent", "OptimConfig", "StrategyConfig",
]
