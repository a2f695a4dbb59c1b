"""FGSM: one signed-gradient step of size eps."""
from __future__ import annotations

from attacks.gradient import TorchattacksAttack


class FGSM(TorchattacksAttack):
    r"""FGSM, "Explaining and Harnessing Adversarial Examples" (Goodfellow et al., ICLR 2015,
    https://arxiv.org/abs/1412.6572).

    Threat model: white-box on the surrogate, transferred to unseen models; L-infinity budget `eps`.

    Arguments:
        model (Surrogate): classifier in [0, 1] pixel space (normalisation inside).
        eps (float): L-inf budget in [0, 1] pixel units. Default 8/255.
        target_class (int | None): None = untargeted (move away from the label); a class index = targeted.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) class indices; output like images.

    Example::
        >>> attack = FGSM(surrogate, eps=8/255)
        >>> adv = attack(images, labels)
    """

    def __init__(self, model=None, eps: float = 8 / 255, target_class: int | None = None):
        super().__init__("fgsm", model, eps, target_class)

    def make(self, ta):
        return ta.FGSM(self.model, eps=self.eps)
