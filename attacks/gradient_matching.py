"""Gradient matching (Witches' Brew) via the Adversarial Robustness Toolbox."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import nn

from attacks.base import PoisonAttack, check_eps, check_number, require
from fakeforge.config import ConfigError


class GradientMatching(PoisonAttack):
    r"""Gradient matching, "Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching"
    (Geiping et al., ICLR 2021, https://arxiv.org/abs/2009.02276); ART's `GradientMatchingAttack`.

    Threat model: clean-label poisoning. Bounded perturbations (L-infinity `eps`) are optimised so that
    the surrogate's parameter gradient of the training loss on the poisons, labelled `target_class`,
    points the same way as the gradient that would make the surrogate classify the target image as
    `target_class` (cosine similarity, signed Adam steps, a step schedule). Poisons of one batch are
    crafted jointly (the objective is the batch's summed gradient), so results depend on batch_size.

    Arguments:
        eps (float): L-inf bound in [0, 1] pixel units. Default 16/255 (the paper's budget).
        max_epochs (int): optimisation steps over the batch, >= 1. Default 250 (ART's default).
        max_trials (int): random restarts, the best one kept, >= 1. Default 1 (the paper uses 8).
        learning_rates (list[float]): step sizes of the schedule. Default [0.1, 0.01, 0.001, 0.0001].
        milestones (list[int]): epochs at which the next step size starts. Default [100, 150, 200, 220].
        target_class (int | None): the class the target should be pushed to; None = the surrogate's
            second most likely class for the target. Default None.
        target_image (str | None): RGB target photo; None = a seeded synthetic stand-in. Default None.
        target_seed (int): seed of the stand-in target. Default 0.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) (unused: the poisons carry `target_class`);
    output like images.

    Example::
        >>> attack = GradientMatching(surrogate, eps=16/255, max_epochs=250, target_image="target.png")
        >>> poisons = attack(images, labels)
    """

    requires = ("art", "attacks")

    def __init__(self, model=None, eps: float = 16 / 255, max_epochs: int = 250, max_trials: int = 1,
                 learning_rates: list | None = None, milestones: list | None = None,
                 target_class: int | None = None, target_image: str | None = None, target_seed: int = 0):
        super().__init__("gradient_matching", model, target_image, target_seed)
        check_eps("gradient_matching.eps", eps)
        check_number("gradient_matching.max_epochs", max_epochs, 1, 100000, integer=True)
        check_number("gradient_matching.max_trials", max_trials, 1, 100, integer=True)
        learning_rates = [1e-1, 1e-2, 1e-3, 1e-4] if learning_rates is None else list(learning_rates)
        milestones = [100, 150, 200, 220] if milestones is None else list(milestones)
        if len(learning_rates) != len(milestones) or not learning_rates:
            raise ConfigError(f"gradient_matching.learning_rates = {learning_rates} and milestones = {milestones} "
                              "must be non-empty lists of the same length")
        for i, v in enumerate(learning_rates):
            check_number(f"gradient_matching.learning_rates.{i}", v, 0.0, None, lo_open=True)
        for i, v in enumerate(milestones):
            check_number(f"gradient_matching.milestones.{i}", v, 0, None, integer=True)
        if target_class is not None:
            check_number("gradient_matching.target_class", target_class, 0, None, integer=True)
        self.eps, self.max_epochs, self.max_trials = eps, max_epochs, max_trials
        self.learning_rates, self.milestones, self.target_class = learning_rates, milestones, target_class
        self.last_alignment: tuple[float, float] | None = None

    def adversarial_class(self, device) -> int:
        """`target_class`, else the surrogate's second most likely class for the target image."""
        if self.target_class is not None:
            return self.target_class
        with torch.no_grad():
            return int(self.model(self.target_image_tensor.to(device)).topk(2, dim=1).indices[0, 1])

    def craft(self, images, labels):
        require("art", "attacks", "attack GradientMatching")
        from art.attacks.poisoning import GradientMatchingAttack
        from art.estimators.classification import PyTorchClassifier

        y_adv = self.adversarial_class(images.device)
        target = self.target_image_tensor.to(images)
        grads = [p.requires_grad for p in self.model.parameters()]
        self.model.requires_grad_(True)  # ART differentiates the loss w.r.t. the surrogate's weights
        try:
            clean_alignment = gradient_alignment(self.model, images, target, y_adv)
            clf = PyTorchClassifier(model=self.model, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                                    nb_classes=self.model.num_classes, clip_values=(0.0, 1.0),
                                    device_type="gpu" if images.is_cuda else "cpu")
            attack = GradientMatchingAttack(clf, percent_poison=1.0, epsilon=self.eps, max_trials=self.max_trials,
                                            max_epochs=self.max_epochs, batch_size=len(images), clip_values=(0.0, 1.0),
                                            learning_rate_schedule=(self.learning_rates, self.milestones), verbose=0)
            y = np.full(len(images), y_adv, dtype=np.int64)
            with contextlib.redirect_stderr(io.StringIO()):  # ART shows a progress bar per call
                poisons, _ = attack.poison(target.cpu().numpy(), np.array([y_adv]), images.cpu().numpy(), y)
            out = torch.from_numpy(np.asarray(poisons, dtype=np.float32)).to(images)
            self.last_alignment = (clean_alignment, gradient_alignment(self.model, out, target, y_adv))
        finally:
            for p, g in zip(self.model.parameters(), grads):
                p.requires_grad_(g)
        return out

    def evaluate(self, stored, clean, labels):
        """Success: the stored batch's gradient points closer to the target's than the clean batch's
        (a batch-level measurement, written into every sample of the batch)."""
        y_adv = self.adversarial_class(stored.device)
        target = self.target_image_tensor.to(stored)
        grads = [p.requires_grad for p in self.model.parameters()]
        self.model.requires_grad_(True)
        try:
            after = gradient_alignment(self.model, stored, target, y_adv)
            before = gradient_alignment(self.model, clean, target, y_adv)
        finally:
            for p, g in zip(self.model.parameters(), grads):
                p.requires_grad_(g)
        dist_after, dist_before = self.feature_distances(stored, clean)
        n = len(stored)
        return [after > before] * n, {"gradient_alignment": [after] * n, "gradient_alignment_clean": [before] * n,
                                      "adversarial_class": [y_adv] * n, "feature_distance": dist_after,
                                      "feature_distance_clean": dist_before}


def gradient_alignment(model, images, target, y_adv: int) -> float:
    """Cosine similarity between the parameter gradients of the loss on `images` labelled `y_adv` and on
    `target` labelled `y_adv` (Witches' Brew's objective is 1 - this)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy

    def flat_grad(x):
        y = torch.full((len(x),), y_adv, dtype=torch.long, device=x.device)
        with torch.enable_grad():
            g = torch.autograd.grad(loss(model(x), y), params)
        return torch.cat([t.flatten() for t in g])

    return float(nn.functional.cosine_similarity(flat_grad(images), flat_grad(target), dim=0))
