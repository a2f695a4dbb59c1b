"""StyleGAN-XL fakes: the "SGXL" column of AntifakePrompt (class-conditional ImageNet generator).

Sampling follows the official `gen_images.py`: for seed s, z = `np.random.RandomState(s).randn(1, z_dim)`;
a random class is `np.random.RandomState(s).randint(0, c_dim)`; w is truncated towards that class's
average, w_avg[c] + (w - w_avg[c]) * psi; the image is converted as (x + 1) * 255 / 2, clamped and
truncated to uint8. The seed of a sample is the build's per-sample seed, so `gen_images.py
--seeds=<seed> --trunc=<psi> --class=<c>` with the same network pickle gives the same image.

Weights: the official network pickles (imagenet16.pkl ... imagenet1024.pkl) are read by
generators/network_pickle.py without executing anything from the file; a `.safetensors` file written by
`convert_to_safetensors` (spec as JSON in its metadata) loads without any pickle at all.
Class labels: "random" (per seed, as the official script), a class id or a list of ids / WordNet ids
(a list is drawn from per seed), or "source": the id each source record carries under `class_meta_key`
(e.g. an ImageNet source's labels).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from fakeforge.config import ConfigError
from generators.base import GenRequest, GenResult, SampleError
from generators.checkpoint_file import CheckpointFileConfig, CheckpointFileGenerator
from generators.superres import key_mismatch_message

SGXL_ENV = "FAKEFORGE_SGXL_MODEL"
SGXL_HELP = ("StyleGAN-XL needs an official network pickle such as imagenet256.pkl: download it from the "
             "'Pretrained Models' table of https://github.com/autonomousvision/stylegan-xl (README) and point "
             f"generator.model_path or ${SGXL_ENV} at it")
IMAGENET_CLASSES = 1000


def imagenet_index(label) -> int:
    """An ImageNet class index from an int (0-999) or a WordNet id ('n01440764'); ValueError when unknown."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < IMAGENET_CLASSES:
            raise ValueError(f"class id {label} is not an ImageNet class (0-{IMAGENET_CLASSES - 1})")
        return int(label)
    if isinstance(label, str) and label.isdigit():
        return imagenet_index(int(label))
    if isinstance(label, str) and label.startswith("n") and label[1:].isdigit():
        try:
            from timm.data import ImageNetInfo
        except ImportError:
            raise ValueError(f"WordNet id '{label}' needs timm to map it to a class index (pip install timm), "
                             "or give the index (0-999)") from None
        info = ImageNetInfo()
        if label not in info.label_names():
            raise ValueError(f"'{label}' is not one of the 1000 ImageNet WordNet ids")
        return info.label_names().index(label)
    raise ValueError(f"class label {label!r} is neither an ImageNet class index (0-999) nor a WordNet id")


def load_stylegan_xl(path: Path, network_key: str = "G_ema", device: str = "cpu"):
    """(model, spec) from an official network pickle (read safely) or a converted .safetensors file."""
    import torch

    from generators.network_pickle import UnsafePickleError, extract_generator, read_network_pickle
    from generators.sgxl_net import StyleGANXL

    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                spec = json.loads((fh.metadata() or {})["sgxl_spec"])
        except Exception as exc:  # noqa: BLE001 - wrong kind of file
            raise ConfigError(f"'{path}' is not a converted StyleGAN-XL safetensors file (weights + 'sgxl_spec' "
                              f"metadata): {exc}") from None
    else:
        try:
            data = read_network_pickle(path)
        except UnsafePickleError as exc:
            raise ConfigError(f"'{path}' was refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - truncated, not a pickle
            raise ConfigError(f"'{path}' is not a readable network pickle: {type(exc).__name__}: {exc}. "
                              f"{SGXL_HELP}") from None
        try:
            spec, state = extract_generator(data, network_key)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"'{path}': {network_key} is not a StyleGAN3/StyleGAN-XL generator (missing "
                              f"{exc})") from None
    try:
        model = StyleGANXL(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"'{path}': the network description is incomplete (missing {exc})") from None
    expected = list(model.state_dict())
    if sorted(expected) != sorted(state):
        raise ConfigError(key_mismatch_message(path, "StyleGAN-XL", expected, list(state)))
    try:
        model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()},
                              strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"'{path}': tensors do not fit the StyleGAN-XL network: {str(exc)[:400]}") from None
    return model.to(device).eval().requires_grad_(False), spec


def convert_to_safetensors(pkl: str | Path, out: str | Path, network_key: str = "G_ema") -> Path:
    """Write a network pickle's generator as .safetensors with its spec in the metadata (no pickle afterwards)."""
    from safetensors.torch import save_file

    model, spec = load_stylegan_xl(Path(pkl), network_key)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"sgxl_spec": json.dumps(spec)})
    return Path(out)


