"""The attack interface, in the torchattacks spirit.

An attack is a class whose hyperparameters are constructor keyword arguments carrying the
published defaults, and which overrides exactly one method:

  * adversarial attacks (`AdversarialAttack`): ``forward(images, labels) -> images``;
  * backdoor triggers (`BackdoorAttack`): ``apply_trigger(images) -> images``;
  * poisons (`PoisonAttack`): ``craft(images, labels, target) -> images``.

Images are float tensors (B, 3, H, W) in [0, 1] pixel space; normalisation lives inside the
surrogate model wrapper (`attacks.surrogate.Surrogate`). Constructors only check their arguments,
so ``Cls(None, **params)`` validates a config without loading any model (`fakeforge validate`).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any, ClassVar

from fakeforge.config import ConfigError


class MissingExtraError(ConfigError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


class UnfitImageError(ValueError):
    """These images cannot take this attack (e.g. smaller than the trigger patch): a per-sample failure
    of the images concerned, recorded as data, never a reason to stop the build."""


def require(module: str, extra: str, what: str) -> Any:
    """Import `module` or raise MissingExtraError naming the extra (`pip install 'fakeforge[extra]'`)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs the '{module}' package, which is not installed ({exc}); "
                                f"install the extra: pip install 'fakeforge[{extra}]' "
                                f"(from a checkout: pip install -e '.[{extra}]')") from None


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 integer: bool = False, lo_open: bool = False) -> None:
    """ConfigError naming `name` and `value` unless it is a number (an int if `integer`) within [lo, hi]
    (lo excluded if `lo_open`)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{name} = {value!r} must be {'an integer' if integer else 'a number'}")
    if lo is not None and (value <= lo if lo_open else value < lo) or hi is not None and value > hi:
        bounds = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{name} = {value!r} must be within {bounds}")


def check_eps(name: str, value: Any) -> None:
    """Perturbation budgets live in [0, 1] pixel space (8/255 = 0.0314)."""
    check_number(name, value, 0.0, 1.0)
    if value > 0 and value < 1 / 2550:
        raise ConfigError(f"{name} = {value!r} is below a tenth of one 8-bit level; budgets are in [0, 1] "
                          "pixel units (8/255 = 0.0314)")


class Attack:
    """Base of every attack. Subclasses declare hyperparameters as keyword arguments of `__init__`
    (after `model`), store them as attributes of the same name, and check them in `__init__`.

    kind: "adversarial", "backdoor" or "poison".
    needs_model: whether the attack needs a model (a surrogate classifier, or ISSBA's encoder).
    supported_modes: e.g. ("untargeted", "targeted") or ("dirty-label",).
    requires: (module, extra) of an optional dependency, checked by `check_available`.
    """

    kind: ClassVar[str] = "adversarial"
    needs_model: ClassVar[bool] = True
    supported_modes: ClassVar[tuple[str, ...]] = ("untargeted",)
    requires: ClassVar[tuple[str, str] | None] = None

    def __init__(self, name: str, model: Any = None):
        self.attack = name
        self.model = model

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """The constructor's keyword arguments after `model`, in order."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p.name for p in params if p.name != "model" and p.kind is p.POSITIONAL_OR_KEYWORD]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Published defaults of every hyperparameter."""
        sig = inspect.signature(cls.__init__)
        return {n: sig.parameters[n].default for n in cls.hyperparameter_names()}

    @classmethod
    def from_params(cls, model: Any, params: dict, where: str = "attack") -> Attack:
        """`cls(model, **params)`; unknown keys are a ConfigError listing the valid ones."""
        unknown = sorted(set(params) - set(cls.hyperparameter_names()))
        if unknown:
            raise ConfigError(f"unknown {where} hyperparameter(s) {unknown} for {cls.__name__}; "
                              f"valid: {', '.join(cls.hyperparameter_names())}")
        return cls(model, **params)

    @classmethod
    def check_available(cls) -> None:
        """Raise MissingExtraError when the optional dependency of this attack is missing (finds it without
        importing it: ART creates folders in $HOME on import)."""
        if cls.requires:
            module, extra = cls.requires
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                require(module, extra, f"attack {cls.__name__}")

    @classmethod
    def check_model_id(cls, model_id: str | None) -> None:
        """Config-time check of the model this attack needs (default: a timm surrogate name). Loads nothing."""
        from attacks.surrogate import surrogate_spec

        if model_id is None:
            raise ConfigError(f"attack {cls.__name__} needs a surrogate: set model_id to a timm model name "
                              "(e.g. resnet50) or a local timm folder")
        surrogate_spec(model_id)

    @classmethod
    def load_model(cls, model_id: str, device: str, dtype) -> Any:
        """Load the model named by `model_id` (default: a timm surrogate classifier)."""
        from attacks.surrogate import Surrogate

        return Surrogate.load(model_id, device, dtype)

    def evaluate(self, stored, clean, labels) -> tuple[list[bool], dict[str, list]]:
        """Per sample: did the attack succeed on `stored` (the encoded, decoded output)? Plus measurements
        (lists, one value per sample) written into each sample's metadata."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter with its current value (recorded in each sample's metadata)."""
        return {n: getattr(self, n) for n in self.hyperparameter_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    @staticmethod
    def check_images(images) -> None:
        """Images must be a float (B, 3, H, W) tensor in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")


class AdversarialAttack(Attack):
    """Evasion attacks on a surrogate classifier: override ``forward(images, labels) -> images``.

    `labels` are the classes to move away from (untargeted) or, when `target_class` is set,
    the attack moves towards `target_class` instead.
    """

    kind = "adversarial"
    supported_modes = ("untargeted", "targeted")

    def forward(self, images, labels):
        raise NotImplementedError

    def __call__(self, images, labels):
        self.check_images(images)
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} has no model; pass the surrogate to the constructor")
        was_training = self.model.training
        self.model.eval()
        try:
            adv = self.forward(images, labels)
        finally:
            self.model.train(was_training)
        return adv.detach().clamp(0, 1)

    def evaluate(self, stored, clean, labels):
        """Success: the surrogate's prediction left `labels` (untargeted) or reached `target_class`."""
        import torch

        with torch.no_grad():
            pred = self.model(stored).argmax(1)
            clean_pred = self.model(clean).argmax(1)
        target = getattr(self, "target_class", None)
        ok = (pred == target) if target is not None else (pred != labels.to(pred.device))
        return [bool(v) for v in ok.tolist()], {"clean_prediction": clean_pred.tolist(), "prediction": pred.tolist()}


class BackdoorAttack(Attack):
    """Trigger insertion: override ``apply_trigger(images) -> images``. Poisoned samples are relabelled
    to `target_class` in the victim's training set (dirty-label); the trigger itself needs no model."""

    kind = "backdoor"
    needs_model = False
    supported_modes = ("dirty-label",)

    def apply_trigger(self, images):
        raise NotImplementedError

    def __call__(self, images):
        self.check_images(images)
        return self.apply_trigger(images).clamp(0, 1)

    def trigger_present(self, poisoned, clean) -> tuple[list[bool], dict[str, list]]:
        """Per sample: is the trigger in `poisoned` (the stored, decoded image)? Plus measurements."""
        raise NotImplementedError

    def evaluate(self, stored, clean, labels):
        return self.trigger_present(stored, clean)


def synthetic_target(seed: int, size: int = 224):
    """A deterministic stand-in target image (1, 3, size, size): a smooth random colour field. Used when a
    poison config names no target photo (dry runs); real sets should set `target_image`."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand((1, 3, 6, 6), generator=gen)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class PoisonAttack(Attack):
    """Clean-label poisons crafted on a surrogate towards a target image: override
    ``craft(images, labels) -> images``; `self.target_image_tensor` is the (1, 3, h, w) target."""

    kind = "poison"
    supported_modes = ("clean-label",)

    def __init__(self, name: str, model: Any, target_image: str | None, target_seed: int):
        super().__init__(name, model)
        check_number(f"{name}.target_seed", target_seed, 0, None, integer=True)
        self.target_image, self.target_seed = target_image, target_seed
        if target_image is not None:
            import torch

            from attacks.triggers import read_trigger

            arr = read_trigger(target_image, f"{name}.target_image", min_size=16)
            self.target_image_tensor = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
        else:
            self.target_image_tensor = synthetic_target(target_seed)

    def craft(self, images, labels):
        raise NotImplementedError

    def __call__(self, images, labels):
        self.check_images(images)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.craft(images, labels)
        finally:
            self.model.train(was_training)
        return out.detach().clamp(0, 1)

    def feature_distances(self, stored, clean) -> tuple[list[float], list[float]]:
        """||f(x) - f(target)|| / ||f(target)|| in the surrogate's penultimate features, for the stored
        poisons and their clean bases."""
        import torch

        with torch.no_grad():
            ft = self.model.features(self.target_image_tensor.to(stored.device))
            norm = ft.norm(dim=1).clamp_min(1e-12)
            after = (self.model.features(stored) - ft).norm(dim=1) / norm
            before = (self.model.features(clean) - ft).norm(dim=1) / norm
        return after.tolist(), before.tolist()
