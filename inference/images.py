"""Safe intake of one uploaded image: every check a clinician's upload goes through before the model.

`load_image` turns a file path or bytes into an 8-bit RGB `PIL.Image`, or raises `ImageRejected` with a
message the user can act on. The checks run cheapest first and, crucially, the pixel cap is checked from
the header before a single pixel is decoded, so a decompression bomb (a 50 KB PNG that claims
20000×20000) costs a header parse, not gigabytes of memory.

Decisions, so that nobody has to rediscover them:
- Formats are identified from the content (magic bytes), never from the file name; only PNG, JPEG, WEBP,
  BMP, TIFF and GIF parsers are ever run on an upload (PIL's other plugins, e.g. EPS which calls
  Ghostscript, are never tried).
- Multi-frame files (animated GIF/PNG/WEBP, multi-page TIFF, MPO from phone cameras) give their first
  frame: the model classifies one still photo and the first frame is what every viewer shows.
- Transparent pixels are composited on black. Fundus and dermoscopy photos have a black surround outside
  the camera's field of view, and transparency in an exported photo is almost always that masked-out
  surround; white would add a bright ring the model never saw in training.
- 16-bit and 32-bit grayscale (and float) are stretched linearly from their own min..max to 0..255, like
  a viewer's auto-window: cameras often fill only 10-12 of the 16 bits, so a fixed /257 would make them
  nearly black, and clipping to 255 would make them white.
- EXIF orientation is applied, so the model sees the photo upright, as the user does.
- ICC profiles are ignored: pixel values are taken as stored, as they were in training.
- Strips more elongated than MAX_ASPECT_RATIO are rejected: no fundus or skin photo looks like that, the
  CLIP backbone's centre crop would keep a sliver of it, and Qwen2.5-VL's processor fails at 200:1.

Memory (a public server gets bursts of 36 MP camera frames):
- At most MAX_CONCURRENT_DECODES uploads are decoded at once (`DECODE_SLOTS`); the others wait, so the
  peak is a few full-size decodes, not one per visitor.
- With `working_pixels` (SafeImage passes WORKING_MAX_PIXELS) a larger image is reduced while it is
  decoded: JPEG decodes at 1/2, 1/4 or 1/8 scale (`Image.draft`, never below the working size), then one
  Lanczos resize (after an integer `reduce` where the factor allows) brings it to the working size. No
  FairDx model looks at that many pixels (the tiny checkpoints use under 0.1 MP, the README's GPU budget
  0.2 MP); images at or under the working size are untouched. The one exception: a run on the full
  Qwen2.5-VL with its checkpoint's own budget (max 12.8 MP) sees at most 8 MP of a larger upload.
- Nothing full-size outlives `load_image`: the parsed file is closed and EXIF orientation is applied in
  place; a decode counts as memory in use (`inference.memory.in_use`), so once the burst is over the heap
  it freed goes back to the operating system instead of staying in glibc's per-thread arenas.
- A base64 `data:` URL is measured from its length before it is decoded (`decode_data_url`).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from inference import memory

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # same 10 MB as the app's launch(max_file_size="10mb")
DEFAULT_MAX_PIXELS = 40_000_000  # a 40 MP camera frame; 120 MB once decoded to RGB
MIN_SIDE = 32
MAX_ASPECT_RATIO = 20
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # PIL plugin names, tried in this order
WORKING_MAX_PIXELS = 8_000_000  # uploads are reduced to this at decode time (SafeImage); see the docstring
MAX_CONCURRENT_DECODES = 2
DECODE_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)

EMPTY_FILE = "The file is empty (0 bytes); upload the image file again."
TOO_MANY_BYTES = (
    "The file is {size_mb:.1f} MB; the limit is {limit_mb:g} MB. Upload a smaller file, e.g. the image saved as JPEG."
)
NOT_AN_IMAGE = "This file is not a supported image format; upload PNG, JPEG, WEBP, BMP, TIFF or GIF."
TOO_MANY_PIXELS = (
    "The image is {width}×{height} pixels ({megapixels:.1f} MP); the limit is {limit_mp:g} MP. "
    "Downscale it and upload it again."
)
TOO_MANY_PIXELS_DECLARED = "The file declares an image of over {limit_mp:g} MP; downscale it and upload it again."
TOO_SMALL = (
    "The image is {width}×{height} pixels; each side must be at least {min_side} pixels. "
    "Upload the original image, not a thumbnail or icon."
)
TOO_ELONGATED = (
    "The image is {width}×{height} pixels, more elongated than {max_ratio}:1; "
    "upload the whole photo, not a strip or panorama."
)
DAMAGED = "The file is damaged or truncated; export or copy the image again and re-upload it."
UNSUPPORTED_MODE = (
    "The image uses the '{mode}' colour mode, which cannot be converted to RGB; save it as an 8-bit RGB PNG or JPEG."
)

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# What PIL's parsers raise on a malformed header or truncated pixel data (the list Image.open catches, plus
# what ImageFile.load raises: OSError "image file is truncated", EOFError, ValueError from decoders).
_PARSE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error)


class ImageRejected(ValueError):
    """An upload that cannot be used; str(error) is the message to show the user."""


def load_image(
    source: str | Path | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    working_pixels: int | None = None,
) -> Image.Image:
    """The upload as an upright 8-bit RGB image, or ImageRejected saying what is wrong and what to do.

    working_pixels: reduce a larger image to about this many pixels while decoding it (None: full size).
    The result's `info` holds only "source_format", "source_mode" and, for a reduced image,
    "source_size" (for `describe_image`); EXIF, ICC and the other metadata of the upload are dropped.
    """
    with _decode_slot():
        data = _read_capped(source, max_bytes)
        image = _open_header(data, max_pixels)
        del data  # the parser holds its own reference for as long as it needs one
        try:
            _check_size(image, max_pixels)
            return _decode(image, max_pixels, working_pixels)
        finally:
            image.close()


def _decode(image: ImageFile.ImageFile, max_pixels: int, working_pixels: int | None) -> Image.Image:
    width, height = image.size
    try:
        requested = _working_size(image.size, working_pixels)
        if requested is not None:
            image.draft(None, requested)  # JPEG: decode at 1/2..1/8 scale, never below `requested`; others: no-op
        image.load()  # the first (and only) full decode
        turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)  # by 90 or 270 degrees
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as exc:  # defence in depth: no allowed plugin checks again here today
        raise ImageRejected(TOO_MANY_PIXELS_DECLARED.format(limit_mp=max_pixels / 1e6)) from exc
    except _PARSE_ERRORS as exc:
        raise ImageRejected(DAMAGED) from exc
    source: dict[str | tuple[int, int], Any] = {"source_format": image.format, "source_mode": image.mode}
    target = _working_size(image.size, working_pixels)
    if target is not None and image.mode == "RGB" and not image.has_transparency_data:
        rgb = to_rgb(_shrink(image, target))  # resize first: the one full-size copy is never made
    else:
        rgb = to_rgb(image)
        if target is not None:
            rgb = _shrink(rgb, target)
    upright = (height, width) if turned else (width, height)
    if rgb.size != upright:
        source["source_size"] = upright
    rgb.info = source
    return rgb


def _working_size(size: tuple[int, int], working_pixels: int | None) -> tuple[int, int] | None:
    """The size, same aspect ratio, with at most `working_pixels` pixels; None if `size` is no larger."""
    width, height = size
    if not working_pixels or width * height <= working_pixels:
        return None
    scale = math.sqrt(working_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos downscale, after an integer box `reduce` when the image is 3x the target or more."""
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def decode_data_url(url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a base64 `data:` URL, its size checked from the URL's length before anything is decoded.

    A 150 MB URL is refused by arithmetic; decoding it first would cost its size again (and more).
    """
    comma = url.rfind(",")
    if not url.startswith("data:") or comma < 0:
        raise ImageRejected(NOT_AN_IMAGE)
    length = len(url) - comma - 1  # base64 characters; 4 of them carry 3 bytes, "=" padding carries none
    padding = 2 if url.endswith("==") else 1 if url.endswith("=") else 0
    size = length // 4 * 3 - padding if length % 4 == 0 else length * 3 // 4
    if size <= 0:
        raise ImageRejected(EMPTY_FILE)
    if size > max_bytes:
        raise ImageRejected(TOO_MANY_BYTES.format(size_mb=size / 2**20, limit_mb=max_bytes / 2**20))
    try:
        return base64.b64decode(url[comma + 1 :], validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise ImageRejected(NOT_AN_IMAGE) from exc


@contextmanager
def _decode_slot() -> Iterator[None]:
    """One of DECODE_SLOTS, held while decoding; counted as memory in use (see inference.memory)."""
    with DECODE_SLOTS, memory.in_use():
        yield


def describe_image(image: Image.Image) -> str:
    """A one-line summary for the UI, e.g. "512×512 RGB (PNG, was I;16)" or
    "3464×2309 RGB (JPEG, downscaled from 7360×4912)"."""
    text = f"{image.width}×{image.height} {image.mode}"
    source_format, source_mode = image.info.get("source_format"), image.info.get("source_mode")
    notes = [source_format] if source_format else []
    if source_format and source_mode and source_mode != image.mode:
        notes.append(f"was {source_mode}")
    if image.info.get("source_size"):
        width, height = image.info["source_size"]
        notes.append(f"downscaled from {width}×{height}")
    return f"{text} ({', '.join(notes)})" if notes else text


def _read_capped(source: str | Path | bytes, max_bytes: int) -> bytes:
    """The file's bytes, refused when empty or over the cap; a path is measured before it is read."""
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if size == 0:
        raise ImageRejected(EMPTY_FILE)
    if size > max_bytes:
        raise ImageRejected(TOO_MANY_BYTES.format(size_mb=size / 2**20, limit_mb=max_bytes / 2**20))
    if isinstance(source, bytes):
        return source
    with open(source, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since stat()
    if len(data) > max_bytes:
        raise ImageRejected(TOO_MANY_BYTES.format(size_mb=len(data) / 2**20, limit_mb=max_bytes / 2**20))
    return data


def _open_header(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse only the header, with the allowed plugin whose magic bytes match.

    This is Image.open(formats=ALLOWED_FORMATS) minus its own decompression-bomb check, which would raise
    (or only warn, between 89 and 179 MP) before we could read the size and say how large the image is.
    No pixel is decoded here; `_check_size` runs next.
    """
    Image.init()
    for name in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[name]
        # No magic-bytes check (PIL allows a plugin without one): no match. WEBP's accept returns a str
        # when libwebp is missing.
        if accept is None or accept(data[:16]) is not True:
            continue
        try:
            return factory(io.BytesIO(data), "")  # the filename of a stream: "" as Image.open passes it
        except Image.DecompressionBombError as exc:  # a GIF frame larger than its declared screen
            raise ImageRejected(TOO_MANY_PIXELS_DECLARED.format(limit_mp=max_pixels / 1e6)) from exc
        except _PARSE_ERRORS as exc:
            raise ImageRejected(DAMAGED) from exc
    raise ImageRejected(NOT_AN_IMAGE)


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            TOO_MANY_PIXELS.format(
                width=width, height=height, megapixels=width * height / 1e6, limit_mp=max_pixels / 1e6
            )
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(TOO_SMALL.format(width=width, height=height, min_side=MIN_SIDE))
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageRejected(TOO_ELONGATED.format(width=width, height=height, max_ratio=MAX_ASPECT_RATIO))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from a decoded image of any mode; see the module docstring for the choices made."""
    try:
        if image.mode in _HIGH_DEPTH_MODES:
            return _stretch_to_8bit(image).convert("RGB")
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            black = Image.new("RGB", image.size, (0, 0, 0))
            black.paste(rgba, mask=rgba.getchannel("A"))
            return black
        return image.convert("RGB")  # also the copy that detaches the result from the upload's buffer
    except ValueError as exc:  # PIL has no conversion for a few internal modes (e.g. premultiplied La)
        raise ImageRejected(UNSUPPORTED_MODE.format(mode=image.mode)) from exc


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """Grayscale L with the image's own finite min..max mapped linearly onto 0..255 (NaN/inf -> 0)."""
    values = np.asarray(image).astype(np.float32)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if finite.any():
        low, high = float(values[finite].min()), float(values[finite].max())
        if high > low:
            scaled = (values[finite] - low) * (255.0 / (high - low))
            out[finite] = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(out)  # uint8 2-D -> mode L
