"""Export: ``torch.export`` programs and ONNX graphs of burstkern modules and of the one-step E-BSRD model.

* :func:`export_program` -- ``torch.export.export`` (the burstkern ops are custom ops with fake kernels, so they trace
  as single nodes; AOT compilers see them).
* :func:`export_onnx` -- ``torch.onnx.export`` (TorchScript tracer, opset >= 19) with every burstkern op mapped to
  standard ONNX: ``deform_conv2d`` -> ``DeformConv``; ``sft_modulate`` / ``sft_group_norm`` -> elementwise ops, a
  GroupNorm built from ``ReduceMean``; the denoise ops -> their closed forms. The graphs run in onnxruntime and
  OpenVINO (``burstkern export-onnx``).
* :class:`OneStep` -- E-BSRD one-step super-resolution with the start noise as an input, since an exported graph
  has no random state: ``(burst [B, T, 4, h, w], noise [B, 3, 8h, 8w]) -> RGB [B, 3, 8h, 8w]`` in [0, 1].
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import ops
from .ops._common import ArgumentError

MIN_OPSET = 19  # DeformConv entered the ONNX standard in opset 19


class OneStep(nn.Module):
    """E-BSRD's one-step student as a pure function of (burst, noise): ``clamp(f(x_init + σ_τ·ε, σ_τ), −1, 1)``
    mapped to [0, 1], exactly what ``EBSRD.forward`` computes for the same ε."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, burst: Tensor, noise: Tensor) -> Tensor:
        m = self.model
        cfg = m.config
        net = m.student if getattr(m, "student", None) is not None else m.denoiser
        x_init, cond = m.initial(burst)
        sig = torch.full((), cfg.start_sigma, dtype=torch.float32, device=x_init.device)
        _, _, c_in, c_noise = ops.cm_scalings(sig, cfg.cm_sigma_min, cfg.sigma_data)
        x = ops.add_noise(x_init, sig, noise=noise)
        f = net(x * c_in.to(x.dtype), c_noise.to(x.dtype).expand(x.shape[0]), cond)
        x0 = ops.cm_update(x, f, sig, cfg.cm_sigma_min, cfg.sigma_data, clamp=1.0)
        return (x0 + 1) / 2


def export_program(module: nn.Module, args: Sequence, **kwargs):
    """``torch.export.export(module, args)``; the program's ``module()`` equals eager on the same inputs."""
    return torch.export.export(module, tuple(args), **kwargs)


