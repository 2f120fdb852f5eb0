"""The paper's published numbers as data (Sawhney & Neerkaje, ICASSP 2022, Tables 1-3 and section 5.1).

All values are error rates in percent, transcribed from the paper (ICASSP 2022, Tables 1-3 and section 5.1).
Table 1 gives mean ± standard error over 5 folds for ESC-50 and ESC-10 and a bare mean for
UrbanSound8K (its `se` is None). Table 2 (ablation) is on EnvNet-v2 + augmentation. Table 3 (FGSM)
is on ESC-10; the paper does not say which model, so it is compared with every ESC-10 setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class PublishedValue(NamedTuple):
    """One published number: mean error (%) and its standard error if the paper gives one."""

    mean: float
    se: float | None = None


# Display names, in the paper's order.
DATASET_NAMES: dict[str, str] = {"esc50": "ESC-50", "esc10": "ESC-10", "urbansound8k": "UrbanSound8K"}
SETUP_NAMES: dict[str, str] = {
    "m18": "M18",
    "soundnet5": "SoundNet5",
    "envnet": "EnvNet",
    "piczak_cnn": "PiczakCNN",
    "envnet_v2": "EnvNet-v2",
    "envnet_v2_aug": "EnvNet-v2 + aug",
}
STRATEGY_NAMES: dict[str, str] = {
    "standard": "Standard",
    "mixup": "mixup",
    "bc": "BC Learning",
    "speechmix": "Speechmix",
    "speechmix_official": "Speechmix (its code)",
    "intermix": "InterMix",
    "intermix_detached": "InterMix, term detached",
    "intermix_official": "InterMix (authors' code)",
    "intermix_vanilla": "Vanilla InterMix",
    "intermix_hidden": "+Hidden Mixup",
    "intermix_vanilla_signed": "Vanilla InterMix, signed root",
    "intermix_hidden_linear": "+Hidden Mixup, no interference",
}
# Row order of the tables: the paper's methods, then the ablation variants before the full method.
STRATEGY_ORDER = (
    "standard", "mixup", "bc", "speechmix", "speechmix_official", "intermix_vanilla", "intermix_vanilla_signed",
    "intermix_hidden", "intermix_hidden_linear", "intermix", "intermix_detached", "intermix_official",
)
# Table 2 names its rows cumulatively; the full method is "+ p-weighting".
ABLATION_NAMES: dict[str, str] = {
    "intermix_vanilla": "Vanilla InterMix",
    "intermix_vanilla_signed": "Vanilla InterMix, signed root",
    "intermix_hidden": "+Hidden Mixup",
    "intermix_hidden_linear": "+Hidden Mixup, no interference",
    "intermix": "+p-weighting (InterMix)",
    "intermix_detached": "+p-weighting, term detached",
}

_T1_STRATEGIES = ("standard", "bc", "speechmix", "intermix")
# setup -> rows in _T1_STRATEGIES order; each row: (ESC-50 mean, se), (ESC-10 mean, se), UrbanSound8K mean
_T1_ROWS: dict[str, tuple[tuple[tuple[float, float], tuple[float, float], float], ...]] = {
    "m18": (
        ((31.5, 0.5), (18.2, 0.5), 28.8),
        ((26.7, 0.1), (14.2, 0.9), 26.5),
        ((24.3, 0.2), (12.4, 0.5), 25.1),
        ((25.4, 0.5), (12.6, 0.5), 25.1),
    ),
    "soundnet5": (
        ((33.8, 0.2), (16.4, 0.8), 33.3),
        ((27.4, 0.3), (13.9, 0.4), 30.2),
        ((25.6, 0.2), (11.6, 0.3), 27.4),
        ((25.1, 0.3), (10.6, 0.3), 26.5),
    ),
    "envnet": (
        ((29.2, 0.1), (12.8, 0.4), 33.7),
        ((24.1, 0.2), (11.3, 0.6), 28.9),
        ((22.5, 0.3), (9.3, 0.4), 26.5),
        ((22.5, 0.3), (9.1, 0.2), 26.8),
    ),
    "piczak_cnn": (
        ((27.6, 0.2), (13.2, 0.4), 25.3),
        ((23.1, 0.3), (9.4, 0.4), 23.5),
        ((22.1, 0.3), (8.4, 0.2), 22.1),
        ((21.9, 0.2), (8.3, 0.4), 21.1),
    ),
    "envnet_v2": (
        ((25.6, 0.3), (14.2, 0.8), 30.9),
        ((18.2, 0.2), (10.6, 0.6), 23.4),
        ((16.2, 0.3), (8.5, 0.4), 21.6),
        ((15.8, 0.4), (8.2, 0.4), 21.4),
    ),
    "envnet_v2_aug": (
        ((21.2, 0.3), (10.9, 0.6), 24.9),
        ((15.1, 0.2), (8.6, 0.1), 21.7),
        ((13.1, 0.2), (7.1, 0.1), 20.8),
        ((12.9, 0.4), (7.2, 0.1), 20.5),
    ),
}


def _build_table1() -> dict[tuple[str, str, str], PublishedValue]:
    table: dict[tuple[str, str, str], PublishedValue] = {}
    for setup, rows in _T1_ROWS.items():
        for strategy, (esc50, esc10, us8k) in zip(_T1_STRATEGIES, rows, strict=True):
            table[("esc50", setup, strategy)] = PublishedValue(*esc50)
            table[("esc10", setup, strategy)] = PublishedValue(*esc10)
            table[("urbansound8k", setup, strategy)] = PublishedValue(us8k)
    return table


# (dataset, setup, strategy) -> published error
TABLE1: dict[tuple[str, str, str], PublishedValue] = _build_table1()

# Table 2, EnvNet-v2 + augmentation: (dataset, strategy) -> error. "intermix" equals its Table 1 entry.
TABLE2_SETUP = "envnet_v2_aug"
TABLE2: dict[tuple[str, str], float] = {
    ("esc50", "intermix_vanilla"): 13.6,
    ("esc10", "intermix_vanilla"): 7.9,
    ("urbansound8k", "intermix_vanilla"): 21.0,
    ("esc50", "intermix_hidden"): 13.3,
    ("esc10", "intermix_hidden"): 7.7,
    ("urbansound8k", "intermix_hidden"): 20.8,
    ("esc50", "intermix"): 12.9,
    ("esc10", "intermix"): 7.2,
    ("urbansound8k", "intermix"): 20.5,
}

# Table 3, FGSM on ESC-10 (model not stated): (strategy, epsilon) -> error
TABLE3_DATASET = "esc10"
TABLE3_EPSILONS = (1e-2, 1e-3, 1e-4, 1e-5)
TABLE3: dict[tuple[str, float], float] = {
    (strategy, eps): value
    for strategy, values in {
        "standard": (64.5, 37.7, 36.5, 36.2),
        "bc": (47.2, 28.7, 26.9, 26.8),
        "intermix": (42.9, 26.2, 25.1, 25.0),
    }.items()
    for eps, value in zip(TABLE3_EPSILONS, values, strict=True)
}

# Human error rates (Table 1, last row); the paper gives none for UrbanSound8K.
HUMAN: dict[str, float] = {"esc50": 18.7, "esc10": 4.3}

# Section 5.1's relative improvements (%) of InterMix, (e_base - e) / e_base, as printed:
# (dataset, setup, baseline) -> value. The paper rounds from its own table values (2.47 is printed 2.4).
RELATIVE_IMPROVEMENTS: dict[tuple[str, str, str], float] = {
    ("esc10", "envnet_v2", "standard"): 42.2,
    ("esc10", "envnet_v2", "bc"): 22.6,
    ("esc50", "envnet_v2", "bc"): 13.2,
    ("urbansound8k", "envnet_v2", "bc"): 8.5,
    ("esc50", "envnet_v2", "speechmix"): 2.4,
    ("urbansound8k", "envnet_v2", "speechmix"): 0.9,
    ("esc50", "envnet_v2_aug", "bc"): 14.6,
    ("esc10", "envnet_v2_aug", "bc"): 16.3,
    ("urbansound8k", "envnet_v2_aug", "bc"): 5.5,
}


# Which of a fold's two measured errors each published row is (docs/results.md, "Last epoch, best epoch"):
# "last" (after the last epoch), "best" (the lowest test-fold error over the epochs, chosen on the test
# fold), or "unknown", and why. Rows are strategies; Table 2's rows come from the same code as InterMix.
_BC_ROWS = ("last", ("BC learning's numbers (its README's results table has them for EnvNet and EnvNet-v2);"
                     " BC's main.py trains to the last epoch and keeps no best"))
_AUTHORS_ROWS = ("best", ("the authors' InterMix main.py prints the best test-fold error over all epochs"
                          " (`if val_top1 < best`), evaluating every epoch"))
PUBLISHED_PROTOCOL: dict[str, tuple[str, str]] = {
    "standard": _BC_ROWS,
    "bc": _BC_ROWS,
    # midas-research/speechmix, the public code of the paper's Speechmix reference [32] (co-authored by the first
    # author): main.py evaluates the test fold every epoch and prints the best (l. 40-45, `if(val_top1<best)`)
    "speechmix": ("best", ("Speechmix's public code (midas-research/speechmix, main.py) prints the best test-fold"
                           " error over all epochs, evaluating every epoch")),
    "intermix": _AUTHORS_ROWS,
    "intermix_vanilla": _AUTHORS_ROWS,
    "intermix_hidden": _AUTHORS_ROWS,
    "intermix_detached": _AUTHORS_ROWS,
    "intermix_vanilla_signed": _AUTHORS_ROWS,
    "intermix_hidden_linear": _AUTHORS_ROWS,
}
_COLUMN = {"last": "the last-epoch column", "best": "the best† column (their protocol when evaluated every epoch)",
           "unknown": "both columns"}
# The column Δ (measured − paper) is taken from, per protocol: the one named above, the last epoch when unknown.
DIFF_COLUMN = {"last": "last", "best": "best", "unknown": "last"}

# Setups whose Standard and BC rows the paper took from BC learning's own experiments (Tokozume et al., ICLR 2018,
# its appendix; mil-tokyo/bc_learning_sound has no code for these models, its issue #5), trained there
# on settings of that paper's, not BC's opts.py, which covers EnvNet and EnvNet-v2 only. This project runs them on
# EnvNet's schedule (intermix_core.config.presets), so those rows are its own settings, not the published ones.
OWN_SETTINGS_SETUPS: dict[str, str] = {
    "m18": "M18",
    "soundnet5": "SoundNet5",
    "piczak_cnn": "PiczakCNN",
}
_OWN_SETTINGS_STRATEGIES = ("standard", "bc")
_OWN_SETTINGS_WHY = (
    "run on this project's settings (EnvNet's schedule from BC learning's opts.py{lr}): the published rows are BC"
    " learning's own experiments (Tokozume et al., ICLR 2018), whose per-model settings are in that paper, not in its"
    " code, which has none of these models (mil-tokyo/bc_learning_sound issue #5; that paper also reports PiczakCNN"
    " with batch norm, \"Logmel-CNN + BN\", and this project's PiczakCNN has none); read the difference as settings"
    " plus method, not method alone")


def protocol_notes(strategies: Sequence[str]) -> list[str]:
    """One note per group of rows: which measured column to hold against the paper's number, and why."""
    groups: dict[tuple[str, str], list[str]] = {}
    for strategy in strategies:
        if strategy in PUBLISHED_PROTOCOL:
            groups.setdefault(PUBLISHED_PROTOCOL[strategy], []).append(STRATEGY_NAMES.get(strategy, strategy))
    return [f"{', '.join(names)}: hold the paper's number against {_COLUMN[column]}: {why}."
            for (column, why), names in groups.items()]


