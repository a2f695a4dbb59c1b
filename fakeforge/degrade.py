"""Image degradations: small named operations on decoded RGB PIL images, and chains of them.

Operations (string form `name:value[,key=value...]`, chains joined by `+`, e.g. `jpeg:75+resize:0.5`):

  jpeg    quality 1..100, subsampling 444|422|420 (PIL's default 420), library pil|cv2: encode, then decode
          with the same library (CNNSpot's `pil_jpg` / `cv2_jpg`).
  webp    quality 1..100 (PIL's libwebp encoder, lossy).
  blur    sigma >= 0, kernel scipy|cv2. scipy (default) is CNNSpot's `gaussian_blur`, which AIGCDetectBenchmark
          reuses: `scipy.ndimage.gaussian_filter` on each uint8 channel (reflect borders, truncate 4 sigma);
          cv2 is `cv2.GaussianBlur(img, (0, 0), sigma)`. sigma 0 leaves the image as it is.
  resize  scale in (0, 1] (both sides), or size >= 2 (pixels of the `side`: short (default) or long; an image
          already that small is left alone: down only), interpolation bilinear|bicubic|nearest|lanczos|box
          (PIL resampling, default bilinear), back_up: resize back to the original size afterwards.
  noise   std > = 0 on the 0..255 scale: additive Gaussian noise, rounded and clipped to 8 bits.
  crop    fraction in (0, 1] of each side, or size >= 1 (a square of that many pixels); position center|random.
          A crop larger than the image is that sample's error (DegradeError), not a config error.

Randomness (noise, random crops) comes from a hash of the sample key, the chain's canonical string, the
operation's place in the chain and an optional seed, never from a global generator, so the same sample
degrades identically whatever the batch size, the number of workers or the order of the samples.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError


class DegradeError(ValueError):
    """A degradation that cannot be applied to one image (e.g. a crop larger than it): a per-sample error."""


_SUBSAMPLING = {"444": "4:4:4", "422": "4:2:2", "420": "4:2:0", "4:4:4": "4:4:4", "4:2:2": "4:2:2",
                "4:2:0": "4:2:0"}
_RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "box": Image.Resampling.BOX}


def _rgb_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _check_quality(op: str, quality: Any) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"{op}: quality = {quality!r} must be an integer within 1..100")


def _choice(op: str, key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{op}: {key} = {value!r} must be one of {sorted(allowed)}")


@dataclass(frozen=True)
class Op:
    """Base of every operation: a frozen dataclass of checked parameters and `apply(img, rng)`."""

    name: ClassVar[str] = ""
    primary: ClassVar[tuple[str, ...]] = ()  # the parameter(s) the short string form `name:value` sets
    random: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the bad parameter and value."""

    def apply(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """The degraded copy of RGB image `img` (`rng`: this sample's generator, for random operations)."""
        raise NotImplementedError

    def params(self) -> dict:
        """The parameters as plain data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def value(self) -> Any:
        """The swept value of this operation (its first set primary parameter), for curves."""
        return next((getattr(self, k) for k in self.primary if getattr(self, k) is not None), None)

    def spec(self) -> str:
        """Canonical string form (parsed back by `parse_chain`); defaults left out."""
        defaults = type(self).__dataclass_fields__
        main = next((k for k in self.primary if getattr(self, k) is not None), None)
        parts = [] if main is None else [_fmt(getattr(self, main))]
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != main and v != defaults[f.name].default:
                parts.append(f"{f.name}={_fmt(v)}")
        return self.name + (":" + ",".join(parts) if parts else "")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return f"{v:.1f}"
    return str(v)


@dataclass(frozen=True)
class Jpeg(Op):
    """JPEG re-compression: encode at `quality` and decode with the same library."""

    name: ClassVar[str] = "jpeg"
    primary: ClassVar[tuple[str, ...]] = ("quality",)
    quality: int = 75
    subsampling: str = "420"
    library: str = "pil"

    def check(self) -> None:
        _check_quality("jpeg", self.quality)
        _choice("jpeg", "subsampling", str(self.subsampling), _SUBSAMPLING)
        _choice("jpeg", "library", self.library, {"pil", "cv2"})

    def apply(self, img, rng=None):
        sub = _SUBSAMPLING[str(self.subsampling)]
        if self.library == "cv2":
            import cv2

            factor = {"4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                      "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}[sub]
            ok, buf = cv2.imencode(".jpg", _rgb_array(img)[:, :, ::-1],
                                   [cv2.IMWRITE_JPEG_QUALITY, self.quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
            if not ok:
                raise DegradeError(f"{self.spec()}: OpenCV could not encode the image")
            return Image.fromarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy())
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=self.quality, subsampling=sub)
        out.seek(0)
        return Image.open(out).convert("RGB")


@dataclass(frozen=True)
class Webp(Op):
    """Lossy WebP re-compression at `quality` (PIL's libwebp)."""

    name: ClassVar[str] = "webp"
    primary: ClassVar[tuple[str, ...]] = ("quality",)
    quality: int = 80

    def check(self) -> None:
        _check_quality("webp", self.quality)

    def apply(self, img, rng=None):
        out = io.BytesIO()
        img.convert("RGB").save(out, format="WEBP", quality=self.quality)
        out.seek(0)
        return Image.open(out).convert("RGB")


@dataclass(frozen=True)
class Blur(Op):
    """Gaussian blur of standard deviation `sigma` pixels (kernel: see the module docstring)."""

    name: ClassVar[str] = "blur"
    primary: ClassVar[tuple[str, ...]] = ("sigma",)
    sigma: float = 1.0
    kernel: str = "scipy"

    def check(self) -> None:
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not self.sigma >= 0:
            raise ConfigError(f"blur: sigma = {self.sigma!r} must be a number >= 0")
        _choice("blur", "kernel", self.kernel, {"scipy", "cv2"})

    def apply(self, img, rng=None):
        arr = _rgb_array(img)
        if self.sigma == 0:
            return Image.fromarray(arr.copy())
        if self.kernel == "cv2":
            import cv2

            return Image.fromarray(cv2.GaussianBlur(arr, (0, 0), float(self.sigma)))
        from scipy.ndimage import gaussian_filter

        out = np.empty_like(arr)
        for c in range(3):
            gaussian_filter(arr[:, :, c], output=out[:, :, c], sigma=float(self.sigma))
        return Image.fromarray(out)


@dataclass(frozen=True)
class Resize(Op):
    """Downscale by `scale` or to `size` pixels on the short/long side (down only), optionally back up."""

    name: ClassVar[str] = "resize"
    primary: ClassVar[tuple[str, ...]] = ("scale", "size")
    scale: float | None = None
    size: int | None = None
    side: str = "short"
    interpolation: str = "bilinear"
    back_up: bool = False

    def check(self) -> None:
        if (self.scale is None) == (self.size is None):
            raise ConfigError(f"resize: give scale or size, not {'both' if self.scale is not None else 'neither'}")
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                                       or not 0 < self.scale <= 1):
            raise ConfigError(f"resize: scale = {self.scale!r} must be within (0, 1]")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"resize: size = {self.size!r} must be an integer >= 1")
        _choice("resize", "side", self.side, {"short", "long"})
        _choice("resize", "interpolation", self.interpolation, _RESAMPLING)
        if not isinstance(self.back_up, bool):
            raise ConfigError(f"resize: back_up = {self.back_up!r} must be true or false")

    def target(self, w: int, h: int) -> tuple[int, int]:
        """The downscaled (width, height) of a w x h image."""
        if self.scale is not None:
            return max(1, round(w * self.scale)), max(1, round(h * self.scale))
        side = min(w, h) if self.side == "short" else max(w, h)
        if side <= self.size:
            return w, h
        f = self.size / side
        return max(1, round(w * f)), max(1, round(h * f))

    def apply(self, img, rng=None):
        img = img.convert("RGB")
        size = self.target(*img.size)
        if size == img.size:
            return img.copy()
        small = img.resize(size, _RESAMPLING[self.interpolation])
        return small.resize(img.size, _RESAMPLING[self.interpolation]) if self.back_up else small


