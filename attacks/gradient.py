"""Gradient-sign transfer attacks run by torchattacks (FGSM, PGD, MI-, NI-, VNI-FGSM).

torchattacks lives in the optional extra `attacks` (it pins an old `requests`); importing this module
does not import it. Each attack file subclasses `TorchattacksAttack`, checks its hyperparameters in
`__init__` and overrides `make(torchattacks)`, which returns the configured torchattacks object.
"""
from __future__ import annotations

from attacks.base import AdversarialAttack, check_eps, check_number, require


class TorchattacksAttack(AdversarialAttack):
    """Base of the torchattacks-backed attacks: eps/target checks, targeted mode, one batched call."""

    requires = ("torchattacks", "attacks")

    def __init__(self, name: str, model, eps: float, target_class: int | None):
        super().__init__(name, model)
        check_eps(f"{name}.eps", eps)
        if target_class is not None:
            check_number(f"{name}.target_class", target_class, 0, None, integer=True)
        self.eps = eps
        self.target_class = target_class

    def make(self, ta):
        """Return the torchattacks attack for `self.model` with this object's hyperparameters."""
        raise NotImplementedError

    def forward(self, images, labels):
        ta = require("torchattacks", "attacks", f"attack {type(self).__name__}")
        atk = self.make(ta)
        if self.target_class is not None:
            atk.set_mode_targeted_by_label(quiet=True)
            labels = labels.new_full(labels.shape, self.target_class)
        return atk(images, labels.to(images.device))


def check_steps(name: str, alpha: float, steps: int) -> None:
    """Step size in [0, 1] pixel units and a positive number of steps."""
    check_eps(f"{name}.alpha", alpha)
    check_number(f"{name}.steps", steps, 1, 100000, integer=True)
