"""Tiny random-weight twins of the detectors' image backbones, built offline from the real library classes.

| twin | real model it stands in for | saved as / loaded back with |
|---|---|---|
| `timm_vit` | timm ViT-B/16 (DeepFake-Adapter, ImageNet ViT features) | `timm.models.save_for_hf` -> `timm.create_model("local-dir:DIR", pretrained=True)` |
| `timm_resnet` | timm ResNet-50 (ImageNet features) | same |
| `open_clip_vit` | open_clip CLIP ViT-L/14, ViT-B/16 | open_clip_config.json + open_clip_model.safetensors -> `open_clip.create_model("local-dir:DIR")` |
| `hf_clip_vit` | transformers CLIP ViT-L/14 vision tower | `save_pretrained` -> `CLIPVisionModelWithProjection.from_pretrained(DIR)` + `CLIPImageProcessor` |

All take 32x32 inputs and keep each library's own weight init: on the two synthetic image families of
the tests (reddish vs bluish noise), the output features' class means lie 9 (ResNet) to 59 (open_clip)
within-class standard deviations apart along the line joining them, so no init tuning is needed (unlike
the InstructBLIP twin, whose 1e-10 vision init erases the image). The tests re-check it (d' > 5).
"""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
PATCH_SIZE = 8
WIDTH = 48
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_timm_vit(out_dir: Path, seed: int = 0) -> None:
    """A 6-block, 48-wide timm VisionTransformer (the vit_base_patch16_224 class and pretrained cfg)."""
    import timm
    import torch

    torch.manual_seed(seed)
    args = dict(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, embed_dim=WIDTH, depth=6, num_heads=4)
    model = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(model, str(out_dir), model_args=args, safe_serialization=True)


def build_timm_resnet(out_dir: Path, seed: int = 0) -> None:
    """A one-block-per-stage, narrow timm ResNet (the resnet50 Bottleneck class and pretrained cfg)."""
    import timm
    import torch

    torch.manual_seed(seed)
    args = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    model = timm.create_model("resnet50.a1_in1k", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(model, str(out_dir), model_args=args, safe_serialization=True,
                            data_config={"input_size": (3, IMAGE_SIZE, IMAGE_SIZE), "crop_pct": 1.0})


def build_open_clip_vit(out_dir: Path, seed: int = 0) -> None:
    """An open_clip CLIP (ViT image tower 2x48, text tower 1x32) in open_clip's local-dir layout."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model_cfg = {"embed_dim": 32,
                 "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": WIDTH, "head_width": 12,
                                "patch_size": PATCH_SIZE},
                 "text_cfg": {"context_length": 16, "vocab_size": 256, "width": 32, "heads": 4, "layers": 1}}
    model = open_clip.CLIP(**model_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "open_clip_model.safetensors"))
    preprocess = {"size": IMAGE_SIZE, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (out_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess},
                                                              indent=2))


def build_hf_clip_vit(out_dir: Path, seed: int = 0) -> None:
    """A transformers CLIPVisionModelWithProjection (2 layers, 48 wide) + CLIPImageProcessor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32)
    model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir)
