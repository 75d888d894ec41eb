"""Sampling facts of FLUX.1 dev (docs/numerics.md): noise, packing, ids, schedule.

These are the definitions the C pipeline mirrors; the reference pipeline uses them as is.
"""

import math

import numpy as np
import torch

BASE_SEQ, BASE_SHIFT = 256, 0.5
MAX_SEQ, MAX_SHIFT = 4096, 1.15
LATENT_CHANNELS = 16


def check_size(width, height, multiple=16):
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f"width and height must be positive multiples of {multiple}, "
                         f"got {width}x{height}")


def noise(seed, width, height, dtype=torch.float32):
    """(1, 16, H/8, W/8) standard normal noise drawn on the CPU with a seeded generator in the
    model dtype, as the references draw it."""
    check_size(width, height)
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, LATENT_CHANNELS, height // 8, width // 8), generator=g, dtype=dtype)


def pack(z):
    """(B, C, H/8, W/8) -> (B, H/16 * W/16, C*4): 'b c (h ph) (w pw) -> b (h w) (c ph pw)'."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // 2) * (w // 2), c * 4)


def unpack(x, width, height):
    """The inverse of pack for an image of width x height pixels."""
    b, _, f = x.shape
    h, w = height // 16, width // 16
    return x.view(b, h, w, f // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, f // 4, h * 2, w * 2)


def img_ids(width, height):
    """(1, L, 3) float32 ids (0, i, j) for packed position (i, j), row-major."""
    h, w = height // 16, width // 16
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(1, h * w, 3)


def txt_ids(length):
    return torch.zeros(1, length, 3)


def mu(image_seq_len):
    """Resolution shift: linear in image tokens, 256 -> 0.5 and 4096 -> 1.15."""
    m = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ - BASE_SEQ)
    return image_seq_len * m + (BASE_SHIFT - m * BASE_SEQ)


def schedule(steps, image_seq_len):
    """steps + 1 float32 sigmas from 1 to 0, computed as diffusers does: the float64
    linspace(1, 1/N, N) rounded to float32, the time shift e^mu / (e^mu + (1/t - 1)) in
    float32 arithmetic, then a final 0. (BFL's float32 torch.linspace gives the same values
    to within an ulp; this form is reproducible in C bit for bit, whatever the SIMD width.)"""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    t = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    e = np.float32(math.exp(mu(image_seq_len)))
    s = e / (e + (np.float32(1.0) / t - np.float32(1.0)))
    return torch.from_numpy(np.append(s, np.float32(0.0)).astype(np.float32))


def to_uint8(img):
    """(B, 3, H, W) decoder output -> (B, H, W, 3) uint8: in fp32, clamp((x + 1) / 2, 0, 1),
    times 255, round half to even."""
    x = ((img.float() + 1.0) * 0.5).clamp(0.0, 1.0)
    return torch.round(x * 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
