"""Attacks (adversarial, backdoor, data poisoning) that turn real images into attacked "fake" sets.

The registry is deliberately light: importing `attacks` never imports diffusers or transformers.
torchattacks-based attacks need the optional extra: `pip install -e ".[attacks]"` (it pins an old
`requests`, which is why it is not a core dependency). No attack is registered yet.
"""
from __future__ import annotations

from fakeforge.registry import Registry

ATTACKS = Registry("attack")
