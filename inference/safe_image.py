"""`SafeImage`: a gr.Image whose uploads go through `load_image`, so a bad file becomes a readable toast.

Stock gr.Image opens every upload with PIL inside its `preprocess`, before the event handler runs; a text
file renamed .png or a decompression bomb then surfaces as a bare "Error" badge with no message (see
FEASIBILITY.md, "Bad files into gr.Image"). Gradio re-raises a `gr.Error` from `preprocess` unchanged, so
overriding `preprocess` is the one place where the user can be told what is wrong.

The value handed to the handler is always an upright 8-bit RGB PIL image, whatever `type=` says, reduced
to at most `working_pixels` (default inference.images.WORKING_MAX_PIXELS) while it is decoded. A base64
`data:` URL (API clients may send one) is measured before it is decoded.
Defining this subclass makes gradio write safe_image.pyi next to this file (ignored by git).
"""

from __future__ import annotations

import logging

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

from inference.images import WORKING_MAX_PIXELS, ImageRejected, decode_data_url, load_image

logger = logging.getLogger(__name__)


class SafeImage(gr.Image):
    """gr.Image for uploads: same frontend, but intake checked and converted by `load_image`."""

    # Larger uploads are reduced to about this many pixels while they are decoded (None: full size). A class
    # attribute, not an __init__ argument: Gradio sends every __init__ argument to the frontend.
    working_pixels: int | None = WORKING_MAX_PIXELS

    def get_block_name(self) -> str:
        return "image"  # reuse the stock Image frontend; there is no "safeimage" one

    def preprocess(self, payload: ImageData | None) -> Image.Image | None:
        """The upload as RGB, or gr.Error(<the ImageRejected message>) shown to the user as a toast."""
        if payload is None:
            return None
        try:
            return load_image(_payload_source(payload), working_pixels=self.working_pixels)
        except ImageRejected as exc:
            logger.info("upload %r rejected: %s", payload.orig_name, exc)
            raise gr.Error(str(exc), print_exception=False) from exc


def _payload_source(payload: ImageData) -> str | bytes:
    """The uploaded file's path, or the bytes of a base64 data URL (API clients may send those)."""
    if payload.url and payload.url.startswith("data:"):
        return decode_data_url(payload.url)  # its size is checked before it is decoded
    if payload.path is None:
        raise ValueError("SafeImage payload has neither a file path nor a data URL")
    return payload.path