@dataclass(frozen=True)
class Noise(Op):
    """Additive Gaussian noise of standard deviation `std` (0..255 scale), seeded per sample."""

    name: ClassVar[str] = "noise"
    primary: ClassVar[tuple[str, ...]] = ("std",)
    random: ClassVar[bool] = True
    std: float = 5.0

    def check(self) -> None:
        if isinstance(self.std, bool) or not isinstance(self.std, (int, float)) or not self.std >= 0:
            raise ConfigError(f"noise: std = {self.std!r} must be a number >= 0")

    def apply(self, img, rng=None):
        arr = _rgb_array(img).astype(np.float64)
        noisy = arr + (rng or np.random.default_rng(0)).normal(0.0, float(self.std), arr.shape)
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class Crop(Op):
    """Crop `fraction` of each side or a `size` x `size` square, at the center or a seeded random place."""

    name: ClassVar[str] = "crop"
    primary: ClassVar[tuple[str, ...]] = ("fraction", "size")
    fraction: float | None = None
    size: int | None = None
    position: str = "center"

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.position == "random"

    def check(self) -> None:
        if (self.fraction is None) == (self.size is None):
            raise ConfigError(f"crop: give fraction or size, not {'both' if self.size is not None else 'neither'}")
        if self.fraction is not None and (isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float))
                                          or not 0 < self.fraction <= 1):
            raise ConfigError(f"crop: fraction = {self.fraction!r} must be within (0, 1]")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"crop: size = {self.size!r} must be an integer >= 1")
        _choice("crop", "position", self.position, {"center", "random"})

    def apply(self, img, rng=None):
        w, h = img.size
        cw, ch = ((max(1, round(w * self.fraction)), max(1, round(h * self.fraction))) if self.fraction is not None
                  else (self.size, self.size))
        if cw > w or ch > h:
            raise DegradeError(f"{self.spec()}: crop {cw}x{ch} is larger than the image ({w}x{h})")
        if self.position == "random":
            rng = rng or np.random.default_rng(0)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        else:
            left, top = (w - cw) // 2, (h - ch) // 2
        return img.convert("RGB").crop((left, top, left + cw, top + ch))