def own_settings_notes(setups: Sequence[str], strategies: Sequence[str]) -> list[str]:
    """One note for the Standard/BC rows of setups the paper took from BC learning's experiments, if any are shown."""
    shown = [OWN_SETTINGS_SETUPS[s] for s in setups if s in OWN_SETTINGS_SETUPS]
    rows = [STRATEGY_NAMES[s] for s in _OWN_SETTINGS_STRATEGIES if s in strategies]
    if not shown or not rows:
        return []
    lr = ", PiczakCNN at LR 0.002" if "PiczakCNN" in shown else ""
    return [f"{', '.join(rows)} rows of {', '.join(shown)}: " + _OWN_SETTINGS_WHY.format(lr=lr) + "."]


def display_name(kind: str, key: str) -> str:
    """The paper's name for a dataset, setup or strategy key (the key itself when the paper has none)."""
    names = {"dataset": DATASET_NAMES, "setup": SETUP_NAMES, "strategy": STRATEGY_NAMES}[kind]
    return names.get(key, key)


# One-knob sensitivity cells are other readings of a published row (docs/method.md, "Sensitivity cells"): the
# paper's number of that row is printed beside them, under the same protocol.
READING_OF: dict[str, str] = {
    "intermix_detached": "intermix",
    "intermix_vanilla_signed": "intermix_vanilla",
    "intermix_hidden_linear": "intermix_hidden",
}


def published_error(dataset: str, setup: str, strategy: str) -> PublishedValue | None:
    """The paper's test error for a cell (Table 1, else Table 2; a sensitivity cell gets its row's), or None."""
    strategy = READING_OF.get(strategy, strategy)
    if (dataset, setup, strategy) in TABLE1:
        return TABLE1[(dataset, setup, strategy)]
    if setup == TABLE2_SETUP and (dataset, strategy) in TABLE2:
        return PublishedValue(TABLE2[(dataset, strategy)])
    return None


def published_fgsm(dataset: str, strategy: str, epsilon: float) -> float | None:
    """The paper's FGSM error (Table 3) for a strategy and epsilon, or None if the paper has none."""
    if dataset != TABLE3_DATASET:
        return None
    for eps in TABLE3_EPSILONS:
        if abs(epsilon - eps) <= 1e-9 * eps:
            return TABLE3.get((strategy, eps))
    return None


def relative_improvement(baseline_error: float, error: float) -> float:
    """Relative error reduction in percent, as the paper reports it: 100 * (e_base - e) / e_base."""
    if baseline_error <= 0:
        raise ValueError(f"relative improvement needs a positive baseline error, got {baseline_error}")
    return 100.0 * (baseline_error - error) / baseline_error
