"""burstkern.metrics: PSNR of a known MSE, SSIM against scikit-image, the border crop, argument errors and
LPIPS reporting itself unavailable (never touching the network)."""

from __future__ import annotations

import math
import socket
import sys
import textwrap

import numpy as np
import pytest
import torch

from burstkern import metrics as M
from tests.utils import requires_cuda

skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _pm_pattern(shape, gen):
    """A random +-1 pattern (its square is exactly 1 everywhere)."""
    return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1


# ----------------------------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_psnr_of_known_mse(dtype):
    g = torch.Generator().manual_seed(0)
    target = 0.2 + 0.6 * torch.rand(3, 3, 97, 101, generator=g, dtype=torch.float64)
    s = torch.tensor([0.01, 0.05, 0.1], dtype=torch.float64)
    pred = target + s[:, None, None, None] * _pm_pattern(target.shape, g)
    got = M.psnr(pred.to(dtype), target.to(dtype))
    want = 10 * torch.log10(1.0 / s ** 2)  # MSE = s^2 exactly
    assert got.shape == (3,)
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert torch.allclose(got.double(), want, atol=tol, rtol=0), (got, want)
    # data_range scales the peak
    got2 = M.psnr(2 * pred.to(dtype), 2 * target.to(dtype), data_range=2.0)
    assert torch.allclose(got2.double(), want, atol=tol, rtol=0)
    # unbatched input gives a 0-dim result equal to the batched row
    one = M.psnr(pred[1].to(dtype), target[1].to(dtype))
    assert one.shape == () and torch.allclose(one.double(), want[1], atol=tol, rtol=0)
    assert torch.isinf(M.psnr(target, target)).all()


def test_psnr_border_honoured():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 120, 130, generator=g, dtype=torch.float64)
    pred = target + 0.02 * _pm_pattern(target.shape, g)
    base = M.psnr(pred, target)
    wrecked = pred.clone()
    wrecked[..., :40, :] = 5.0
    wrecked[..., -40:, :] = -5.0
    wrecked[..., :, :40] = 7.0
    wrecked[..., :, -40:] = 9.0
    assert torch.equal(M.psnr(wrecked, target), base)
    assert (M.psnr(wrecked, target, border=39) < base - 10).all()  # one more pixel and it shows
    assert (M.psnr(wrecked, target, border=0) < base - 10).all()
    inner = pred.clone()
    inner[..., 40, 40] += 0.5
    assert (M.psnr(inner, target) < base).all()


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------
def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return skimage_metrics.structural_similarity(
        a.double().numpy(), b.double().numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1, channel_axis=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 97, 123), (1, 3, 91, 91)])
