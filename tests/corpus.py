"""A corpus of bad and odd uploads, each with the outcome a user must see.

Used by tests/test_images.py (load_image, SafeImage) and by the app's server tests (the same files sent
through a running app). Every file is generated here from code, deterministically, so nothing binary is
committed. `write_corpus(folder)` writes them all (about 11 MB, most of it the over-the-byte-cap file).

An accepted case names the size of the RGB image the model gets (after EXIF rotation) and the mode PIL
decoded; a rejected case names the exact message, built from inference.images' constants.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageCms

from inference.images import (
    DAMAGED,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    EMPTY_FILE,
    MAX_ASPECT_RATIO,
    MIN_SIDE,
    NOT_AN_IMAGE,
    TOO_ELONGATED,
    TOO_MANY_BYTES,
    TOO_MANY_PIXELS,
    TOO_MANY_PIXELS_DECLARED,
    TOO_SMALL,
)

LIMIT_MB = DEFAULT_MAX_BYTES / 2**20
LIMIT_MP = DEFAULT_MAX_PIXELS / 1e6


@dataclass(frozen=True)
class Case:
    """One upload: file name, how to make its bytes, and what the user must get."""

    name: str
    make: Callable[[], bytes]
    outcome: Literal["ok", "rejected"]
    message: str = ""  # rejected: the exact text shown to the user
    size: tuple[int, int] = (0, 0)  # ok: (width, height) of the RGB image handed to the model
    source_mode: str = ""  # ok: the mode PIL decoded before conversion to RGB

    def path(self, folder: Path) -> Path:
        return Path(folder) / self.name


def ok(name: str, make: Callable[[], bytes], size: tuple[int, int], source_mode: str) -> Case:
    return Case(name, make, "ok", size=size, source_mode=source_mode)


def rejected(name: str, make: Callable[[], bytes], message: str) -> Case:
    return Case(name, make, "rejected", message=message)


def too_many_pixels(width: int, height: int) -> str:
    return TOO_MANY_PIXELS.format(width=width, height=height, megapixels=width * height / 1e6, limit_mp=LIMIT_MP)


def too_small(width: int, height: int) -> str:
    return TOO_SMALL.format(width=width, height=height, min_side=MIN_SIDE)


# ----------------------------------------------------------------------------- encoders


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def photo(width: int = 64, height: int = 64, mode: str = "RGB") -> Image.Image:
    """A smooth colour gradient (compresses like a photo, unlike noise)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.full((height, width), 96, np.float32),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, colour_type: int, row: bytes) -> bytes:
    """A valid PNG whose every row is `row`, compressed as a stream: a 400 MP bomb costs ~0.2 s and 50 KB."""
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """1-bit all-black: (width/8) bytes a row, so it is tiny on disk and huge once decoded."""
    return handmade_png(width, height, 1, 0, bytes((width + 7) // 8))


def rgb48_ramp() -> bytes:
    """A 16-bit-per-channel RGB PNG (what some fundus cameras export), red ramping 0..65535 across."""
    red = np.linspace(0, 65535, 128).round()
    row = np.stack([red, np.zeros_like(red), np.full_like(red, 30000)], axis=-1).astype(">u2").tobytes()
    return handmade_png(128, 64, 16, 2, row)


def gray16_ramp(width: int, height: int, top: int, fmt: str) -> bytes:
    """A horizontal 16-bit grayscale ramp from 0 to `top` (65535: full range; 4095: 12 bits used)."""
    ramp = np.linspace(0, top, width).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (height, 1))), fmt)


def float_tiff() -> bytes:
    """Mode F: values from -1 to 3 across, with one NaN at (0, 0)."""
    values = np.tile(np.linspace(-1, 3, 96, dtype=np.float32), (40, 1))
    values[0, 0] = np.nan
    return encode(Image.fromarray(values), "TIFF")


