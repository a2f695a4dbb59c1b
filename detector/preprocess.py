"""How a PIL image becomes a detector's input tensor (`Preprocess`), saved with every checkpoint.

A leaf module: it imports torchvision and the config helpers only, so data loading, training, evaluation
and every family can use it without importing each other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Literal

from fakeforge.config import ConfigError


def build_transform(image_size: int, mean: list[float], std: list[float], train: bool) -> Callable:
    """PIL RGB -> normalised tensor. Train: bicubic resize of the shorter side + random crop + flip;
    eval: bicubic resize of the shorter side + center crop (AntifakePrompt's rule)."""
    from torchvision import transforms as T

    if image_size < 1:
        raise ConfigError(f"image_size = {image_size} must be positive")
    resize = T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC)
    crop = [T.RandomCrop(image_size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(image_size)]
    return T.Compose([resize, *crop, T.ToTensor(), T.Normalize(mean, std)])


@dataclass
class Preprocess:
    """How a PIL image becomes the model's input tensor; saved with every checkpoint.

    resize "shorter_side": scale the shorter side to image_size / crop_pct, then center-crop image_size
    (random crop in training when train_augment is "crop_flip"). resize "square": scale straight to
    image_size x image_size (aspect ratio not kept), as DeepFake-Adapter's loader does.
    """

    image_size: int = 224
    resize: Literal["shorter_side", "square"] = "shorter_side"
    crop_pct: float = 1.0
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    train_augment: Literal["crop_flip", "flip", "none"] = "crop_flip"
    source: str = ""  # where the values come from (shown in model cards; not part of the identity)

    def validate(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"preprocess.image_size = {self.image_size} must be positive")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"preprocess.crop_pct = {self.crop_pct} must be within (0, 1]")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != 3:
                raise ConfigError(f"preprocess.{key} = {value} must have 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess.std = {self.std} must be positive")

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        """From a checkpoint/config dict; unknown keys are refused, missing ones take the defaults
        (so AntifakePrompt's {image_size, mean, std, source} dict reads as its bicubic shorter-side rule)."""
        from fakeforge.config import from_dict

        return from_dict(cls, dict(data), "preprocess")

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> dict:
        """The fields that change the pixels a model sees (everything but `source`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}

    def transform(self, train: bool = False) -> Callable:
        """PIL RGB image -> normalised float tensor [3, image_size, image_size]."""
        from torchvision import transforms as T

        self.validate()
        if (self.resize == "shorter_side" and self.crop_pct == 1.0 and self.interpolation == "bicubic"
                and (self.train_augment == "crop_flip" or not train)):
            return build_transform(self.image_size, self.mean, self.std, train=train)
        return T.Compose([*self.resize_steps(train), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def resize_steps(self, train: bool = False) -> list:
        """The PIL -> PIL steps (resize, crop, training flip) before the tensor conversion."""
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        if self.resize == "square":
            steps: list = [T.Resize([self.image_size, self.image_size], interpolation=mode)]
        else:
            steps = [T.Resize(int(self.image_size / self.crop_pct), interpolation=mode)]
            use_random = train and self.train_augment == "crop_flip"
            steps.append(T.RandomCrop(self.image_size) if use_random else T.CenterCrop(self.image_size))
        if train and self.train_augment in ("crop_flip", "flip"):
            steps.append(T.RandomHorizontalFlip())
        return steps
