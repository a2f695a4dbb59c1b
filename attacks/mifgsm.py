"""MI-FGSM: iterative FGSM with a momentum term on the L1-normalised gradient."""
from __future__ import annotations

from attacks.base import check_number
from attacks.gradient import TorchattacksAttack, check_steps


class MIFGSM(TorchattacksAttack):
    r"""MI-FGSM, "Boosting Adversarial Attacks with Momentum" (Dong et al., CVPR 2018,
    https://arxiv.org/abs/1710.06081).

    Threat model: transfer (black-box) via a white-box surrogate; L-infinity budget `eps`.

    Arguments:
        model (Surrogate): classifier in [0, 1] pixel space (normalisation inside).
        eps (float): L-inf budget in [0, 1] pixel units. Default 8/255.
        alpha (float): step size in [0, 1] pixel units. Default 2/255.
        steps (int): iterations, >= 1. Default 10.
        decay (float): momentum factor mu, >= 0. Default 1.0.
        target_class (int | None): None = untargeted; a class index = targeted.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) class indices; output like images.

    Example::
        >>> attack = MIFGSM(surrogate, eps=8/255, alpha=2/255, steps=10, decay=1.0)
        >>> adv = attack(images, labels)
    """

    attack_name = "mifgsm"  # the momentum variants below reuse these checks under their own name

    def __init__(self, model=None, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, target_class: int | None = None):
        super().__init__(self.attack_name, model, eps, target_class)
        check_steps(self.attack_name, alpha, steps)
        check_number(f"{self.attack_name}.decay", decay, 0.0, None)
        self.alpha, self.steps, self.decay = alpha, steps, decay

    def make(self, ta):
        return ta.MIFGSM(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps, decay=self.decay)
