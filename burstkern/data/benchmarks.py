"""The published burst-SR benchmarks, read from their on-disk formats: SyntheticBurst validation and BurstSR.

Both formats are those of Bhat et al., *Deep Burst Super-Resolution* (CVPR 2021), as written and read by the
authors' toolkit (github.com/goutamgmb/deep-burst-sr); E-BSRD, BSRD and DP-IR report on them. The facts this
module relies on (this is our own code; none of theirs is copied):

**SyntheticBurst validation set** (``SyntheticBurstVal(root)``; 300 bursts of 14 RAW frames)::

    root/bursts/0000/im_raw_00.png ... im_raw_13.png   4-channel 16-bit PNG, one RAW frame [4, 48, 48]
    root/gt/0000/im_rgb.png                            3-channel 16-bit PNG, linear RGB ground truth [3, 384, 384]
    root/gt/0000/meta_info.pkl                         pickled dict of the synthetic ISP parameters

- Values are stored as ``clamp(x, 0, 1) * 2**14`` in ``uint16`` and read back as ``v / 2**14`` (not 65535).
- The PNGs were written with OpenCV, which treats an array's channels as B, G, R(, A): array channel 0 lands in
  the file's *blue* slot. The packed RGGB frame ``[R, G, G, B]`` (R at even row/even column, G even/odd,
  G odd/even, B odd/odd) is therefore stored as file channels ``(R, G, B, A) = (G_odd, G_even, R, B)``, and the
  RGB ground truth as file ``(R, G, B) = (b, g, r)``. :func:`read_png_bgr` returns channels in OpenCV's order
  (reversing the first three file channels), which undoes this, with or without OpenCV installed.
- ``meta_info.pkl``: ``rgb2cam`` / ``cam2rgb`` (3 x 3 float tensors), ``rgb_gain``, ``red_gain``, ``blue_gain``
  (floats), ``smoothstep``, ``gamma`` (bools), ``shot_noise_level``, ``read_noise_level`` (floats); the tensors
  are pickled the way ``pickle`` pickles torch tensors (storages as ``torch.save`` bytes).

**BurstSR** (``BurstSR(root, split)``; real Samsung Galaxy S8 RAW bursts, Canon 5D Mark IV ground truth, the
pre-processed, roughly aligned crops of the challenge release)::

    root/<split>/<burst>/samsung_00/im_raw.png ... samsung_13/   4-channel 16-bit PNG [4, 80, 80], 10-bit values
    root/<split>/<burst>/samsung_XX/meta_info.pkl                black_level (4), cam_wb (4), daylight_wb (4),
                                                                 color_matrix (3 x 3), exif_data, im_preview
    root/<split>/<burst>/canon/im_raw.png                        3-channel 16-bit PNG [3, 640, 640], 14-bit
    root/<split>/<burst>/canon/meta_info.pkl                     black_level, cam_wb, daylight_wb (4 each, the
                                                                 3 channels are entries 0, 1, 3), rgb_xyz_matrix,
                                                                 exif_data

- ``split`` is ``train`` or ``val`` (the val split is the test set of the papers); burst folders sort by name,
  the first four characters are the sequence id.
- Frames: ``(raw - black_level) / 1023`` per channel (black level subtracted, no white balance), as the
  validation protocol prepares them. Ground truth: ``(raw - black_level[[0, 1, 3]]) / 16383`` times the
  exposure factor ``(t_s * iso_s / N_s**2) / (t_c * iso_c / N_c**2)`` (exposure time ``t``, ISO, f-number ``N``
  of the Samsung frame 0 and of the Canon image, from the EXIF tags ``ExposureTime``, ``ISOSpeedRatings``,
  ``FNumber``) so that both live in the same brightness range.
- ``exif_data`` holds ``exifread`` objects (``IfdTag`` with ``.values``, ``Ratio`` fractions); they are read
  without the ``exifread`` package. ``Image Tag 0xC761`` (NoiseProfile): 6 doubles, row 0 of ``reshape(3, 2)``
  is the noise profile.

Every item is ``{"burst": [T, 4, h, w] float32, "gt": [3, H, W] float32, "meta": {...}}`` like
:class:`burstkern.data.SyntheticBurstDataset`; ``burst_size`` keeps the first ``T`` frames (the papers use all
14). Meta values are tensors (or strings) so that ``torch.utils.data.default_collate`` batches them.

Loading is strict: a wrong root, a missing frame, a corrupt PNG or pickle raise :class:`BenchmarkDataError` (a
``ValueError``) with one line naming the path. Pickles are read with an allow-list unpickler (tensors, numpy
arrays, plain containers, exifread values): a pickle that wants anything else is refused, never executed.
PNGs are decoded with OpenCV when it is installed (``pip install opencv-python-headless``: fast) and otherwise
with the small pure-numpy decoder below (16-bit colour PNGs are not supported by Pillow).

Example::

    >>> ds = SyntheticBurstVal("/data/synburst_val", burst_size=8)
    >>> item = ds[0]
    >>> item["burst"].shape, item["gt"].shape, item["meta"]["burst_name"]
    (torch.Size([8, 4, 48, 48]), torch.Size([3, 384, 384]), '0000')
    >>> srgb = ds.to_srgb(item["gt"], item["meta"])      # for display
"""

