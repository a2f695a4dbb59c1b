"""DE-FAKE (Sha et al., CCS 2023, zeyangsha/De-Fake): CLIP image + caption embeddings -> an MLP.

The official hybrid detector encodes the image and a caption of it with CLIP ViT-B/32 (`encode_image`,
`encode_text`, both under `torch.no_grad()`, so CLIP stays frozen although its parameters sit in the
optimizer), concatenates the two 512-d embeddings and classifies them with `NeuralNet(1024, [512, 256], 2)`:
fc1 -> ReLU -> dropout 0.5 -> fc2 -> ReLU -> fc3, cross-entropy, Adam 3e-4, batch 32, 50 epochs.
Training reads each sample's own caption (the prompt a fake was generated from, the COCO caption of a real);
at test time the caption comes from a BLIP captioner (beam search, 3 beams, 5 to 60 tokens, the prompt
"a picture of " stripped from the output).

Here CLIP is transformers' `CLIPModel` (`openai/clip-vit-base-patch32` is the same ViT-B/32 as `clip.load`)
and the captioner transformers' `BlipForConditionalGeneration` (`Salesforce/blip-image-captioning-base`,
the nearest port of the BLIP base CapFilt-L checkpoint the official test script loads). CLIP being frozen,
DE-FAKE is a feature detector: `features(pixels, captions)` = [image embedding | caption embedding] is cached
per set by `detector.families.frozen.feature_cache` (the shards' captions reach it because `needs_caption` is set), and the
MLP is fitted over the cache (`fit_features`). Captions:

* features read through the cache (training and validation sets) use each sample's stored caption (the
  shard json's `caption`); samples without one (image folders) get a BLIP caption;
* `score()` (detect, eval, the side-by-side table) follows `model.caption`: `blip` (the official test rule)
  captions every image with BLIP; `stored` uses captions passed to `score(captions=...)` and BLIP for the rest.

BLIP captions are computed once per image and kept in a caption cache on disk (`CaptionCache`), keyed by the
captioner (model, weights hash, generation settings) and the preprocessing; a cache made with other settings
is never reused, and a file cut short is detected and rewritten. The captioner sees the detector's own
preprocessed image (un-normalised, then BLIP's image processor), not the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from detector.base import Preprocess, weights_fingerprint
from detector.families.frozen.base import FeatureDetector
from fakeforge.devices import pick_device, pick_dtype
from detector.families.frozen.feature_cache import FeatureSet
from detector.families.frozen.heads import accuracy, log_loss
from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
CAPTION_CACHE_VERSION = 1
__all__ = ["BlipCaptioner", "CaptionCache", "ClipPair", "DeFake", "DeFakeConfig", "build_head"]


@dataclass
class DeFakeConfig:
    """CLIP, the captioner and its generation settings, the MLP and its training schedule (official values)."""

    backbone: str = DEFAULT_CLIP  # transformers CLIPModel id or folder, or "tiny:hf_clip"
    captioner: str = DEFAULT_CAPTIONER  # transformers BlipForConditionalGeneration id or folder, or "tiny:blip_captioner"
    caption: Literal["blip", "stored"] = "blip"  # the caption source of score()
    caption_prompt: str = "a picture of "  # BLIP decoder prompt, stripped from the output
    num_beams: int = 3
    min_length: int = 5
    max_length: int = 60
    caption_cache: str | None = None  # null: $FAKEFORGE_FEATURE_CACHE (or ~/.cache/fakeforge/features)/captions
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])
    dropout: float = 0.5
    epochs: int = 50
    batch_size: int = 32
    lr: float = 3.0e-4
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0

    def validate(self) -> None:
        for key in ("backbone", "captioner"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"model.{key} must not be empty")
        if self.num_beams < 1:
            raise ConfigError(f"model.num_beams = {self.num_beams} must be >= 1")
        if not 1 <= self.min_length <= self.max_length:
            raise ConfigError(f"model.min_length = {self.min_length}, model.max_length = {self.max_length}: need "
                              "1 <= min_length <= max_length")
        if len(self.hidden_sizes) != 2 or min(self.hidden_sizes) < 1:
            raise ConfigError(f"model.hidden_sizes = {self.hidden_sizes} must be two positive widths")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout = {self.dropout} must be within [0, 1)")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} = {getattr(self, key)} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"model.lr = {self.lr} must be positive")

    def to_tiny(self) -> DeFakeConfig:
        return replace(self, backbone="tiny:hf_clip", captioner="tiny:blip_captioner", dtype="float32")


def _resolve(model_id: str) -> str:
    if model_id.startswith("tiny:"):
        from fakeforge.twins import ensure_tiny

        return str(ensure_tiny(model_id.split(":", 1)[1]))
    return model_id


def _load(what: str, key: str, model_id: str, loader):
    try:
        return loader(_resolve(model_id))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load {what} model.{key} = {model_id!r}: {first}") from None


def _embeds(out) -> torch.Tensor:
    """The projected embedding of get_image/text_features (a tensor, or an output whose pooler_output it is)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipPair(nn.Module):
    """A frozen transformers CLIPModel: image and text embeddings concatenated, with its preprocessing and identity."""

    def __init__(self, spec: str, model: nn.Module, processor):
        super().__init__()
        self.spec, self.model, self.tokenizer = spec, model, processor.tokenizer
        ip = processor.image_processor
        crop = ip.crop_size if isinstance(ip.crop_size, dict) else {"height": ip.crop_size.height}
        # the official test path: resize to 224 x 224, then CLIP's bicubic resize + crop (a no-op) and mean/std
        self.preprocess = Preprocess(image_size=int(crop["height"]), resize="square", interpolation="bicubic",
                                     mean=list(ip.image_mean), std=list(ip.image_std), train_augment="none",
                                     source="CLIPProcessor (square resize, as the official test script)")
        self.embed_dim = int(model.config.projection_dim)
        self.feature_dim = 2 * self.embed_dim
        self.fingerprint = weights_fingerprint(model)
        self.architecture = {"library": "transformers", "class": type(model).__name__, "feature_dim": self.feature_dim,
                             "parameters": sum(p.numel() for p in model.parameters())}
        model.requires_grad_(False)
        model.eval()

    @classmethod
    def load(cls, spec: str, device=None, dtype: str = "auto") -> ClipPair:
        from transformers import CLIPModel, CLIPProcessor

        model = _load("CLIP", "backbone", spec, lambda p: CLIPModel.from_pretrained(p, dtype=torch.float32))
        processor = _load("CLIP", "backbone", spec, CLIPProcessor.from_pretrained)
        pair = cls(spec, model, processor)
        device = pick_device(device)
        return pair.to(device=device, dtype=pick_dtype(dtype, device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> ClipPair:
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """[B, 2 x projection_dim] float32: image embedding | caption embedding (77-token context, truncated)."""
        image = _embeds(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = _embeds(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))
        return torch.cat([image.float(), text.float()], dim=1)

    def identity(self) -> dict:
        return {"backbone": self.spec, "architecture": self.architecture, "weights_sha256": self.fingerprint,
                "feature_dim": self.feature_dim}


class BlipCaptioner(nn.Module):
    """transformers' BlipForConditionalGeneration with DE-FAKE's generation settings."""

    def __init__(self, spec: str, model: nn.Module, processor, config: DeFakeConfig):
        super().__init__()
        self.spec, self.model, self.processor, self.config = spec, model, processor, config
        self.fingerprint = weights_fingerprint(model)
        model.requires_grad_(False)
        model.eval()
        self.calls = 0  # images captioned by the model (not from the cache)

    @classmethod
    def load(cls, config: DeFakeConfig, device=None) -> BlipCaptioner:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        spec = config.captioner
        model = _load("captioner", "captioner", spec,
                      lambda p: BlipForConditionalGeneration.from_pretrained(p, dtype=torch.float32))
        processor = _load("captioner", "captioner", spec, BlipProcessor.from_pretrained)
        device = pick_device(device)
        return cls(spec, model, processor, config).to(device=device, dtype=pick_dtype(config.dtype, device))

    def train(self, mode: bool = True) -> BlipCaptioner:
        return super().train(False)

    def identity(self) -> dict:
        c = self.config
        return {"captioner": self.spec, "class": type(self.model).__name__, "weights_sha256": self.fingerprint,
                "generation": {"num_beams": c.num_beams, "min_length": c.min_length, "max_length": c.max_length,
                               "prompt": c.caption_prompt}}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        """Captions of images [B, 3, H, W] with values in [0, 1] (BLIP's processor resizes and normalises)."""
        c, model = self.config, self.model
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        inputs = self.processor.image_processor(images=list(images.float().cpu().clamp(0, 1)), do_rescale=False,
                                                return_tensors="pt")
        kwargs = {}
        if c.caption_prompt.strip():
            kwargs = dict(self.processor.tokenizer([c.caption_prompt.strip()] * len(images), return_tensors="pt"))
            kwargs = {k: v.to(device) for k, v in kwargs.items() if k in ("input_ids", "attention_mask")}
        out = model.generate(pixel_values=inputs["pixel_values"].to(device, dtype), num_beams=c.num_beams,
                             min_length=c.min_length, max_length=c.max_length, **kwargs)
        self.calls += len(images)
        texts = self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        prompt = c.caption_prompt.strip().lower()
        return [t.strip()[len(prompt):].strip() if prompt and t.strip().lower().startswith(prompt) else t.strip()
                for t in texts]


class CaptionCache:
    """Captions by image hash in one JSON-lines file per captioner identity: a header line with the full identity,
    then one {"image", "caption"} line per image. A header that differs (other settings) empties the file; a line
    that does not parse (a file cut short) is dropped and the file rewritten; both are logged."""

    def __init__(self, root: str | Path, identity: dict):
        self.identity = identity
        blob = json.dumps(identity, sort_keys=True, default=str)
        self.path = Path(root) / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.jsonl"
        self.entries: dict[str, str] = {}
        self.rebuilt: str | None = None
        self._open()

    def _header(self) -> str:
        return json.dumps({"cache_version": CAPTION_CACHE_VERSION, "identity": self.identity}, sort_keys=True,
                          default=str)

    def _open(self) -> None:
        if not self.path.is_file():
            return  # written on the first add()
        raw = self.path.read_bytes()
        lines = raw.decode("utf-8", errors="replace").split("\n")
        if lines[0] != self._header():
            self.rebuilt = "made with other settings"
        else:
            for line in lines[1:]:
                try:
                    item = json.loads(line) if line else None
                except ValueError:
                    item = None
                if isinstance(item, dict) and isinstance(item.get("image"), str) and \
                        isinstance(item.get("caption"), str):
                    self.entries[item["image"]] = item["caption"]
                elif line:
                    self.rebuilt = "cut short"
            if not raw.endswith(b"\n"):
                self.rebuilt = self.rebuilt or "cut short"
        if self.rebuilt is None:
            return
        log.warning("caption cache %s is %s: rebuilding (%d captions kept)", self.path, self.rebuilt,
                    len(self.entries))
        self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = [self._header()] + [json.dumps({"image": k, "caption": v}) for k, v in self.entries.items()]
        tmp.write_text("\n".join(body) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def add(self, items: dict[str, str]) -> None:
        """Append new captions (one line each) and flush."""
        if not items:
            return
        self.entries.update(items)
        if not self.path.is_file():
            self._rewrite()
            return
        with self.path.open("a", encoding="utf-8") as fh:
            for k, v in items.items():
                fh.write(json.dumps({"image": k, "caption": v}) + "\n")
            fh.flush()


def image_key(pixels: torch.Tensor) -> str:
    """SHA-256 of one preprocessed image tensor (float32 bytes)."""
    return hashlib.sha256(pixels.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def build_head(in_dim: int, config: DeFakeConfig) -> nn.Sequential:
    """The official NeuralNet(in_dim, hidden_sizes, 2): fc1 -> ReLU -> dropout -> fc2 -> ReLU -> fc3 (656,642
    parameters at 1024-512-256-2). fc3 starts at zero: untrained, P(fake) = 0.5 for every image."""
    h1, h2 = config.hidden_sizes
    head = nn.Sequential(nn.Linear(in_dim, h1), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, 2))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


class DeFake(FeatureDetector):
    """Frozen CLIP image + caption embeddings, an MLP 2D-512-256-2 with dropout; P(fake) = softmax[:, 1]."""

    name: ClassVar[str] = "defake"
    config_class: ClassVar[type] = DeFakeConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("head.",)
    needs_caption: ClassVar[bool] = True  # the feature cache passes each sample's stored caption

    def __init__(self, config: DeFakeConfig, backbone: ClipPair, captioner: BlipCaptioner):
        super().__init__(config, backbone)
        self.captioner = captioner
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.head = build_head(backbone.feature_dim, config)
        root = Path(config.caption_cache) if config.caption_cache else _default_caption_root()
        self.caption_cache = CaptionCache(root, self.caption_identity())
        self.eval()

    @classmethod
    def from_config(cls, config: DeFakeConfig, device=None, tiny: bool = False) -> DeFake:
        if tiny:
            config = config.to_tiny()
        config.validate()
        backbone = ClipPair.load(config.backbone, device=device, dtype=config.dtype)
        captioner = BlipCaptioner.load(config, device=backbone.device)
        return cls(config, backbone, captioner).to(backbone.device).eval()

    # ----------------------------------------------------------------------------------------- captions
    def caption_identity(self) -> dict:
        """What a cached caption depends on: the captioner and the pixels it sees (the preprocessing)."""
        return {"captioner": self.captioner.identity(), "preprocess": self.preprocess.key()}

    def blip_captions(self, pixels: torch.Tensor) -> list[str]:
        """BLIP captions of preprocessed images, from the caption cache where present (computed once per image)."""
        keys = [image_key(p) for p in pixels]
        missing = [i for i, k in enumerate(keys) if self.caption_cache.get(k) is None]
        if missing:
            mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
            std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
            images = pixels[missing].detach().float().cpu() * std + mean
            new = dict(zip([keys[i] for i in missing], self.captioner(images)))
            self.caption_cache.add(new)
        return [self.caption_cache.get(k) for k in keys]

    def _captions(self, pixels: torch.Tensor, captions: list[str | None] | None) -> list[str]:
        given = list(captions) if captions is not None else [None] * len(pixels)
        need = [i for i, c in enumerate(given) if not c]
        if need:
            for i, text in zip(need, self.blip_captions(pixels[need])):
                given[i] = text
        return given

    # ----------------------------------------------------------------------------------------- features
    @torch.no_grad()
    def features(self, pixels: torch.Tensor, captions: list[str | None] | None = None) -> torch.Tensor:
        """[image embedding | caption embedding]: `captions[i]` where given and non-empty, else BLIP's."""
        return self.backbone(pixels, self._captions(pixels, captions)).to(self.device)

    def feature_identity(self) -> dict:
        return {"backbone": self.backbone.identity(), "dtype": str(self.backbone.dtype),
                "preprocess": self.preprocess.key(), "captions": "stored, else BLIP",
                "captioner": self.captioner.identity()}

    def identity(self) -> dict:
        ident = super().identity()
        cap = self.captioner.identity()
        ident["captioner"] = {"weights_sha256": cap["weights_sha256"], "generation": cap["generation"]}
        return ident

    # ----------------------------------------------------------------------------------------- scoring
    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(feats.to(self.device).float()).softmax(-1)[:, 1].float().cpu()

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, method: str | None = None,
              captions: list[str | None] | None = None) -> torch.Tensor:
        """P(fake); captions per `model.caption` (`stored`: the given ones, BLIP for the rest; `blip`: BLIP)."""
        self.check_method(method)
        use = captions if self.config.caption == "stored" else None
        return self.score_features(self.features(pixels, use))

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head on a batch of images (BLIP captions)."""
        return nn.functional.cross_entropy(self.head(self.features(pixels)), labels.to(self.device).long())

    # ----------------------------------------------------------------------------------------- fitting
    def fit_features(self, train: FeatureSet, val: FeatureSet | None = None) -> list[dict]:
        """Adam over the MLP for `epochs` passes of shuffled mini-batches of cached features (official recipe)."""
        cfg = self.config
        dev = self.device
        opt = torch.optim.Adam(self.head.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        feats, labels = train.features.to(dev).float(), train.labels.to(dev)
        history = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # dropout masks
            for epoch in range(cfg.epochs):
                start = time.time()
                self.train()
                order = torch.randperm(len(labels), generator=gen).to(dev)
                total, batches = 0.0, 0
                for i in range(0, len(order), cfg.batch_size):
                    idx = order[i:i + cfg.batch_size]
                    loss = nn.functional.cross_entropy(self.head(feats[idx]), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, batches = total + float(loss.detach()), batches + 1
                self.eval()
                row = {"epoch": epoch + 1, "loss": total / max(batches, 1),
                       "epoch_seconds": round(time.time() - start, 3)}
                if val is not None and len(val):
                    scores = self.score_features(val.features)
                    row.update(val_loss=log_loss(scores, val.labels), val_acc=accuracy(scores, val.labels))
                history.append(row)
        return history

    def trainable_summary(self) -> str:
        frozen = sum(p.numel() for p in self.backbone.parameters()) + sum(p.numel() for p in self.captioner.parameters())
        h1, h2 = self.config.hidden_sizes
        return (f"trainable parameters: {self.num_trainable():,} (MLP {self.backbone.feature_dim}-{h1}-{h2}-2 on CLIP "
                f"image + caption embeddings; frozen CLIP + BLIP: {frozen:,})")


def _default_caption_root() -> Path:
    from detector.families.frozen.feature_cache import default_root

    return default_root() / "captions"
