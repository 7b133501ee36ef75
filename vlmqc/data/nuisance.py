"""Variation that is not a defect: board pose, lighting, optics and sensor noise.

Reference and candidate each get their own draw, so two renders of the same product never
match pixel for pixel and a model cannot find a defect by testing pixel equality.
All draws come from the example's own random generator, so a seed fixes every pixel.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from vlmqc.config import NuisanceConfig

# Gaussian noise through a table: a random byte picks one of 256 equal-probability quantiles
# of N(0, 1). Eight times faster than drawing normals, and at a few 8-bit levels of noise the
# 256-step quantisation is invisible.
_QUANTILES = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)


@dataclass(frozen=True)
class Draw:
    dx: float  # board shift, pixels at output scale
    dy: float
    angle: float  # board rotation, degrees, counter-clockwise
    gain: float  # brightness factor
    contrast: float  # contrast factor around the image mean
    gx: float  # illumination slope across the width (relative)
    gy: float  # and down the height
    blur: float  # Gaussian sigma, pixels
    noise: float  # sensor noise std, 8-bit levels

    def as_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def draw(cfg: NuisanceConfig, rng: np.random.Generator, cell_px: float) -> Draw:
    s = cfg.strength
    u = rng.uniform(-1.0, 1.0, size=6)
    return Draw(
        dx=u[0] * cfg.shift * s * cell_px,
        dy=u[1] * cfg.shift * s * cell_px,
        angle=u[2] * cfg.rotation * s,
        gain=1.0 + u[3] * cfg.brightness * s,
        contrast=1.0 + u[4] * cfg.contrast * s,
        gx=u[5] * cfg.gradient * s,
        gy=rng.uniform(-1.0, 1.0) * cfg.gradient * s,
        blur=rng.uniform(0.0, 1.0) * cfg.blur * s,
        noise=cfg.noise * s,
    )


def pose(img: Image.Image, d: Draw, scale: int, fill) -> Image.Image:
    """Reduce from drawing scale to output size, then rotate and shift (bilinear: sub-pixel moves).

    Rotating after the reduction costs a quarter of rotating the supersampled drawing and
    looks the same once the optics blur has run.
    """
    img = img.reduce(scale) if scale > 1 else img
    if d.angle or d.dx or d.dy:
        img = img.rotate(d.angle, resample=Image.BILINEAR, translate=(d.dx, d.dy), fillcolor=fill)
    return img


def photometric(img: Image.Image, d: Draw, rng: np.random.Generator) -> Image.Image:
    """Optics (blur), lighting (gain, contrast, gradient) and the sensor (noise).

    The blur runs first: lighting is smooth, so the order makes no visible difference, and
    lighting and noise then share one pass over the pixels.
    """
    if d.blur >= 0.1:
        # band by band: the same pixels as blurring the RGB image (Pillow blurs each byte of a pixel
        # alone), in 15 % less time, since an RGB image is blurred as four bytes a pixel
        img = Image.merge(img.mode, [band.filter(ImageFilter.GaussianBlur(d.blur)) for band in img.split()])
    a = np.asarray(img, dtype=np.float32)  # a fresh copy: every step below works in place
    h, w = a.shape[:2]
    mean = float(a.mean())
    light = (
        1.0
        + d.gx * (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
        + d.gy * (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    )
    a *= d.contrast
    a += mean * (d.gain - d.contrast)
    flat = a.reshape(h, w * 3)  # a view: the same products as broadcasting light over the channels, faster
    flat *= np.repeat(light, 3, axis=1)
    if d.noise > 0:
        a += np.take(_QUANTILES * d.noise, rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    a += 0.5  # round, not truncate, in the conversion below
    np.clip(a, 0, 255, out=a)
    return Image.fromarray(a.astype(np.uint8))
