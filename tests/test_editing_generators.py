"""Diffusers editing and SR generators on their tiny twins (real pipelines, random weights, no mocks):
inpainting (SD2IP), img2img, ControlNet-canny, x4 and latent x2 upscalers; canny edges; presets; bad inputs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest, SampleError
from generators.edges import canny
from generators.inpaint import prepare_masked
from generators.masks import MaskConfig
from generators.source_image import Prepared

rng = np.random.default_rng(0)
PRESETS = ["sd2_inpaint", "lama", "sd2_x4_upscaler", "sd_latent_x2_upscaler", "liif_x4", "sd2_img2img",
           "controlnet_canny"]


@pytest.fixture(scope="module")
def root(tiny_dir):
    return Path(tiny_dir)


def load(root, preset, **over):
    raw = load_preset(preset)
    twin = raw["tiny_twin"]
    build_tiny(twin, root)
    cls, cfg = generator_config({**raw, **over}, tiny=True, tiny_root=root)
    gen = cls(cfg, "cpu")
    gen.load()
    return gen


def img(w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def req(key, image, seed=0, image_id="11"):
    return GenRequest(key, "a red bus on a street", seed=seed, source_image_id=image_id, image=image,
                      meta={"image_id": image_id})


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def inpaint(root):
    return load(root, "sd2_inpaint")


def test_inpaint_sizes_masks_metadata_determinism(inpaint):
    srcs = [img(80, 60), img(80, 60), img(67, 45)]
    batch = [req(f"k{i}", s, seed=i, image_id=str(500 + i)) for i, s in enumerate(srcs)]
    res = inpaint.generate_safe(batch)
    for i, (s, r) in enumerate(zip(srcs, res)):
        assert r.error is None and r.image.size == s.size and r.image.mode == "RGB"
        assert r.mask.shape == (s.height, s.width) and set(np.unique(r.mask)) == {0, 255}
        assert 0.1 <= r.extra["mask_area_ratio"] <= 0.4 and r.extra["mask_strategy"] == "box"
        assert r.extra["source_image_id"] == str(500 + i) and r.extra["source_size"] == list(s.size)
        assert r.extra["working_size"][1] == 64 and r.extra["paste_unmasked"] is False
    again = inpaint.generate_safe(batch[:2])                       # the same group again: identical output
    assert all(same(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(res, again))
    assert not np.array_equal(res[0].mask, res[1].mask)


def test_inpaint_paste_unmasked(root):
    gen = load(root, "sd2_inpaint", paste_unmasked=True)
    src = img(64, 48)
    r = gen.generate_safe([req("p", src, seed=3)])[0]
    known = r.mask == 0
    assert np.array_equal(np.asarray(r.image)[known], np.asarray(src)[known])
    assert not np.array_equal(np.asarray(r.image)[~known], np.asarray(src)[~known])


def bad_inputs(w=48, h=40):
    """Grayscale, CMYK, 16-bit, palette with transparency, EXIF-rotated, as a caller could hand them over."""
    rgb = img(w, h)
    pal = rgb.convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6                                                # stored h x w, upright w x h
    buf = io.BytesIO()
    img(h, w).save(buf, format="JPEG", exif=exif)
    i16 = Image.fromarray((np.arange(w * h).reshape(h, w) * 30 % 65535).astype(np.uint16))
    return {"gray": rgb.convert("L"), "cmyk": rgb.convert("CMYK"), "16bit": i16, "palette": pal,
            "exif": Image.open(io.BytesIO(buf.getvalue()))}


def test_bad_inputs_tiny_and_huge_in_one_batch(inpaint):
    inputs = bad_inputs()
    huge = Image.fromarray(np.tile(np.asarray(img(150, 100)), (5, 20, 1)))      # 3000 x 500 panorama
    batch = [req(k, im, seed=i) for i, (k, im) in enumerate(inputs.items())]
    batch += [req("tiny", img(12, 40)), req("huge", huge, seed=9)]
    res = inpaint.generate_safe(batch)
    for name, r in zip(list(inputs) + ["tiny", "huge"], res):
        if name == "tiny":
            assert r.error and "smaller than min_size=16" in r.error
        elif name == "huge":
            assert r.error is None and r.image.size == (3000, 500) and r.mask.shape == (500, 3000)
            assert r.extra["working_size"] == [128, 16]                 # longer side capped at max_size 128
        else:
            assert r.error is None and r.image.mode == "RGB" and r.image.size == (48, 40), name


def test_mask_full_at_working_size_is_rejected():
    cfg = MaskConfig(strategy="brush", brush="thin", min_area=0.3, max_area=0.4)
    src = img(256, 256)
    prep = Prepared(req("m", src), src, src.resize((8, 8)), {})
    with pytest.raises(SampleError, match="mask at working size 8x8 covers the whole image"):
        prepare_masked(prep, cfg, req("m", src, seed=1))   # thin strokes touch every 32x32 cell


def test_img2img(root):
    gen = load(root, "sd2_img2img")
    srcs = [img(72, 64), img(50, 70).convert("L")]                # grayscale is converted
    res = gen.generate_safe([req("a", srcs[0], 1), req("b", srcs[1], 2)])
    assert [r.image.size for r in res] == [(72, 64), (50, 70)] and res[0].extra["strength"] == 0.5
    assert res[1].mask is None and res[1].extra["source_size"] == [50, 70]
    assert same(gen.generate_safe([req("a", srcs[0], 1)])[0].image, res[0].image)


def test_controlnet_canny(root):
    gen = load(root, "controlnet_canny")
    src = img(80, 60).convert("P", palette=Image.ADAPTIVE)          # palette is converted
    res = gen.generate_safe([req("c", src, 4), req("c2", src, 5)])
    assert all(r.error is None and r.image.size == (80, 60) for r in res)
    assert 0 < res[0].extra["edge_ratio"] < 1 and res[0].extra["canny_high"] == 200
    assert not same(res[0].image, res[1].image)
    assert same(gen.generate_safe([req("c", src, 4), req("c2", src, 5)])[0].image, res[0].image)


def test_x4_upscaler_exact_sr_size(root):
    gen = load(root, "sd2_x4_upscaler")
    srcs = [img(80, 60), img(67, 45).convert("CMYK")]              # CMYK is converted
    res = gen.generate_safe([req("a", srcs[0], 1, "1"), req("b", srcs[1], 2, "2")])
    # crop to a multiple of 16 (scale 4 x VAE factor 4), output = 4 x low-res exactly
    assert res[0].image.size == (80, 48) and res[0].extra["lr_size"] == [20, 12]
    assert res[0].extra["sr_crop_box"] == [0, 6, 80, 54]
    assert res[1].image.size == (64, 32) and res[1].extra["output_size"] == [64, 32]
    assert res[1].extra["source_image_id"] == "2" and res[1].mask is None
    assert same(gen.generate_safe([req("a", srcs[0], 1, "1")])[0].image, res[0].image)


def test_latent_x2_upscaler_exact_sr_size(root):
    gen = load(root, "sd_latent_x2_upscaler")
    res = gen.generate_safe([req("a", img(136, 130), 1), req("t", img(100, 100), 2)])
    assert res[0].image.size == (128, 128) and res[0].extra["lr_size"] == [64, 64]
    assert res[0].extra["sr_crop_box"] == [4, 1, 132, 129] and res[0].extra["sr_scale"] == 2
    assert "smaller than min_size=128" in res[1].error


@pytest.mark.parametrize("preset,over,match", [
    ("sd2_inpaint", {"working_size": 4}, r"generator.working_size = 4"),
    ("sd2_inpaint", {"height": 512}, r"generator.height/width = 512/None"),
    ("sd2_inpaint", {"strength": 0.0}, r"generator.strength = 0.0"),
    ("sd2_inpaint", {"mask": {"min_area": 0.5, "max_area": 0.1}}, r"mask.max_area = 0.1"),
    ("sd2_img2img", {"strength": 1.5}, r"generator.strength = 1.5"),
    ("sd2_x4_upscaler", {"scale": 2}, r"generator.scale = 2 does not match StableDiffusionUpscalePipeline"),
    ("sd2_x4_upscaler", {"pipeline": "StableDiffusionPipeline"}, r"'StableDiffusionPipeline' is not a supported"),
    ("controlnet_canny", {"canny_low": 250}, r"canny_low = 250"),
    ("liif_x4", {"scale": 1.0}, r"generator.scale = 1.0 must be > 1"),
])
def test_config_errors_name_the_argument(preset, over, match):
    with pytest.raises(ConfigError, match=match):
        generator_config({**load_preset(preset), **over})


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve(root, name):
    cls, cfg = generator_config(load_preset(name), tiny=True, tiny_root=root)
    assert cls.needs_source_image and cfg.tiny_twin and cfg.model_id.endswith(cfg.tiny_twin)
    raw = load_preset(name)
    assert raw.get("model_id") or name in ("lama", "liif_x4")      # real ids (LaMa/LIIF use checkpoint files)
    if name not in ("lama", "liif_x4"):
        generator_config(raw)                                         # the real preset validates without loading


def _cv2_fixture():
    y, x = np.mgrid[0:32, 0:40]
    return np.stack([((x - 20) ** 2 + (y - 15) ** 2 < 100) * 200, (x * 6) % 256, ((x // 5 + y // 7) % 2) * 180],
                    -1).astype(np.uint8)


# edge maps of _cv2_fixture() computed with OpenCV 5.0 (np.packbits(edges > 0).hex()):
# cv2.Canny(rgb, 100, 200) and cv2.Canny(cv2.cvtColor(rgb, RGB2GRAY), 50, 120, L2gradient=True)
CV2_RGB = ("0842108420084210842008421084200842108420084210842008427f0420f39980c9cf000300600008441090200848108820085a108c"
           "2008121084200822108420f3ace73dcf002000040008221084200822108420082210842008221084200812108420f398e72dcf0008"
           "000800084410902008431064200841ffc42008420004200842108420f39ce739cf0000000000084210842008421084200842108420")
CV2_GRAY_L2 = ("000110022000011002200001100220000110022000011002200000f0022000018fc1ff000700620004041012000409104a0004191"
               "04e000431104400042110440073acff3c008c1300c40004111044000411104400041110440004111044000411104400ff9be7ec00"
               "0068181800044410122004471062200441f5c22004401a0220044110022073fcfe3fce8c0301c031040100802004010080200401"
               "008020")


def _unpack(hexstr, shape):
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), np.uint8))[: shape[0] * shape[1]].reshape(shape) > 0


def test_canny_matches_opencv():
    rgb = _cv2_fixture()
    assert np.array_equal(canny(rgb, 100, 200) > 0, _unpack(CV2_RGB, (32, 40)))
    c = rgb.astype(np.int64)
    gray = (c[..., 0] * 4899 + c[..., 1] * 9617 + c[..., 2] * 1868 + 8192) >> 14     # cv2's RGB2GRAY
    assert np.array_equal(canny(gray, 50, 120, l2_gradient=True) > 0, _unpack(CV2_GRAY_L2, (32, 40)))


def test_canny_square_and_thresholds():
    sq = np.zeros((40, 40), np.uint8)
    sq[10:30, 12:32] = 200
    e = canny(sq) > 0
    assert e[10:30, 11:13].any(axis=1).all() and not e[15:25, 16:28].any() and not e[:5].any()
    assert not canny(sq, 1000, 2000).any() and not canny(np.full((9, 9), 7, np.uint8)).any()
    with pytest.raises(ValueError, match="low = 5, high = 1"):
        canny(sq, 5, 1)
