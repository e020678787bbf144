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
    assert str(info.value) == images.TOO_MANY_PIXELS.format(width=64, height=64, megapixels=0.004096, limit_mp=0.004095)
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
    with pytest.raises(Exception) as info:  # noqa: PT011  any error but gr.Error is the point; its cause is checked
        asyncio.run(demo.preprocess_data(stock_fn, [payload], None, explicit_call=True))
    assert not isinstance(info.value, gr.Error) and "DecompressionBombError" in repr(info.value.__cause__)


# ----------------------------------------------------------------------------- data URLs, measured first


@pytest.fixture
def b64_calls(monkeypatch):
    """Lengths of what base64.b64decode is asked to decode."""
    calls = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda s, *a, **k: calls.append(len(s)) or real(s, *a, **k))
    return calls


@pytest.mark.parametrize("size", [998, 999, 1000])  # two, one and no "=" of padding
def test_a_data_url_at_the_cap_is_decoded_and_one_byte_more_is_refused_undecoded(size, b64_calls):
    data = bytes(range(256)) * 4
    url = "data:image/png;base64," + base64.b64encode(data[:size]).decode()
    assert images.decode_data_url(url, max_bytes=size) == data[:size]
    b64_calls.clear()
    with pytest.raises(ImageRejected) as info:
        images.decode_data_url(url, max_bytes=size - 1)
    assert str(info.value) == TOO_MANY_BYTES.format(size_mb=size / 2**20, limit_mb=(size - 1) / 2**20)
    assert b64_calls == []


def test_a_huge_data_url_is_refused_from_its_length_without_a_copy(b64_calls):
    import tracemalloc

    url = "data:image/jpeg;base64," + "A" * (64 * 2**20)  # 48 MB of image; the was 150 MB
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected) as info:
            images.decode_data_url(url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == TOO_MANY_BYTES.format(size_mb=48.0, limit_mb=10)
    assert b64_calls == [] and peak < 2**20  # decoding it would have cost 48 MB more, plus a copy of the URL


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,",
        "data:,",
        "data:image/png;base64,not*base64",
        "data:image/png;base64,AAA",
        "data:image/png;base64,ÄÄÄÄ",
        "nodata",
    ],
)
def test_empty_or_broken_data_urls_get_the_usual_messages(url):
    with pytest.raises(ImageRejected) as info:
        images.decode_data_url(url)
    assert str(info.value) in (images.EMPTY_FILE, NOT_AN_IMAGE)


def test_safe_image_refuses_an_oversized_data_url_before_decoding_it(gr_parts, b64_calls):
    gr, SafeImage, ImageData = gr_parts
    url = "data:image/png;base64," + "A" * (16 * 2**20)  # 12 MB of image
    with pytest.raises(gr.Error) as info:
        SafeImage().preprocess(ImageData(url=url))
    assert info.value.message == TOO_MANY_BYTES.format(size_mb=12.0, limit_mb=10)
    assert b64_calls == []


# ----------------------------------------------------------------------------- working size, memory


def _large(width: int, height: int, fmt: str) -> bytes:
    return encode(photo(width, height), fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def test_a_large_jpeg_is_decoded_at_reduced_scale_then_resized_to_the_working_size(monkeypatch):
    shrunk = []
    real = images._shrink
    monkeypatch.setattr(images, "_shrink", lambda im, size: shrunk.append(im.size) or real(im, size))
    image = load_image(_large(4000, 3000, "JPEG"), working_pixels=1_000_000)
    assert shrunk == [(2000, 1500)]  # JPEG draft: decoded at 1/2 scale (1/4 would be under the working size)
    assert image.size == (1154, 866) and image.width * image.height <= 1_000_000 and image.mode == "RGB"
    assert image.info == {"source_format": "JPEG", "source_mode": "RGB", "source_size": (4000, 3000)}
    assert describe_image(image) == "1154×866 RGB (JPEG, downscaled from 4000×3000)"
    full = load_image(_large(4000, 3000, "JPEG")).resize(image.size, Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(full, dtype=int)).mean() < 1.0  # the same picture


def test_other_formats_are_decoded_in_full_and_resized(monkeypatch):
    shrunk = []
    real = images._shrink
    monkeypatch.setattr(images, "_shrink", lambda im, size: shrunk.append(im.size) or real(im, size))
    image = load_image(_large(2000, 1000, "PNG"), working_pixels=500_000)
    assert shrunk == [(2000, 1000)] and image.size == (1000, 500)
    assert image.info["source_size"] == (2000, 1000)


def test_an_image_within_the_working_size_is_untouched(corpus: Path):
    for case in (c for c in CASES if c.outcome == "ok"):
        path = case.path(corpus)
        reduced, full = load_image(path, working_pixels=10**6), load_image(path)
        assert reduced.info == full.info and np.array_equal(np.asarray(reduced), np.asarray(full)), case.name


def test_exif_orientation_is_applied_before_the_working_size(corpus: Path):
    path = BY_NAME["exif_orientation6.jpg"].path(corpus)
    full = load_image(path)
    image = load_image(path, working_pixels=full.width * full.height // 4)
    assert full.size == (48, 64) and image.size == (24, 32)
    assert image.info["source_size"] == (48, 64)  # upright, as the user sees the photo


def test_safe_image_reduces_uploads_to_the_working_size(gr_parts, tmp_path: Path):
    _, SafeImage, ImageData = gr_parts
    path = tmp_path / "big.jpg"
    path.write_bytes(_large(4000, 2500, "JPEG"))  # 10 MP
    image = SafeImage().preprocess(ImageData(path=str(path), orig_name="big.jpg"))
    assert image.width * image.height <= images.WORKING_MAX_PIXELS < 4000 * 2500
    assert image.info["source_size"] == (4000, 2500)


def test_at_most_a_few_uploads_are_decoded_at_once(monkeypatch):
    import threading
    import time

    running, most = [0], [0]
    lock = threading.Lock()
    real = images._decode

    def counting(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_decode", counting)
    data = encode(photo(64, 64), "PNG")
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == images.MAX_CONCURRENT_DECODES


def test_memory_is_released_when_the_last_decode_ends_and_once_more_soon_after(monkeypatch):
    import time

    from inference import memory

    pending = memory.pending_release()  # one due from an earlier test's decode
    if pending is not None:
        pending.join()
    trims = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", trims.append)
    monkeypatch.setattr(memory, "LATE_RELEASE_S", 0.2)
    with memory.in_use():
        load_image(encode(photo(64, 64), "PNG"))
        assert trims == []  # another piece of work is still in flight
    assert trims == [0]
    load_image(encode(photo(64, 64), "PNG"))  # a second burst before the late release: that one stays due once
    assert trims == [0, 0]
    time.sleep(0.5)
    assert trims == [0, 0, 0]  # what the handlers freed after the last decode goes back too