OPS: dict[str, type[Op]] = {cls.name: cls for cls in (Jpeg, Webp, Blur, Resize, Noise, Crop)}


def _scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(low)
        except ValueError:
            pass
    return text.strip()


def make_op(name: str, params: dict) -> Op:
    """An operation by name from keyword parameters; ConfigError naming an unknown op or parameter."""
    if name not in OPS:
        raise ConfigError(f"unknown degradation {name!r}; known: {', '.join(sorted(OPS))}")
    cls = OPS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {unknown}; valid: {valid}")
    if name in ("resize", "crop"):
        params = dict(params)
        for k in ("scale", "fraction"):  # an integer scale 1 / fraction 1 is a float parameter
            if isinstance(params.get(k), int) and not isinstance(params[k], bool):
                params[k] = float(params[k])
    if name == "blur" and isinstance(params.get("sigma"), int) and not isinstance(params["sigma"], bool):
        params = {**params, "sigma": float(params["sigma"])}
    if name == "noise" and isinstance(params.get("std"), int) and not isinstance(params["std"], bool):
        params = {**params, "std": float(params["std"])}
    return cls(**params)


def _parse_one(text: str) -> Op:
    name, _, rest = text.strip().partition(":")
    params: dict = {}
    for i, item in enumerate(p for p in rest.split(",") if p.strip()) if rest else []:
        if "=" in item:
            k, _, v = item.partition("=")
            params[k.strip()] = _scalar(v)
        elif i == 0:
            value = _scalar(item)
            cls = OPS.get(name.strip())
            if cls is not None and len(cls.primary) == 2:  # resize/crop: a float is a scale, an integer > 1 a size
                key = cls.primary[1] if isinstance(value, int) and value > 1 else cls.primary[0]
            elif cls is not None:
                key = cls.primary[0]
            else:
                key = "value"
            params[key] = value
        else:
            raise ConfigError(f"degradation {text!r}: only the first parameter may be given without key=")
    return make_op(name.strip(), params)


@dataclass(frozen=True)
class Chain:
    """Operations applied in order; the empty chain is the clean condition."""

    ops: tuple[Op, ...] = ()

    def spec(self) -> str:
        """Canonical string form, e.g. "jpeg:75+resize:0.5" ("clean" for no operation)."""
        return "+".join(op.spec() for op in self.ops) or "clean"

    def rng(self, key: str, index: int, seed: int = 0) -> np.random.Generator:
        """The generator of operation `index` for sample `key`: a hash of seed, key, chain and place."""
        digest = hashlib.sha256(f"{seed}\x00{key}\x00{self.spec()}\x00{index}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "little"))

    def apply(self, img: Image.Image, key: str = "", seed: int = 0) -> Image.Image:
        """The degraded copy of `img` (sample `key`); raises DegradeError when one operation cannot apply."""
        out = img.convert("RGB")
        for i, op in enumerate(self.ops):
            out = op.apply(out, self.rng(key, i, seed) if op.random else None)
        return out

    def __bool__(self) -> bool:
        return bool(self.ops)


def parse_chain(value: Any) -> Chain:
    """A Chain from a string (`jpeg:75+resize:0.5`, `clean`/"" for none), a mapping (`{op: jpeg, quality: 75}`),
    a list of either, or a Chain; one-line ConfigError naming the bad value."""
    if isinstance(value, Chain):
        return value
    if isinstance(value, Op):
        return Chain((value,))
    if value is None:
        return Chain()
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "clean", "none"):
            return Chain()
        return Chain(tuple(_parse_one(part) for part in text.split("+")))
    if isinstance(value, dict):
        params = dict(value)
        name = params.pop("op", None)
        if not isinstance(name, str):
            raise ConfigError(f"degradation {value!r} needs an 'op:' naming one of {', '.join(sorted(OPS))}")
        return Chain((make_op(name, params),))
    if isinstance(value, (list, tuple)):
        return Chain(tuple(op for item in value for op in parse_chain(item).ops))
    raise ConfigError(f"degradation {value!r} must be a string like 'jpeg:75+resize:0.5', a mapping or a list")
