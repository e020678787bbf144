"""`SafeImage`: a gr.Image whose uploads go through `load_image`, so a bad file becomes a readable toast.

Stock gr.Image opens every upload with PIL inside its `preprocess`, before the event handler runs; a text
file renamed .png or a decompression bomb then surfaces as a bare "Error" badge with no message (see
FEASIBILITY.md, "Bad files into gr.Image"). Gradio re-raises a `gr.Error` from `preprocess` unchanged, so
overriding `preprocess` is the one place where the user can be told what is wrong.

The value handed to the handler is always an upright 8-bit RGB PIL image, whatever `type=` says.
Defining this subclass makes gradio write safe_image.pyi next to this file (ignored by git).
"""

from __future__ import annotations

import base64
import binascii
import logging

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

from inference.images import NOT_AN_IMAGE, ImageRejected, load_image

logger = logging.getLogger(__name__)


class SafeImage(gr.Image):
    """gr.Image for uploads: same frontend, but intake checked and converted by `load_image`."""

    def get_block_name(self) -> str:
        return "image"  # reuse the stock Image frontend; there is no "safeimage" one

    def preprocess(self, payload: ImageData | None) -> Image.Image | None:
        """The upload as RGB, or gr.Error(<the ImageRejected message>) shown to the user as a toast."""
        if payload is None:
            return None
        try:
            return load_image(_payload_source(payload))
        except ImageRejected as exc:
            logger.info("upload %r rejected: %s", payload.orig_name, exc)
            raise gr.Error(str(exc), print_exception=False) from exc


def _payload_source(payload: ImageData) -> str | bytes:
    """The uploaded file's path, or the bytes of a base64 data URL (API clients may send those)."""
    if payload.url and payload.url.startswith("data:"):
        try:
            return base64.b64decode(payload.url.rsplit(",", 1)[-1], validate=True)
        except binascii.Error as exc:
            raise ImageRejected(NOT_AN_IMAGE) from exc
    if payload.path is None:
        raise ValueError("SafeImage payload has neither a file path nor a data URL")
    return payload.path
