"""Every generator preset runs on its tiny twin through `fakeforge build` into verified shards."""
from __future__ import annotations

import io
import tarfile

from builder_helpers import write_build_config, write_coco
from PIL import Image

from fakeforge.cli import main as cli_main
from fakeforge.shards.verify import verify_dataset
from generators import preset_names


def test_every_preset_builds_verified_shards(tmp_path, tiny_dir):
    captions, images = write_coco(tmp_path / "coco", n=2, captions=1, size=(144, 136))
    presets = preset_names()
    assert {"sd2", "sd3", "sdxl", "sd2_inpaint", "lama", "sd2_x4_upscaler", "liif_x4", "controlnet_canny",
            "sd2_img2img", "sd_latent_x2_upscaler"} <= set(presets)
    sets = [{"name": name, "generator": name} for name in presets]
    source = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "all.yaml", tmp_path / "out", sets, source, image={"format": "png"})
    assert cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]) == 0
    summary = verify_dataset(tmp_path / "out")
    assert summary["sets"] == {name: 2 for name in presets}, summary
    for name in presets:
        with tarfile.open(tmp_path / "out" / name / "000000.tar") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf}
        metas = [__import__("json").loads(v) for k, v in members.items() if k.endswith(".json")]
        assert all(m["source_image_id"] in ("1", "2") for m in metas)
        img_name = next(k for k in members if k.endswith(".png") and not k.endswith(".mask.png"))
        size = Image.open(io.BytesIO(members[img_name])).size
        meta = next(m for m in metas if img_name.startswith(m["key"] + "."))
        assert list(size) == [meta["image"]["width"], meta["image"]["height"]]
        if name in ("sd2_inpaint", "lama"):
            assert any(k.endswith(".mask.png") for k in members) and 0 < meta["mask_area_ratio"] < 1
        elif meta["generator_type"] in ("inpaint", "img2img", "controlnet", "real"):
            assert size == (144, 136), name  # editing keeps the source size
