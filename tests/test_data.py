"""Synthetic RAW bursts (burstkern.data): ISP round trip, geometry, alignment of frame 0, noise model,
reproducibility, shapes/dtypes, the bundled-image dataset and argument errors. CPU only, no network."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from burstkern.data import burst as B
from burstkern.data import isp
from burstkern.data.dataset import (DEADLEAVES_SEEDS, EVAL_IMAGE, HELDOUT_IMAGES, VAL_IMAGES,
                                    SyntheticBurstDataset, bundled_image_names, load_bundled_images)
from tests.utils import rel_err, requires_cuda


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------------------------
# ISP
# ----------------------------------------------------------------------------------------------
def test_smoothstep_inverse_exact():
    x = torch.linspace(0, 1, 10001, dtype=torch.float64)
    assert rel_err(isp.smoothstep(isp.invert_smoothstep(x)), x) < 1e-13
    assert rel_err(isp.invert_smoothstep(isp.smoothstep(x)), x) < 1e-12
    y = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(isp.smoothstep(y), 3 * y ** 2 - 2 * y ** 3, rtol=0, atol=1e-15)
    assert torch.allclose(isp.gamma_expand(y), y.clamp_min(1e-8) ** 2.2, rtol=1e-15, atol=0)
    assert isp.gamma_compress(torch.zeros(3)).gt(0).all()  # floor keeps it positive


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_isp_round_trip(dtype, tol):
    """process(unprocess(x)) == x away from clipping: batched, odd sizes, per-image random parameters."""
    torch.manual_seed(0)
    x = (0.05 + 0.65 * torch.rand(3, 3, 37, 53)).to(dtype)
    params = isp.random_isp_params(3, gen(1))
    lin = isp.unprocess(x, params)
    assert lin.dtype == dtype and lin.shape == x.shape
    # really away from clipping: nothing hit the [0, 1] clamp or the highlight protection
    assert lin.min() > 0 and lin.max() < 0.9
    assert rel_err(isp.process(lin, params), x) < tol
    # unbatched with one parameter set gives the same as the batched row
    one = {k: v[1] for k, v in params.items()}
    assert rel_err(isp.process(isp.unprocess(x[1], one), one), x[1]) < tol
    assert rel_err(isp.unprocess(x[1], one), lin[1]) < tol
    # the parameters actually do something: a different draw gives a different linear image
    other = isp.random_isp_params(3, gen(2))
    assert rel_err(isp.unprocess(x, other), lin) > 1e-2


def test_isp_highlights_and_gray():
    params = isp.random_isp_params(2, gen(3))
    # white stays white (rows of the CCM sum to 1, highlight-safe gains leave saturated pixels alone)
    assert rel_err(isp.unprocess(torch.ones(2, 3, 5, 7, dtype=torch.float64), params),
                   torch.ones(2, 3, 5, 7)) < 1e-12
    rgb2cam = params["rgb2cam"]
    assert torch.allclose(rgb2cam.sum(-1), torch.ones(2, 3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rgb2cam @ params["cam2rgb"], torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-10)
    # dim pixels are divided by the full gains: (1/rgb) * (1/red, 1, 1/blue)
    x = torch.full((2, 3, 4, 4), 0.2, dtype=torch.float64)
    inv = isp.safe_invert_gains(x, params["rgb_gain"], params["red_gain"], params["blue_gain"])
    want = 0.2 / (params["rgb_gain"][:, None] * torch.stack(
        (params["red_gain"], torch.ones(2, dtype=torch.float64), params["blue_gain"]), -1))
    assert torch.allclose(inv[:, :, 0, 0], want, rtol=1e-12, atol=0)


def test_random_gains_distribution():
    rgb, red, blue = isp.random_gains(20000, gen(4))
    assert red.min() >= 1.9 and red.max() <= 2.4 and blue.min() >= 1.5 and blue.max() <= 1.9
    assert abs(red.mean().item() - 2.15) < 0.01 and abs(blue.mean().item() - 1.7) < 0.01
    assert abs((1 / rgb).mean().item() - 0.8) < 0.005 and abs((1 / rgb).std().item() - 0.1) < 0.005


def test_ccm_is_convex_mix_of_cameras():
    """Each rgb2cam is a row-normalised (sum_k w_k XYZ2CAM_k) @ RGB2XYZ with w >= 0: least squares finds w."""
    rgb2cam = isp.random_ccm(5, gen(5))
    basis = torch.tensor(isp.XYZ2CAMS, dtype=torch.float64) @ torch.tensor(isp.RGB2XYZ, dtype=torch.float64)
    for m in rgb2cam:
        # m = diag(1 / rowsum(M)) M with M = sum_k w_k basis_k; solve for v = (w, and the 3 row scales s)
        # via  s_i * m_i = sum_k w_k basis_k,i  (linear, homogeneous; fix sum w = 1)
        a = torch.zeros(9 + 1, 4 + 3, dtype=torch.float64)
        for i in range(3):
            for j in range(3):
                a[3 * i + j, :4] = basis[:, i, j]
                a[3 * i + j, 4 + i] = -m[i, j]
        a[9, :4] = 1.0
        rhs = torch.zeros(10, dtype=torch.float64)
        rhs[9] = 1.0
        v = torch.linalg.lstsq(a, rhs[:, None]).solution[:, 0]
        assert (a @ v - rhs).abs().max() < 1e-9
        assert (v[:4] >= -1e-9).all(), f"weights {v[:4]} not convex"


def test_packed_forward_isp_is_demosaic_free():
    """Packed RGGB through the forward ISP == the RGB path on images constant over each 2x2 Bayer cell."""
    torch.manual_seed(1)
    lin = 0.05 + 0.3 * torch.rand(2, 3, 6, 10, dtype=torch.float64)
    lin = lin.repeat_interleave(2, -2).repeat_interleave(2, -1)
    params = isp.random_isp_params(2, gen(6))
    raw = B.mosaic(lin)
    assert raw.shape == (2, 4, 6, 10)
    assert rel_err(isp.process(raw, params), isp.process(lin, params)[..., ::2, ::2]) < 1e-12
    # per-burst parameters apply to every frame of [B, T, 4, h, w]
    frames = torch.stack((raw, 0.5 * raw), 1)
    out = isp.process(frames, params)
    assert out.shape == (2, 2, 3, 6, 10)
    assert rel_err(out[:, 1], isp.process(0.5 * raw, params)) < 1e-12


def test_mosaic_layout():
    x = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(3, 4, 6)
    m = B.mosaic(x)
    assert m.shape == (4, 2, 3)
    assert torch.equal(m[0], x[0, 0::2, 0::2]) and torch.equal(m[1], x[1, 0::2, 1::2])
    assert torch.equal(m[2], x[1, 1::2, 0::2]) and torch.equal(m[3], x[2, 1::2, 1::2])


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def test_warp_translation_direction():
    """Translation t moves content by +t: warped[y, x] = image[y - ty, x - tx] (zeros where outside)."""
    torch.manual_seed(2)
    img = torch.rand(1, 3, 21, 25, dtype=torch.float64)
    out = B.warp_frames(img, torch.tensor([[[3.0, -2.0]]], dtype=torch.float64), torch.zeros(1, 1))[:, 0]
    assert torch.allclose(out[..., 0:19, 3:25], img[..., 2:21, 0:22], atol=1e-12)
    assert out[..., :, 0:3].abs().max() == 0 and out[..., 19:, :].abs().max() == 0


def test_warp_rotation_counter_clockwise():
    """Rotation by +90 deg about the pixel-grid centre == torch.rot90 (counter-clockwise as displayed)."""
    torch.manual_seed(3)
    img = torch.rand(1, 3, 15, 15, dtype=torch.float64)
    out = B.warp_frames(img, torch.zeros(1, 1, 2, dtype=torch.float64), torch.full((1, 1), 90.0))[:, 0]
    assert torch.allclose(out, torch.rot90(img, 1, dims=(-2, -1)), atol=1e-12)


def _expected_frame0(gt: torch.Tensor, d: int = 4) -> torch.Tensor:
    """Frame 0 computed directly from the ground truth: LR pixel i = separable [1, 2, 1]/4 average around gt
    pixel d*i, then RGGB mosaic; LR row/col 0 (whose window leaves the gt) are NaN."""
    w = torch.tensor([1.0, 2.0, 1.0], dtype=gt.dtype) / 4
    k = (w[:, None] * w[None, :]).expand(3, 1, 3, 3)
    filt = F.conv2d(gt[None], k, groups=3)[0]  # filt[:, r, c] is centred on gt[:, r + 1, c + 1]
    h, wd = gt.shape[-2] // d, gt.shape[-1] // d
    lr = torch.full((3, h, wd), float("nan"), dtype=gt.dtype)
    lr[:, 1:, 1:] = filt[:, d - 1::d, d - 1::d][:, :h - 1, :wd - 1]
    return B.mosaic(lr)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_frame0_is_aligned(dtype, tol):
    """Frame 0 (no noise) is the ground truth downsampled on the grid d*i and mosaicked: only the fixed
    1.5-px centring shift, no random motion; every other frame moved."""
    torch.manual_seed(4)
    img = torch.rand(3, 432, 432, dtype=dtype)
    out = B.synthesize_burst(img, 8, noise=False, generator=gen(7))
    burst, gt = out["burst"], out["gt"]
    want = _expected_frame0(gt)
    mask = torch.isfinite(want)
    assert mask.float().mean() > 0.95
    assert rel_err(burst[0][mask], want[mask]) < tol
    # the test can tell a one-pixel misalignment apart
    shifted = _expected_frame0(torch.roll(gt, 1, dims=-1))
    assert rel_err(burst[0][mask], shifted[mask]) > 0.1
    for t in range(1, 8):
        assert rel_err(burst[t][mask], want[mask]) > 0.1
    m = out["meta"]
    assert torch.equal(m["translation"][0], torch.tensor([1.5, 1.5], dtype=torch.float64))
    assert m["rotation"][0] == 0
    assert m["translation"][1:].abs().max() <= 24 and m["rotation"][1:].abs().max() <= 1
    assert m["translation"][1:].abs().max() > 5 and m["rotation"][1:].abs().max() > 0.1


def test_random_shifts_distribution():
    trans, rot = B.random_shifts(500, 8, 4, 24.0, 1.0, gen(8))
    assert trans.shape == (500, 8, 2) and rot.shape == (500, 8)
    assert (trans[:, 0] == 1.5).all() and (rot[:, 0] == 0).all()
    t, r = trans[:, 1:], rot[:, 1:]
    assert t.abs().max() <= 24 and r.abs().max() <= 1
    # uniform: mean 0, variance (2a)^2 / 12
    assert abs(t.mean().item()) < 0.5 and abs(t.var().item() / (48 ** 2 / 12) - 1) < 0.05
    assert abs(r.mean().item()) < 0.03 and abs(r.var().item() / (4 / 12) - 1) < 0.05


# ----------------------------------------------------------------------------------------------
# noise
# ----------------------------------------------------------------------------------------------
def test_noise_levels_distribution():
    shot, read = B.random_noise_levels(50000, gen(9))
    assert shot.min() >= 1e-4 and shot.max() <= 0.012
    ls = shot.log()
    lo, hi = math.log(1e-4), math.log(0.012)
    assert abs(ls.mean().item() - (lo + hi) / 2) < 0.02 and abs(ls.var().item() / ((hi - lo) ** 2 / 12) - 1) < 0.03
    resid = read.log() - (2.18 * ls + 1.20)
    assert abs(resid.mean().item()) < 0.01 and abs(resid.std().item() - 0.26) < 0.005


def test_add_noise_variance():
    """Empirical variance of add_noise == shot * x + read, per intensity level (200k samples each)."""
    levels = torch.tensor([0.2, 0.35, 0.5, 0.6])
    x = levels[:, None].expand(4, 200000).contiguous()
    shot, read = 0.01, 1e-4
    y = B.add_noise(x[None], torch.tensor([shot]), torch.tensor([read]), gen(10))[0]
    var = y.double().var(dim=1)
    want = shot * levels.double() + read
    assert ((var / want - 1).abs() < 0.02).all(), (var, want)
    assert ((y.double().mean(1) - levels).abs() < 3e-3).all()


def test_burst_noise_matches_model():
    """Noisy minus noise-free burst (same seed) / sqrt(shot * clean + read) is standard normal."""
    torch.manual_seed(5)
    img = torch.rand(2, 3, 240, 240)
    for seed in (11, 12):
        noisy = B.synthesize_burst(img, 14, generator=gen(seed))
        clean = B.synthesize_burst(img, 14, noise=False, generator=gen(seed))
        shot, read = noisy["meta"]["shot_noise"], noisy["meta"]["read_noise"]
        assert (clean["meta"]["shot_noise"] == 0).all()
        for b in range(2):
            c, n = clean["burst"][b].double(), noisy["burst"][b].double()
            std = (shot[b] * c + read[b]).sqrt()
            keep = (c - 5 * std > 0) & (c + 5 * std < 1)  # away from the [0, 1] clamp
            assert keep.sum() > 20000
            z = ((n - c) / std)[keep]
            assert abs(z.var().item() - 1) < 0.05 and abs(z.mean().item()) < 0.02


# ----------------------------------------------------------------------------------------------
# reproducibility, shapes, dtypes
# ----------------------------------------------------------------------------------------------
def test_seed_reproducible():
    torch.manual_seed(6)
    img = torch.rand(3, 432, 432)
    a = B.synthesize_burst(img, 8, generator=gen(13))
    b = B.synthesize_burst(img, 8, generator=gen(13))
    c = B.synthesize_burst(img, 8, generator=gen(14))
    assert torch.equal(a["burst"], b["burst"]) and torch.equal(a["gt"], b["gt"])
    assert all(torch.equal(a["meta"][k], b["meta"][k]) for k in a["meta"])
    assert not torch.equal(a["burst"], c["burst"]) and rel_err(c["burst"], a["burst"]) > 0.05
    assert not torch.equal(a["meta"]["rgb2cam"], c["meta"]["rgb2cam"])


@pytest.mark.parametrize("burst_size", [8, 14])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(burst_size, dtype):
    img = torch.rand(3, 432, 432, dtype=dtype)
    out = B.synthesize_burst(img, burst_size, generator=gen(15))
    assert out["burst"].shape == (burst_size, 4, 48, 48) and out["burst"].dtype == dtype
    assert out["gt"].shape == (3, 384, 384) and out["gt"].dtype == dtype
    assert out["burst"].is_contiguous() and out["gt"].is_contiguous()
    assert out["burst"].min() >= 0 and out["burst"].max() <= 1 and torch.isfinite(out["burst"]).all()
    assert out["gt"].min() >= 0 and out["gt"].max() <= 1
    m = out["meta"]
    assert m["rgb2cam"].shape == (3, 3) and m["cam2rgb"].shape == (3, 3)
    for k in ("rgb_gain", "red_gain", "blue_gain", "shot_noise", "read_noise"):
        assert m[k].shape == ()
    assert m["translation"].shape == (burst_size, 2) and m["rotation"].shape == (burst_size,)


def test_batched_equals_per_image_pipeline():
    """A batch [B, 3, H, W] gives per-image outputs consistent with the per-image meta (ISP and geometry)."""
    torch.manual_seed(7)
    img = torch.rand(2, 3, 112, 128, dtype=torch.float64)
    out = B.synthesize_burst(img, 3, downsample_factor=2, border=8, noise=False, generator=gen(16))
    assert out["burst"].shape == (2, 3, 4, 24, 28) and out["gt"].shape == (2, 3, 96, 112)
    for b in range(2):
        m = {k: v[b] for k, v in out["meta"].items()}
        lin = isp.unprocess(img[b], m)
        assert rel_err(out["gt"][b], lin[:, 8:-8, 8:-8]) < 1e-12
        frames = B.warp_frames(lin[None], m["translation"][None], m["rotation"][None])[0]
        want = B.mosaic(B.downsample(frames[..., 8:-8, 8:-8], 2))
        assert rel_err(out["burst"][b], want) < 1e-12


def test_synthesize_burst_errors():
    g = gen(0)
    with pytest.raises(TypeError, match="image"):
        B.synthesize_burst(torch.zeros(3, 432, 432, dtype=torch.uint8), generator=g)
    with pytest.raises(TypeError, match="image"):
        B.synthesize_burst([[0.0]], generator=g)
    with pytest.raises(ValueError, match=r"image.*\(4, 432, 432\)"):
        B.synthesize_burst(torch.rand(4, 432, 432), generator=g)
    with pytest.raises(ValueError, match=r"\(3, 430, 432\).*multiple"):
        B.synthesize_burst(torch.rand(3, 430, 432), generator=g)
    with pytest.raises(ValueError, match="burst_size"):
        B.synthesize_burst(torch.rand(3, 432, 432), 0, generator=g)
    with pytest.raises(ValueError, match="mosaic"):
        B.mosaic(torch.rand(3, 5, 6))
    with pytest.raises(ValueError, match=r"raw.*C in \(3, 4\).*\(2, 5, 4, 4\)"):
        isp.process(torch.rand(2, 5, 4, 4), isp.random_isp_params(2, g))
    with pytest.raises(ValueError, match="missing"):
        isp.unprocess(torch.rand(3, 4, 4), {"rgb2cam": torch.eye(3)})


@requires_cuda
def test_cuda_matches_cpu_with_cpu_generator():
    torch.manual_seed(8)
    img = torch.rand(2, 3, 432, 432)
    cpu = B.synthesize_burst(img, 8, generator=gen(17))
    cuda = B.synthesize_burst(img.cuda(), 8, generator=gen(17))
    assert cuda["burst"].is_cuda and cuda["gt"].is_cuda
    assert rel_err(cuda["gt"], cpu["gt"]) < 1e-5
    assert rel_err(cuda["burst"], cpu["burst"]) < 1e-5
    # a CUDA generator works too and is reproducible
    g1 = torch.Generator(device="cuda").manual_seed(3)
    g2 = torch.Generator(device="cuda").manual_seed(3)
    a = B.synthesize_burst(img.cuda(), 8, generator=g1)
    b = B.synthesize_burst(img.cuda(), 8, generator=g2)
    assert torch.equal(a["burst"], b["burst"])


# ----------------------------------------------------------------------------------------------
# dataset of bundled images
# ----------------------------------------------------------------------------------------------
def test_bundled_images_offline(no_network):
    train, evaluation, val = load_bundled_images("train"), load_bundled_images("eval"), load_bundled_images("val")
    assert list(evaluation) == list(HELDOUT_IMAGES) and len(evaluation) >= 3 and EVAL_IMAGE in evaluation
    assert list(val) == list(VAL_IMAGES)
    assert not set(train) & set(evaluation) and not set(train) & set(val) and not set(val) & set(evaluation)
    assert list(train) == bundled_image_names("train") and len(train) >= 5
    for name, img in {**train, **evaluation, **val}.items():
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3, name
        assert img.shape[1] >= 256 and img.shape[2] >= 256, name
        assert img.float().std() > 10, name  # a real photograph, not a blank placeholder


def test_dataset_items(no_network):
    ds = SyntheticBurstDataset(None, crop=432, burst_size=8, seed=3)
    assert len(ds) == 1000 and ds.split == "train" and not set(HELDOUT_IMAGES) & set(ds.names)
    a, b = ds[5], ds[5]
    assert a["burst"].shape == (8, 4, 48, 48) and a["burst"].dtype == torch.float32
    assert a["gt"].shape == (3, 384, 384) and a["gt"].dtype == torch.float32
    assert torch.equal(a["burst"], b["burst"]) and torch.equal(a["gt"], b["gt"])
    assert not torch.equal(ds[6]["gt"], a["gt"])
    again = SyntheticBurstDataset(None, crop=432, burst_size=8, seed=3)[5]
    other = SyntheticBurstDataset(None, crop=432, burst_size=8, seed=4)[5]
    assert torch.equal(again["burst"], a["burst"])
    assert not torch.equal(other["burst"], a["burst"])
    y0, x0 = a["meta"]["crop_origin"].tolist()
    img = ds.images[int(a["meta"]["image_index"])]
    assert 0 <= y0 <= img.shape[1] - 432 and 0 <= x0 <= img.shape[2] - 432
    # the ground truth is the unprocessed crop (without its border)
    lin = isp.unprocess(img[:, y0:y0 + 432, x0:x0 + 432], a["meta"])
    assert rel_err(a["gt"], lin[:, 24:-24, 24:-24]) < 1e-6
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["burst"].shape == (2, 8, 4, 48, 48) and batch["meta"]["rgb2cam"].shape == (2, 3, 3)


def test_dataset_eval_split_and_custom_images(no_network):
    ev = SyntheticBurstDataset(None, crop=432, burst_size=14, seed=0, split="eval", length=3)
    assert ev.names == list(HELDOUT_IMAGES) and len(ev) == 3
    item = ev[2]
    assert item["burst"].shape == (14, 4, 48, 48) and 0 <= int(item["meta"]["image_index"]) < len(HELDOUT_IMAGES)
    with pytest.raises(IndexError):
        ev[3]
    # custom images: uint8 HWC smaller than the crop get upscaled; float CHW used as is
    small = (torch.rand(100, 150, 3) * 255).to(torch.uint8)
    ds = SyntheticBurstDataset([small, torch.rand(3, 112, 112)], crop=112, burst_size=2, seed=1, border=8,
                               length=4)
    assert ds.images[0].shape == (3, 112, 168) and ds.images[1].shape == (3, 112, 112)
    assert ds[0]["burst"].shape == (2, 4, 12, 12) and ds[0]["gt"].shape == (3, 96, 96)


def test_dataset_errors():
    with pytest.raises(ValueError, match="split"):
        SyntheticBurstDataset(None, split="test")
    with pytest.raises(ValueError, match="split"):
        SyntheticBurstDataset([torch.rand(3, 432, 432)], split="eval")
    with pytest.raises(ValueError, match="crop"):
        SyntheticBurstDataset([torch.rand(3, 432, 432)], crop=430)
    with pytest.raises(ValueError, match="empty"):
        SyntheticBurstDataset([])
    with pytest.raises(ValueError, match=r"images\[0\].*\(5, 5\)"):
        SyntheticBurstDataset([torch.rand(5, 5)], crop=432)
    with pytest.raises(TypeError, match=r"images\[0\].*int64"):
        SyntheticBurstDataset([torch.zeros(3, 8, 8, dtype=torch.int64)], crop=432)


# ----------------------------------------------------------------------------------------------
# dead leaves, the held-out set, the aligned baseline
# ----------------------------------------------------------------------------------------------
def test_dead_leaves_seeded_and_natural():
    from burstkern.data.deadleaves import dead_leaves, dead_leaves_image

    a, b = dead_leaves_image(5, 64), dead_leaves_image(5, 64)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, dead_leaves_image(6, 64))
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    batch = dead_leaves(4, 96, gen(1))
    assert batch.shape == (4, 3, 96, 96)
    # occluding discs: piecewise smooth with edges, varied colour, not noise and not flat
    for img in batch:
        assert img.std() > 0.03
        grad = (img[:, 1:] - img[:, :-1]).abs().mean()
        assert 0.002 < grad < 0.1
    # power-law radii: many more small discs than large ones is what makes most pixels' neighbours similar
    # (neighbouring-pixel correlation high, far-pixel correlation lower)
    g = batch.mean(1)
    near = torch.corrcoef(torch.stack([g[:, :, :-1].flatten(), g[:, :, 1:].flatten()]))[0, 1]
    far = torch.corrcoef(torch.stack([g[:, :, :-32].flatten(), g[:, :, 32:].flatten()]))[0, 1]
    assert near > 0.8 and far < near
    with pytest.raises(ValueError, match="seed"):
        dead_leaves_image(-1, 32)


def test_dead_leaves_rasterisation_matches_the_definition():
    """The binned bounding-box rasteriser gives the front-most (first) covering disc, as a brute force does."""
    from burstkern.data import deadleaves as DL

    g1, g2 = gen(3), gen(3)
    img = DL.dead_leaves(1, 40, g1, texture=0.0, max_blur=0.0, coverage=2.0)
    # replay the draws of dead_leaves with the same generator to rebuild the discs
    pal = DL.natural_palette()
    r_min, r_max, alpha = 4.0, 20.0, 3.0
    a1, a3 = 1 - alpha, 3 - alpha
    er2 = math.log(r_max / r_min) / ((r_min ** a1 - r_max ** a1) / (alpha - 1.0))
    n = max(16, int(2.0 * 40 * 40 / (math.pi * er2)))
    u = torch.rand(1, n, generator=g2)
    radius = (r_min ** a1 + u * (r_max ** a1 - r_min ** a1)) ** (1.0 / a1)
    cx, cy = torch.rand(1, n, generator=g2) * 40, torch.rand(1, n, generator=g2) * 40
    color = pal[torch.randint(pal.shape[0], (1, n + 1), generator=g2)]
    ys = torch.arange(40.0) + 0.5
    d2 = (ys[None, None, :] - cx[0, :, None, None]) ** 2 + (ys[None, :, None] - cy[0, :, None, None]) ** 2
    cover = d2 < radius[0, :, None, None] ** 2
    idx = torch.where(cover, torch.arange(n)[:, None, None], torch.full((1, 1, 1), n)).amin(0)
    expect = color[0][idx].permute(2, 0, 1)
    assert torch.allclose(img[0], expect.clamp(0, 1), atol=1e-6)


def test_dataset_dead_leaves_items_use_their_split_seed_range(no_network):
    ds = SyntheticBurstDataset(None, crop=80, burst_size=2, seed=0, length=40, deadleaves=0.5)
    seeds = [int(ds[i]["meta"]["deadleaves_seed"]) for i in range(40)]
    dl = [s for s in seeds if s >= 0]
    assert 5 < len(dl) < 35
    lo, hi = DEADLEAVES_SEEDS["train"]
    assert all(lo <= s < hi for s in dl)
    only = SyntheticBurstDataset(None, crop=80, burst_size=2, seed=0, length=3, split="val", deadleaves=1.0)
    lo, hi = DEADLEAVES_SEEDS["val"]
    assert all(lo <= int(only[i]["meta"]["deadleaves_seed"]) < hi for i in range(3))
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])  # mixed items collate
    assert batch["burst"].shape == (4, 2, 4, 4, 4)
    ranges = sorted(DEADLEAVES_SEEDS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])) and ranges[-1][1] <= 2 ** 32
    with pytest.raises(ValueError, match="deadleaves"):
        SyntheticBurstDataset(None, crop=80, deadleaves=1.5)


def test_heldout_set_is_one_fixed_function(no_network):
    from burstkern.data import heldout_bursts, validation_bursts

    ev = heldout_bursts(burst_size=2, crop=112, per_photo=1, deadleaves=2)
    assert ev["burst"].shape == (5, 2, 4, 8, 8) and ev["gt"].shape == (5, 3, 64, 64)
    assert ev["names"][:3] == [f"{n}#0" for n in HELDOUT_IMAGES] and ev["names"][3].startswith("deadleaves#")
    lo, hi = DEADLEAVES_SEEDS["eval"]
    assert all(lo <= int(s) < hi for s in ev["meta"]["deadleaves_seed"][3:])
    again = heldout_bursts(burst_size=2, crop=112, per_photo=1, deadleaves=2)
    assert torch.equal(ev["burst"], again["burst"]) and torch.equal(ev["gt"], again["gt"])
    val = validation_bursts(burst_size=2, crop=112, per_photo=1, deadleaves=1)
    assert val["names"][0] == f"{VAL_IMAGES[0]}#0"
    assert not torch.equal(val["gt"][1], ev["gt"][3])


def test_heldout_default_size():
    import inspect

    from burstkern.data import heldout
    sig = inspect.signature(heldout.heldout_bursts)
    n = len(HELDOUT_IMAGES) * sig.parameters["per_photo"].default + sig.parameters["deadleaves"].default
    assert n >= 24 and len(HELDOUT_IMAGES) >= 3


def test_aligned_baseline_true_phase():
    """Frame 0 of a noise-free burst of a smooth image: the baseline reproduces it closely, and LR pixel i sits on
    HR pixel 4i (a shifted phase is clearly worse)."""
    from burstkern.models.baseline import aligned_baseline, demosaic_bilinear, upsample_true_phase
    from burstkern.metrics import psnr

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 176), torch.linspace(0, 1, 176), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(6 * xx + 2 * yy), 0.5 + 0.3 * torch.cos(5 * yy), 0.4 + 0.2 * xx])
    out = B.synthesize_burst(img, 4, noise=False, generator=gen(0))
    base = aligned_baseline(out["burst"][None])
    assert base.shape == (1, 3, 128, 128)
    good = float(psnr(base, out["gt"][None]))
    assert good > 40
    lr = demosaic_bilinear(out["burst"][None, 0])
    shifted = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert good > float(psnr(shifted, out["gt"][None])) + 3
    # upsampling keeps the LR samples at HR pixel 4i
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(upsample_true_phase(x, 4)[..., ::4, ::4], x, atol=1e-5)
    # demosaic keeps the measured samples
    raw = torch.rand(2, 4, 6, 6)
    rgb = demosaic_bilinear(raw)
    assert torch.allclose(rgb[:, 0, 0::2, 0::2], raw[:, 0]) and torch.allclose(rgb[:, 1, 0::2, 1::2], raw[:, 1])
    assert torch.allclose(rgb[:, 2, 1::2, 1::2], raw[:, 3])
    const = demosaic_bilinear(torch.full((1, 4, 5, 5), 0.3))
    assert torch.allclose(const, torch.full_like(const, 0.3))
