"""PGD: iterated signed-gradient steps projected onto the eps ball, from a random start."""
from __future__ import annotations

from attacks.gradient import TorchattacksAttack, check_steps


class PGD(TorchattacksAttack):
    r"""PGD, "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry et al., ICLR 2018,
    https://arxiv.org/abs/1706.06083).

    Threat model: white-box on the surrogate, transferred to unseen models; L-infinity budget `eps`.

    Arguments:
        model (Surrogate): classifier in [0, 1] pixel space (normalisation inside).
        eps (float): L-inf budget in [0, 1] pixel units. Default 8/255.
        alpha (float): step size in [0, 1] pixel units. Default 2/255.
        steps (int): iterations, >= 1. Default 10.
        random_start (bool): start from a uniform point in the eps ball. Default True.
        target_class (int | None): None = untargeted; a class index = targeted.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) class indices; output like images.

    Example::
        >>> attack = PGD(surrogate, eps=8/255, alpha=2/255, steps=10)
        >>> adv = attack(images, labels)
    """

    def __init__(self, model=None, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, target_class: int | None = None):
        super().__init__("pgd", model, eps, target_class)
        check_steps("pgd", alpha, steps)
        self.alpha, self.steps, self.random_start = alpha, steps, bool(random_start)

    def make(self, ta):
        return ta.PGD(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=self.random_start)
