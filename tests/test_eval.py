"""``burstkern eval`` (burstkern.evaluate): runs on the fixture SyntheticBurst-val and BurstSR datasets and on the
synthetic held-out set; per-burst CSV, summary with confidence intervals, --save-images, resume from the CSV,
BurstSR aligned metrics only with a flow network (a plugged-in one here), LPIPS unavailable without its weights,
one-line errors with exit status 2. Tiny random-weight checkpoints, 12x12 RAW frames; CPU, no network."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch
import torch.nn.functional as F

from burstkern import evaluate as ev
from tests.test_benchmark_data import burstsr_fixture, fake_exifread, synthetic_val_fixture  # noqa: F401


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from burstkern.models import EBSRD
    from burstkern.train import save_checkpoint

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny_random.pt")
    save_checkpoint(path, EBSRD("tiny"))
    return path


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_eval(capsys, *argv):
    rc = ev.main(list(argv) + ["--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def zero_flow():
    """A plugged-in 'flow network' for the tests: no motion."""
    return lambda pred, gt: torch.zeros(pred.shape[0], 2, *pred.shape[-2:], dtype=pred.dtype, device=pred.device)


def test_eval_synthetic_val_fixture_csv_summary_images_and_resume(tmp_path, capsys, checkpoint):
    data = tmp_path / "synval"
    synthetic_val_fixture(str(data), n_bursts=3, h=12, w=12)
    csv_path = str(tmp_path / "rows.csv")
    common = ["--data", str(data), "--checkpoint", checkpoint, "--csv", csv_path, "--batch-size", "2",
              "--method", "initial,one-step,teacher", "--steps", "2"]
    rc, out, err = run_eval(capsys, *common, "--limit", "2", "--save-images", str(tmp_path / "img"))
    assert rc == 0, err
    assert "synthetic-val" in out and "LPIPS unavailable" in out and "95 % t-interval" in out
    rows = rows_of(csv_path)
    assert len(rows) == 2 * 3 and {r["method"] for r in rows} == {"initial", "one-step", "teacher"}
    assert {r["burst"] for r in rows} == {"0000", "0001"}
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 and r["lpips"] == "unavailable"
        assert float(r["seconds"]) > 0 and r["steps"] == ("2" if r["method"] == "teacher" else "")
    assert os.path.isfile(tmp_path / "img" / "0001_teacher2.png")
    assert os.path.isfile(tmp_path / "img" / "0000_one-step_srgb.png")
    from burstkern.data.benchmarks import read_png_bgr
    assert read_png_bgr(str(tmp_path / "img" / "0000_initial.png")).shape == (96, 96, 3)

    # resume: the third burst only, and the same numbers as one uninterrupted run
    rc, out, err = run_eval(capsys, *common)
    assert rc == 0, err and "2 done" in out and "1 to run" in out
    resumed = rows_of(csv_path)
    assert len(resumed) == 3 * 3
    fresh = str(tmp_path / "fresh.csv")
    rc, _, err = run_eval(capsys, *[a if a != csv_path else fresh for a in common])
    assert rc == 0, err
    key = lambda r: (r["index"], r["method"])  # noqa: E731
    a = {key(r): (r["psnr"], r["ssim"]) for r in resumed}
    b = {key(r): (r["psnr"], r["ssim"]) for r in rows_of(fresh)}
    assert a == b
    # nothing left: no model call, same table
    rc, out, _ = run_eval(capsys, *common)
    assert rc == 0 and "0 to run" in out and len(rows_of(csv_path)) == 9
    # a CSV of another configuration is refused, not mixed
    rc, _, err = run_eval(capsys, *common, "--seed", "1")
    assert rc == 2 and "holds rows of another run" in err and csv_path in err and "Traceback" not in err


def test_eval_burstsr_fixture_aligned_metrics_unavailable_without_flow_net(tmp_path, capsys, checkpoint,
                                                                           fake_exifread):
    burstsr_fixture(str(tmp_path / "bsr"), fake_exifread, h=12, w=12)
    csv_path = str(tmp_path / "bsr.csv")
    rc, out, err = run_eval(capsys, "--data", str(tmp_path / "bsr"), "--checkpoint", checkpoint, "--csv", csv_path,
                            "--method", "initial", "--burst-size", "14")
    assert rc == 0, err
    assert "BurstSR aligned PSNR / SSIM / LPIPS unavailable" in out and "--flow-net" in out
    rows = rows_of(csv_path)
    assert len(rows) == 2 and all(r["psnr"] == r["ssim"] == r["lpips"] == "unavailable" for r in rows)
    assert all(float(r["seconds"]) > 0 and r["format"] == "burstsr" and r["burst_size"] == "14" for r in rows)
    # with a plugged-in flow network the aligned metrics are computed
    rc, out, err = run_eval(capsys, "--data", str(tmp_path / "bsr"), "--format", "burstsr", "--checkpoint",
                            checkpoint, "--csv", str(tmp_path / "bsr2.csv"), "--method", "baseline",
                            "--flow-net", "tests.test_eval:zero_flow", "--border", "8")
    assert rc == 0, err
    rows = rows_of(str(tmp_path / "bsr2.csv"))
    assert len(rows) == 2 and all(not math.isinf(float(r["psnr"])) and r["ssim"] != "unavailable" for r in rows)


def half_baseline(model, burst, steps, generator):
    """A plugged-in method for the tests: half the aligned baseline."""
    from burstkern.models.baseline import aligned_baseline

    return aligned_baseline(burst, model.config.scale // 2) * 0.5


def test_eval_plugged_in_method(tmp_path, capsys, checkpoint):
    data = tmp_path / "synval"
    synthetic_val_fixture(str(data), n_bursts=1, h=12, w=12)
    csv_path = str(tmp_path / "p.csv")
    rc, out, err = run_eval(capsys, "--data", str(data), "--checkpoint", checkpoint, "--csv", csv_path,
                            "--method", "baseline,tests.test_eval:half_baseline")
    assert rc == 0, err
    rows = {r["method"]: float(r["psnr"]) for r in rows_of(csv_path)}
    assert set(rows) == {"baseline", "tests.test_eval:half_baseline"} and "tests.test_eval:half_baseline" in out
    rc, _, err = run_eval(capsys, "--data", str(data), "--checkpoint", checkpoint, "--csv", csv_path,
                          "--method", "nosuchmodule:fn")
    assert rc == 2 and "cannot import" in err


def test_spatial_color_aligner_recovers_a_colour_matrix():
    torch.manual_seed(0)
    h = 160
    pred = F.interpolate(torch.rand(1, 3, 10, 10), size=(h, h), mode="bicubic", align_corners=False).clamp(0, 1)
    m = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.2, 0.7]])
    gt = torch.einsum("ij,bjhw->bihw", m, pred)
    small = F.interpolate(pred, scale_factor=1 / 8, mode="bilinear", align_corners=False)
    burst = torch.stack((small[:, 0], small[:, 1], small[:, 1], small[:, 2]), 1)[:, None]   # [1, 1, 4, 8, 8]
    aligned, valid = ev.SpatialColorAligner(zero_flow())(pred, gt, burst)
    assert valid.shape == (1, 1, h, h) and valid.float().mean() > 0.25 and bool(valid[0, 0, h // 2, h // 2])
    assert ev.masked_psnr(aligned, gt, valid, border=4).item() > 40
    with pytest.raises(ev.AlignmentUnavailable):
        ev.SpatialColorAligner(None)


def test_eval_synthetic_heldout_with_shipped_or_clear_message(tmp_path, capsys):
    from burstkern import weights

    csv_path = str(tmp_path / "h.csv")
    rc, out, err = run_eval(capsys, "--format", "synthetic", "--limit", "1", "--method", "initial", "--csv", csv_path)
    if os.path.isfile(weights.path("tiny")):
        assert rc == 0, err
        assert "shipped:tiny" in out and len(rows_of(csv_path)) == 1
    else:
        assert rc == 2 and "shipped weights 'tiny'" in err and "--checkpoint" in err
    rc, out, err = run_eval(capsys, "--format", "synthetic", "--limit", "1", "--method", "baseline", "--csv",
                            str(tmp_path / "r.csv"), "--random-weights")
    assert rc == 0, err and "synthetic heldout" in out


@pytest.mark.parametrize("argv, needle", [
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--data", "{empty}"], "neither a SyntheticBurst"),
    (["--data", "{empty}", "--format", "synthetic-val"], "bursts"),
    (["--method", "magic"], "--method 'magic'"),
    (["--steps", "0"], "--steps"),
    (["--format", "nope"], "--format 'nope'"),
    (["--checkpoint", "{empty}/missing.pt"], "missing.pt"),
    (["--bogus-flag"], "unrecognized arguments"),
])
def test_eval_errors_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    rc, _, err = run_eval(capsys, *argv, "--random-weights" if "--checkpoint" not in argv else "--limit=1",
                          "--csv", str(tmp_path / "x.csv"))
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(" ") and "Warning" not in ln]
    assert len(lines) == 1 and lines[0].startswith("burstkern eval: error:") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_missing_frame_names_the_path(tmp_path, capsys, checkpoint, workers):
    data = tmp_path / "synval"
    synthetic_val_fixture(str(data), n_bursts=1, h=12, w=12)
    os.remove(data / "bursts" / "0000" / "im_raw_02.png")
    rc, _, err = run_eval(capsys, "--data", str(data), "--checkpoint", checkpoint, "--csv", str(tmp_path / "m.csv"),
                          "--method", "initial", "--workers", str(workers))
    assert rc == 2 and str(data / "bursts" / "0000" / "im_raw_02.png") in err and "Traceback" not in err
    assert len([ln for ln in err.strip().splitlines() if ln.startswith("burstkern eval")]) == 1


def test_mean_ci_and_summary():
    m, ci, n = ev.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and ci == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert math.isnan(ev.mean_ci([5.0])[1]) and ev.mean_ci([])[2] == 0
    assert ev._t975(35) == pytest.approx(2.030, abs=0.003)
    s = ev.summarize([{"method": "initial", "steps": "", "psnr": "30", "ssim": "0.9", "lpips": "unavailable",
                       "seconds": "0.1"}] * 2)
    assert s[0]["lpips"] == "unavailable" and s[0]["psnr"][0] == 30.0
    assert "unavailable" in ev.format_summary(s)
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.1, 0.99999])
    assert ev.quantize(x).tolist() == [0.0, 0.5, 1.0, 1.0, 0.0, math.floor(0.99999 * 2 ** 14) / 2 ** 14]


def test_bare_eval_is_the_model_card_table(monkeypatch):
    import burstkern.demo as demo

    seen = []
    monkeypatch.setattr(demo, "eval_main", lambda argv: seen.append(list(argv)) or 0, raising=False)
    assert ev.main(["--checkpoint", "x.pt", "--teacher-steps", "4", "--split", "val"]) == 0
    assert ev.main([]) == 0
    assert seen == [["--checkpoint", "x.pt", "--teacher-steps", "4", "--split", "val"], []]
    assert ev._is_heldout_table(["--seed", "1"]) and not ev._is_heldout_table(["--format=synthetic"])
    assert not ev._is_heldout_table(["--help"])


def test_burstkern_eval_command_is_wired(tmp_path, capsys):
    from burstkern.cli import main as cli_main

    csv_path = str(tmp_path / "cli.csv")
    assert cli_main(["eval", "--format", "synthetic", "--random-weights", "--limit", "1", "--method", "baseline",
                     "--csv", csv_path, "--no-progress"]) == 0
    assert "per-burst rows" in capsys.readouterr().out and len(rows_of(csv_path)) == 1
    from burstkern.data import BurstSR, SyntheticBurstVal  # exported
    assert SyntheticBurstVal.format == "synthetic-val" and BurstSR.format == "burstsr"
