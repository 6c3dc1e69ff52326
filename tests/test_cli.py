"""`burstkern info` and `python -m burstkern info`."""

import os
import shutil
import subprocess
import sys

import pytest

from burstkern.registry import registered_ops
from burstkern.cli import main


def test_info_lists_every_op_and_backend(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as a user's CPU machine: Triton cannot run CPU tensors
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "burstkern._C", "reference", "native", "GPU"):
        assert word in out
    for op in registered_ops():
        assert op.startswith("_") or op in out
    assert "no [" in out  # Triton cannot run CPU tensors outside its interpreter: the reason is footnoted, once
    footnotes = [ln for ln in out.splitlines() if ln.lstrip().startswith("[")]
    assert any("triton: device not supported" in ln for ln in footnotes), footnotes
    assert len(footnotes) == len(set(footnotes))


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "eval", "sr", "info"):
        assert cmd in out
    for bogus in ("frobnicate", "bogus"):
        assert main([bogus]) == 2
        err = capsys.readouterr().err
        assert f"unknown command '{bogus}'" in err and "usage" in err


def test_demo_is_wired(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_python_dash_m():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-m", "burstkern", "info"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "deform_conv2d" in res.stdout


@pytest.mark.skipif(shutil.which("burstkern") is None, reason="console script not installed (pip install -e .)")
def test_console_script():
    res = subprocess.run(["burstkern", "info"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "burstkern" in res.stdout


# ----------------------------------------------------------------------------------------------
# burstkern sr: a burst written in each supported format
# ----------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    from burstkern.models import EBSRD
    from burstkern.train import save_checkpoint

    torch.manual_seed(0)
    model = EBSRD("tiny", enc_ch=8, deform_groups=2, unet_ch=8, num_groups=2, spade_hidden=8, burst_size=2)
    path = tmp_path_factory.mktemp("ck") / "micro.pt"
    save_checkpoint(path, model)
    return str(path)


@pytest.fixture(scope="module")
def burst():
    from burstkern.data import synthesize_burst

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 112), torch.linspace(0, 1, 160), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(9 * xx), 0.5 + 0.3 * torch.cos(7 * yy), 0.3 + 0.3 * xx * yy])
    return synthesize_burst(img, 3, generator=g)["burst"]  # [3, 4, 8, 14]


def _mosaic(packed):  # [4, h, w] -> [2h, 2w] RGGB
    h, w = packed.shape[-2:]
    m = torch.zeros(2 * h, 2 * w)
    m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2] = packed
    return m


def _run_sr(args, capsys):
    rc = main(["sr", "--no-progress", "--tile", "8", "--overlap", "2"] + args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _check_png(path, size):
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size, im.size
        a = np.asarray(im.convert("RGB")).astype(float)
    assert a.std() > 2  # an image, not a blank


@pytest.mark.parametrize("fmt", ["png16", "tiff16", "npy", "pt", "rgb_png", "rgb_jpeg"])
def test_sr_reads_each_format(fmt, tmp_path, burst, micro_ckpt, capsys):
    from PIL import Image
    d = tmp_path / "in"
    d.mkdir()
    black, white = 64, 4095
    extra = []
    if fmt in ("png16", "tiff16"):
        for i, fr in enumerate(burst):
            m = (_mosaic(fr) * (white - black) + black).round().numpy().astype(np.uint16)
            Image.fromarray(m).save(d / f"f{i}.{'png' if fmt == 'png16' else 'tif'}")
        extra = ["--black-level", str(black), "--white-level", str(white)]
        frames = [str(d)]
    elif fmt == "npy":
        np.save(d / "burst.npy", burst.numpy())
        frames = [str(d / "burst.npy")]
    elif fmt == "pt":
        torch.save(burst.clone(), d / "burst.pt")
        frames = [str(d / "burst.pt")]
    else:
        from burstkern.data import process
        from burstkern.data.io import neutral_isp_params
        for i, fr in enumerate(burst):
            rgb = torch.nn.functional.interpolate(process(fr[None].double(), neutral_isp_params())[None].float()[0],
                                                  scale_factor=2)[0]
            a = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"f{i}.{'png' if fmt == 'rgb_png' else 'jpg'}")
        frames = sorted(str(p) for p in d.iterdir())
    out = tmp_path / "sr.png"
    rc, text, err = _run_sr(frames + extra + ["--checkpoint", micro_ckpt, "-o", str(out)], capsys)
    assert rc == 0, err
    assert "wrote" in text and str(out) in text and ("RGB" in text if fmt.startswith("rgb") else "RAW" in text)
    _check_png(out, (8 * 14, 8 * 8))


