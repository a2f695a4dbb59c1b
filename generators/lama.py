"""LaMa inpainting with the big-lama TorchScript checkpoint (`big-lama.pt`), run by the project itself.

`big-lama.pt` is the traced LaMa model released with simple-lama-inpainting (github.com/enesmsahin/
simple-lama-inpainting, release asset `big-lama.pt`). Its call contract is `model(image, mask) ->
image`: image float [0,1] (B,3,H,W), mask (B,1,H,W) with 1 = hole, H and W multiples of 8; the
output is float [0,1] of the same size with the known pixels copied from the input.

`LamaRunner` pads each image (symmetric, like simple-lama, or reflect) to a multiple of 8, runs a
batch of images that share one padded size, and crops every output back to its input size. The
mask is passed as float 0/1 (LaMa's to_jit.py traces big-lama with float masks; simple-lama's int64
0/1 mask is promoted to the same values). On a CPU, batching gave no speed-up on the tiny twin
(benchmarks/bench_lama.py), so use `batch_size: 1` there; on a GPU batching should help (not
measured here, and the real big-lama.pt was traced with batch 1: a failing batch falls back to
one image at a time through `generate_safe`).
The generator draws a mask per sample (generators.masks), caps huge sources at `max_size`
(working copy downscaled; the result is upscaled back and the source pixels outside the mask are
pasted back, so the output has the source size and LaMa's "known pixels unchanged" property), and
skips sources smaller than `min_size` with a recorded reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError
from generators.base import GenRequest, GenResult, SampleError, array_to_pil
from generators.checkpoint_file import CheckpointFileConfig, CheckpointFileGenerator
from generators.masks import MaskConfig, check_mask, make_mask, resize_mask
from generators.source_image import (
    PREPARE_ERRORS,
    check_min_size,
    check_size_limits,
    describe,
    fit_size,
    group_by_size,
    source_rgb,
)

LAMA_ENV = "FAKEFORGE_LAMA_MODEL"
LAMA_HELP = ("big-lama.pt is LaMa's TorchScript checkpoint released by the simple-lama-inpainting project: "
             "download it from https://github.com/enesmsahin/simple-lama-inpainting/releases (asset big-lama.pt) "
             f"and point generator.model_path or ${LAMA_ENV} at it")


class LamaRunner:
    """Pads, batches, runs and crops for a TorchScript model with big-lama's call contract."""

    def __init__(self, model, device: str = "cpu", pad_mode: Literal["symmetric", "reflect"] = "symmetric",
                 multiple: int = 8):
        self.model, self.device, self.pad_mode, self.multiple = model, str(device), pad_mode, multiple

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        m = self.multiple
        return -(-h // m) * m, -(-w // m) * m

    def _pad_index(self, n: int, total: int):
        import torch

        i = torch.arange(total)
        if self.pad_mode == "reflect" and n > 1:
            period = 2 * n - 2
            i = i % period
            return torch.where(i < n, i, period - i)
        i = i % (2 * n)  # symmetric: edge pixel repeated (numpy "symmetric")
        return torch.where(i < n, i, 2 * n - 1 - i)

    def run(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 HxWx3 images + HxW masks (nonzero = hole) -> float32 HxWx3 in [0,1], same sizes.
        Images are batched by padded size; each output is cropped back to its own input size."""
        out: list[np.ndarray | None] = [None] * len(images)
        for idx in group_by_size(images, lambda a: self.padded_size(*a.shape[:2])):
            for i, arr in zip(idx, self._run_group([images[i] for i in idx], [masks[i] for i in idx])):
                out[i] = arr
        return out  # type: ignore[return-value]

    def _run_group(self, images, masks) -> list[np.ndarray]:
        import torch

        ph, pw = self.padded_size(*images[0].shape[:2])
        batch_img, batch_mask = [], []
        for img, mask in zip(images, masks):
            h, w = img.shape[:2]
            t = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
            m = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[None]
            rows, cols = self._pad_index(h, ph), self._pad_index(w, pw)
            batch_img.append(t[:, rows][:, :, cols])
            batch_mask.append(m[:, rows][:, :, cols])
        x = torch.stack(batch_img).to(self.device)
        m = torch.stack(batch_mask).to(self.device)
        with torch.inference_mode():
            y = self.model(x, m)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise SampleError(f"LaMa model returned {got} for input {tuple(x.shape)}")
        y = y.float().cpu()
        return [y[k, :, :img.shape[0], :img.shape[1]].permute(1, 2, 0).numpy() for k, img in enumerate(images)]


def load_torchscript(path: Path, device: str):
    """torch.jit.load with a clear ConfigError when the file is not a TorchScript archive."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch >= 2.14 marks torch.jit as deprecated; the file format is TorchScript
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is of the wrong kind
        raise ConfigError(f"'{path}' is not a TorchScript archive ({type(exc).__name__}: {str(exc)[:200]}). "
                          f"LaMa needs the traced big-lama.pt. {LAMA_HELP}") from None
    return model.float().eval()  # LaMa runs in float32 (RUN_DTYPE), whatever the file holds


@dataclass
class LamaConfig(CheckpointFileConfig):
    """LaMa settings.

    model_path: big-lama.pt (or a folder holding it); model_id (set by --tiny to the twin folder) takes
        precedence, $FAKEFORGE_LAMA_MODEL is the fallback. dtype: auto or float32 (LaMa runs in float32).
    mask: see generators.masks.MaskConfig.
    pad_mode: "symmetric" (what simple-lama-inpainting does) or "reflect".
    min_size: sources whose shorter side is smaller are skipped with a recorded reason.
    max_size: longer side of the working copy (huge sources are downscaled; output keeps the source size).
    """

    checkpoint_env: ClassVar[str] = LAMA_ENV
    checkpoint_name: ClassVar[str] = "big-lama.pt"
    checkpoint_help: ClassVar[str] = LAMA_HELP
    mask: MaskConfig = field(default_factory=MaskConfig)
    pad_mode: Literal["symmetric", "reflect"] = "symmetric"
    min_size: int = 16
    max_size: int = 2048

    def validate(self) -> None:
        super().validate()
        self.mask.validate()
        check_size_limits(self.min_size, self.max_size)

    def check(self) -> None:
        super().check()
        self.mask.check()


class LamaInpaint(CheckpointFileGenerator):
    """Masked real image -> LaMa inpainting (the prompt is not used; LaMa is not text-conditioned)."""

    config_class = LamaConfig
    needs_source_image = True

    def load(self) -> None:
        path = self.config.checkpoint_path()
        self.model_file = path
        self.runner = LamaRunner(load_torchscript(path, self.device), self.device, self.config.pad_mode)
        probe = np.zeros((16, 16, 3), np.uint8), np.pad(np.ones((8, 8), np.uint8), 4)
        try:
            self.runner.run([probe[0]], [probe[1]])
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means a wrong model
            raise ConfigError(f"'{path}' is a TorchScript module without big-lama's call contract "
                              f"model(image, mask) -> image: {str(exc)[:300]}") from None

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        cfg = self.config
        results: list[GenResult | None] = [None] * len(requests)
        ready = []
        for i, req in enumerate(requests):
            try:
                src = source_rgb(req)
                check_min_size(src, cfg.min_size)
                image_id = req.meta.get("image_id") or req.source_image_id or None
                mask, info = make_mask(cfg.mask, src.size, req.seed, image_id)
                check_mask(mask)
                size = fit_size(src.width, src.height, None, cfg.max_size)
                work, work_mask = src, mask
                if size != src.size:
                    work, work_mask = src.resize(size, Image.BICUBIC), resize_mask(mask, size)
                    check_mask(work_mask, f"mask at working size {size[0]}x{size[1]}")
                extra = {"source_image_id": req.source_image_id or str(image_id or ""),
                         "source_size": [src.width, src.height], "working_size": list(size), **info}
                ready.append((i, src, mask, np.asarray(work), work_mask, extra))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        outs = self.runner.run([r[3] for r in ready], [r[4] for r in ready]) if ready else []
        for (i, src, mask, _, _, extra), arr in zip(ready, outs):
            try:
                img = array_to_pil(arr)
                if img.size != src.size:  # downscaled working copy: back to source size, known pixels pasted
                    img = Image.composite(img.resize(src.size, Image.BICUBIC), src, Image.fromarray(mask))
                results[i] = GenResult(image=img, mask=mask, extra=extra)
            except SampleError as exc:
                results[i] = GenResult(error=str(exc))
        return results  # type: ignore[return-value]
