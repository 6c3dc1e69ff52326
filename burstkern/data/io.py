"""Reading a user's burst from files, for ``burstkern sr``.

Accepted inputs (a folder, whose files are taken in name order, or a list of files):

- RAW Bayer mosaics, one frame per file: single-channel 16-bit (or 8-bit) PNG / TIFF. Normalised with
  ``(x − black_level) / (white_level − black_level)``, clamped to [0, 1], and packed to RGGB (other patterns —
  BGGR, GRBG, GBRG — are cropped by one row / column to start on a red pixel).
- Packed RAW arrays: ``.npy`` / ``.pt`` of ``[T, 4, h, w]`` (RGGB, a whole burst) or ``[4, h, w]`` (one frame),
  values in [0, 1] for floats, else normalised with the black / white levels.
- Ordinary RGB frames (8-bit PNG / JPEG, or 3-channel 16-bit PNG / TIFF): sent through the inverse ISP of
  :mod:`burstkern.data.isp` (neutral colour matrix and gains, so the forward ISP gives the same colours back),
  then mosaicked to RGGB.

Errors (:class:`BurstFileError`, a ``ValueError``) name the file: unknown formats, unreadable files, frames of
different sizes, odd mosaic sizes, too few frames.

Example::

    >>> b = load_burst(["f0.png", "f1.png", "f2.png", "f3.png"], black_level=512, white_level=16383)
    >>> b["burst"].shape, b["kind"]
    (torch.Size([1, 4, 4, 256, 384]), 'raw')
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["BurstFileError", "load_burst", "list_frames", "BAYER_PATTERNS", "RAW_EXTS", "RGB_EXTS", "ARRAY_EXTS",
           "neutral_isp_params", "save_png"]

BAYER_PATTERNS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}  # offset of the red pixel
IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
RAW_EXTS = (".png", ".tif", ".tiff")
RGB_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_EXTS = (".npy", ".pt")
MIN_FRAMES = 2


class BurstFileError(ValueError):
    """A burst file or set of files that cannot be used; the message names the file and says why."""


def neutral_isp_params(dtype=torch.float64) -> Dict[str, Tensor]:
    """ISP parameters of the identity camera: identity colour matrices, unit gains (batch 1)."""
    eye = torch.eye(3, dtype=dtype)[None]
    one = torch.ones(1, dtype=dtype)
    return {"rgb2cam": eye, "cam2rgb": eye.clone(), "rgb_gain": one, "red_gain": one.clone(),
            "blue_gain": one.clone()}


def list_frames(inputs: Union[str, Sequence[str]]) -> List[str]:
    """The frame files of ``inputs``: a folder (its image / array files in name order) or a list of files."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    inputs = [os.fspath(p) for p in inputs]
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        d = inputs[0]
        files = sorted(os.path.join(d, f) for f in os.listdir(d)
                       if f.lower().endswith(IMAGE_EXTS + ARRAY_EXTS) and not f.startswith("."))
        if not files:
            raise BurstFileError(f"{d}: the folder holds no frame files ({', '.join(IMAGE_EXTS + ARRAY_EXTS)})")
        return files
    for p in inputs:
        if os.path.isdir(p):
            raise BurstFileError(f"{p}: is a folder; pass one folder alone, or a list of frame files")
        if not os.path.exists(p):
            raise BurstFileError(f"{p}: no such file")
    return inputs


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.uint16 if im.mode != "I" else np.int64)
            elif im.mode in ("L", "RGB"):
                a = np.asarray(im)
            elif im.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                a = np.asarray(im.convert("RGB"))
            elif im.mode == "F":
                a = np.asarray(im).astype(np.float32)
            else:
                raise BurstFileError(f"{path}: unsupported image mode {im.mode!r}")
    except UnidentifiedImageError:
        raise BurstFileError(f"{path}: not a readable image (corrupt, or not a PNG / TIFF / JPEG)") from None
    except OSError as e:
        raise BurstFileError(f"{path}: cannot read the image: {e}") from None
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    return a


def _read_array(path: str) -> np.ndarray:
    try:
        if path.lower().endswith(".npy"):
            a = np.load(path, allow_pickle=False)
        else:
            t = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(t, Tensor):
                raise BurstFileError(f"{path}: expected a tensor [T, 4, h, w] or [4, h, w], got {type(t).__name__}")
            a = t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()
    except BurstFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable array file: one clear line naming it
        raise BurstFileError(f"{path}: not a readable {os.path.splitext(path)[1]} array ({type(e).__name__})") from None
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] != 4:
        raise BurstFileError(f"{path}: expected packed RGGB [T, 4, h, w] or [4, h, w], got shape {tuple(a.shape)}")
    return a


def _normalise(a: np.ndarray, path: str, black: float, white: float) -> Tensor:
    if np.issubdtype(a.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if black == 0 and white is None:
            return t.clamp(0, 1)
    else:
        t = torch.from_numpy(a.astype(np.float32))
    if white is None:
        white = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    if not white > black:
        raise BurstFileError(f"{path}: --white-level ({white}) must be above --black-level ({black})")
    return ((t - black) / (white - black)).clamp(0, 1)


def _pack(mosaic: Tensor, path: str, bayer: str) -> Tensor:
    """``[H, W]`` mosaic -> packed RGGB ``[4, H/2, W/2]`` (cropping to start on red for other patterns)."""
    dy, dx = BAYER_PATTERNS[bayer]
    m = mosaic[dy:, dx:]
    h, w = m.shape
    if dy or dx:
        m = m[:h - h % 2, :w - w % 2]
    elif h % 2 or w % 2:
        raise BurstFileError(f"{path}: the Bayer mosaic is {mosaic.shape[0]}x{mosaic.shape[1]}; RGGB needs even "
                             f"height and width")
    return torch.stack((m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2]))