from __future__ import annotations

import fractions
import io
import os
import pickle
import re
import struct
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["BenchmarkDataError", "SyntheticBurstVal", "BurstSR", "read_png_bgr", "write_png_bgr", "read_png",
           "write_png", "load_meta_pickle", "burstsr_to_srgb", "detect_format", "SYNTHETIC_VAL_SCALE",
           "BURSTSR_RAW_SCALE", "BURSTSR_GT_SCALE", "SYNTHETIC_VAL_BURST_SIZE", "BURSTSR_BURST_SIZE"]

SYNTHETIC_VAL_SCALE = 2 ** 14      # synthetic val PNGs: v / 2**14
BURSTSR_RAW_SCALE = 1023.0         # Samsung RAW: 10-bit
BURSTSR_GT_SCALE = 16383.0         # Canon RAW: 14-bit
SYNTHETIC_VAL_BURST_SIZE = 14
BURSTSR_BURST_SIZE = 14


class BenchmarkDataError(ValueError):
    """A benchmark dataset that cannot be read as its published format; one line, naming the path."""


# ----------------------------------------------------------------------------------------------
# PNG: a small decoder/encoder (8/16-bit gray, gray+alpha, RGB, RGBA; non-interlaced)
# ----------------------------------------------------------------------------------------------
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}   # colour type -> channels


def _corrupt(path: str, why: str) -> BenchmarkDataError:
    return BenchmarkDataError(f"{path}: corrupt or unsupported PNG ({why})")


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: np.ndarray, h: int, w: int, bpp: int, path: str) -> np.ndarray:
    """PNG scanline filters undone: ``raw`` [h, 1 + w*bpp] uint8 -> [h, w*bpp] uint8."""
    ftype = raw[:, 0]
    if ftype.size and int(ftype.max()) > 4:
        raise _corrupt(path, f"unknown scanline filter {int(ftype.max())}")
    data = raw[:, 1:]
    if not np.isin(ftype, (3, 4)).any():   # None / Sub / Up only: one vectorised pass per row
        out = np.empty_like(data)
        prev = np.zeros(data.shape[1], np.uint8)
        for y in range(h):
            line, f = data[y], ftype[y]
            if f == 1:
                line = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)  # wraps mod 256
            elif f == 2:
                line = line + prev
            out[y] = line
            prev = out[y]
        return out
    # Average / Paeth depend on the decoded left neighbour: sweep anti-diagonals of pixels (h + w - 1 steps),
    # each step vectorised over the pixels of the diagonal and their bytes.
    pad = np.zeros((h + 1, w + 1, bpp), np.int32)
    f3 = data.reshape(h, w, bpp).astype(np.int32)
    ft_all = ftype.astype(np.int32)
    for k in range(h + w - 1):
        ys = np.arange(max(0, k - w + 1), min(h, k + 1))
        xs = k - ys
        a, b, c = pad[ys + 1, xs], pad[ys, xs + 1], pad[ys, xs]
        ft = ft_all[ys][:, None]
        pred = np.where(ft == 1, a, np.where(ft == 2, b, np.where(ft == 3, (a + b) >> 1,
                                                                    np.where(ft == 4, _paeth(a, b, c), 0))))
        pad[ys + 1, xs + 1] = (f3[ys, xs] + pred) & 255
    return pad[1:, 1:].astype(np.uint8).reshape(h, w * bpp)


