"""VNI-FGSM: NI-FGSM with variance tuning over sampled neighbours."""
from __future__ import annotations

from attacks.base import check_number
from attacks.mifgsm import MIFGSM


class VNIFGSM(MIFGSM):
    r"""VNI-FGSM, "Enhancing the Transferability of Adversarial Attacks through Variance Tuning"
    (Wang & He, CVPR 2021, https://arxiv.org/abs/2103.15571).

    Threat model: transfer (black-box) via a white-box surrogate; L-infinity budget `eps`.
    AntifakePrompt's adversarial test set names this family (`AdvAttack_VNIFGSM_COCO`).

    Arguments:
        model (Surrogate): classifier in [0, 1] pixel space (normalisation inside).
        eps (float): L-inf budget in [0, 1] pixel units. Default 8/255.
        alpha (float): step size in [0, 1] pixel units. Default 2/255.
        steps (int): iterations, >= 1. Default 10.
        decay (float): momentum factor mu, >= 0. Default 1.0.
        N (int): neighbours sampled per step for the variance term, >= 1. Default 5.
        beta (float): neighbourhood radius as a multiple of eps, > 0. Default 3/2.
        target_class (int | None): None = untargeted; a class index = targeted.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) class indices; output like images.

    Example::
        >>> attack = VNIFGSM(surrogate, eps=8/255, alpha=2/255, steps=10, decay=1.0, N=5, beta=1.5)
        >>> adv = attack(images, labels)
    """

    attack_name = "vnifgsm"

    def __init__(self, model=None, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 decay: float = 1.0, N: int = 5, beta: float = 3 / 2, target_class: int | None = None):
        super().__init__(model, eps, alpha, steps, decay, target_class)
        check_number("vnifgsm.N", N, 1, 1000, integer=True)
        check_number("vnifgsm.beta", beta, 0.0, None, lo_open=True)
        self.N, self.beta = N, beta

    def make(self, ta):
        return ta.VNIFGSM(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps, decay=self.decay,
                          N=self.N, beta=self.beta)
