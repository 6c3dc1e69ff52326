"""The published benchmark formats (burstkern.data.benchmarks): tiny fixture datasets written here in exactly the
on-disk layout of the SyntheticBurst validation set and of BurstSR (OpenCV channel order, 16-bit PNG, 2**14 / 10-bit
/ 14-bit scales, pickled meta with torch tensors and exifread objects), then decoded and checked: bit depth, packing
order, normalisation, metadata, and one clear error naming the path for a wrong root, a missing frame, a corrupt PNG
or pickle. The fixture writer below is independent of the module's PNG code. CPU only, no network, < 5 s."""

from __future__ import annotations

import fractions
import os
import pickle
import struct
import sys
import types
import zlib

import numpy as np
import pytest
import torch

from burstkern.data import benchmarks as bm
from burstkern.data.benchmarks import BenchmarkDataError, BurstSR, SyntheticBurstVal


# ----------------------------------------------------------------------------------------------
# fixture writers (independent of burstkern's PNG code)
# ----------------------------------------------------------------------------------------------
def _png16_file_order(path, a):
    """A 16-bit PNG whose file channels are a[..., 0], a[..., 1], ... (no filter)."""
    h, w, c = a.shape
    ct = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def cv2_imwrite16(path, chw):
    """What ``cv2.imwrite(path, chw.transpose(1, 2, 0).astype(uint16))`` writes: array channel 0 -> file blue."""
    a = np.asarray(chw).transpose(1, 2, 0).astype(np.uint16)
    order = [2, 1, 0] + list(range(3, a.shape[-1]))
    _png16_file_order(path, a[..., order])


def synthetic_val_fixture(root, n_bursts=2, frames=14, h=2, w=2, scale=8):
    """Bursts with frame f, channel c, pixel (y, x) = 1000*f + 100*c + 10*y + x (+ 7*burst) in 2**14 units."""
    os.makedirs(os.path.join(root, "bursts"))
    os.makedirs(os.path.join(root, "gt"))
    truth = []
    for b in range(n_bursts):
        bd, gd = os.path.join(root, "bursts", f"{b:04d}"), os.path.join(root, "gt", f"{b:04d}")
        os.makedirs(bd)
        os.makedirs(gd)
        f_i, c_i, y_i, x_i = np.meshgrid(np.arange(frames), np.arange(4), np.arange(h), np.arange(w), indexing="ij")
        burst = 1000 * f_i + 100 * c_i + 10 * y_i + x_i + 7 * b
        for f in range(frames):
            cv2_imwrite16(os.path.join(bd, f"im_raw_{f:02d}.png"), burst[f])
        gt = (np.arange(3 * h * scale * w * scale).reshape(3, h * scale, w * scale) * 5 + b) % (2 ** 14 + 1)
        cv2_imwrite16(os.path.join(gd, "im_rgb.png"), gt)
        rgb2cam = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.05, 0.15, 0.8]]) + 0.01 * b
        meta = {"rgb2cam": rgb2cam, "cam2rgb": rgb2cam.inverse(), "rgb_gain": 1.25 + b, "red_gain": 2.1,
                "blue_gain": 1.7, "smoothstep": True, "gamma": True, "shot_noise_level": 0.003,
                "read_noise_level": 1e-5, "frame_num": b}
        with open(os.path.join(gd, "meta_info.pkl"), "wb") as f:
            pickle.dump(meta, f, -1)   # as the toolkit's generate_synthetic_dataset does
        truth.append({"burst": burst, "gt": gt, "meta": meta})
    return truth