# ----------------------------------------------------------------------------------------------
# ONNX symbolics: one per burstkern op, standard ONNX only
# ----------------------------------------------------------------------------------------------
def _symbolics():
    from torch.onnx import symbolic_helper as sh

    def const(g, value, dtype=torch.float32):
        return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    def sizes(v):
        s = v.type().sizes()
        if s is None or any(d is None for d in s):
            raise ArgumentError(f"export_onnx: burstkern's ONNX export needs static shapes; the output of "
                                f"{v.node().kind()} has none (trace with example inputs, no dynamic sizes)")
        return list(s)

    def act(g, u, code, slope):
        if code == 1:
            return g.op("Mul", u, g.op("Sigmoid", u))
        if code == 2:
            return g.op("Relu", u)
        if code == 3:
            return g.op("LeakyRelu", u, alpha_f=slope)
        return u

    def per_sample(g, value, sigma, like_rank):
        """``value`` computed from σ ([] or [N], the op's input) shaped to broadcast against a rank-``like_rank``
        tensor."""
        if len(sizes(sigma)) == 1:
            return g.op("Reshape", value, const(g, [-1] + [1] * (like_rank - 1), torch.int64))
        return value

    def split_gamma(g, x, gamma, beta):
        c = sizes(x)[1]
        if sh._is_none(beta) and sizes(gamma)[1] == 2 * c:
            gm = g.op("Slice", gamma, const(g, [0], torch.int64), const(g, [c], torch.int64), const(g, [1], torch.int64))
            bt = g.op("Slice", gamma, const(g, [c], torch.int64), const(g, [2 * c], torch.int64),
                      const(g, [1], torch.int64))
            return gm, bt
        return gamma, (None if sh._is_none(beta) else beta)

    def modulate(g, h, gamma, beta):
        u = g.op("Mul", h, g.op("Add", gamma, const(g, 1.0)))
        return u if beta is None else g.op("Add", u, beta)

    @sh.parse_args("v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "v")
    def deform_conv2d(g, input, offset, weight, bias, sh_, sw, ph, pw, dh, dw, mask):
        cout, cin_g, kh, kw = sizes(weight)
        cin = sizes(input)[1]
        og = sizes(offset)[1] // (2 * kh * kw)
        args = [input, weight, offset]
        if not sh._is_none(bias) or not sh._is_none(mask):
            args.append(bias if not sh._is_none(bias) else const(g, [0.0] * cout))
        if not sh._is_none(mask):
            args.append(mask)
        return g.op("DeformConv", *args, dilations_i=[dh, dw], group_i=cin // cin_g, offset_group_i=og,
                    kernel_shape_i=[kh, kw], pads_i=[ph, pw, ph, pw], strides_i=[sh_, sw])

    @sh.parse_args("v", "v", "v", "i", "f")
    def sft_modulate(g, x, gamma, beta, code, slope):
        gm, bt = split_gamma(g, x, gamma, beta)
        return act(g, modulate(g, x, gm, bt), code, slope)

    @sh.parse_args("v", "v", "v", "i", "v", "v", "f", "i", "f")
    def sft_group_norm(g, x, gamma, beta, groups, weight, bias, eps, code, slope):
        n, c, h, w = sizes(x)
        xg = g.op("Reshape", x, const(g, [n, groups, -1], torch.int64))
        axes = const(g, [2], torch.int64)
        mean = g.op("ReduceMean", xg, axes, keepdims_i=1)
        xc = g.op("Sub", xg, mean)
        var = g.op("ReduceMean", g.op("Mul", xc, xc), axes, keepdims_i=1)
        rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, const(g, eps))))
        hn = g.op("Reshape", g.op("Mul", xc, rstd), const(g, [n, c, h, w], torch.int64))
        if not sh._is_none(weight):
            hn = g.op("Mul", hn, g.op("Reshape", weight, const(g, [1, c, 1, 1], torch.int64)))
        if not sh._is_none(bias):
            hn = g.op("Add", hn, g.op("Reshape", bias, const(g, [1, c, 1, 1], torch.int64)))
        gm, bt = split_gamma(g, x, gamma, beta)
        out = act(g, modulate(g, hn, gm, bt), code, slope)
        stat = const(g, [n, groups], torch.int64)
        return out, g.op("Reshape", mean, stat), g.op("Reshape", rstd, stat)

    def _scalings(g, sigma, sd, smin, cm):
        s2 = g.op("Mul", sigma, sigma)
        denom = g.op("Add", s2, const(g, sd * sd))
        root = g.op("Sqrt", denom)
        eff = g.op("Sub", sigma, const(g, smin)) if cm else sigma
        skip_den = g.op("Add", g.op("Mul", eff, eff), const(g, sd * sd)) if cm else denom
        c_skip = g.op("Div", const(g, sd * sd), skip_den)
        c_out = g.op("Div", g.op("Mul", eff, const(g, sd)), root)
        c_in = g.op("Reciprocal", root)
        c_noise = g.op("Mul", g.op("Log", sigma), const(g, 0.25))
        return c_skip, c_out, c_in, c_noise

    @sh.parse_args("v", "f", "f", "s")
    def denoise_scalings(g, sigma, sd, smin, mode):
        return _scalings(g, sigma, sd, smin, mode == "cm")

    @sh.parse_args("v", "v", "v", "f", "v", "v")
    def add_noise(g, x, sigma, sigma_base, s_noise, noise, seed):
        if sh._is_none(noise):
            raise ArgumentError("export_onnx: add_noise needs an explicit noise= tensor in an exported graph (no RNG)")
        var = g.op("Mul", sigma, sigma)
        if not sh._is_none(sigma_base):
            var = g.op("Sub", var, g.op("Mul", sigma_base, sigma_base))
        scale = g.op("Mul", g.op("Sqrt", g.op("Relu", var)), const(g, s_noise))
        return g.op("Add", x, g.op("Mul", per_sample(g, scale, sigma, len(sizes(x))), noise))

    @sh.parse_args("v", "v", "v", "f", "f", "v", "v", "v", "v")
    def cm_update(g, x, F, sigma, smin, sd, sigma_next, clamp, noise, seed):
        c_skip, c_out, _, _ = _scalings(g, sigma, sd, smin, True)
        rank = len(sizes(x))
        x0 = g.op("Add", g.op("Mul", per_sample(g, c_skip, sigma, rank), x),
                  g.op("Mul", per_sample(g, c_out, sigma, rank), F))
        if not sh._is_none(clamp):
            c = sh._maybe_get_const(clamp, "f")
            x0 = g.op("Clip", x0, const(g, -float(c)), const(g, float(c)))
        if not sh._is_none(sigma_next):
            if sh._is_none(noise):
                raise ArgumentError("export_onnx: cm_update re-noising needs an explicit noise= tensor (no RNG)")
            scale = g.op("Sqrt", g.op("Relu", g.op("Sub", g.op("Mul", sigma_next, sigma_next), const(g, smin * smin))))
            x0 = g.op("Add", x0, g.op("Mul", per_sample(g, scale, sigma_next, rank), noise))
        return x0

    return {"deform_conv2d": deform_conv2d, "sft_modulate": sft_modulate, "sft_group_norm": sft_group_norm,
            "denoise_scalings": denoise_scalings, "add_noise": add_noise, "cm_update": cm_update}


