"""Degradations: each operation equals the library call it wraps on fixed images, seeded ops are identical
whatever the batching or the number of threads, and bad parameters fail with one line naming the value."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.degrade import Chain, DegradeError, parse_chain


def fixed_image(w: int = 96, h: int = 72, seed: int = 0) -> Image.Image:
    """A fixed photo-like test image: smooth colour ramps, an edge, and texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    arr = np.stack([xx / w * 255, yy / h * 255, 128 + 60 * np.sin(xx / 5) * np.cos(yy / 7)], -1)
    arr[h // 3: 2 * h // 3, w // 4: w // 2] = (250, 30, 30)
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def pil_roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("quality", [30, 65, 95])
@pytest.mark.parametrize("sub", ["444", "420"])
def test_jpeg_pil_equals_pil_encode_decode(quality, sub):
    img = fixed_image()
    ref = pil_roundtrip(img, "JPEG", quality=quality, subsampling={"444": "4:4:4", "420": "4:2:0"}[sub])
    out = parse_chain(f"jpeg:{quality},subsampling={sub}").apply(img)
    assert np.array_equal(arr(out), arr(ref))
    assert np.abs(arr(out) - arr(img)).mean() > 0.5  # it did compress


def test_jpeg_default_subsampling_is_pils_default_and_cv2_equals_opencv():
    cv2 = pytest.importorskip("cv2")
    img = fixed_image()
    assert np.array_equal(arr(parse_chain("jpeg:50").apply(img)), arr(pil_roundtrip(img, "JPEG", quality=50)))
    ok, buf = cv2.imencode(".jpg", np.asarray(img)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 40])
    ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(arr(parse_chain("jpeg:40,library=cv2").apply(img)), ref.astype(np.int16))


def test_webp_equals_pil_encode_decode():
    img = fixed_image()
    ref = pil_roundtrip(img, "WEBP", quality=50)
    assert np.array_equal(arr(parse_chain("webp:50").apply(img)), arr(ref))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_blur_is_cnnspots_per_channel_scipy_filter(sigma):
    from scipy.ndimage import gaussian_filter

    img = fixed_image()
    ref = np.array(img)
    for c in range(3):  # CNNSpot's data/datasets.py gaussian_blur, in place on the uint8 channels
        gaussian_filter(ref[:, :, c], output=ref[:, :, c], sigma=sigma)
    out = arr(parse_chain(f"blur:{sigma}").apply(img))
    assert np.array_equal(out, ref.astype(np.int16))
    # the same Gaussian as torchvision's (truncated at 4 sigma; scipy truncates to uint8): equal away from the borders
    import torch
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(4 * sigma + 0.5) + 1
    tv = gaussian_blur(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float(), [k, k], [sigma, sigma])
    tv = tv.floor().clamp(0, 255).permute(1, 2, 0).numpy().astype(np.int16)
    m = k // 2
    assert np.abs(out[m:-m, m:-m] - tv[m:-m, m:-m]).max() <= 1


def test_blur_cv2_kernel_equals_opencv_and_sigma_zero_is_identity():
    cv2 = pytest.importorskip("cv2")
    img = fixed_image()
    ref = cv2.GaussianBlur(np.asarray(img), (0, 0), 2.0)
    assert np.array_equal(arr(parse_chain("blur:2,kernel=cv2").apply(img)), ref.astype(np.int16))
    assert np.array_equal(arr(parse_chain("blur:0").apply(img)), arr(img))


def test_resize_equals_pil_resize_down_only_and_back_up():
    img = fixed_image(96, 72)
    out = parse_chain("resize:0.5").apply(img)
    assert np.array_equal(arr(out), arr(img.resize((48, 36), Image.Resampling.BILINEAR)))
    out = parse_chain("resize:36,interpolation=bicubic").apply(img)  # short side 72 -> 36
    assert out.size == (48, 36)
    assert np.array_equal(arr(out), arr(img.resize((48, 36), Image.Resampling.BICUBIC)))
    assert parse_chain("resize:48,side=long").apply(img).size == (48, 36)
    assert parse_chain("resize:200").apply(img).size == (96, 72)  # down only
    back = parse_chain("resize:0.5,back_up=true").apply(img)
    ref = img.resize((48, 36), Image.Resampling.BILINEAR).resize((96, 72), Image.Resampling.BILINEAR)
    assert back.size == img.size and np.array_equal(arr(back), arr(ref))


