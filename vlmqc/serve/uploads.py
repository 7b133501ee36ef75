"""Checking what the page receives: an image Pillow can read, within the limits, and a reference
of the candidate's size. Every refusal is an ``UploadError`` whose message the page shows as is."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

MAX_BYTES = 16 * 1024 * 1024  # one request, both files together
MAX_PIXELS = 25_000_000  # per image, checked from the header before any pixel is decoded


class UploadError(ValueError):
    """An upload refused, with a message for the person who sent it."""


def read_image(data: bytes, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoded RGB image, or an UploadError naming ``what`` and why."""
    if not data:
        raise UploadError(f"the {what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            # the header's size, before decoding: a small file may claim a huge image
            if img.width * img.height > max_pixels:
                raise UploadError(
                    f"the {what} is {img.width} x {img.height} pixels; at most {max_pixels:,} pixels are accepted"
                )
            img.load()
            return img.convert("RGB")
    except UploadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        # SyntaxError: some of Pillow's plugins raise it for a damaged header
        raise UploadError(f"the {what} is not an image Pillow can read ({type(e).__name__})") from None


def same_size(candidate: Image.Image, reference: Image.Image) -> None:
    if candidate.size != reference.size:
        raise UploadError(
            f"the reference is {reference.width} x {reference.height} pixels but the candidate is "
            f"{candidate.width} x {candidate.height}: "
            "a pair is compared cell by cell, so both must be the same size"
        )
