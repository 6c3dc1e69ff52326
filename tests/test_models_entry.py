"""E-BSRD's public entry points as a drop-in (issue 16): bad bursts raise burstkern.ArgumentError naming the
argument and its shape, a NaN/Inf frame gives the same error on every backend, ``.backward()`` through an
inference output names the training API, and the teacher's E-BSRD clamp option."""

import pytest
import torch

import burstkern
from burstkern.models import EBSRD, PRESETS
from burstkern.models.ebsrd import NO_GRADIENT_MESSAGE
from burstkern.models.samplers import edm_heun_sampler
from burstkern.registry import backend_available

from utils import tiny_ebsrd

T = PRESETS["tiny"].burst_size
MODEL_OPS = ("deform_conv2d", "sft_group_norm", "sft_modulate", "denoise_scalings", "add_noise", "cm_update",
             "edm_euler_update", "edm_heun_update", "denoise_combine")


make_model = tiny_ebsrd


def burst(n=1, seed=1):
    return torch.rand(n, T, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


ENTRY_POINTS = {
    "forward": lambda m, b: m(b, generator=gen()),
    "one_step": lambda m, b: m.one_step(b, generator=gen()),
    "teacher": lambda m, b: m.teacher(b, num_steps=2, generator=gen()),
    "initial": lambda m, b: m.initial(b),
    "base_image": lambda m, b: m.base_image(b),
}

BAD_BURSTS = {  # name -> (burst, words the message must hold)
    "batch 0": (torch.rand(0, T, 4, 8, 8), ["burst", "(0, 4, 4, 8, 8)", "B >= 1"]),
    "T = 0": (torch.rand(1, 0, 4, 8, 8), ["burst", "(1, 0, 4, 8, 8)", "T >= 1"]),
    "h = w = 0": (torch.rand(1, T, 4, 0, 0), ["burst", "(1, 4, 4, 0, 0)", "height and width must be >= 2"]),
    "h = 0": (torch.rand(1, T, 4, 0, 8), ["burst", "(1, 4, 4, 0, 8)", "height and width"]),
    "w odd": (torch.rand(1, T, 4, 8, 7), ["burst", "(1, 4, 4, 8, 7)", "divisible by 2"]),
    "rank 4": (torch.rand(T, 4, 8, 8), ["burst", "5-D", "(4, 4, 8, 8)", "[B, T, 4, h, w]"]),
    "rank 6": (torch.rand(1, 1, T, 4, 8, 8), ["burst", "5-D", "(1, 1, 4, 4, 8, 8)"]),
    "3 channels": (torch.rand(1, T, 3, 8, 8), ["burst", "4 channels", "(1, 4, 3, 8, 8)"]),
    "RGB last": (torch.rand(1, T, 8, 8, 4), ["burst", "4 channels", "(1, 4, 8, 8, 4)"]),
    "int dtype": (torch.zeros(1, T, 4, 8, 8, dtype=torch.uint8), ["burst", "floating-point", "torch.uint8"]),
    "not a tensor": ([[0.0]], ["burst", "torch.Tensor", "list"]),
}


@pytest.mark.parametrize("case", list(BAD_BURSTS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_bursts_raise_argument_error_naming_the_argument(entry, case):
    """Before: batch 0 / T = 0 / h = w = 0 failed in a reshape or a conv, 3 channels in the first conv."""
    model = EBSRD("tiny").eval()
    b, words = BAD_BURSTS[case]
    with torch.no_grad(), pytest.raises(burstkern.ArgumentError) as e:
        ENTRY_POINTS[entry](model, b)
    assert isinstance(e.value, (ValueError, RuntimeError))
    if case in ("int dtype", "not a tensor"):
        assert isinstance(e.value, (burstkern.ArgumentTypeError, TypeError))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _backends():
    out = []
    for name in ("reference", "native", "triton"):
        bad = [(op, why) for op in MODEL_OPS for ok, why in [backend_available(name, "cpu", op)] if not ok]
        out.append(pytest.param(name, marks=() if not bad else
                                pytest.mark.skip(reason=f"{name}: {bad[0][0]}: {bad[0][1]}")))
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", _backends())
def test_non_finite_frame_is_the_same_error_on_every_backend(backend, value):
    """Before: a NaN frame gave all-NaN on CUDA, a plausible finite image on Triton and an index error on the
    reference; the contract is one ArgumentError naming the frame, whatever the backend."""
    model = make_model()
    b = burst(2)
    b[1, 2, 3, 4, 5] = value
    b[1, 3, 0, 0, 0] = value
    for entry in ("forward", "one_step", "teacher", "initial"):
        with burstkern.backend(backend), torch.no_grad(), pytest.raises(burstkern.ArgumentError) as e:
            ENTRY_POINTS[entry](model, b)
        assert str(e.value) == ("burst contains NaN or Inf in frame 2 of burst 1 (shape (2, 4, 4, 8, 8)); "
                                "expected finite values (packed RGGB in [0, 1])"), (entry, str(e.value))


@pytest.mark.parametrize("entry", ["forward", "one_step", "teacher"])
def test_backward_through_an_inference_output_names_the_training_api(entry):
    """Before: "element 0 of tensors does not require grad". Now a RuntimeError saying the entry point runs
    without autograd and naming burstkern.train's differentiable losses."""
    model = make_model()
    b = burst()
    out = ENTRY_POINTS[entry](model, b)
    assert out.requires_grad
    with pytest.raises(RuntimeError) as e:
        ((out - 0.5) ** 2).mean().backward()
    msg = str(e.value)
    assert msg == NO_GRADIENT_MESSAGE
    for w in ("without autograd", "burstkern.train", "initial_loss", "denoiser_loss", "teacher_distill_loss",
              "consistency_loss", "torch.no_grad()"):
        assert w in msg, w
    # a burst that requires grad (all parameters frozen) gets the same answer
    model.requires_grad_(False)
    out = ENTRY_POINTS[entry](model, b.clone().requires_grad_(True))
    with pytest.raises(RuntimeError, match="burstkern.train"):
        out.sum().backward()


def test_inference_outputs_are_plain_tensors_without_autograd():
    """Under no_grad / inference_mode, or with nothing requiring grad, the output is the sampler's own tensor;
    the guard changes no value."""
    model = make_model()
    b = burst()
    guarded = model(b, generator=gen())
    with torch.no_grad():
        plain = model(b, generator=gen())
    with torch.inference_mode():
        inf = model(b, generator=gen())
    assert not plain.requires_grad and not inf.requires_grad and plain.grad_fn is None
    assert torch.equal(guarded.detach(), plain) and torch.equal(plain, inf)
    model.requires_grad_(False)
    assert not model(b, generator=gen()).requires_grad
    # the training stage EBSRD.initial stays differentiable
    model.requires_grad_(True)
    x_init, _ = model.initial(b)
    x_init.mean().backward()
    assert model.head.to_pixels.weight.grad is not None


def test_teacher_clamp_option():
    """EBSRD.teacher(clamp=...) reaches edm_heun_sampler: None (default) is the unclamped EDM sampler the shipped
    numbers were measured with, bit for bit; True is E-BSRD's, its output in [-1, 1]."""
    model = make_model()
    with torch.no_grad():
        for p in model.denoiser.parameters():  # push the denoised estimates out of [-1, 1]
            p.mul_(4.0)
    b = burst(2)
    with torch.no_grad(), burstkern.backend("reference"):
        default = model.teacher(b, num_steps=3, generator=gen())
        off = model.teacher(b, num_steps=3, generator=gen(), clamp=None)
        on = model.teacher(b, num_steps=3, generator=gen(), clamp=True)
        x_init, cond = model.initial(b)
        direct = edm_heun_sampler(lambda x, c: model.denoiser(x, c, cond), x_init, num_steps=3,
                                  sigma_min=model.config.teacher_sigma_min, sigma_max=model.config.sigma_tau,
                                  start="early", sigma_data=model.config.sigma_data, generator=gen())
    assert torch.equal(default, off) and torch.equal(default, direct)
    assert on.abs().max().item() <= 1.0
    assert default.abs().max().item() > 1.0, "the test model must leave [-1, 1] for the clamp to matter"
    assert not torch.equal(on, default)


def test_teacher_sigma_tau_option():
    """EBSRD.teacher(sigma_tau=...) is the sampler's start level σ_max: None (default) and the config's value are the
    shipped sampler bit for bit; another value is edm_heun_sampler with that σ_max."""
    model = make_model()
    b = burst(2)
    with torch.no_grad(), burstkern.backend("reference"):
        default = model.teacher(b, num_steps=2, generator=gen())
        same = model.teacher(b, num_steps=2, generator=gen(), sigma_tau=model.config.sigma_tau)
        other = model.teacher(b, num_steps=2, generator=gen(), sigma_tau=0.25)
        x_init, cond = model.initial(b)
        direct = edm_heun_sampler(lambda x, c: model.denoiser(x, c, cond), x_init, num_steps=2,
                                  sigma_min=model.config.teacher_sigma_min, sigma_max=0.25, start="early",
                                  sigma_data=model.config.sigma_data, generator=gen())
    assert torch.equal(default, same) and torch.equal(other, direct) and not torch.equal(default, other)
    assert model.config.sigma_tau == 0.03