def _decode_png(blob: bytes, path: str) -> np.ndarray:
    if blob[:8] != _PNG_SIG:
        raise _corrupt(path, "no PNG signature")
    pos, ihdr, idat, ended = 8, None, [], False
    while pos < len(blob):
        if pos + 8 > len(blob):
            raise _corrupt(path, "truncated chunk header")
        length, ctype = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        crc = blob[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise _corrupt(path, f"truncated {ctype.decode('latin-1')} chunk")
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
            raise _corrupt(path, f"CRC mismatch in the {ctype.decode('latin-1')} chunk")
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            ended = True
            break
    if ihdr is None or not idat:
        raise _corrupt(path, "no IHDR or IDAT chunk")
    if not ended:
        raise _corrupt(path, "truncated: no IEND chunk")
    w, h, depth, color, comp, filt, interlace = ihdr
    if color not in _PNG_CHANNELS or depth not in (8, 16) or comp or filt:
        raise _corrupt(path, f"bit depth {depth}, colour type {color}: only 8/16-bit gray/RGB(A) are supported "
                             f"without OpenCV (pip install opencv-python-headless)")
    if interlace:
        raise _corrupt(path, "interlaced PNGs need OpenCV (pip install opencv-python-headless)")
    ch = _PNG_CHANNELS[color]
    bpp = ch * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise _corrupt(path, f"bad compressed data: {e}") from None
    if len(raw) != h * (1 + w * bpp):
        raise _corrupt(path, f"{len(raw)} bytes of image data, expected {h * (1 + w * bpp)} for {w}x{h}x{ch} "
                             f"{depth}-bit")
    data = _unfilter(np.frombuffer(raw, np.uint8).reshape(h, 1 + w * bpp), h, w, bpp, path)
    if depth == 16:
        return data.view(">u2").astype(np.uint16).reshape(h, w, ch)
    return data.reshape(h, w, ch)


def read_png(path: str) -> np.ndarray:
    """A PNG as ``[H, W, C]`` uint8/uint16 in the file's channel order (gray, gray+alpha, R G B, R G B A).

    Uses OpenCV when installed, else the pure-numpy decoder. Raises :class:`BenchmarkDataError` naming ``path``
    for a missing, unreadable or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BenchmarkDataError(f"{path}: no such file")
    try:
        import cv2  # optional, fast
    except ImportError:
        cv2 = None
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BenchmarkDataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if cv2 is not None:
        a = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
        if a is not None:
            a = a[..., None] if a.ndim == 2 else a
            if len(blob) > 25 and blob[25] == 4 and a.shape[-1] == 4:   # gray + alpha comes back as BGRA
                a = a[..., [0, 3]]
            if a.shape[-1] >= 3:
                a = np.concatenate((a[..., 2::-1], a[..., 3:]), axis=-1)
            return np.ascontiguousarray(a)
        # OpenCV could not decode it: the built-in decoder says why (or reads what OpenCV would not)
    return _decode_png(blob, path)


def read_png_bgr(path: str) -> np.ndarray:
    """A PNG as ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` returns it: the first three file channels reversed
    (B, G, R(, A)) — the order in which the benchmark files were written (module docstring)."""
    a = read_png(path)
    if a.shape[-1] >= 3:
        a = np.concatenate((a[..., 2::-1], a[..., 3:]), axis=-1)
    return np.ascontiguousarray(a)


def _filter_rows(img: np.ndarray, filters: Sequence[int], bpp: int) -> bytes:
    h = img.shape[0]
    x = img.astype(np.int32)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    upleft = np.zeros_like(x)
    upleft[1:, bpp:] = x[:-1, :-bpp]
    pred = {0: np.zeros_like(x), 1: left, 2: up, 3: (left + up) >> 1, 4: _paeth(left, up, upleft)}
    out = bytearray()
    for y in range(h):
        f = int(filters[y % len(filters)])
        out.append(f)
        out += ((x[y] - pred[f][y]) & 255).astype(np.uint8).tobytes()
    return bytes(out)


def write_png(path: str, array: np.ndarray, filters: Sequence[int] = (0,), level: int = 6) -> str:
    """Write ``[H, W]`` or ``[H, W, C]`` (C = 1..4) uint8/uint16 as a PNG in the given channel order (gray, gray +
    alpha, RGB, RGBA). ``filters``: scanline filter per row, cycled (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png: expected [H, W, 1..4] uint8 or uint16, got {a.shape} {a.dtype}")
    h, w, ch = a.shape
    depth = 16 if a.dtype == np.uint16 else 8
    color = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    rows = a.astype(">u2").view(np.uint8) if depth == 16 else a
    rows = rows.reshape(h, -1)
    data = zlib.compress(_filter_rows(rows, filters, ch * depth // 8), level)

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    blob = (_PNG_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(blob)
    return path


def write_png_bgr(path: str, array: np.ndarray, filters: Sequence[int] = (0,)) -> str:
    """Write like ``cv2.imwrite``: the array's channels are B, G, R(, A) (the benchmark files' convention)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] >= 3:
        a = np.concatenate((a[..., 2::-1], a[..., 3:]), axis=-1)
    return write_png(path, np.ascontiguousarray(a), filters)


# ----------------------------------------------------------------------------------------------
# meta_info.pkl: an allow-list unpickler
# ----------------------------------------------------------------------------------------------
def _storage_from_bytes(b: bytes):
    """What ``torch.storage._load_from_bytes`` does for a pickled tensor's storage, with ``weights_only``."""
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


class ExifRatio(fractions.Fraction):
    """Stand-in for ``exifread.utils.Ratio`` (a Fraction; older releases kept ``num`` / ``den`` attributes)."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls, *args) if args else super().__new__(cls, 0)

    def __setstate__(self, state):
        if isinstance(state, tuple):   # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def decimal(self) -> float:
        return float(self)

    def __float__(self) -> float:
        d = self.__dict__
        if "num" in d and "den" in d:
            return float(d["num"]) / float(d["den"]) if d["den"] else 0.0
        return super().__float__()


class ExifObject:
    """Stand-in for other ``exifread`` objects (e.g. ``IfdTag``: ``printable``, ``tag``, ``values``, ...)."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self):
        return f"ExifObject({self.__dict__.get('printable', self.__dict__.get('values'))!r})"


def _allowed() -> Dict[tuple, object]:
    import collections
    import copyreg

    allow = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
             ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
             ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
             ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
             ("torch", "Size"): torch.Size,
             ("collections", "OrderedDict"): collections.OrderedDict,
             ("copyreg", "_reconstructor"): copyreg._reconstructor,
             ("builtins", "object"): object, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
             ("builtins", "complex"): complex, ("builtins", "slice"): slice, ("builtins", "bytearray"): bytearray,
             ("fractions", "Fraction"): fractions.Fraction,
             ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    core = getattr(np, "_core", None) or np.core
    for mod in ("numpy.core", "numpy._core"):
        allow[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allow[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allow[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allow


class _Refused(pickle.UnpicklingError):
    pass


class _MetaUnpickler(pickle.Unpickler):
    _allow: Dict[tuple, object] = {}

    def find_class(self, module, name):
        key = (module, name)
        if key in self._allow:
            return self._allow[key]
        if module == "exifread" or module.startswith("exifread."):
            return ExifRatio if name == "Ratio" else ExifObject
        raise _Refused(f"refusing to load {module}.{name} (not a type a meta_info.pkl holds)")


def load_meta_pickle(path: str) -> dict:
    """A benchmark ``meta_info.pkl`` as a dict, through an allow-list unpickler (module docstring).

    Raises :class:`BenchmarkDataError` naming ``path`` if it is missing, corrupt, not a dict, or asks for a type
    outside the allow-list (nothing outside it is ever imported or called)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BenchmarkDataError(f"{path}: no such file")
    if not _MetaUnpickler._allow:
        _MetaUnpickler._allow = _allowed()
    try:
        with open(path, "rb") as f:
            obj = _MetaUnpickler(f).load()
    except _Refused as e:
        raise BenchmarkDataError(f"{path}: not a plain meta_info pickle ({e}); nothing was executed") from None
    except Exception as e:  # noqa: BLE001 - truncated / garbage pickles fail in many ways: one clear line
        raise BenchmarkDataError(f"{path}: corrupt meta_info pickle ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})"[:300]) from None
    if not isinstance(obj, dict):
        raise BenchmarkDataError(f"{path}: meta_info pickle holds a {type(obj).__name__}, expected a dict")
    return obj


def _to_float(v, what: str, path: str) -> float:
    """A number from a meta value: float/int/bool, Fraction/Ratio, exifread IfdTag (first value), list/tuple."""
    for _ in range(4):
        if isinstance(v, ExifObject):
            v = v.__dict__.get("values", v.__dict__.get("_args"))
        elif isinstance(v, (list, tuple)) and v:
            v = v[0]
        elif isinstance(v, Tensor) and v.numel() >= 1:
            v = v.reshape(-1)[0].item()
        elif isinstance(v, np.ndarray) and v.size >= 1:
            v = v.reshape(-1)[0]
        else:
            break
    try:
        return float(v)
    except (TypeError, ValueError):
        raise BenchmarkDataError(f"{path}: {what} is not a number ({v!r})") from None


def _tensor(v, what: str, path: str, dtype=torch.float64, numel: Optional[int] = None) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(v.tolist() if isinstance(v, Tensor) else v, dtype=np.float64), dtype=dtype)
    except (TypeError, ValueError):
        raise BenchmarkDataError(f"{path}: {what} is not numeric ({type(v).__name__})") from None
    if numel is not None and t.numel() < numel:
        raise BenchmarkDataError(f"{path}: {what} has {t.numel()} values, expected {numel}")
    return t


def _require(meta: dict, key: str, path: str):
    if key not in meta:
        raise BenchmarkDataError(f"{path}: meta_info has no {key!r} (keys: {', '.join(map(str, sorted(meta)))})")
    return meta[key]


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
def _check_burst_size(burst_size, full: int) -> int:
    if burst_size is None:
        return full
    if not isinstance(burst_size, int) or isinstance(burst_size, bool) or not 1 <= burst_size <= full:
        raise ValueError(f"burst_size must be an int in [1, {full}], got {burst_size!r}")
    return burst_size


def _check_dir(path: str, what: str, hint: str) -> None:
    if not os.path.exists(path):
        raise BenchmarkDataError(f"{path}: no such directory ({what}); {hint}")
    if not os.path.isdir(path):
        raise BenchmarkDataError(f"{path}: not a directory ({what}); {hint}")


def _frame(path: str, scale: float, channels: int, offset: Optional[Tensor] = None) -> Tensor:
    a = read_png_bgr(path)
    if a.shape[-1] != channels:
        raise BenchmarkDataError(f"{path}: {a.shape[-1]} channel(s), expected {channels}")
    t = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)
    if offset is not None:
        t = t - offset.to(torch.float32).view(-1, 1, 1)
    return (t / scale).contiguous()


class _BurstFolders(torch.utils.data.Dataset):
    """Shared by the two formats: one folder per burst, sorted by name."""

    burst_names: List[str]

    def _set_names(self, names: List[str], folder: str, hint: str, what: str = "") -> None:
        if not names:
            raise BenchmarkDataError(f"{folder}: no burst folders{what}; {hint}")
        self.burst_names = names

    def __len__(self) -> int:
        return len(self.burst_names)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} bursts")


class SyntheticBurstVal(_BurstFolders):
    """The SyntheticBurst validation set of Bhat et al. (300 bursts x 14 RAW frames, linear-RGB ground truth).

    Args:
        root: the unpacked dataset folder (holding ``bursts/`` and ``gt/``; module docstring).
        burst_size: keep the first ``burst_size`` frames (default all 14; only those files are read).
        quantised: nothing to do for this format (the files are the quantised data); kept for symmetry.

    Items: ``burst`` ``[T, 4, 48, 48]`` and ``gt`` ``[3, 384, 384]`` float32 in [0, 1] (``v / 2**14``), ``meta``:
    ``rgb2cam`` / ``cam2rgb`` ``[3, 3]``, ``rgb_gain`` / ``red_gain`` / ``blue_gain``, ``shot_noise`` /
    ``read_noise`` (fp64 tensors), ``smoothstep`` / ``gamma`` (bool tensors), ``burst_name`` (``"0000"``),
    ``index``. The ISP keys are those of :func:`burstkern.data.process` (see :meth:`to_srgb`).
    """

    format = "synthetic-val"

    def __init__(self, root: str, burst_size: Optional[int] = None):
        self.root = os.fspath(root)
        hint = "expected the SyntheticBurst validation folder with bursts/NNNN/im_raw_XX.png and gt/NNNN/"
        _check_dir(self.root, "SyntheticBurst validation root", hint)
        for sub in ("bursts", "gt"):
            _check_dir(os.path.join(self.root, sub), f"the {sub}/ folder of the SyntheticBurst validation set", hint)
        self.burst_size = _check_burst_size(burst_size, SYNTHETIC_VAL_BURST_SIZE)
        bursts = os.path.join(self.root, "bursts")
        self._set_names(sorted(n for n in os.listdir(bursts)
                               if re.fullmatch(r"\d{4}", n) and os.path.isdir(os.path.join(bursts, n))),
                        bursts, hint, " (0000, 0001, ...)")

    def paths(self, index: int) -> Dict[str, object]:
        """The files of burst ``index``: ``frames`` (list), ``gt``, ``meta``."""
        name = self.burst_names[index]
        return {"frames": [os.path.join(self.root, "bursts", name, f"im_raw_{i:02d}.png")
                           for i in range(self.burst_size)],
                "gt": os.path.join(self.root, "gt", name, "im_rgb.png"),
                "meta": os.path.join(self.root, "gt", name, "meta_info.pkl")}

    def __getitem__(self, index: int) -> Dict:
        self._check_index(index)
        p = self.paths(index)
        frames = [_frame(f, SYNTHETIC_VAL_SCALE, 4) for f in p["frames"]]
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) != 1:
            raise BenchmarkDataError(f"{os.path.dirname(p['frames'][0])}: frames of different sizes {sorted(shapes)}")
        burst = torch.stack(frames)
        gt = _frame(p["gt"], SYNTHETIC_VAL_SCALE, 3)
        h, w = burst.shape[-2:]
        if gt.shape[-2] % h or gt.shape[-1] % w or gt.shape[-2] // h != gt.shape[-1] // w:
            raise BenchmarkDataError(f"{p['gt']}: ground truth {tuple(gt.shape[1:])} is not a multiple of the "
                                     f"frames' {h}x{w}")
        raw = load_meta_pickle(p["meta"])
        meta = {}
        for k in ("rgb2cam", "cam2rgb"):
            m = _tensor(_require(raw, k, p["meta"]), k, p["meta"])
            if tuple(m.shape) != (3, 3):
                raise BenchmarkDataError(f"{p['meta']}: {k} has shape {tuple(m.shape)}, expected (3, 3)")
            meta[k] = m
        for k in ("rgb_gain", "red_gain", "blue_gain"):
            meta[k] = torch.tensor(_to_float(_require(raw, k, p["meta"]), k, p["meta"]), dtype=torch.float64)
        for src, dst in (("shot_noise_level", "shot_noise"), ("read_noise_level", "read_noise")):
            meta[dst] = torch.tensor(_to_float(raw.get(src, 0.0), src, p["meta"]), dtype=torch.float64)
        for k in ("smoothstep", "gamma"):
            meta[k] = torch.tensor(bool(raw.get(k, True)))
        meta["burst_name"] = self.burst_names[index]
        meta["index"] = torch.tensor(index)
        return {"burst": burst, "gt": gt, "meta": meta}

    @staticmethod
    def to_srgb(image: Tensor, meta: Dict) -> Tensor:
        """Linear RGB (``[.., 3, H, W]``) or packed RAW to sRGB with the burst's ISP parameters (for display)."""
        from .isp import process

        params = {k: torch.as_tensor(meta[k]).double() for k in ("rgb2cam", "cam2rgb", "rgb_gain", "red_gain",
                                                                 "blue_gain")}
        return process(image.double(), params).float().clamp(0, 1)


_EXIF_PREFIXES = ("Image ", "EXIF ")


def _exif(exif, tag: str, path: str):
    if not isinstance(exif, dict):
        raise BenchmarkDataError(f"{path}: exif_data is a {type(exif).__name__}, expected a dict of EXIF tags")
    for pre in _EXIF_PREFIXES:
        if pre + tag in exif:
            return exif[pre + tag]
    raise BenchmarkDataError(f"{path}: exif_data has no {tag} tag")


def _light(exif, path: str) -> Dict[str, float]:
    t = _to_float(_exif(exif, "ExposureTime", path), "ExposureTime", path)
    n = _to_float(_exif(exif, "FNumber", path), "FNumber", path)
    iso = _to_float(_exif(exif, "ISOSpeedRatings", path), "ISOSpeedRatings", path)
    if t <= 0 or n <= 0 or iso <= 0:
        raise BenchmarkDataError(f"{path}: non-positive exposure (ExposureTime {t}, FNumber {n}, ISO {iso})")
    return {"exposure": t, "f_number": n, "iso": iso}


def _three(v, what: str, path: str) -> Tensor:
    """Canon per-channel values: 4 entries (R, G, G, B) -> entries 0, 1, 3; 3 entries kept."""
    t = _tensor(v, what, path).reshape(-1)
    if t.numel() == 4:
        return t[[0, 1, 3]]
    if t.numel() == 3:
        return t
    raise BenchmarkDataError(f"{path}: {what} has {t.numel()} values, expected 3 or 4")


class BurstSR(_BurstFolders):
    """The real-world BurstSR dataset of Bhat et al.: Samsung Galaxy S8 RAW bursts, Canon DSLR ground truth.

    Args:
        root: the unpacked dataset folder holding ``train/`` and ``val/`` (module docstring).
        split: ``"train"`` or ``"val"`` (the papers' test set).
        burst_size: keep the first ``burst_size`` frames (default all 14).
        seq_ids: optional sequence ids (first 4 characters of the burst folder names) to keep.

    Items: ``burst`` ``[T, 4, 80, 80]`` (black level subtracted, / 1023), ``gt`` ``[3, 640, 640]`` (black level
    subtracted, / 16383, times ``exp_scale_factor``), float32; ``meta`` with the burst's camera data:
    ``black_level`` ``[4]``, ``cam_wb`` ``[4]``, ``daylight_wb`` ``[4]``, ``color_matrix`` ``[3, 3]``,
    ``norm_factor`` (1023), ``exposure``, ``f_number``, ``iso``, ``noise_profile`` ``[2]``; the Canon image's
    ``gt_black_level`` / ``gt_cam_wb`` / ``gt_daylight_wb`` ``[3]``, ``gt_rgb_xyz_matrix``, ``gt_norm_factor``
    (16383 / exp_scale_factor), ``gt_exposure``, ``gt_f_number``, ``gt_iso``; ``exp_scale_factor``,
    ``burst_name``, ``index``. :meth:`to_srgb` renders the ground truth or a prediction for display.
    """

    format = "burstsr"
    SPLITS = ("train", "val")

    def __init__(self, root: str, split: str = "val", burst_size: Optional[int] = None,
                 seq_ids: Optional[Sequence[str]] = None):
        self.root = os.fspath(root)
        hint = "expected the BurstSR folder with <split>/<burst>/samsung_00..13/ and canon/"
        _check_dir(self.root, "BurstSR root", hint)
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.split = split
        self.dir = os.path.join(self.root, split)
        _check_dir(self.dir, f"the {split}/ split of BurstSR", hint)
        self.burst_size = _check_burst_size(burst_size, BURSTSR_BURST_SIZE)
        names = sorted(n for n in os.listdir(self.dir) if os.path.isdir(os.path.join(self.dir, n)))
        if seq_ids is not None:
            keep = {str(s) for s in seq_ids}
            names = [n for n in names if n[:4] in keep]
        self._set_names(names, self.dir, hint, " for those seq_ids" if seq_ids else "")

    def paths(self, index: int) -> Dict[str, object]:
        d = os.path.join(self.dir, self.burst_names[index])
        return {"frames": [os.path.join(d, f"samsung_{i:02d}") for i in range(self.burst_size)],
                "gt": os.path.join(d, "canon")}

    def __getitem__(self, index: int) -> Dict:
        self._check_index(index)
        p = self.paths(index)
        for d in p["frames"] + [p["gt"]]:
            if not os.path.isdir(d):
                raise BenchmarkDataError(f"{d}: missing (a burst needs samsung_00..{self.burst_size - 1:02d}/ and "
                                         f"canon/)")
        m0_path = os.path.join(p["frames"][0], "meta_info.pkl")
        m0 = load_meta_pickle(m0_path)
        black = _tensor(_require(m0, "black_level", m0_path), "black_level", m0_path).reshape(-1)
        if black.numel() != 4:
            raise BenchmarkDataError(f"{m0_path}: black_level has {black.numel()} values, expected 4")
        frames = []
        for i, d in enumerate(p["frames"]):
            if i:  # each frame's own black level (they are equal in the release; read them all the same)
                mp = os.path.join(d, "meta_info.pkl")
                bl = _tensor(_require(load_meta_pickle(mp), "black_level", mp), "black_level", mp).reshape(-1)
                if bl.numel() != 4:
                    raise BenchmarkDataError(f"{mp}: black_level has {bl.numel()} values, expected 4")
            else:
                bl = black
            frames.append(_frame(os.path.join(d, "im_raw.png"), BURSTSR_RAW_SCALE, 4, offset=bl))
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) != 1:
            raise BenchmarkDataError(f"{os.path.dirname(p['frames'][0])}: frames of different sizes {sorted(shapes)}")
        burst = torch.stack(frames)
        g_path = os.path.join(p["gt"], "meta_info.pkl")
        mg = load_meta_pickle(g_path)
        light_s = _light(_require(m0, "exif_data", m0_path), m0_path)
        light_c = _light(_require(mg, "exif_data", g_path), g_path)
        exp_scale = ((light_s["exposure"] * light_s["iso"] / light_s["f_number"] ** 2)
                     / (light_c["exposure"] * light_c["iso"] / light_c["f_number"] ** 2))
        gt_black = _three(_require(mg, "black_level", g_path), "black_level", g_path)
        gt = _frame(os.path.join(p["gt"], "im_raw.png"), BURSTSR_GT_SCALE, 3, offset=gt_black) * exp_scale
        meta = {"black_level": black,
                "cam_wb": _tensor(_require(m0, "cam_wb", m0_path), "cam_wb", m0_path, numel=4).reshape(-1),
                "daylight_wb": _tensor(m0.get("daylight_wb", [1, 1, 1, 1]), "daylight_wb", m0_path).reshape(-1),
                "color_matrix": _tensor(m0.get("color_matrix", np.eye(3)), "color_matrix", m0_path),
                "norm_factor": torch.tensor(BURSTSR_RAW_SCALE, dtype=torch.float64),
                "black_level_subtracted": torch.tensor(True), "white_balance_applied": torch.tensor(False)}
        meta.update({k: torch.tensor(v, dtype=torch.float64) for k, v in light_s.items()})
        exif = m0["exif_data"]
        noise = None
        for key in ("Image Tag 0xC761", "Image NoiseProfile"):
            if isinstance(exif, dict) and key in exif:
                vals = exif[key].__dict__.get("values") if isinstance(exif[key], ExifObject) else exif[key]
                try:
                    flat = [_to_float(v, key, m0_path) for v in vals]
                    noise = torch.tensor(flat, dtype=torch.float64).reshape(3, 2)[0]
                except (BenchmarkDataError, RuntimeError, TypeError):
                    noise = None
                break
        meta["noise_profile"] = noise if noise is not None else torch.full((2,), float("nan"), dtype=torch.float64)
        meta.update({"gt_black_level": gt_black,
                     "gt_cam_wb": _three(_require(mg, "cam_wb", g_path), "cam_wb", g_path),
                     "gt_daylight_wb": _three(mg.get("daylight_wb", [1, 1, 1, 1]), "daylight_wb", g_path),
                     "gt_rgb_xyz_matrix": _tensor(mg.get("rgb_xyz_matrix", np.zeros((4, 3))), "rgb_xyz_matrix",
                                                  g_path),
                     "gt_norm_factor": torch.tensor(BURSTSR_GT_SCALE / exp_scale, dtype=torch.float64)})
        meta.update({f"gt_{k}": torch.tensor(v, dtype=torch.float64) for k, v in light_c.items()})
        meta["exp_scale_factor"] = torch.tensor(exp_scale, dtype=torch.float64)
        meta["burst_name"] = self.burst_names[index]
        meta["index"] = torch.tensor(index)
        return {"burst": burst, "gt": gt, "meta": meta}

    @staticmethod
    def to_srgb(image: Tensor, meta: Dict) -> Tensor:
        """See :func:`burstsr_to_srgb`."""
        return burstsr_to_srgb(image, meta)


def burstsr_to_srgb(image: Tensor, meta: Dict, norm: Optional[float] = None) -> Tensor:
    """A BurstSR ground truth or prediction ``[.., 3, H, W]`` (the loader's linear range) as sRGB for display.

    The Canon image's forward pipeline of the toolkit: back to sensor units (``* gt_norm_factor``), white balance
    ``cam_wb / cam_wb[G]``, brightness ``/ (5 * mean)`` (or ``/ norm``), clamp, gamma ``1/2.2``, smoothstep.
    """
    x = image.double()
    shape = (-1, 1, 1, 1) if x.dim() == 4 else (1, 1, 1)
    nf = torch.as_tensor(meta["gt_norm_factor"], dtype=torch.float64).reshape(shape)
    wb = torch.as_tensor(meta["gt_cam_wb"], dtype=torch.float64).reshape(shape[:-3] + (3, 1, 1))
    x = x * nf * (wb / wb[..., 1:2, :, :])
    scale = x.mean(dim=(-3, -2, -1), keepdim=True) * 5.0 if norm is None else torch.tensor(float(norm))
    x = (x / scale.clamp_min(1e-12)).clamp(0.0, 1.0) ** (1.0 / 2.2)
    return (3 * x ** 2 - 2 * x ** 3).float()


def detect_format(path: str) -> Optional[str]:
    """``"synthetic-val"`` or ``"burstsr"`` from a dataset folder's layout, or None when it is neither."""
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "bursts")) and os.path.isdir(os.path.join(path, "gt")):
        return "synthetic-val"
    for split in BurstSR.SPLITS:
        d = os.path.join(path, split)
        if os.path.isdir(d):
            for n in sorted(os.listdir(d))[:3]:
                if os.path.isdir(os.path.join(d, n, "canon")) or os.path.isdir(os.path.join(d, n, "samsung_00")):
                    return "burstsr"
    return None
