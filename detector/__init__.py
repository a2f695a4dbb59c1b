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
DETECTORS.register("instructblip_lora", "detector.families.instructblip_lora:InstructBlipLora",
                   "InstructBLIP + LoRA (r 8 on the LLM's q_proj/v_proj): AntifakePrompt's ablation row, 4.19M trainable")
DETECTORS.register("defake", "detector.families.defake:DeFake",
                   "DE-FAKE: frozen CLIP ViT-B/32 image + caption embeddings (BLIP captions at test) -> MLP 1024-512-256-2")
DETECTORS.register("dire", "detector.families.dire:Dire",
                   "DIRE: |x - DDIM reconstruction| (20 steps, unconditional UNet2DModel) -> ResNet-50, 23.5M trainable")

__all__ = ["DETECTORS"]
