"""NI-FGSM: MI-FGSM with a Nesterov look-ahead."""
from __future__ import annotations

from attacks.mifgsm import MIFGSM


class NIFGSM(MIFGSM):
    r"""NI-FGSM, "Nesterov Accelerated Gradient and Scale Invariance for Adversarial Attacks"
    (Lin et al., ICLR 2020, https://arxiv.org/abs/1908.06281).

    Threat model: transfer (black-box) via a white-box surrogate; L-infinity budget `eps`.
    One of the attack families named by AntifakePrompt's adversarial test set (`AdvAttack_NIFGSM_COCO`).

    Arguments:
        model (Surrogate): classifier in [0, 1] pixel space (normalisation inside).
        eps (float): L-inf budget in [0, 1] pixel units. Default 8/255.
        alpha (float): step size in [0, 1] pixel units. Default 2/255.
        steps (int): iterations, >= 1. Default 10.
        decay (float): momentum factor mu, >= 0. Default 1.0.
        target_class (int | None): None = untargeted; a class index = targeted.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) class indices; output like images.

    Example::
        >>> attack = NIFGSM(surrogate, eps=8/255, alpha=2/255, steps=10, decay=1.0)
        >>> adv = attack(images, labels)
    """

    attack_name = "nifgsm"  # hyperparameters and their checks: those of MI-FGSM

    def make(self, ta):
        return ta.NIFGSM(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps, decay=self.decay)