def test_crop_center_equals_torchvision_and_random_is_seeded_in_bounds():
    from torchvision.transforms.functional import center_crop

    img = fixed_image(96, 72)
    assert np.array_equal(arr(parse_chain("crop:40").apply(img)), arr(center_crop(img, [40, 40])))
    assert parse_chain("crop:0.5").apply(img).size == (48, 36)
    chain = parse_chain("crop:32,position=random")
    crops = [arr(chain.apply(img, key=f"k{i}")) for i in range(8)]
    assert all(c.shape == (32, 32, 3) for c in crops)
    assert np.array_equal(crops[0], arr(chain.apply(img, key="k0")))
    assert len({c.tobytes() for c in crops}) > 1
    with pytest.raises(DegradeError, match="larger than the image"):
        parse_chain("crop:100").apply(img)


def test_noise_has_the_asked_std_and_depends_only_on_key_and_chain():
    flat = Image.new("RGB", (128, 128), (128, 128, 128))
    chain = parse_chain("noise:8")
    d = arr(chain.apply(flat, key="a")) - 128
    assert abs(d.mean()) < 0.3 and abs(d.std() - 8) < 0.3
    assert np.array_equal(arr(chain.apply(flat, key="a")), arr(chain.apply(flat, key="a")))
    assert not np.array_equal(arr(chain.apply(flat, key="a")), arr(chain.apply(flat, key="b")))
    assert not np.array_equal(arr(chain.apply(flat, key="a")), arr(parse_chain("noise:9").apply(flat, key="a")))
    assert not np.array_equal(arr(chain.apply(flat, key="a", seed=1)), arr(chain.apply(flat, key="a")))


def test_seeded_ops_are_identical_across_batch_sizes_and_worker_counts():
    chain = parse_chain("crop:0.8,position=random+noise:6+jpeg:70")
    images = {f"sample_{i:03d}": fixed_image(64, 48, seed=i) for i in range(24)}

    def run(batch: int, workers: int, order: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(order), batch):
                keys = order[start:start + batch]
                for k, img in zip(keys, pool.map(lambda k: chain.apply(images[k], key=k), keys)):
                    out[k] = img.tobytes()
        return out

    keys = sorted(images)
    reference = run(1, 1, keys)
    assert run(5, 4, keys) == reference
    assert run(8, 3, keys[::-1]) == reference


def test_chains_parse_from_strings_dicts_and_lists_alike():
    a = parse_chain("jpeg:75+resize:0.5")
    b = parse_chain([{"op": "jpeg", "quality": 75}, {"op": "resize", "scale": 0.5}])
    c = parse_chain(["jpeg:75", "resize:0.5"])
    assert a == b == c and a.spec() == "jpeg:75+resize:0.5"
    assert parse_chain(a.spec()) == a
    for text in ("jpeg:30,subsampling=444,library=cv2", "resize:112,interpolation=bicubic,back_up=true",
                 "crop:0.9,position=random", "noise:2.5", "webp:60", "blur:3.0,kernel=cv2"):
        assert parse_chain(parse_chain(text).spec()) == parse_chain(text)
    assert parse_chain("clean") == Chain() and not parse_chain("")
    img = fixed_image()
    assert np.array_equal(arr(a.apply(img)), arr(parse_chain("resize:0.5").apply(parse_chain("jpeg:75").apply(img))))


@pytest.mark.parametrize("bad, named", [
    ("sharpen:2", "'sharpen'"), ("jpeg:0", "quality = 0"), ("jpeg:101", "quality = 101"), ("webp:150", "150"),
    ("jpeg:50.5", "50.5"), ("blur:-1", "sigma = -1"), ("resize:1.5", "scale = 1.5"), ("resize:0", "scale = 0"),
    ("crop:0", "fraction = 0"), ("crop:1.5", "fraction = 1.5"), ("jpeg:75,libary=pil", "libary"),
    ("jpeg:75,library=turbo", "'turbo'"), ({"quality": 75}, "op:"), ({"op": "noise", "std": -3}, "std = -3"),
    (42, "42"), ("resize:0.5,interpolation=cubic", "'cubic'"),
])
def test_bad_parameters_are_one_line_naming_the_value(bad, named):
    with pytest.raises(ConfigError) as info:
        parse_chain(bad)
    assert named in str(info.value) and "\n" not in str(info.value)