def load_burst(inputs: Union[str, Sequence[str]], *, black_level: float = 0.0, white_level=None,
               bayer: str = "RGGB", min_frames: int = MIN_FRAMES, max_frames: int = 16) -> Dict:
    """Read a burst: ``{"burst": [1, T, 4, h, w] in [0, 1], "kind": "raw" | "rgb", "files", "isp"}``.

    ``black_level`` / ``white_level``: of integer RAW data (default 0 and the dtype's maximum); ``bayer``: the
    mosaic's pattern (RGGB, BGGR, GRBG, GBRG). RGB frames go through the inverse ISP with neutral parameters
    (``isp`` holds them, for the forward ISP of the output). At most ``max_frames`` frames are used.
    """
    bayer = bayer.upper()
    if bayer not in BAYER_PATTERNS:
        raise BurstFileError(f"--bayer must be one of {', '.join(BAYER_PATTERNS)}, got {bayer!r}")
    if not np.isfinite(black_level) or black_level < 0:
        raise BurstFileError(f"--black-level must be a number >= 0, got {black_level!r}")
    files = list_frames(inputs)
    frames: List[Tensor] = []
    sources: List[str] = []
    kind = None
    for path in files:
        ext = os.path.splitext(path)[1].lower()
        if ext in ARRAY_EXTS:
            a = _read_array(path)
            t = _normalise(a, path, black_level, white_level)
            k = "raw"
            new = list(t)
        elif ext in IMAGE_EXTS:
            a = _read_image(path)
            if a.ndim == 2:  # one channel: a Bayer mosaic
                k = "raw"
                new = [_pack(_normalise(a, path, black_level, white_level), path, bayer)]
            elif a.ndim == 3 and a.shape[2] == 3:
                k = "rgb"
                new = [_rgb_to_packed(a, path)]
            else:
                raise BurstFileError(f"{path}: expected a 1-channel Bayer mosaic or a 3-channel RGB image, got "
                                     f"shape {a.shape}")
        else:
            raise BurstFileError(f"{path}: unknown frame format {ext or '(no extension)'!r}; use 16-bit PNG / TIFF "
                                 f"mosaics, .npy / .pt [T, 4, h, w] arrays, or RGB PNG / JPEG frames")
        if kind is None:
            kind = k
        elif k != kind:
            raise BurstFileError(f"{path}: is a{'n RGB' if k == 'rgb' else ' RAW'} frame but the burst so far is "
                                 f"{kind.upper()}; do not mix RAW and RGB frames")
        for f in new:
            if frames and f.shape != frames[0].shape:
                raise BurstFileError(f"{path}: frame size {_size(f, kind)} differs from {_size(frames[0], kind)} "
                                     f"of {sources[0]}")
            frames.append(f)
            sources.append(path)
    if len(frames) < min_frames:
        raise BurstFileError(f"{files[0] if len(files) == 1 else 'the burst'}: {len(frames)} frame(s); a burst needs "
                             f"at least {min_frames}")
    frames, sources = frames[:max_frames], sources[:max_frames]
    burst = torch.stack(frames)[None].contiguous()
    return {"burst": burst, "kind": kind, "files": sources, "isp": neutral_isp_params()}


def _size(f: Tensor, kind: str) -> str:
    return f"{2 * f.shape[-2]}x{2 * f.shape[-1]}" + (" (RGB)" if kind == "rgb" else " (mosaic)")


def _rgb_to_packed(a: np.ndarray, path: str) -> Tensor:
    from .burst import mosaic
    from .isp import unprocess

    scale = 255.0 if a.dtype == np.uint8 else 65535.0 if a.dtype == np.uint16 else 1.0
    t = torch.from_numpy(a.astype(np.float32) / scale).permute(2, 0, 1).clamp(0, 1)
    h, w = t.shape[-2:]
    if h % 2 or w % 2:
        raise BurstFileError(f"{path}: the RGB frame is {h}x{w}; it needs even height and width (the RGGB mosaic "
                             f"is made at full resolution)")
    params = {k: v[0] for k, v in neutral_isp_params(torch.float32).items()}
    return mosaic(unprocess(t, params))


def save_png(path: str, rgb: Tensor, sixteen_bit: bool = False) -> str:
    """Save ``[3, H, W]`` in [0, 1] as an 8-bit (or 16-bit) RGB PNG."""
    from PIL import Image

    a = rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if sixteen_bit:  # PIL cannot write 16-bit-per-channel RGB: a minimal PNG encoder
        _write_png16(path, (a * 65535.0 + 0.5).astype(">u2"))
    else:
        Image.fromarray((a * 255.0 + 0.5).astype(np.uint8)).save(path)
    return path


def _write_png16(path: str, a: np.ndarray) -> None:
    """A minimal 16-bit-per-channel RGB PNG writer (big-endian samples, zlib, no filter)."""
    import struct
    import zlib

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))