@dataclass
class StyleGANXLConfig(CheckpointFileConfig):
    """StyleGAN-XL settings.

    model_path: network pickle (.pkl) or converted .safetensors; a folder means <folder>/network.pkl.
    network_key: which network of the pickle ("G_ema", the one the official scripts sample from).
    truncation_psi: 1 = no truncation; < 1 pulls w towards its class average.
    class_labels: "random" | "source" | an ImageNet class id | a list of ids or WordNet ids.
    class_meta_key: with class_labels "source", the record field holding the class (index or WordNet id).
    force_fp32: run every layer in float32 on GPU (the official code uses float16 for the highest resolutions).
    per_sample: synthesise one image at a time, as the official gen_images.py does: bit-identical to it on
        CPU. false batches the synthesis (faster on GPU; floats then differ by ~1e-6, at most a few pixels
        by one level).
    """

    checkpoint_env: ClassVar[str] = SGXL_ENV
    checkpoint_name: ClassVar[str] = "network.pkl"
    checkpoint_help: ClassVar[str] = SGXL_HELP
    network_key: str = "G_ema"
    truncation_psi: float = 1.0
    class_labels: int | list[int | str] | str = "random"
    class_meta_key: str = "class_index"
    force_fp32: bool = False
    per_sample: bool = True

    def validate(self) -> None:
        super().validate()
        if isinstance(self.class_labels, str) and self.class_labels not in ("random", "source"):
            try:
                self.class_labels = imagenet_index(self.class_labels)
            except ValueError as exc:
                raise ConfigError(f"generator.class_labels = {self.class_labels!r}: {exc}; or use 'random' / "
                                  "'source'") from None
        labels = self.class_labels if isinstance(self.class_labels, list) else [self.class_labels]
        if isinstance(self.class_labels, list) and not labels:
            raise ConfigError("generator.class_labels is an empty list")
        for i, label in enumerate(labels):
            if label in ("random", "source") and not isinstance(self.class_labels, list):
                continue
            try:
                imagenet_index(label)
            except ValueError as exc:
                raise ConfigError(f"generator.class_labels{'.' + str(i) if isinstance(self.class_labels, list) else ''}"
                                  f" = {label!r}: {exc}") from None


class StyleGANXLGenerator(CheckpointFileGenerator):
    """Class-conditional ImageNet images from seeds (the caption is not used)."""

    config_class = StyleGANXLConfig
    records_run_dtype = False  # its use_fp16 layers run in float16 on CUDA unless force_fp32

    def load(self) -> None:
        path = self.config.checkpoint_path()
        self.model_file = path
        self.model, self.spec = load_stylegan_xl(path, self.config.network_key, self.device)
        c_dim = self.model.c_dim
        fixed = self.config.class_labels
        if c_dim and not isinstance(fixed, str):
            bad = [x for x in (fixed if isinstance(fixed, list) else [fixed]) if imagenet_index(x) >= c_dim]
            if bad:
                raise ConfigError(f"generator.class_labels {bad} are beyond the model's {c_dim} classes")

    def class_of(self, req: GenRequest) -> int | None:
        """The class of one request (None for an unconditional model); SampleError when unusable."""
        cfg = self.config
        if not self.model.c_dim:
            return None
        if cfg.class_labels == "random":
            return int(np.random.RandomState(req.seed).randint(low=0, high=self.model.c_dim, size=1)[0])
        if cfg.class_labels == "source":
            if cfg.class_meta_key not in req.meta:
                raise SampleError(f"source record has no '{cfg.class_meta_key}' field (class_labels: source)")
            label = req.meta[cfg.class_meta_key]
        elif isinstance(cfg.class_labels, list):
            label = cfg.class_labels[int(np.random.RandomState(req.seed).randint(len(cfg.class_labels)))]
        else:
            label = cfg.class_labels
        try:
            index = imagenet_index(label)
        except ValueError as exc:
            raise SampleError(str(exc)) from None
        if index >= self.model.c_dim:
            raise SampleError(f"class id {index} is beyond the model's {self.model.c_dim} classes")
        return index

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch
        from PIL import Image

        from generators.sgxl_net import to_uint8

        results: list[GenResult | None] = [None] * len(requests)
        ready = []
        for i, req in enumerate(requests):
            try:
                ready.append((i, self.class_of(req)))
            except SampleError as exc:
                results[i] = GenResult(error=str(exc))
        if ready:
            seeds = [requests[i].seed for i, _ in ready]
            classes = (torch.tensor([c for _, c in ready], device=self.device) if self.model.c_dim else None)
            with torch.no_grad():
                z = self.model.latents(seeds)
                psi, fp32 = self.config.truncation_psi, self.config.force_fp32
                if self.config.per_sample:  # mapping and synthesis at batch size one, like gen_images.py
                    images = torch.cat([self.model(self.model.ws(z[k:k + 1], None if classes is None
                                                                 else classes[k:k + 1], psi), force_fp32=fp32)
                                        for k in range(len(seeds))])
                else:
                    images = self.model(self.model.ws(z, classes, psi), force_fp32=fp32)
            finite = torch.isfinite(images).flatten(1).all(dim=1).tolist()
            pixels = to_uint8(images)
            for (i, cls), ok, arr in zip(ready, finite, pixels):
                if not ok:
                    results[i] = GenResult(error="generated image contains NaN/inf values")
                    continue
                extra = {"class_index": cls, "truncation_psi": self.config.truncation_psi,
                         "latent": f"np.random.RandomState({requests[i].seed}).randn(1, {self.model.z_dim})"}
                results[i] = GenResult(image=Image.fromarray(arr), extra=extra)
        return results  # type: ignore[return-value]

    def settings(self) -> dict:
        data = super().settings()
        if getattr(self, "spec", None):
            data["network"] = {"class_name": self.spec.get("class_name"), "img_resolution": self.spec["img_resolution"],
                               "c_dim": self.spec["c_dim"]}
        return data
