"""Feature collision (Poison Frogs): clean-label poisons that sit on a target image in feature space."""
from __future__ import annotations

import torch

from attacks.base import PoisonAttack, check_eps, check_number


class FeatureCollision(PoisonAttack):
    r"""Feature collision, "Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks"
    (Shafahi et al., NeurIPS 2018, https://arxiv.org/abs/1804.00792).

    Threat model: clean-label poisoning. Each poison p starts at its base image b (it keeps b's label)
    and minimises ||f(p) - f(t)||^2 + beta ||p - b||^2, f = the surrogate's penultimate features,
    t = the target image, by forward-backward splitting (a gradient step on the feature term, then the
    proximal step of the pixel term), kept inside an L-infinity ball of radius `eps` around b.
    A step whose objective rises is undone and that sample's step size halved (the paper's schedule).

    Why not ART's FeatureCollisionAttack: it crafts one image at a time in a Python loop, carries the
    decayed learning rate from one image to the next (results depend on batch order), and has no hard
    bound. This version is batched on the accelerator, per-sample and L-inf bounded.

    Arguments:
        eps (float): L-inf bound around the base in [0, 1] pixel units. Default 16/255.
        steps (int): iterations, >= 1. Default 100 (the paper iterates to convergence).
        step_size (float): largest pixel change of one gradient step (the gradient is scaled so its
            largest entry is 1), in [0, 1]. Default 2/255.
        beta (float): similarity coefficient beta_0 >= 0; as in the paper beta = beta_0 (D_f / D_x)^2
            with D_f the feature and D_x the input dimension. Default 0.25.
        target_image (str | None): RGB target photo; None = a seeded synthetic stand-in. Default None.
        target_seed (int): seed of the stand-in target. Default 0.

    Shape: images (B, 3, H, W) in [0, 1]; labels (B,) (unused: clean-label); output like images.

    Example::
        >>> attack = FeatureCollision(surrogate, eps=16/255, steps=100, target_image="target.png")
        >>> poisons = attack(images, labels)
    """

    def __init__(self, model=None, eps: float = 16 / 255, steps: int = 100, step_size: float = 2 / 255,
                 beta: float = 0.25, target_image: str | None = None, target_seed: int = 0):
        super().__init__("feature_collision", model, target_image, target_seed)
        check_eps("feature_collision.eps", eps)
        check_number("feature_collision.steps", steps, 1, 100000, integer=True)
        check_eps("feature_collision.step_size", step_size)
        check_number("feature_collision.beta", beta, 0.0, None)
        self.eps, self.steps, self.step_size, self.beta = eps, steps, step_size, beta

    def craft(self, images, labels):
        base = images.detach()
        with torch.no_grad():
            target_feats = self.model.features(self.target_image_tensor.to(base))
        lr = torch.full((len(base), 1, 1, 1), self.step_size, device=base.device, dtype=base.dtype)
        x, beta = base.clone(), None
        best_x, best_grad = base.clone(), torch.zeros_like(base)
        best_obj = torch.full((len(base),), float("inf"), device=base.device)
        for it in range(self.steps + 1):
            x.requires_grad_(True)
            feats = self.model.features(x)
            if beta is None:
                beta = self.beta * (feats.shape[1] / base[0].numel()) ** 2
            feat_loss = (feats - target_feats).pow(2).sum(1)
            grad = torch.autograd.grad(feat_loss.sum(), x)[0]
            with torch.no_grad():
                obj = feat_loss + beta * (x - base).pow(2).flatten(1).sum(1)
                better = obj <= best_obj
                best_obj = torch.where(better, obj, best_obj)
                best_x[better], best_grad[better] = x[better], grad[better]
                lr[~better] *= 0.5  # that step overshot: restart from the best point with half the step
                if it == self.steps:
                    break
                g = best_grad / best_grad.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
                step = best_x - lr * g                                  # forward: feature term
                step = (step + lr * beta * base) / (1 + lr * beta)      # backward: proximal pixel term
                x = torch.min(torch.max(step, base - self.eps), base + self.eps).clamp(0, 1)
        return best_x

    def evaluate(self, stored, clean, labels):
        after, before = self.feature_distances(stored, clean)
        return [a < b for a, b in zip(after, before)], {"feature_distance": after, "feature_distance_clean": before}
