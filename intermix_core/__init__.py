"""intermix_core: InterMix and its baselines (Standard, mixup, BC learning, Speechmix) for raw-waveform sound classification."""

__version__ = "0.1.0"
