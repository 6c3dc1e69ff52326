"""Runs the CUDA kernels on the SIMT emulation with every input tensor placed so that its last byte ends right
before an unreadable page (`end`), or so that its first byte starts right after one (`start`): a kernel that
reads past either end of an input (a tail or gather overrun, which the GPU would report under compute-sanitizer)
crashes this process with SIGSEGV. Run as a subprocess by tests/test_simt_guarded.py.

    python tests/guarded_inputs.py end|start|control-end|control-start
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

from burstkern import _extension

B = torch.ops.burstkern_C
_KEEP = []  # the mappings must outlive the tensors viewing them
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


WHERE = "end"


def guarded(t: torch.Tensor) -> torch.Tensor:
    """A copy of t (same shape, strides and values) whose storage ends exactly at a PROT_NONE page (WHERE="end")
    or starts right after one (WHERE="start")."""
    assert t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last), "guarded() takes dense tensors"
    nbytes = max(t.numel(), 1) * t.element_size()
    page = mmap.PAGESIZE
    total = ((nbytes + page - 1) // page + 1) * page
    buf = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    start, fence = (total - page - nbytes, total - page) if WHERE == "end" else (page, 0)
    out = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=start).view(t.dtype)
    out = out[: t.numel()].as_strided(t.shape, t.stride())
    out.copy_(t)
    if _libc.mprotect(ctypes.c_void_p(base + fence), page, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    _KEEP.append(buf)
    return out


def _g(*ts):
    return [None if t is None else guarded(t) for t in ts]


def deform_conv():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            for n, cin, cout, h, w, og, scale in [(1, 5, 3, 4, 3, 5, 3.0), (2, 40, 70, 9, 10, 5, 30.0),
                                                  (1, 12, 8, 7, 5, 3, 1.0)]:
                def r(*s):
                    return torch.randn(*s, generator=gen).to(dtype).contiguous(memory_format=layout) \
                        if len(s) == 4 else torch.randn(*s, generator=gen).to(dtype)

                x, off = r(n, cin, h, w), (scale * r(n, 2 * og * 9, h, w)).contiguous(memory_format=layout)
                m, wt, b = r(n, og * 9, h, w), r(cout, cin, 3, 3), r(cout)
                x, off, m, wt, b = _g(x, off, m, wt, b)
                args = (x, off, wt, b, 1, 1, 1, 1, 1, 1, m)
                y = B.deform_conv2d(*args)
                B.deform_conv2d_backward(*_g(torch.randn_like(y)), *args)


def sft():
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            for c, h, w, groups in [(8, 5, 7, 4), (96, 3, 5, 32), (258, 2, 3, 6)]:
                def r(*s):
                    return torch.randn(*s, generator=gen).to(dtype).contiguous(memory_format=layout)

                x, gy = _g(r(2, c, h, w), r(2, c, h, w))
                for gamma, beta in [(r(2, c, h, w), r(2, c, h, w)), (r(2, c, 1, 1), r(2, c, 1, 1)),
                                    (r(2, 2 * c, h, w), None)]:
                    gamma, beta = _g(gamma, beta)
                    B.sft_modulate(x, gamma, beta, 1, 0.0)
                    B.sft_modulate_backward(gy, x, gamma, beta, 1, 0.0)
                    wt, bs = _g(torch.randn(c).to(dtype), torch.randn(c).to(dtype))
                    _, mean, rstd = B.sft_group_norm(x, gamma, beta, groups, wt, bs, 1e-5, 1, 0.0)
                    B.sft_group_norm_backward(gy, x, gamma, beta, groups, wt, bs, *_g(mean, rstd), 1e-5, 1, 0.0)


def denoise():
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in [(1, 3, 5, 7), (3, 3, 40, 41)]:
            x, F, y = _g(*(torch.randn(*shape, generator=gen).to(dtype) for _ in range(3)))
            s, s2 = _g(torch.rand(shape[0]) + 0.5, torch.rand(shape[0]) + 0.1)
            seed = guarded(torch.tensor([5], dtype=torch.int64))
            D, d = B.denoise_combine(x, F, s, 0.5, 0.002, "edm", True)
            B.denoise_combine_backward(*_g(D, d), x, F, s, 0.5, 0.002, "edm", True, True)
            xe, de = B.edm_euler_update(x, F, s, s2, 0.5)
            B.edm_heun_update(x, *_g(de, xe), F, s, s2, 0.5)
            B.add_noise(x, s2, s, 1.0, None, seed)
            B.cm_update(x, F, s, 0.002, 0.5, s2, 1.0, None, seed)
            B.cm_update_backward(guarded(torch.randn(*shape).to(dtype)), x, F, s, 0.002, 0.5, 1.0)
            loss = B.edm_loss(x, F, y, s, 0.5)
            B.edm_loss_backward(guarded(torch.ones_like(loss)), x, F, y, s, 0.5)


def main(argv):
    global WHERE
    assert _extension.cuda_extension_error() is None, _extension.cuda_extension_error()
    (arg,) = argv
    WHERE = arg.removeprefix("control-")
    assert WHERE in ("end", "start"), arg
    if arg.startswith("control-"):  # the guard works: the byte just outside a guarded tensor is unreadable
        t = guarded(torch.zeros(3))
        ctypes.string_at(t.data_ptr() + (t.numel() * t.element_size() if WHERE == "end" else -1), 1)
        return 0
    B.set_simt_emulation(1)
    for family in (deform_conv, sft, denoise):
        family()
        print(family.__name__, "ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