def test_ssim_matches_skimage(dtype, shape):
    g = torch.Generator().manual_seed(2)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    noise = [0.02, 0.2][: shape[0]]
    pred = (target + torch.tensor(noise, dtype=torch.float64)[:, None, None, None]
            * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = M.ssim(pred.to(dtype), target.to(dtype))
    assert got.shape == (shape[0],) and got.dtype == dtype
    for i in range(shape[0]):
        p, t = pred[i].to(dtype), target[i].to(dtype)  # skimage sees the same rounded values
        want = _skimage_ssim(p[:, 40:-40, 40:-40], t[:, 40:-40, 40:-40])
        assert abs(got[i].item() - want) < 1e-4, (got[i].item(), want)
    assert torch.allclose(M.ssim(target, target), torch.ones(shape[0], dtype=torch.float64), atol=1e-12)


def test_ssim_structured_image_and_border0():
    """A smooth structured image (not just noise) and border=0 on a small image, against skimage."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 64, dtype=torch.float64), torch.linspace(0, 1, 72,
                                                                                        dtype=torch.float64),
                          indexing="ij")
    target = torch.stack((0.5 + 0.4 * torch.sin(8 * x), 0.5 + 0.4 * torch.cos(6 * y), x * y))
    pred = 0.9 * target + 0.05 + 0.03 * torch.sin(40 * x * y)
    got = M.ssim(pred, target, border=0)
    want = _skimage_ssim(pred, target)
    assert got.shape == () and abs(got.item() - want) < 1e-10
    assert want < 0.999  # the case is not trivial


def test_ssim_border_honoured():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 110, 110, generator=g, dtype=torch.float64)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    base = M.ssim(pred, target)
    wrecked = pred.clone()
    wrecked[..., :40, :] = 0.0
    wrecked[..., -40:, :] = 1.0
    wrecked[..., :, :40] = 0.3
    wrecked[..., :, -40:] = 0.7
    assert torch.equal(M.ssim(wrecked, target), base)
    assert (M.ssim(wrecked, target, border=39) < base).all()  # one wrecked row/column more
    assert (M.ssim(wrecked, target, border=0) < base - 0.1).all()
    inner = pred.clone()
    inner[..., 50:60, 50:60] = 0.0
    assert (M.ssim(inner, target) < base - 1e-3).all()


@requires_cuda
def test_metrics_on_cuda():
    g = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 100, 100, generator=g)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    for fn in (M.psnr, M.ssim):
        got = fn(pred.cuda(), target.cuda())
        assert got.is_cuda and torch.allclose(got.cpu(), fn(pred, target), rtol=1e-5, atol=1e-6)


def test_metric_errors():
    a = torch.rand(1, 3, 100, 100)
    with pytest.raises(ValueError, match=r"shapes differ.*\(1, 3, 100, 100\).*\(1, 3, 100, 99\)"):
        M.psnr(a, torch.rand(1, 3, 100, 99))
    with pytest.raises(TypeError, match="pred.*uint8"):
        M.ssim(a.to(torch.uint8), a)
    with pytest.raises(TypeError, match="target.*ndarray"):
        M.psnr(a, np.zeros((1, 3, 100, 100)))
    with pytest.raises(ValueError, match=r"pred.*\(3, 100\)"):
        M.psnr(torch.rand(3, 100), torch.rand(3, 100))
    with pytest.raises(ValueError, match=r"\(1, 3, 100, 100\).*45-px border.*11x11"):
        M.ssim(a, a, border=45)  # 10x10 left, smaller than the 11-tap window
    with pytest.raises(ValueError, match="border"):
        M.psnr(a, a, border=-1)


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_lpips(monkeypatch, tmp_path):
    """No cached LPIPS models, an empty torch hub cache and no real ``lpips`` module in sys.modules."""
    monkeypatch.setattr(M, "_LPIPS_MODELS", {})
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    return hub


def _fake_lpips_package(root, body: str):
    pkg = root / "fakepkgs" / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "weights" / "v0.1" / "alex.pth").write_bytes(b"")
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return str(root / "fakepkgs")


def test_lpips_unavailable_here(no_network, fresh_lpips, monkeypatch):
    """Whatever this machine has, LPIPS without the package reports itself unavailable, cleanly."""
    real_find_spec = M.importlib.util.find_spec
    monkeypatch.setattr(M.importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips" else real_find_spec(name, *a))
    a = torch.rand(1, 3, 100, 100)
    with pytest.raises(M.MetricUnavailable, match=r"^LPIPS unavailable: the lpips package is not installed"):
        M.lpips(a, a)
    assert M.lpips_status() == (False, "the lpips package is not installed (pip install lpips)")
    assert issubclass(M.MetricUnavailable, RuntimeError)


def test_lpips_missing_trunk_weights(no_network, fresh_lpips, monkeypatch, tmp_path):
    """Package present, AlexNet weights not in the hub cache: unavailable, and the model is never built."""
    monkeypatch.syspath_prepend(_fake_lpips_package(tmp_path, """
        class LPIPS:
            def __init__(self, *args, **kwargs):
                raise AssertionError("LPIPS must not be built without its weights")
    """))
    a = torch.rand(1, 3, 100, 100)
    with pytest.raises(M.MetricUnavailable, match=r"^LPIPS unavailable: the alex trunk weights are not in the "
                                                   r"torch hub cache .*download=True"):
        M.lpips(a, a)
    ok, why = M.lpips_status()
    assert not ok and str(fresh_lpips) in why


def test_lpips_refuses_to_download(no_network, fresh_lpips, monkeypatch, tmp_path):
    """Even if building the model would reach for the network, download=False stops it with a clear error."""
    (fresh_lpips / "checkpoints" / M._trunk_checkpoint("alex").rsplit("/", 1)[-1]).write_bytes(b"")
    monkeypatch.syspath_prepend(_fake_lpips_package(tmp_path, """
        import torch.hub
        class LPIPS:
            def __init__(self, *args, **kwargs):
                torch.hub.download_url_to_file("https://example.invalid/alexnet.pth", "/nonexistent")
    """))
    a = torch.rand(1, 3, 100, 100)
    with pytest.raises(M.MetricUnavailable, match=r"^LPIPS unavailable: would download https://example.invalid"):
        M.lpips(a, a)
    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"  # restored


def test_lpips_wiring_with_local_model(no_network, fresh_lpips, monkeypatch, tmp_path):
    """With a (stand-in) local model: inputs border-cropped, [0, 1] -> [-1, 1] via normalize=True, [B] out."""
    (fresh_lpips / "checkpoints" / M._trunk_checkpoint("alex").rsplit("/", 1)[-1]).write_bytes(b"")
    monkeypatch.syspath_prepend(_fake_lpips_package(tmp_path, """
        import torch
        class LPIPS(torch.nn.Module):
            def __init__(self, net="alex", verbose=True, **kwargs):
                super().__init__()
                self.net = net
            def forward(self, a, b, normalize=False):
                if normalize:
                    a, b = 2 * a - 1, 2 * b - 1
                return (a - b).square().mean(dim=(1, 2, 3), keepdim=True)
    """))
    g = torch.Generator().manual_seed(5)
    target = torch.rand(2, 3, 100, 100, generator=g)
    pred = target.clone()
    pred[0, :, 50, 50] += 0.5
    pred[:, :, :40] = 1.0  # the border is ignored
    got = M.lpips(pred, target)
    assert got.shape == (2,)
    want = torch.tensor([4 * 3 * 0.25 / (3 * 20 * 20), 0.0])
    assert torch.allclose(got, want, atol=1e-7), got
    assert M.lpips(pred[0], target[0]).shape == ()


@pytest.mark.skipif(not M.lpips_status()[0], reason="lpips package or AlexNet weights not available locally")
def test_lpips_real_model(no_network):
    g = torch.Generator().manual_seed(6)
    target = torch.rand(2, 3, 128, 128, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(M.lpips(target, target), torch.zeros(2), atol=1e-6)
    d = M.lpips(pred, target)
    assert d.shape == (2,) and (d > 0.01).all() and math.isfinite(d.sum().item())


def test_hf_ratio_flags_noise_and_blur():
    from burstkern.metrics import hf_energy, hf_ratio

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    img = (0.5 + 0.25 * torch.sin(xx / 1.5) * torch.cos(yy / 2.0)).expand(2, 3, 128, 128).clone()
    assert torch.allclose(hf_ratio(img, img), torch.ones(2))
    noisy = img + 0.05 * torch.randn(img.shape, generator=g)
    blurred = torch.nn.functional.avg_pool2d(img, 5, stride=1, padding=2, count_include_pad=False)
    assert (hf_ratio(noisy, img) > 1.1).all() and (hf_ratio(blurred, img) < 0.5).all()
    assert hf_energy(img[0]).dim() == 0 and hf_energy(img).shape == (2,)
    flat = torch.full((3, 100, 100), 0.3)
    assert float(hf_energy(flat)) < 1e-12
