"""Fake-image detectors trained and evaluated on fakeforge shard sets.

Importing this package is cheap: the registry stores "module:attribute" strings and imports torch
and transformers only when a detector is used.
"""
from fakeforge.registry import Registry

DETECTORS = Registry("detector")
DETECTORS.register("antifakeprompt", "detector.antifakeprompt:AntifakePrompt",
                   "AntifakePrompt: InstructBLIP prompt-tuned with one pseudo-word ([*]), 2 trainable rows")

__all__ = ["DETECTORS"]