def test_sr_linear_output_tiles_and_methods(tmp_path, burst, micro_ckpt, capsys):
    np.save(tmp_path / "b.npy", burst.numpy())
    out = tmp_path / "lin.png"
    rc, text, err = _run_sr([str(tmp_path / "b.npy"), "--linear", "--checkpoint", micro_ckpt, "-o", str(out)],
                            capsys)
    assert rc == 0, err
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (112, 64) and im.mode.startswith(("I", "RGB"))
    # tiling: the tiled x_init equals the whole-image x_init away from tile seams only within blending error
    from burstkern.models import EBSRD
    from burstkern.models.tiling import super_resolve, tile_starts
    model = EBSRD.from_checkpoint(micro_ckpt).eval()
    whole = super_resolve(model, burst[None], method="baseline", tile=64)
    tiled = super_resolve(model, burst[None], method="baseline", tile=8, overlap=2)
    assert whole.shape == tiled.shape == (3, 64, 112)
    assert (whole - tiled).abs().mean() < 0.02
    assert tile_starts(14, 8, 2) == [0, 6] and tile_starts(8, 8, 2) == [0]


def test_sr_errors_name_the_file(tmp_path, burst, micro_ckpt, capsys):
    from PIL import Image
    ck = ["--checkpoint", micro_ckpt, "-o", str(tmp_path / "o.png")]
    # different sizes
    d = tmp_path / "sizes"
    d.mkdir()
    Image.fromarray(np.zeros((16, 28), np.uint16)).save(d / "a.png")
    Image.fromarray(np.zeros((16, 24), np.uint16)).save(d / "b.png")
    rc, _, err = _run_sr([str(d)] + ck, capsys)
    assert rc == 2 and "b.png" in err and "differs" in err
    # odd mosaic
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((15, 28), np.uint16)).save(odd)
    rc, _, err = _run_sr([str(odd), str(odd)] + ck, capsys)
    assert rc == 2 and "odd.png" in err and "even" in err
    # unknown format
    bad = tmp_path / "frame.xyz"
    bad.write_text("?")
    rc, _, err = _run_sr([str(bad), str(bad)] + ck, capsys)
    assert rc == 2 and "frame.xyz" in err and "unknown frame format" in err
    # too few frames
    np.save(tmp_path / "one.npy", burst[:1].numpy())
    rc, _, err = _run_sr([str(tmp_path / "one.npy")] + ck, capsys)
    assert rc == 2 and "one.npy" in err and "at least 2" in err
    # wrong array shape, corrupt image, missing file
    np.save(tmp_path / "shape.npy", np.zeros((3, 3, 8, 8), np.float32))
    rc, _, err = _run_sr([str(tmp_path / "shape.npy")] + ck, capsys)
    assert rc == 2 and "shape.npy" in err and "[T, 4, h, w]" in err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    rc, _, err = _run_sr([str(tmp_path / "broken.png"), str(tmp_path / "broken.png")] + ck, capsys)
    assert rc == 2 and "broken.png" in err
    rc, _, err = _run_sr([str(tmp_path / "missing.png"), str(tmp_path / "missing.png")] + ck, capsys)
    assert rc == 2 and "missing.png" in err and "no such file" in err
    for e in (err,):
        assert "Traceback" not in e