_REGISTERED: set = set()


def register_onnx_symbolics(opset: int = MIN_OPSET) -> None:
    """Map every burstkern op the models use to standard ONNX for ``torch.onnx.export(..., dynamo=False)``."""
    if opset < MIN_OPSET:
        raise ArgumentError(f"opset must be >= {MIN_OPSET} (ONNX DeformConv), got {opset}")
    if opset in _REGISTERED:
        return
    for name, fn in _symbolics().items():
        torch.onnx.register_custom_op_symbolic(f"burstkern::{name}", fn, opset)
    _REGISTERED.add(opset)


def export_onnx(module: nn.Module, args: Sequence, path: str, opset: int = MIN_OPSET,
                input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None) -> str:
    """Write ``module`` traced on ``args`` to an ONNX file at ``path`` (static shapes); returns ``path``.

    The trace runs on the reference backend: the graph is the same whichever backend runs, and the reference
    takes every dtype and device.
    """
    import warnings

    from . import registry

    register_onnx_symbolics(opset)
    with registry.backend("reference"), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(module.eval(), tuple(args), path, opset_version=opset, dynamo=False,
                          input_names=list(input_names) if input_names else None,
                          output_names=list(output_names) if output_names else None)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``burstkern export-onnx``: write the one-step E-BSRD model (shipped weights or --checkpoint) as ONNX."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="burstkern export-onnx",
                                     description="Write the one-step E-BSRD model as ONNX (opset >= 19).")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint of python/train_ebsrd.py (default: the "
                                                           "shipped tiny weights)")
    parser.add_argument("--frames", type=int, default=None, help="burst size T (default: the model's)")
    parser.add_argument("--size", type=int, nargs=2, default=(48, 48), metavar=("h", "w"),
                        help="RAW frame size of the packed [4, h, w] mosaic (output is 8h x 8w); default 48 48")
    parser.add_argument("--opset", type=int, default=MIN_OPSET)
    args = parser.parse_args(argv)
    try:
        from .models import EBSRD

        model = EBSRD.from_checkpoint(args.checkpoint) if args.checkpoint else EBSRD.from_pretrained("tiny")
        t = args.frames or model.config.burst_size
        h, w = args.size
        if t < 1 or h < 1 or w < 1:
            raise ArgumentError(f"--frames and --size must be positive, got {t} and {h} {w}")
        burst = torch.rand(1, t, 4, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            x_init, _ = model.initial(burst)
        noise = torch.zeros_like(x_init)
        export_onnx(OneStep(model), (burst, noise), args.out, opset=args.opset, input_names=["burst", "noise"],
                    output_names=["rgb"])
    except (ArgumentError, ValueError, OSError, RuntimeError) as exc:
        print(f"burstkern export-onnx: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: inputs burst [1, {t}, 4, {h}, {w}] (RAW in [0, 1]) and noise {list(x_init.shape)} "
          f"(the start noise ε; zeros for the deterministic output), output rgb {list(x_init.shape)} in [0, 1]")
    return 0