def int32_tiff() -> bytes:
    values = np.tile(np.linspace(-100_000, 100_000, 64).astype(np.int32), (48, 1))
    return encode(Image.fromarray(values), "TIFF")


def rgba_thirds() -> bytes:
    """Red, with alpha 0 | 128 | 255 in three vertical bands (composited on black: 0 | 128 | 255 red)."""
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 30:60, 3], rgba[:, 60:, 3] = 128, 255
    return encode(Image.fromarray(rgba), "PNG")


def la_halves() -> bytes:
    la = Image.new("LA", (64, 64), (200, 0))
    la.paste((200, 255), (32, 0, 64, 64))
    return encode(la, "PNG")


def palette_transparent() -> bytes:
    """Palette index 0 (white) is transparent on the left half; index 1 (red) on the right."""
    image = Image.new("P", (64, 64), 0)
    image.putpalette([255, 255, 255, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (32, 0, 64, 64))
    return encode(image, "PNG", transparency=0)


def exif_rotated() -> bytes:
    """Stored 64×48 with a red top-left corner and EXIF orientation 6 (shown rotated 90° clockwise)."""
    image = Image.new("RGB", (64, 48), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def animated(fmt: str) -> bytes:
    """Three 64×64 frames, red then green then blue."""
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    return encode(photo(64, 48), "TIFF", save_all=True, append_images=[photo(128, 128)])


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 64×64 JPEG whose SOF header is patched to claim width×height (a header-only bomb)."""
    data = bytearray(encode(photo(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_frame_bomb() -> bytes:
    """A GIF with a 100×100 screen whose first frame claims 30000×30000 (PIL grows the image to fit)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 100, 100, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 30000, 30000, 0x80) + b"\x00\x00\x00\xff\xff\xff"
    return screen + frame + b"\x02\x02\x44\x01\x00;"


def bad_crc_png() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR chunk's CRC (bytes 29..32)
    return bytes(data)


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def over_byte_cap() -> bytes:
    """A real, incompressible 1900×1900 noise PNG stored uncompressed: ~10.3 MB, just over 10 MB."""
    return encode(noise(1900, 1900), "PNG", compress_level=0)


def icc_jpeg() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(photo(), "JPEG", icc_profile=profile)


def random_bytes() -> bytes:
    return np.random.default_rng(0).bytes(4096)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"><circle cx="256" cy="256" r="200"/></svg>'
HTML = b"<!DOCTYPE html><html><head><title>fundus.jpg</title></head><body><img src='x.jpg'></body></html>"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)  # an iPhone photo's header

