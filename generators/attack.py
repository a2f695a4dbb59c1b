"""The `attack` generator type: runs any registered attack (`attacks.ATTACKS`) as a set of the build.

A preset under configs/attacks/ names the attack, its hyperparameters (`params`, the attack's
constructor arguments) and its model (`model_id`: a timm surrogate, or ISSBA's encoder folder), and
is used in a build config like any generator preset. Per request (source images come through the
builder's usual sources, seeds and writer):

  1. the source is made RGB, checked against `min_size`, brought to the set's stored geometry (the
     set's image policy resize/crop, so the stored image is exactly what was attacked) and capped at
     `max_size`; this clean copy is the reference of every distance;
  2. same-size requests are attacked in one batched call on the device, under a seed derived from
     the batch's per-sample seeds;
  3. the result is quantised to 8 bits (kept inside the attack's L-inf budget), encoded with the set's
     image policy, decoded again, and measured: L-inf / L2 / PSNR to the clean copy and success
     (prediction changed, trigger present, poison moved towards its target) on those decoded pixels.

Labels: untargeted attacks move away from the true label when the source has one in the surrogate's
label space (ImageNet sources with a 1000-class timm model), else from the surrogate's own prediction.
Storage: attack sets are PNG unless `lossless: false` (JPEG rounding is larger than an 8/255 budget
and would wipe out most of the perturbation); `storage_policy` applies this per set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from attacks.base import UnfitImageError
from fakeforge.config import ConfigError
from fakeforge.images import ImagePolicy
from generators.base import Generator, GeneratorConfig, GenRequest, GenResult, SampleError, torch_dtype
from generators.source_image import (
    PREPARE_ERRORS,
    check_min_size,
    check_size_limits,
    describe,
    fit_size,
    group_by_size,
    source_rgb,
)


@dataclass
class AttackConfig(GeneratorConfig):
    """An attack set.

    attack: registered attack name (`fakeforge ls attacks`).
    params: the attack's hyperparameters (constructor arguments; unset ones keep the published defaults).
    model_id: the attack's model: a timm surrogate (`resnet50`, `local-dir:/path`, a folder) or, for
        ISSBA, the StegaStamp folder; null for BadNets/Blended/WaNet.
    lossless: store the set as PNG whatever the build's format (JPEG destroys small perturbations).
    min_size: sources whose shorter side is smaller are skipped with a recorded reason.
    max_size: longer side cap of the attacked copy (larger sources are downscaled first, recorded).
    """

    type: str = "attack"
    attack: str = ""
    params: dict = field(default_factory=dict)
    lossless: bool = True
    min_size: int = 16
    max_size: int = 1024
    batch_size: int = 16

    def validate(self) -> None:
        super().validate()
        check_size_limits(self.min_size, self.max_size)

    def check(self) -> None:
        """Attack name, hyperparameters (constructing the attack without a model), optional extra and
        model name; imports the attack module and timm, loads no weights."""
        from attacks import ATTACKS

        ATTACKS.check(self.attack)
        cls = ATTACKS.get(self.attack)
        cls.from_params(None, self.params, f"generator.params of '{self.attack}'")
        cls.check_available()
        if cls.needs_model:
            if not _is_pending_twin(self):
                cls.check_model_id(self.model_id)
        elif self.model_id:
            raise ConfigError(f"attack '{self.attack}' uses no model; remove model_id = {self.model_id!r}")


def _is_pending_twin(cfg: GeneratorConfig) -> bool:
    """model_id is a tiny-twin folder that --tiny builds before loading."""
    from pathlib import Path

    return bool(cfg.tiny_twin and cfg.model_id and Path(cfg.model_id).name == cfg.tiny_twin
                and not Path(cfg.model_id).exists())


def _tensor(images: list[Image.Image], device: str):
    import torch

    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255)


def quantize(adv, clean, eps: float | None):
    """Round to 8-bit levels; with an L-inf budget, keep every pixel within floor(eps * 255) levels of
    `clean` (itself on 8-bit levels), so the stored image stays inside the budget."""
    import torch

    q = torch.round(adv * 255)
    if eps is not None:
        budget = float(np.floor(eps * 255 + 1e-6))
        c = torch.round(clean * 255)
        q = torch.min(torch.max(q, c - budget), c + budget)
    return q.clamp(0, 255) / 255


def distances(stored: np.ndarray, clean: np.ndarray) -> dict:
    """L-inf, L2 (over all pixels, [0, 1] units) and PSNR (dB; None when identical) of two uint8 images."""
    d = stored.astype(np.float64) / 255 - clean.astype(np.float64) / 255
    mse = float(np.mean(d * d))
    return {"linf": float(np.abs(d).max()), "linf_255": int(round(np.abs(d).max() * 255)),
            "l2": float(np.sqrt(np.sum(d * d))), "psnr": None if mse == 0 else round(10 * np.log10(1 / mse), 3)}


class AttackGenerator(Generator):
    """Bridge from the builder to `attacks.ATTACKS`: one batched attack call per same-size group."""

    config_class: ClassVar[type[GeneratorConfig]] = AttackConfig
    needs_source_image = True
    label = "fake"

    @classmethod
    def storage_policy(cls, config: AttackConfig, policy: ImagePolicy) -> ImagePolicy:
        """PNG (same size/resize) unless the preset says `lossless: false`."""
        return dataclasses.replace(policy, format="png") if config.lossless else policy

    def load(self) -> None:
        import torch

        from attacks import ATTACKS

        cfg = self.config
        cls = ATTACKS.get(cfg.attack)
        dtype = torch_dtype(cfg.dtype, self.device, "float32")
        model = cls.load_model(cfg.model_id, self.device, dtype) if cls.needs_model else None
        self.attack = cls.from_params(model, cfg.params)
        self.policy = self.image_policy or ImagePolicy(format="png")
        self.eps = getattr(self.attack, "eps", None)
        self.model_space = None
        if model is not None and hasattr(model, "num_classes"):
            from attacks.surrogate import label_space

            self.model_space = label_space(model.model)
        self._torch = torch
        self.surrogate_label = None
        if model is not None and self.attack.kind != "backdoor":
            from pathlib import Path

            twin = cfg.tiny_twin and Path(str(cfg.model_id)).name == cfg.tiny_twin
            self.surrogate_label = f"tiny-twin:{cfg.tiny_twin}" if twin else cfg.model_id

    def settings(self) -> dict[str, Any]:
        cfg = self.config
        return {"type": cfg.type, "attack": cfg.attack, "attack_class": type(self.attack).__name__,
                "kind": self.attack.kind, "hyperparameters": self.attack.hyperparameters(),
                "model_id": cfg.model_id, "lossless": cfg.lossless, "min_size": cfg.min_size,
                "max_size": cfg.max_size, "dtype": cfg.dtype}

    def _prepare(self, req: GenRequest) -> tuple[Image.Image, dict]:
        """Source -> the clean copy at the stored geometry (the reference of every distance)."""
        cfg = self.config
        src = source_rgb(req)
        check_min_size(src, cfg.min_size)
        img = self.policy.apply(src)
        extra: dict = {"source_image_id": req.source_image_id or str(req.meta.get("image_id", ""))}
        if max(img.size) > cfg.max_size:
            extra["attack_resized_from"] = list(img.size)
            img = img.resize(fit_size(img.width, img.height, None, cfg.max_size), Image.BICUBIC)
        check_min_size(img, cfg.min_size)
        for key, name in (("label", "source_label"), ("class_name", "source_class_name"),
                          ("label_space", "source_label_space")):
            if key in req.meta:
                extra[name] = req.meta[key]
        return img, extra

    def _labels(self, group: list[tuple[int, Image.Image, dict]], clean) -> tuple[Any, list[str]]:
        """True labels where the source's label space is the surrogate's, else the surrogate's prediction."""
        torch = self._torch
        labels = torch.full((len(group),), -1, dtype=torch.long, device=clean.device)
        origin = ["none"] * len(group)
        model = self.attack.model
        if model is None or not hasattr(model, "num_classes"):
            return labels, origin
        for j, (_, _, extra) in enumerate(group):
            if self.model_space and extra.get("source_label_space") == self.model_space:
                labels[j], origin[j] = int(extra["source_label"]), "dataset"
        missing = labels < 0
        if bool(missing.any()):
            with torch.no_grad():
                labels[missing] = model(clean[missing]).argmax(1)
            for j in torch.nonzero(missing).flatten().tolist():
                origin[j] = "surrogate"
        return labels, origin

    def _seed(self, requests: list[GenRequest]) -> int:
        text = "|".join(str(r.seed) for r in requests)
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)

    def _run(self, clean, labels):
        kind = self.attack.kind
        if kind == "backdoor":
            return self.attack(clean)
        return self.attack(clean, labels)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        torch = self._torch
        results: list[GenResult | None] = [None] * len(requests)
        ready: list[tuple[int, Image.Image, dict]] = []
        for i, req in enumerate(requests):
            try:
                img, extra = self._prepare(req)
                ready.append((i, img, extra))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        for idx in group_by_size(ready, lambda item: item[1].size):
            group = [ready[j] for j in idx]
            clean = _tensor([img for _, img, _ in group], self.device)
            labels, origin = self._labels(group, clean)
            devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
            np_state = np.random.get_state()
            with torch.random.fork_rng(devices=devices):
                seed = self._seed([requests[i] for i, _, _ in group])
                torch.manual_seed(seed)
                np.random.seed(seed)  # ART draws from numpy's global generator
                try:
                    adv = self._run(clean, labels)
                except UnfitImageError as exc:  # these images cannot take the attack: their samples fail
                    adv = None
                    for i, _, _ in group:
                        results[i] = GenResult(error=str(exc))
                finally:
                    np.random.set_state(np_state)
            if adv is None:
                continue
            if adv.shape != clean.shape:
                raise RuntimeError(f"attack returned shape {tuple(adv.shape)} for input {tuple(clean.shape)}")
            if not bool(torch.isfinite(adv).all()):
                raise SampleError("attack output contains NaN/inf values")
            adv = quantize(adv, clean, self.eps if self.attack.kind != "backdoor" else None)
            out_u8 = (adv * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            stored_imgs, stored_u8 = [], []
            for arr in out_u8:
                img = Image.fromarray(arr)
                data, _ = self.policy.encode(img)
                with Image.open(io.BytesIO(data)) as decoded:
                    stored_u8.append(np.asarray(decoded.convert("RGB")))
                stored_imgs.append(img)
            stored = _tensor([Image.fromarray(a) for a in stored_u8], self.device)
            success, measured = self.attack.evaluate(stored, clean, labels)
            clean_u8 = (clean * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            for j, (i, _, extra) in enumerate(group):
                meta = dict(extra)
                meta.update(attack=self.config.attack, attack_kind=self.attack.kind, surrogate=self.surrogate_label,
                            success=bool(success[j]), **distances(stored_u8[j], clean_u8[j]),
                            **{k: v[j] for k, v in measured.items()})
                if labels[j] >= 0:
                    meta.update(label_used=int(labels[j]), label_from=origin[j])
                results[i] = GenResult(image=stored_imgs[j], extra=meta)
        return results  # type: ignore[return-value]
