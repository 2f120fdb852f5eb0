"""The paper's presets: every strategy as a point of `StrategyConfig`, and the reference schedules.

Defaults are the paper's and, where the paper is silent, BC learning's reference code
(docs/method.md, docs/reference.md).
"""

from __future__ import annotations

from intermix_core.common.text import short
from intermix_core.config.sections import StrategyConfig

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
        # Speechmix as its public code runs it (midas-research/speechmix, the paper's reference [32]): utils.py
        # `mix` (l. 166-172) takes p from the A-weighted levels of the flattened hidden features at 44.1 kHz and
        # normalises; `mixup_sound` (l. 174-182) pairs rows 2k and 2k+1 with one r per row; models/envnetv2.py
        # (l. 209-215) mixes at layer m; no phase shift, no interference term. Its opts.py gives `--eligible`
        # no default (l. 18) and its README no command: L is the paper's.
        StrategyConfig(
            name="speechmix_official", mix=True, weighting="p", layers=PAPER_L, gains_on="hidden",
            pairing="adjacent_pairs",
        ),
        # One-knob sensitivity cells: each changes one field of a paper preset (docs/method.md, "Sensitivity").
        # the interference term detached, as scaleracademy/InterMix-ICASSP utils.py builds it from `.data`
        StrategyConfig(
            name="intermix_detached", mix=True, weighting="p", interference=True, layers=PAPER_L,
            rotate_input_phase=True, detach_interference=True,
        ),
        # Vanilla InterMix (input space) with sign(ab) sqrt(|ab|) where the waveform product is negative
        StrategyConfig(
            name="intermix_vanilla_signed", mix=True, weighting="r", normalize=False, interference=True,
            rotate_input_phase=True, negative_product="signed",
        ),
        # "+ Hidden Mixup" as the authors' code's `mixup_type normal` (models/envnetv2.py l. 218-227): r-weighted
        # hidden mixup with no interference term, on the phase-shifted inputs their data loader always makes
        StrategyConfig(
            name="intermix_hidden_linear", mix=True, weighting="r", normalize=False, layers=PAPER_L,
            rotate_input_phase=True,
        ),
    ]
}


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
