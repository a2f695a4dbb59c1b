"""Tiny random-weight twins for DE-FAKE: a two-tower transformers CLIP and a BLIP captioner, built offline.

| twin | real model it stands in for | saved as / loaded back with |
|---|---|---|
| `hf_clip` | `openai/clip-vit-base-patch32` (CLIP ViT-B/32, image + text towers) | `save_pretrained` -> `CLIPModel` + `CLIPProcessor.from_pretrained(DIR)` |
| `blip_captioner` | `Salesforce/blip-image-captioning-base` | `save_pretrained` -> `BlipForConditionalGeneration` + `BlipProcessor.from_pretrained(DIR)` |

Both take 32x32 images. The captioner's text decoder is random, so its captions are arbitrary words of the
tiny vocabulary; they are deterministic (beam search) and depend on the image, which is all the tests need.
"""
from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
PATCH_SIZE = 8
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_hf_clip(out_dir: Path, seed: int = 0) -> None:
    """A transformers CLIPModel (vision 2 x 48, text 2 x 32, 32-d projections) + CLIPProcessor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fakeforge.tiny.tokenizers import clip_tokenizer

    tok = clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                         "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        projection_dim=32)
    CLIPModel(config).save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD)
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out_dir)


def build_blip_captioner(out_dir: Path, seed: int = 0) -> None:
    """A transformers BlipForConditionalGeneration (vision 2 x 32, text decoder 2 x 32) + BlipProcessor."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from fakeforge.tiny.tokenizers import bert_tokenizer

    tok = bert_tokenizer()
    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "encoder_hidden_size": 32, "max_position_embeddings": 128,
                         "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                         "sep_token_id": tok.sep_token_id, "eos_token_id": tok.sep_token_id},
        projection_dim=32)
    model = BlipForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(out_dir)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out_dir)