@pytest.fixture
def fake_exifread(monkeypatch):
    """Stand-ins for exifread's IfdTag and Ratio under their real module names, so pickles name them as the
    dataset's do; removed again before the dataset is read (the reader must not need exifread)."""
    pkg = types.ModuleType("exifread")
    classes = types.ModuleType("exifread.classes")
    utils = types.ModuleType("exifread.utils")

    class Ratio(fractions.Fraction):
        __module__ = "exifread.utils"

    class IfdTag:
        __module__ = "exifread.classes"

        def __init__(self, printable, tag, field_type, values, field_offset, field_length):
            self.printable, self.tag, self.field_type, self.values = printable, tag, field_type, values
            self.field_offset, self.field_length = field_offset, field_length

    Ratio.__qualname__, IfdTag.__qualname__ = "Ratio", "IfdTag"
    utils.Ratio, classes.IfdTag = Ratio, IfdTag
    pkg.classes, pkg.utils = classes, utils
    for name, mod in (("exifread", pkg), ("exifread.classes", classes), ("exifread.utils", utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(Ratio=Ratio, IfdTag=IfdTag, monkeypatch=monkeypatch)


def burstsr_fixture(root, ex, split="val", names=("0003_0001", "0007_0002"), frames=14, h=2, w=2, scale=8):
    truth = {}
    for bi, name in enumerate(names):
        d = os.path.join(root, split, name)
        raw = np.zeros((frames, 4, h, w), np.int64)
        black = [64, 65, 66, 67]
        for f in range(frames):
            fd = os.path.join(d, f"samsung_{f:02d}")
            os.makedirs(fd)
            raw[f] = np.arange(4 * h * w).reshape(4, h, w) * 10 + 70 * f + 100 + bi
            cv2_imwrite16(os.path.join(fd, "im_raw.png"), raw[f])
            exif = {"Image ExposureTime": ex.IfdTag("1/50", 33434, 5, [ex.Ratio(1, 50)], 0, 1),
                    "Image FNumber": ex.IfdTag("17/10", 33437, 5, [ex.Ratio(17, 10)], 0, 1),
                    "Image ISOSpeedRatings": ex.IfdTag("100", 34855, 3, [100], 0, 1),
                    "Image Tag 0xC761": ex.IfdTag("[...]", 0xC761, 12,
                                                  [(2e-4,), (1e-6,), (3e-4,), (2e-6,), (4e-4,), (3e-6,)], 0, 6)}
            meta = {"black_level": black, "cam_wb": [1.9, 1.0, 1.0, 1.6], "daylight_wb": [2.0, 1.0, 1.0, 1.5],
                    "color_matrix": np.array([[1.5, -0.3, -0.2], [-0.2, 1.4, -0.2], [0.0, -0.5, 1.5]]),
                    "exif_data": exif, "im_preview": np.zeros((2 * h, 2 * w, 3), np.uint8)}
            with open(os.path.join(fd, "meta_info.pkl"), "wb") as fh:
                pickle.dump(meta, fh, -1)
        cd = os.path.join(d, "canon")
        os.makedirs(cd)
        gt = np.arange(3 * h * scale * w * scale).reshape(3, h * scale, w * scale) * 3 + 2048 + bi
        cv2_imwrite16(os.path.join(cd, "im_raw.png"), gt)
        exif_c = {"EXIF ExposureTime": ex.IfdTag("1/200", 33434, 5, [ex.Ratio(1, 200)], 0, 1),
                  "EXIF FNumber": ex.IfdTag("4", 33437, 5, [ex.Ratio(4, 1)], 0, 1),
                  "EXIF ISOSpeedRatings": ex.IfdTag("200", 34855, 3, [200], 0, 1)}
        meta_c = {"black_level": [2047, 2048, 2049, 2050], "cam_wb": [2048.0, 1024.0, 1024.0, 1600.0],
                  "daylight_wb": [2.1, 1.0, 1.0, 1.4], "rgb_xyz_matrix": np.arange(12.0).reshape(4, 3) / 10,
                  "exif_data": exif_c}
        with open(os.path.join(cd, "meta_info.pkl"), "wb") as fh:
            pickle.dump(meta_c, fh, -1)
        truth[name] = {"raw": raw, "black": black, "gt": gt, "gt_black": [2047, 2048, 2050]}
    ex.monkeypatch.delitem(sys.modules, "exifread.utils")
    ex.monkeypatch.delitem(sys.modules, "exifread.classes")
    ex.monkeypatch.delitem(sys.modules, "exifread")
    return truth


# ----------------------------------------------------------------------------------------------
# PNG codec
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_every_filter_round_trips(tmp_path, dtype, channels):
    rng = np.random.default_rng(channels)
    hi = 255 if dtype == np.uint8 else 65535
    a = (rng.random((9, 7, channels)) * hi).astype(dtype)
    p = str(tmp_path / "a.png")
    bm.write_png(p, a, filters=(0, 1, 2, 3, 4))
    b = bm.read_png(p)
    assert b.dtype == dtype and np.array_equal(b, a)


def test_png_decodes_pillow_files_with_its_own_filters(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    a = (rng.random((23, 19, 3)) * 255).astype(np.uint8)
    a[:8] = 5                                        # smooth rows make the encoder pick several filters
    Image.fromarray(a).save(tmp_path / "p8.png")
    g = (rng.random((11, 13)) * 65535).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "p16.png")
    assert np.array_equal(bm.read_png(str(tmp_path / "p8.png")), a)
    assert np.array_equal(bm.read_png(str(tmp_path / "p16.png"))[..., 0], g)


def test_png_bgr_is_opencv_order(tmp_path):
    a = np.arange(2 * 2 * 4, dtype=np.uint16).reshape(2, 2, 4) * 1000
    p = str(tmp_path / "x.png")
    _png16_file_order(p, a)                          # file channels R G B A = a[..., 0..3]
    assert np.array_equal(bm.read_png(p), a)
    assert np.array_equal(bm.read_png_bgr(p), a[..., [2, 1, 0, 3]])
    bm.write_png_bgr(p, a)
    assert np.array_equal(bm.read_png_bgr(p), a) and np.array_equal(bm.read_png(p), a[..., [2, 1, 0, 3]])


# ----------------------------------------------------------------------------------------------
# SyntheticBurst validation
# ----------------------------------------------------------------------------------------------
def test_synthetic_val_decoding(tmp_path):
    truth = synthetic_val_fixture(str(tmp_path))
    ds = SyntheticBurstVal(str(tmp_path))
    assert len(ds) == 2 and ds.burst_size == 14
    item = ds[1]
    burst, gt, meta = item["burst"], item["gt"], item["meta"]
    assert burst.shape == (14, 4, 2, 2) and gt.shape == (3, 16, 16)
    assert burst.dtype == torch.float32 and gt.dtype == torch.float32
    # bit depth + normalisation: v / 2**14; packing: channel c of the array -> channel c of the item
    assert torch.equal(burst, torch.from_numpy(truth[1]["burst"]).float() / 2 ** 14)
    assert torch.equal(gt, torch.from_numpy(truth[1]["gt"]).float() / 2 ** 14)
    assert burst[3, 2, 1, 0].item() * 2 ** 14 == 1000 * 3 + 100 * 2 + 10 * 1 + 0 + 7   # frame 3, Gb, (1, 0)
    assert float(gt.max()) <= 1.0 + 1e-6
    torch.testing.assert_close(meta["rgb2cam"], truth[1]["meta"]["rgb2cam"].double())
    torch.testing.assert_close(meta["cam2rgb"], truth[1]["meta"]["cam2rgb"].double())
    assert meta["rgb_gain"].item() == 2.25 and meta["red_gain"].item() == 2.1 and meta["blue_gain"].item() == 1.7
    assert meta["shot_noise"].item() == 0.003 and meta["read_noise"].item() == 1e-5
    assert bool(meta["smoothstep"]) and bool(meta["gamma"]) and meta["burst_name"] == "0001"
    srgb = ds.to_srgb(gt, meta)
    assert srgb.shape == gt.shape and 0 <= float(srgb.min()) and float(srgb.max()) <= 1


def test_synthetic_val_burst_size_and_collate(tmp_path):
    synthetic_val_fixture(str(tmp_path))
    os.remove(tmp_path / "bursts" / "0000" / "im_raw_13.png")     # not read when burst_size < 14
    ds = SyntheticBurstVal(str(tmp_path), burst_size=8)
    first = ds[0]["burst"]
    assert first.shape[0] == 8
    assert torch.equal(first, SyntheticBurstVal(str(tmp_path), burst_size=9)[0]["burst"][:8])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["burst"].shape == (2, 8, 4, 2, 2) and batch["meta"]["rgb2cam"].shape == (2, 3, 3)
    assert batch["meta"]["burst_name"] == ["0000", "0001"]
    with pytest.raises(ValueError, match="burst_size"):
        SyntheticBurstVal(str(tmp_path), burst_size=15)


def test_synthetic_val_errors_name_the_path(tmp_path):
    with pytest.raises(BenchmarkDataError, match=str(tmp_path / "nope")):
        SyntheticBurstVal(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match=r"empty.*bursts.*SyntheticBurst"):
        SyntheticBurstVal(str(tmp_path / "empty"))
    root = tmp_path / "ds"
    synthetic_val_fixture(str(root))
    ds = SyntheticBurstVal(str(root))
    missing = root / "bursts" / "0000" / "im_raw_05.png"
    os.remove(missing)
    with pytest.raises(BenchmarkDataError, match=f"{missing}: no such file"):
        ds[0]
    gt = root / "gt" / "0001" / "im_rgb.png"
    blob = gt.read_bytes()
    gt.write_bytes(blob[:len(blob) // 2])                          # truncated
    with pytest.raises(BenchmarkDataError, match=f"{gt}: corrupt"):
        ds[1]
    bad = bytearray(blob)
    bad[40] ^= 0xFF                                                # flipped bit inside a chunk: CRC mismatch
    gt.write_bytes(bytes(bad))
    with pytest.raises(BenchmarkDataError, match=f"{gt}: corrupt.*CRC"):
        ds[1]
    gt.write_bytes(b"not a png at all")
    with pytest.raises(BenchmarkDataError, match=f"{gt}: corrupt.*signature"):
        ds[1]


def test_meta_pickle_is_allow_listed(tmp_path):
    root = tmp_path / "ds"
    synthetic_val_fixture(str(root), n_bursts=1)
    meta = root / "gt" / "0000" / "meta_info.pkl"
    meta.write_bytes(b"\x80\x04garbage")
    with pytest.raises(BenchmarkDataError, match=f"{meta}: corrupt"):
        SyntheticBurstVal(str(root))[0]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    meta.write_bytes(pickle.dumps({"rgb2cam": Evil()}))
    with pytest.raises(BenchmarkDataError, match=f"{meta}: .*refusing to load (posix|os|nt).system"):
        SyntheticBurstVal(str(root))[0]
    assert not (tmp_path / "pwned").exists()
    meta.write_bytes(pickle.dumps({"cam2rgb": torch.eye(3)}))
    with pytest.raises(BenchmarkDataError, match=f"{meta}: meta_info has no 'rgb2cam'"):
        SyntheticBurstVal(str(root))[0]


# ----------------------------------------------------------------------------------------------
# BurstSR
# ----------------------------------------------------------------------------------------------
def test_burstsr_decoding(tmp_path, fake_exifread):
    truth = burstsr_fixture(str(tmp_path), fake_exifread)
    assert "exifread" not in sys.modules
    ds = BurstSR(str(tmp_path), "val")
    assert ds.burst_names == ["0003_0001", "0007_0002"]
    item = ds[1]
    t = truth["0007_0002"]
    burst, gt, meta = item["burst"], item["gt"], item["meta"]
    assert burst.shape == (14, 4, 2, 2) and gt.shape == (3, 16, 16)
    black = torch.tensor(t["black"], dtype=torch.float32).view(1, 4, 1, 1)
    assert torch.allclose(burst, (torch.from_numpy(t["raw"]).float() - black) / 1023.0)
    exp_scale = ((1 / 50) * 100 / 1.7 ** 2) / ((1 / 200) * 200 / 4.0 ** 2)
    gblack = torch.tensor(t["gt_black"], dtype=torch.float32).view(3, 1, 1)
    assert torch.allclose(gt, (torch.from_numpy(t["gt"]).float() - gblack) / 16383.0 * exp_scale, rtol=1e-6)
    assert meta["exp_scale_factor"].item() == pytest.approx(exp_scale)
    assert meta["exposure"].item() == pytest.approx(0.02) and meta["iso"].item() == 100
    assert meta["f_number"].item() == pytest.approx(1.7) and meta["gt_f_number"].item() == 4
    assert meta["gt_exposure"].item() == pytest.approx(0.005) and meta["gt_iso"].item() == 200
    assert meta["black_level"].tolist() == t["black"] and meta["gt_black_level"].tolist() == t["gt_black"]
    assert meta["cam_wb"].tolist() == [1.9, 1.0, 1.0, 1.6] and meta["gt_cam_wb"].tolist() == [2048, 1024, 1600]
    assert meta["color_matrix"].shape == (3, 3) and meta["gt_rgb_xyz_matrix"].shape == (4, 3)
    assert meta["noise_profile"].tolist() == pytest.approx([2e-4, 1e-6])
    assert meta["norm_factor"].item() == 1023 and meta["gt_norm_factor"].item() == pytest.approx(16383 / exp_scale)
    assert meta["burst_name"] == "0007_0002"
    srgb = ds.to_srgb(gt, meta)
    assert srgb.shape == gt.shape and 0 <= float(srgb.min()) and float(srgb.max()) <= 1
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert bm.burstsr_to_srgb(batch["gt"], batch["meta"]).shape == (2, 3, 16, 16)
    assert BurstSR(str(tmp_path), "val", burst_size=3)[0]["burst"].shape[0] == 3
    assert BurstSR(str(tmp_path), "val", seq_ids=["0003"]).burst_names == ["0003_0001"]
    assert bm.detect_format(str(tmp_path)) == "burstsr"


def test_burstsr_errors_name_the_path(tmp_path, fake_exifread):
    burstsr_fixture(str(tmp_path), fake_exifread)
    with pytest.raises(BenchmarkDataError, match=str(tmp_path / "train")):
        BurstSR(str(tmp_path), "train")
    with pytest.raises(ValueError, match="split"):
        BurstSR(str(tmp_path), "test")
    ds = BurstSR(str(tmp_path), "val")
    frame = tmp_path / "val" / "0003_0001" / "samsung_09"
    os.rename(frame, tmp_path / "moved")
    with pytest.raises(BenchmarkDataError, match=f"{frame}: missing"):
        ds[0]
    assert BurstSR(str(tmp_path), "val", burst_size=9)[0]["burst"].shape[0] == 9
    os.remove(tmp_path / "val" / "0007_0002" / "samsung_02" / "im_raw.png")
    with pytest.raises(BenchmarkDataError, match="samsung_02/im_raw.png: no such file"):
        ds[1]
    meta = tmp_path / "val" / "0007_0002" / "canon" / "meta_info.pkl"
    meta.write_bytes(meta.read_bytes()[:50])
    with pytest.raises(BenchmarkDataError, match=f"{meta}: corrupt"):
        BurstSR(str(tmp_path), "val", burst_size=2)[1]


def test_png_matches_opencv_when_installed(tmp_path, monkeypatch):
    """Where OpenCV is installed: files it writes decode identically without it, in its channel order."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    frame = (rng.random((24, 24, 4)) * 2 ** 14).astype(np.uint16)
    frame[:8] = 99
    p = str(tmp_path / "cv.png")
    cv2.imwrite(p, frame)
    assert np.array_equal(bm.read_png_bgr(p), frame)                      # through OpenCV
    monkeypatch.setitem(sys.modules, "cv2", None)                          # the built-in decoder
    assert np.array_equal(bm.read_png_bgr(p), frame)
    assert np.array_equal(bm.read_png(p)[..., 0], frame[..., 2])           # OpenCV stores channel 2 as red
