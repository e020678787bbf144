"""Image intake: every corpus upload gives exactly its expected outcome, and SafeImage shows the same text."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference import images
from inference.images import (
    NOT_AN_IMAGE,
    TOO_MANY_BYTES,
    UNSUPPORTED_MODE,
    ImageRejected,
    describe_image,
    load_image,
    to_rgb,
)
from tests.corpus import CASES, Case, encode, photo, too_many_pixels, write_corpus

BY_NAME = {case.name: case for case in CASES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder)
    return folder


def load(corpus: Path, name: str) -> np.ndarray:
    return np.asarray(load_image(BY_NAME[name].path(corpus)))


def outcome(source: Path | bytes) -> tuple:
    try:
        image = load_image(source)
    except ImageRejected as exc:
        return ("rejected", str(exc))
    return ("ok", image.mode, image.size, np.asarray(image).dtype, image.info["source_mode"])


# ----------------------------------------------------------------------------- the corpus, case by case


def test_corpus_covers_both_outcomes_with_unique_names():
    assert len(CASES) >= 30
    assert len(BY_NAME) == len(CASES)
    assert sum(c.outcome == "ok" for c in CASES) >= 15 and sum(c.outcome == "rejected" for c in CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_upload_gives_its_expected_outcome(corpus: Path, case: Case):
    got = outcome(case.path(corpus))
    if case.outcome == "rejected":
        assert got == ("rejected", case.message)
    else:
        assert got == ("ok", "RGB", case.size, np.uint8, case.source_mode)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bytes_give_the_same_outcome_as_the_file(corpus: Path, case: Case):
    assert outcome(case.path(corpus).read_bytes()) == outcome(case.path(corpus))


def test_messages_read_as_the_user_sees_them(corpus: Path):
    shown = {c.name: c.message for c in CASES if c.outcome == "rejected"}
    assert shown["notes_renamed.png"] == (
        "This file is not a supported image format; upload PNG, JPEG, WEBP, BMP, TIFF or GIF."
    )
    assert shown["bomb_20000x20000.png"] == (
        "The image is 20000×20000 pixels (400.0 MP); the limit is 40 MP. Downscale it and upload it again."
    )
    assert shown["over_10mb.png"] == (
        "The file is 10.3 MB; the limit is 10 MB. Upload a smaller file, e.g. the image saved as JPEG."
    )
    assert shown["31x31.png"] == (
        "The image is 31×31 pixels; each side must be at least 32 pixels. "
        "Upload the original image, not a thumbnail or icon."
    )
    assert shown["truncated.jpg"] == (
        "The file is damaged or truncated; export or copy the image again and re-upload it."
    )


# ----------------------------------------------------------------------------- what the accepted images contain


def test_exif_orientation_6_is_turned_upright(corpus: Path):
    pixels = load(corpus, "exif_orientation6.jpg")  # stored 64×48, red block top-left, shown rotated 90° cw
    assert pixels.shape == (64, 48, 3)
    assert np.abs(pixels[8, 40].astype(int) - (255, 0, 0)).max() < 16  # the red block is now top-right
    assert np.abs(pixels[8, 8].astype(int) - (0, 0, 255)).max() < 16


def test_16_bit_grayscale_keeps_its_dynamic_range(corpus: Path):
    full = load(corpus, "gray16_full_range.png")[0, :, 0].astype(int)  # ramp 0..65535 over 256 columns
    assert np.abs(full - np.arange(256)).max() <= 1
    twelve_bit = load(corpus, "gray12_in_16bit.tif")[0, :, 0].astype(int)  # ramp 0..4095: /257 would top at 16
    assert twelve_bit.min() == 0 and twelve_bit.max() == 255 and np.all(np.diff(twelve_bit) >= 0)
    assert len(np.unique(twelve_bit)) >= 250
    red48 = load(corpus, "rgb48.png")[0, :, 0].astype(int)
    assert red48.min() == 0 and red48.max() == 255


def test_float_and_32_bit_images_are_stretched_and_nan_is_black(corpus: Path):
    floats = load(corpus, "float.tif")  # -1..3 across, NaN at (0, 0)
    assert floats[0, 0].tolist() == [0, 0, 0]
    assert floats[1, 0, 0] == 0 and floats[1, -1, 0] == 255 and np.all(np.diff(floats[1, :, 0].astype(int)) >= 0)
    ints = load(corpus, "int32.tif")[0, :, 0].astype(int)  # -100000..100000
    assert ints[0] == 0 and ints[-1] == 255 and np.all(np.diff(ints) >= 0)


def test_transparency_is_composited_on_black(corpus: Path):
    rgba = load(corpus, "rgba.png")  # red with alpha 0 | 128 | 255
    assert rgba[30, 15].tolist() == [0, 0, 0]
    assert rgba[30, 45].tolist() == [128, 0, 0]
    assert rgba[30, 75].tolist() == [255, 0, 0]
    assert load(corpus, "gray_alpha.png")[10, [10, 50]].tolist() == [[0, 0, 0], [200, 200, 200]]
    assert load(corpus, "palette_transparent.png")[10, [10, 50]].tolist() == [[0, 0, 0], [255, 0, 0]]


@pytest.mark.parametrize("name", ["animated.gif", "animated.png", "animated.webp"])
def test_animations_give_their_first_frame(corpus: Path, name: str):
    assert np.abs(load(corpus, name)[32, 32].astype(int) - (255, 0, 0)).max() <= 3  # frames: red, green, blue


def test_cmyk_becomes_the_same_colour_in_rgb(corpus: Path):
    assert np.abs(load(corpus, "cmyk.jpg")[32, 32].astype(int) - (255, 0, 0)).max() <= 4


# ----------------------------------------------------------------------------- caps, checked before the work


@pytest.mark.parametrize("name", ["bomb_20000x20000.png", "big_10000x10000.png", "header_bomb.jpg", "frame_bomb.gif"])
def test_pixel_bombs_are_rejected_without_decoding_a_pixel(corpus: Path, monkeypatch, name: str):
    """Every PIL decode goes through Image._getdecoder; count the calls."""
    calls = []
    real = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    with pytest.raises(ImageRejected):
        load_image(BY_NAME[name].path(corpus))
    assert calls == []
    load_image(BY_NAME["32x32.png"].path(corpus))
    assert calls == ["zip"]  # the spy does see a real decode


def test_file_size_is_checked_before_the_file_is_read(tmp_path: Path):
    sparse = tmp_path / "sparse.png"  # 8 GB on paper, nothing on disk: reading it would exhaust memory
    with sparse.open("wb") as f:
        f.truncate(8 * 2**30)
    with pytest.raises(ImageRejected) as info:
        load_image(sparse)
    assert str(info.value) == TOO_MANY_BYTES.format(size_mb=8192.0, limit_mb=10)


def test_caps_are_inclusive_and_adjustable():
    data = encode(photo(64, 64), "PNG")
    assert load_image(data, max_pixels=64 * 64, max_bytes=len(data)).size == (64, 64)
    with pytest.raises(ImageRejected) as info:
        load_image(data, max_pixels=64 * 64 - 1)
    assert str(info.value) == images.TOO_MANY_PIXELS.format(width=64, height=64, megapixels=0.004096,
                                                             limit_mp=0.004095)
    with pytest.raises(ImageRejected) as info:
        load_image(data, max_bytes=len(data) - 1)
    assert str(info.value) == TOO_MANY_BYTES.format(size_mb=len(data) / 2**20, limit_mb=(len(data) - 1) / 2**20)
    assert too_many_pixels(10000, 10000).startswith("The image is 10000×10000 pixels (100.0 MP)")


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pil_mode_becomes_8_bit_rgb_or_a_clear_message(mode: str):
    image = Image.new(mode, (40, 40))
    if mode == "La":  # premultiplied, internal to PIL: no decoder produces it and PIL cannot convert it
        with pytest.raises(ImageRejected) as info:
            to_rgb(image)
        assert str(info.value) == UNSUPPORTED_MODE.format(mode="La")
        return
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 40) and np.asarray(rgb).dtype == np.uint8


def test_describe_image_says_size_mode_and_origin(corpus: Path):
    assert describe_image(load_image(BY_NAME["gray16_full_range.png"].path(corpus))) == "256×32 RGB (PNG, was I;16)"
    assert describe_image(load_image(BY_NAME["photo.webp"].path(corpus))) == "80×60 RGB (WEBP)"
    assert describe_image(Image.new("RGB", (512, 512))) == "512×512 RGB"


# ----------------------------------------------------------------------------- SafeImage, the gr.Image for uploads


@pytest.fixture(scope="module")
def gr_parts():
    import gradio as gr  # 2-4 s to import; only the tests below pay for it
    from gradio.data_classes import ImageData

    from inference.safe_image import SafeImage

    return gr, SafeImage, ImageData


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_safe_image_shows_the_message_or_gives_rgb(corpus: Path, gr_parts, case: Case):
    gr, SafeImage, ImageData = gr_parts
    path = case.path(corpus)
    payload = ImageData(path=str(path), orig_name=case.name, size=path.stat().st_size)
    if case.outcome == "rejected":
        with pytest.raises(gr.Error) as info:
            SafeImage().preprocess(payload)
        assert info.value.message == case.message
    else:
        image = SafeImage().preprocess(payload)
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == case.size


def test_safe_image_reads_data_urls_and_none(corpus: Path, gr_parts):
    gr, SafeImage, ImageData = gr_parts
    good = base64.b64encode(BY_NAME["exif_orientation6.jpg"].path(corpus).read_bytes()).decode()
    assert SafeImage().preprocess(ImageData(url="data:image/jpeg;base64," + good)).size == (48, 64)
    with pytest.raises(gr.Error) as info:
        SafeImage().preprocess(ImageData(url="data:image/png;base64,not*base64"))
    assert info.value.message == NOT_AN_IMAGE
    assert SafeImage().preprocess(None) is None


def test_in_blocks_the_message_reaches_the_user_where_stock_image_hides_it(corpus: Path, gr_parts, tmp_path: Path):
    """Gradio re-raises gr.Error from preprocess unchanged; any other error becomes an anonymous one."""
    gr, SafeImage, _ = gr_parts
    with gr.Blocks() as demo:
        safe, stock, out = SafeImage(), gr.Image(type="pil"), gr.Textbox()
        safe.change(describe_image, safe, out)
        stock.change(describe_image, stock, out)
    assert [c["type"] for c in demo.get_config_file()["components"]][:2] == ["image", "image"]
    safe.GRADIO_CACHE = stock.GRADIO_CACHE = str(tmp_path)  # where gradio copies the upload
    bomb = BY_NAME["bomb_20000x20000.png"]
    payload = {"path": str(bomb.path(corpus)), "orig_name": bomb.name, "meta": {"_type": "gradio.FileData"}}
    safe_fn, stock_fn = (fn for fn in demo.fns.values())
    with pytest.raises(gr.Error) as info:
        asyncio.run(demo.preprocess_data(safe_fn, [payload], None, explicit_call=True))
    assert info.value.message == bomb.message
    with pytest.raises(Exception) as info:
        asyncio.run(demo.preprocess_data(stock_fn, [payload], None, explicit_call=True))
    assert not isinstance(info.value, gr.Error) and "DecompressionBombError" in repr(info.value.__cause__)