CASES: list[Case] = [
    # -- not an image, or not one we accept
    rejected("empty.png", lambda: b"", EMPTY_FILE),
    rejected("notes_renamed.png", lambda: b"patient notes, not an image\n" * 20, NOT_AN_IMAGE),
    rejected("page_renamed.jpg", lambda: HTML, NOT_AN_IMAGE),
    rejected("drawing.svg", lambda: SVG, NOT_AN_IMAGE),
    rejected("report.pdf", lambda: PDF, NOT_AN_IMAGE),
    rejected("figure.eps", lambda: EPS, NOT_AN_IMAGE),  # PIL's EPS plugin would run Ghostscript
    rejected("iphone.heic", lambda: HEIC, NOT_AN_IMAGE),
    rejected("stare_fundus.ppm", lambda: encode(photo(), "PPM"), NOT_AN_IMAGE),  # PIL reads it; not allowed
    rejected("random.png", random_bytes, NOT_AN_IMAGE),
    # -- too big, by bytes or by pixels (the pixel cap is read from the header)
    rejected("over_10mb.png", over_byte_cap, TOO_MANY_BYTES.format(size_mb=10.3, limit_mb=LIMIT_MB)),
    rejected("bomb_20000x20000.png", lambda: png_bomb(20000, 20000), too_many_pixels(20000, 20000)),
    rejected("big_10000x10000.png", lambda: png_bomb(10000, 10000), too_many_pixels(10000, 10000)),
    rejected("header_bomb.jpg", lambda: jpeg_claiming(60000, 60000), too_many_pixels(60000, 60000)),
    rejected("frame_bomb.gif", gif_frame_bomb, TOO_MANY_PIXELS_DECLARED.format(limit_mp=LIMIT_MP)),
    # -- too small or the wrong shape
    rejected("1x1.png", lambda: encode(photo(1, 1), "PNG"), too_small(1, 1)),
    rejected("31x31.png", lambda: encode(photo(31, 31), "PNG"), too_small(31, 31)),
    rejected(
        "panorama_4000x40.png",
        lambda: encode(photo(4000, 40), "PNG"),
        TOO_ELONGATED.format(width=4000, height=40, max_ratio=MAX_ASPECT_RATIO),
    ),
    # -- damaged
    rejected("truncated.png", lambda: truncated(encode(noise(256, 256), "PNG"), 0.6), DAMAGED),
    rejected("truncated.jpg", lambda: truncated(encode(noise(256, 256), "JPEG"), 0.5), DAMAGED),
    rejected("bad_checksum.png", bad_crc_png, DAMAGED),
    rejected("signature_only.png", lambda: b"\x89PNG\r\n\x1a\n", DAMAGED),
    # -- accepted: every format on the allow-list
    ok("32x32.png", lambda: encode(photo(32, 32), "PNG"), (32, 32), "RGB"),
    ok("strip_640x32.png", lambda: encode(photo(640, 32), "PNG"), (640, 32), "RGB"),
    ok("png_named.jpg", lambda: encode(photo(), "PNG"), (64, 64), "RGB"),
    ok("photo.webp", lambda: encode(photo(80, 60), "WEBP", quality=90), (80, 60), "RGB"),
    ok("photo.bmp", lambda: encode(photo(80, 60), "BMP"), (80, 60), "RGB"),
    ok("photo.tif", lambda: encode(photo(80, 60), "TIFF"), (80, 60), "RGB"),
    ok("gray.jpg", lambda: encode(photo(mode="L"), "JPEG"), (64, 64), "L"),
    ok("progressive.jpg", lambda: encode(photo(96, 72), "JPEG", progressive=True), (96, 72), "RGB"),
    ok("icc_profile.jpg", icc_jpeg, (64, 64), "RGB"),
    ok("cmyk.jpg", lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95), (64, 64), "CMYK"),
    ok("exif_orientation6.jpg", exif_rotated, (48, 64), "RGB"),
    # -- accepted: modes converted to 8-bit RGB
    ok("gray16_full_range.png", lambda: gray16_ramp(256, 32, 65535, "PNG"), (256, 32), "I;16"),
    ok("gray12_in_16bit.tif", lambda: gray16_ramp(256, 32, 4095, "TIFF"), (256, 32), "I;16"),
    ok("rgb48.png", rgb48_ramp, (128, 64), "RGB"),
    ok("float.tif", float_tiff, (96, 40), "F"),
    ok("int32.tif", int32_tiff, (64, 48), "I"),
    ok("bilevel.png", lambda: encode(photo().convert("1"), "PNG"), (64, 64), "1"),
    ok("rgba.png", rgba_thirds, (90, 60), "RGBA"),
    ok("gray_alpha.png", la_halves, (64, 64), "LA"),
    ok("palette_transparent.png", palette_transparent, (64, 64), "P"),
    # -- accepted: several frames, first one used
    ok("animated.gif", lambda: animated("GIF"), (64, 64), "P"),
    ok("animated.png", lambda: animated("PNG"), (64, 64), "RGB"),
    ok("animated.webp", lambda: animated("WEBP"), (64, 64), "RGB"),
    ok("two_pages.tif", multipage_tiff, (64, 48), "RGB"),
]


def write_corpus(folder: str | Path) -> list[Case]:
    """Write every case's file into `folder` (created if needed) and return the cases."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        case.path(folder).write_bytes(case.make())
    return CASES
