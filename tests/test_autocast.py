"""Under torch.autocast every public op accepts the mixed dtypes autocast produces (bf16 activations, fp32
parameters): deformable conv and SFT compute in the autocast dtype, the denoise updates in fp32."""

import pytest
import torch

import burstkern
from burstkern import ops
from burstkern.models import EBSRD
from utils import rel_err

AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


def test_deform_conv2d_follows_the_autocast_dtype():
    x = torch.randn(2, 4, 6, 6)
    off, w, b, m = torch.randn(2, 18, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(5), torch.rand(2, 9, 6, 6)
    ref = ops.deform_conv2d(x, off, w, b, padding=1, mask=m)
    with torch.autocast(**AUTOCAST):
        out = ops.deform_conv2d(x.bfloat16(), off, w, b, padding=1, mask=m)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2


def test_sft_follows_the_autocast_dtype():
    x, gb = torch.randn(2, 8, 5, 5), torch.randn(2, 16, 5, 5)
    w, b = torch.randn(8), torch.randn(8)
    ref = ops.sft_group_norm(x, gb, None, 4, w, b, act="silu")
    with torch.autocast(**AUTOCAST):
        out = ops.sft_group_norm(x, gb.bfloat16(), None, 4, w, b, act="silu")
        mod = ops.sft_modulate(x.bfloat16(), gb[:, :8], gb[:, 8:])
    assert out.dtype == torch.bfloat16 and mod.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2


def test_denoise_updates_run_in_fp32_under_autocast():
    x, F, sigma = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.1, 2.0])
    ref = ops.denoise_combine(x, F.bfloat16().float(), sigma)
    with torch.autocast(**AUTOCAST):
        out = ops.denoise_combine(x, F.bfloat16(), sigma)
        loss = ops.edm_loss(x, F.bfloat16(), x, sigma)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    assert rel_err(out, ref) < 1e-6


def test_the_pipeline_runs_under_autocast():
    torch.manual_seed(0)
    model = EBSRD("tiny").eval()
    burst = torch.rand(1, 4, 4, 8, 8)
    with torch.no_grad(), torch.autocast(**AUTOCAST), burstkern.backend("reference"):
        x_init, cond = model.initial(burst)
        out = model.one_step(burst, generator=torch.Generator().manual_seed(0))
    assert x_init.shape == (1, 3, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_outside_autocast_dtypes_are_still_checked():
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(TypeError, match="weight has dtype"):
        ops.deform_conv2d(x.bfloat16(), torch.randn(1, 18, 6, 6).bfloat16(), torch.randn(5, 4, 3, 3), padding=1)
