"""Fake-image detectors trained and evaluated on fakeforge shard sets.

Importing this package is cheap: the registry stores "module:attribute" strings and imports torch
and transformers only when a detector is used.
"""
from fakeforge.registry import Registry

DETECTORS = Registry("detector")
DETECTORS.register("antifakeprompt", "detector.families.antifakeprompt.model:AntifakePrompt",
                   "AntifakePrompt: InstructBLIP prompt-tuned with one pseudo-word ([*]), 2 trainable rows")

DETECTORS.register("deepfake_adapter", "detector.families.deepfake_adapter:DeepFakeAdapter",
                   "DeepFake-Adapter: frozen timm ViT-B/16 + GBA + spatial adapters, ~16.9M trainable")
DETECTORS.register("linear_probe", "detector.families.frozen.heads:LinearProbe",
                   "logistic regression on frozen CLIP/ImageNet features (UnivFD, COCOFake), fitted from a cache")
DETECTORS.register("nearest_neighbor", "detector.families.frozen.heads:NearestNeighbor",
                   "k-nearest-neighbour vote in a frozen CLIP/ImageNet feature space (UnivFD)")
DETECTORS.register("contrastive_disentangle", "detector.families.frozen.disentangle:ContrastiveDisentangle",
                   "COCOFake's style/semantic contrastive projections + classifier on frozen features")
DETECTORS.register("cnnspot", "detector.families.cnnspot:CNNSpot",
                   "CNNSpot (Wang 2020): ImageNet ResNet-50 + 1 logit, trained end to end, 23.51M trainable")
DETECTORS.register("npr", "detector.families.npr:NPR",
                   "NPR (Tan 2024): neighbouring-pixel residual into ResNet-50 stem + layer1-2, 1.44M trainable")

__all__ = ["DETECTORS"]
