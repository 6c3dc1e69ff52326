"""E-BSRD training stages (overfit checks on a fixed batch), checkpoints, `burstkern demo` and the training script.

Every stage is checked on a loss measured with FIXED noise levels and noise before and after training (the
per-step training losses draw fresh σ and ε, so they are too noisy to compare on their own), that it routes
through the fused burstkern ops, and that it leaves the modules of the other stages untouched.
"""

import copy
import math
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import burstkern
from burstkern import ops
from burstkern import train as T
from burstkern.data import SyntheticBurstDataset
from burstkern.demo import main as demo_main
from burstkern.demo import run_demo
from burstkern.models import EBSRD
from utils import requires_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "python", "train_ebsrd.py")
# A model smaller than "tiny" (same structure) so that ~30 steps of each stage take seconds on 2 CPU cores.
MICRO = dict(enc_ch=8, deform_groups=2, unet_ch=8, num_groups=2, spade_hidden=8, burst_size=2)


def micro_model(seed=0, perturb=()):
    """The micro model; the zero-initialised output convs of the U-Nets named in ``perturb`` made random, so that
    network is non-trivial from the first step."""
    torch.manual_seed(seed)
    model = EBSRD("tiny", **MICRO)
    with torch.no_grad():
        for name in perturb:
            getattr(model, name).conv_out.weight.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module: the micro models' ops are tiny, and on the 2-core CI machine shared
    with other jobs two spinning OpenMP threads made these tests ~10x slower (measured 43 s vs 9 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch():
    """Two real synthetic bursts (bundled training images): burst [2, 2, 4, 4, 4], gt [2, 3, 32, 32]."""
    ds = SyntheticBurstDataset(None, crop=80, burst_size=MICRO["burst_size"], seed=0, length=2)
    b = torch.utils.data.default_collate([ds[0], ds[1]])
    return {"burst": b["burst"], "gt": b["gt"]}


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} changed"


def assert_history(h, steps):
    assert isinstance(h, list) and len(h) == steps
    assert all(isinstance(v, float) for v in h)
    assert all(torch.isfinite(torch.tensor(h))), h


def fixed_noise(like, seed=1):
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# stages: overfit a fixed batch
# ----------------------------------------------------------------------------------------------
def test_train_initial_overfits_and_touches_only_encoder_and_head(batch):
    model = micro_model()
    burst, y = batch["burst"], T.to_model_range(batch["gt"])
    frozen = {n: state(getattr(model, n)) for n in ("denoiser", "student")}
    enc0 = state(model.encoder)
    with torch.no_grad():
        before = T.initial_loss(model, burst, y).item()
    h = T.train_initial(model, [batch], 30, lr=3e-3, progress=False)
    with torch.no_grad():
        after = T.initial_loss(model, burst, y).item()
    assert_history(h, 30)
    assert h[0] == pytest.approx(before, rel=1e-5)  # the first step's loss is the untrained model's
    assert after < 0.8 * before, (before, after)
    assert sum(h[-5:]) < sum(h[:5])
    for n, s in frozen.items():
        assert_same_state(s, state(getattr(model, n)), n)
    assert any(not torch.equal(enc0[k], v) for k, v in model.encoder.state_dict().items()), "encoder not trained"


def test_train_denoiser_overfits_with_a_frozen_encoder(batch):
    model = micro_model()
    burst, y = batch["burst"], T.to_model_range(batch["gt"])
    frozen = {n: state(getattr(model, n)) for n in ("encoder", "head", "student")}
    sigma, noise = torch.tensor([0.3, 1.0]), fixed_noise(y)
    with torch.no_grad():
        before = T.denoiser_loss(model, burst, y, sigma, noise).item()
    h = T.train_denoiser(model, [batch], 40, lr=3e-3, progress=False, sigma_dist="lognormal",
                         lr_schedule="constant")
    with torch.no_grad():
        after = T.denoiser_loss(model, burst, y, sigma, noise).item()
    assert_history(h, 40)
    assert after < 0.8 * before, (before, after)
    for n, s in frozen.items():
        assert_same_state(s, state(getattr(model, n)), n)
    assert all(p.requires_grad for p in model.parameters())  # requires_grad restored after freezing


def test_denoiser_loss_is_the_edm_loss_of_the_preconditioned_network(batch):
    """denoiser_loss == λ(σ)·(c_skip·x + c_out·F − y)² written out in plain torch (a transcription check)."""
    model = micro_model(perturb=("denoiser",))
    burst, y = batch["burst"], T.to_model_range(batch["gt"])
    sigma, n = torch.tensor([0.05, 0.7]), fixed_noise(y)
    with torch.no_grad():
        got = T.denoiser_loss(model, burst, y, sigma, n).item()
        s = sigma.view(-1, 1, 1, 1).double()
        sd = model.config.sigma_data
        x = y.double() + s * n.double()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        F = model.denoiser((x * c_in).float(), (sigma.log() / 4), model.encoder(burst)).double()
        D = sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / (s ** 2 + sd ** 2).sqrt() * F
        ref = ((s ** 2 + sd ** 2) / (s * sd) ** 2 * (D - y.double()) ** 2).mean().item()
    assert got == pytest.approx(ref, rel=1e-4)


def test_distill_student_overfits_and_keeps_the_teacher(batch):
    model = micro_model(perturb=("denoiser", "student"))
    burst, y = batch["burst"], T.to_model_range(batch["gt"])
    cfg = model.config
    frozen = {n: state(getattr(model, n)) for n in ("encoder", "head", "denoiser")}
    sched = T.distill_schedule(5, cfg.cm_sigma_min, cfg.sigma_tau)
    noise = fixed_noise(y)

    def self_consistency():  # the student against itself across one teacher Heun step, every adjacent pair
        with torch.no_grad():
            return sum(T.consistency_loss(model, model.student, burst, y, torch.tensor([i, i]), noise, sched,
                                          cfg.cm_sigma_min).item() for i in range(4))

    before = self_consistency()
    h = T.distill_student(model, [batch], 30, lr=1e-3, init_from_teacher=False, progress=False, target="cd",
                          lr_schedule="constant")
    after = self_consistency()
    assert_history(h, 30)
    assert after < 0.25 * before, (before, after)
    assert sum(h[-5:]) < sum(h[:5])
    for n, s in frozen.items():
        assert_same_state(s, state(getattr(model, n)), n)


def test_teacher_sigmas_concentrate_where_sampling_uses_them():
    g = torch.Generator().manual_seed(0)
    s = T.sample_sigmas(4000, "loguniform", g, "cpu", sigma_range=(0.002, 0.03))
    assert float(s.min()) >= 0.002 and float(s.max()) <= 0.03
    assert abs(float(s.log().mean()) - (math.log(0.002) + math.log(0.03)) / 2) < 0.05
    edm = T.sample_sigmas(4000, "lognormal", g, "cpu")
    assert float((edm <= 0.03).float().mean()) < 0.05  # EDM's default: ~3% of its samples where they are used
    with pytest.raises(ValueError, match="lognormal"):
        T.sample_sigmas(1, "uniform", g, "cpu")


def test_student_distilled_at_sigma_tau_onto_the_teacher_solution(batch):
    """target='teacher': x_τ = x_init + σ_τ·ε, the target the teacher's Heun solution from the same x_τ; training
    lowers that loss on a fixed batch and noise, and leaves the teacher, encoder and head alone."""
    model = micro_model(perturb=("denoiser",))
    burst = batch["burst"]
    frozen = {n: state(getattr(model, n)) for n in ("encoder", "head", "denoiser")}
    with torch.no_grad():
        x_init, cond = model.initial(burst)
    noise = fixed_noise(x_init)

    def loss():
        with torch.no_grad():
            return T.teacher_distill_loss(model, x_init, cond, noise, 2).item()

    with torch.no_grad():
        model.student.load_state_dict(model.denoiser.state_dict())
        torch.nn.init.zeros_(model.student.conv_out.weight)
    before = loss()
    h = T.distill_student(model, [batch], 30, lr=1e-3, init_from_teacher=False, progress=False, target_steps=2,
                          lr_schedule="constant")
    assert_history(h, 30)
    assert loss() < 0.5 * before, (before, loss())
    for n, s in frozen.items():
        assert_same_state(s, state(getattr(model, n)), n)
    # the loss is built from the one-step sampler's own pieces: a perfect student (f = target) scores 0
    from burstkern.models.samplers import edm_heun_sampler
    sig = torch.full((2,), model.config.sigma_tau)
    x_tau = ops.add_noise(x_init, sig, noise=noise)
    with torch.no_grad():
        tgt = edm_heun_sampler(lambda a, c: model.denoiser(a, c, cond), x_tau, num_steps=2, sigma_min=1e-8,
                               sigma_max=0.03, start="noised")
        tgt2 = edm_heun_sampler(lambda a, c: model.denoiser(a, c, cond), x_tau, num_steps=2, sigma_min=1e-8,
                                sigma_max=0.03, start="noised")
    assert torch.equal(tgt, tgt2) and tgt.shape == x_init.shape


def test_lr_schedule():
    assert T.lr_at(0, 1000, 1.0) == pytest.approx(1 / 50)
    assert T.lr_at(49, 1000, 1.0) == pytest.approx(1.0)
    assert T.lr_at(999, 1000, 1.0) == pytest.approx(0.05, abs=1e-3)
    assert T.lr_at(500, 1000, 1.0, "constant") == 1.0
    vals = [T.lr_at(i, 1000, 1.0) for i in range(50, 1000)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_distill_starts_from_the_teacher_and_schedule_spans_sigma_tau_to_sigma_min():
    model = micro_model(perturb=("denoiser",))
    assert T.distill_student(model, [], 0, progress=False) == []  # 0 steps: nothing drawn from the loader
    assert_same_state(state(model.denoiser), state(model.student), "student vs teacher")
    cfg = model.config
    sched = T.distill_schedule(5, cfg.cm_sigma_min, cfg.sigma_tau)
    assert sched.shape == (5,)
    assert sched[0].item() == pytest.approx(cfg.sigma_tau) and sched[0].item() == pytest.approx(0.03)
    assert sched[-1].item() == pytest.approx(cfg.cm_sigma_min)
    assert bool((sched[1:] < sched[:-1]).all())


def test_consistency_target_at_sigma_min_is_the_teacher_heun_step(batch):
    """At the last pair σ' = σ_min the target is exactly the teacher's Heun step (boundary f(x, σ_min) = x), so
    the uniform loss equals mean((f_student − heun)²), built here from the plain EDM formulas."""
    model = micro_model(perturb=("denoiser", "student"))
    burst, y = batch["burst"], T.to_model_range(batch["gt"])
    cfg, sd = model.config, model.config.sigma_data
    sched = T.distill_schedule(5, cfg.cm_sigma_min, cfg.sigma_tau)
    n = fixed_noise(y)
    with torch.no_grad():
        cond = model.encoder(burst)
        got = T.consistency_loss(model, copy.deepcopy(model.student), burst, y, torch.tensor([3, 3]), n, sched,
                                 cfg.cm_sigma_min, weighting="uniform").item()
        s, s2 = sched[3].double(), sched[4].double()

        def D(x, sig):
            c_in = 1 / (sig ** 2 + sd ** 2).sqrt()
            F = model.denoiser((x * c_in).float(), (sig.log() / 4).float().expand(2), cond).double()
            return sd ** 2 / (sig ** 2 + sd ** 2) * x + sig * sd / (sig ** 2 + sd ** 2).sqrt() * F

        x = y.double() + s * n.double()
        d = (x - D(x, s)) / s
        xe = x + (s2 - s) * d
        heun = x + (s2 - s) * (d + (xe - D(xe, s2)) / s2) / 2
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        Fs = model.student((x * c_in).float(), (s.log() / 4).float().expand(2), cond).double()
        smin = cfg.cm_sigma_min
        f = sd ** 2 / ((s - smin) ** 2 + sd ** 2) * x + (s - smin) * sd / (s ** 2 + sd ** 2).sqrt() * Fs
        ref = ((f - heun) ** 2).mean().item()
    assert got == pytest.approx(ref, rel=1e-3)


def test_stages_run_through_the_fused_ops(batch, monkeypatch):
    calls = {}
    for name in ("add_noise", "edm_loss", "edm_euler_update", "edm_heun_update", "cm_update", "edm_scalings",
                 "cm_scalings"):
        real = getattr(ops, name)

        def wrapper(*a, _real=real, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a, **k)

        monkeypatch.setattr(ops, name, wrapper)
    model = micro_model()
    T.train_denoiser(model, [batch], 1, progress=False)
    assert calls.get("edm_loss") == 1 and calls.get("add_noise") == 1 and calls.get("edm_scalings") == 1
    calls.clear()
    T.distill_student(model, [batch], 1, progress=False, target="cd")
    assert calls.get("edm_euler_update") == 1 and calls.get("edm_heun_update") == 1
    assert calls.get("cm_update") == 2 and calls.get("cm_scalings") == 2  # student and target
    calls.clear()
    T.distill_student(model, [batch], 1, progress=False, target_steps=2)  # teacher target: 2 Heun steps
    assert calls.get("edm_euler_update") == 2 and calls.get("edm_heun_update") == 1
    assert calls.get("cm_update") == 1 and calls.get("add_noise") == 1


def test_stages_are_seeded(batch):
    runs = []
    for _ in range(2):
        model = micro_model()
        runs.append(T.train_denoiser(model, [batch], 2, seed=3, progress=False)
                    + T.distill_student(model, [batch], 2, seed=3, progress=False))
    assert runs[0] == runs[1]
    other = T.train_denoiser(micro_model(), [batch], 2, seed=4, progress=False)
    assert other != runs[0][:2]


def test_bad_arguments(batch):
    model = micro_model()
    with pytest.raises(ValueError, match="steps"):
        T.train_initial(model, [batch], -1, progress=False)
    with pytest.raises(TypeError, match="'burst'"):
        T.train_initial(model, [(batch["burst"], batch["gt"])], 1, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        T.train_denoiser(model, [], 1, progress=False)
    with pytest.raises(ValueError, match="amp=True .*CUDA"):
        T.train_denoiser(model, [batch], 1, amp=True, device="cpu", progress=False)
    with pytest.raises(ValueError, match="num_scales"):
        T.distill_student(model, [batch], 1, num_scales=1, progress=False)
    with pytest.raises(ValueError, match="weighting"):
        T.distill_student(model, [batch], 1, weighting="lpips", progress=False)
    with pytest.raises(ValueError, match="ema"):
        T.distill_student(model, [batch], 1, ema=1.0, progress=False)
    bad = {"burst": batch["burst"], "gt": batch["gt"][..., :16, :16]}
    with pytest.raises(ValueError, match="x_init"):
        T.train_initial(model, [bad], 1, progress=False)
    with pytest.raises(ValueError, match="no student"):
        T.distill_student(EBSRD("tiny", student=False, **MICRO), [batch], 1, progress=False)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path, batch):
    model = micro_model(perturb=("denoiser", "student")).eval()
    losses = {"initial": [1.0, 0.5], "denoiser": [], "student": [0.25]}
    path = tmp_path / "m.pt"
    T.save_checkpoint(path, model, losses=losses, preset="micro")
    loaded, ckpt = T.load_checkpoint(path)
    assert ckpt["losses"] == losses and ckpt["preset"] == "micro"
    assert loaded.config == model.config
    assert_same_state(state(model), state(loaded), "round trip")
    b = batch["burst"][:1]
    with torch.no_grad():
        a = model.one_step(b, generator=torch.Generator().manual_seed(0))
        c = loaded.eval().one_step(b, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, c)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a burstkern E-BSRD checkpoint"):
        T.load_checkpoint(tmp_path / "other.pt")


# ----------------------------------------------------------------------------------------------
# demo and script
# ----------------------------------------------------------------------------------------------
def test_demo_main_random_weights_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    png = tmp_path / "demo.png"
    rc = demo_main(["--random-weights", "--device", "cpu", "--backend", "reference", "--teacher-steps", "1",
                    "--out", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "RANDOM WEIGHTS" in out
    for word in ("PSNR", "SSIM", "HF ratio", "time ms", "aligned single-frame baseline", "x_init",
                 "one-step student", "teacher (1 Heun steps)", "backend reference", "(3, 128, 128)",
                 "figure written to", str(png)):
        assert word in out, word
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300


def test_demo_with_a_checkpoint_uses_its_config(tmp_path, capsys):
    model = micro_model(perturb=("denoiser", "student"))
    path = tmp_path / "m.pt"
    T.save_checkpoint(path, model, preset="micro")
    rows = run_demo(str(path), device="cpu", teacher_steps=0, out=None)
    out = capsys.readouterr().out
    assert "RANDOM" not in out and str(path) in out and "Heun steps)" not in out.split("---")[-1]
    assert [r["method"] for r in rows] == ["baseline", "x_init", "one-step"]
    for r in rows:
        assert r["image"].shape == (3, 128, 128)
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["ms"] > 0 and r["hf_ratio"] > 0


def test_demo_default_burst_is_a_heldout_burst():
    """`burstkern demo` with no --burst must not fail on a name missing from the held-out set (the names depend on
    neither the burst size nor the crop, so a small crop keeps this check ~0.1 s)."""
    from burstkern.data import heldout_bursts
    from burstkern.demo import DEFAULT_BURST

    assert DEFAULT_BURST in heldout_bursts(burst_size=1, crop=64)["names"]


def test_evaluate_set_per_burst_lists_match_the_means():
    from burstkern.demo import evaluate_set

    g = torch.Generator().manual_seed(0)
    bursts = {"burst": torch.rand(3, MICRO["burst_size"], 4, 16, 16, generator=g),
              "gt": torch.rand(3, 3, 128, 128, generator=g)}
    rows = evaluate_set(micro_model(perturb=("student",)), bursts, teacher_steps=0, chunk=2, device="cpu")
    assert [r["method"] for r in rows] == ["baseline", "x_init", "one-step"]
    for r in rows:
        assert all(len(r[k]) == 3 for k in ("psnr_each", "ssim_each", "hf_ratio_each")), r["method"]
        assert r["psnr"] == pytest.approx(sum(r["psnr_each"]) / 3)
        assert r["ssim"] == pytest.approx(sum(r["ssim_each"]) / 3)
        assert all(h > 0 for h in r["hf_ratio_each"])


def _bad_checkpoints(tmp_path):
    """(name, path) of files that are not usable checkpoints, each for its own reason."""
    good = tmp_path / "good.pt"
    T.save_checkpoint(good, micro_model(), preset="micro")
    raw = good.read_bytes()
    cases = {}
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    cases["text"] = tmp_path / "text.pt"
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.pt"
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = tmp_path / "trunc.pt"
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    cases["foreign"] = tmp_path / "foreign.pt"
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    cases["tensor"] = tmp_path / "tensor.pt"
    (tmp_path / "adir.pt").mkdir()
    cases["directory"] = tmp_path / "adir.pt"
    cases["missing file"] = tmp_path / "nope.pt"
    ck = torch.load(good, weights_only=True)
    for name, change in (("missing config key", lambda c: c["config"].pop("unet_ch")),
                         ("unknown config key", lambda c: c["config"].__setitem__("frobnicate", 3)),
                         ("absurd width", lambda c: c["config"].__setitem__("unet_ch", 4096)),
                         ("absurd burst", lambda c: c["config"].__setitem__("burst_size", -1)),
                         ("wrong type", lambda c: c["config"].__setitem__("enc_ch", "wide")),
                         ("no config", lambda c: c.pop("config")),
                         ("state mismatch", lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))))):
        c = copy.deepcopy(ck)
        change(c)
        p = tmp_path / (name.replace(" ", "_") + ".pt")
        torch.save(c, p)
        cases[name] = p
    return cases


def test_demo_refuses_unusable_checkpoints_with_one_line(tmp_path, capsys):
    import time

    for name, path in _bad_checkpoints(tmp_path).items():
        t0 = time.perf_counter()
        rc = demo_main(["--checkpoint", str(path), "--no-figure", "--teacher-steps", "0"])
        cap = capsys.readouterr()
        assert rc == 2, (name, cap.out, cap.err)
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("burstkern demo: error: "), (name, cap.err)
        assert "Traceback" not in cap.err and str(path) in lines[0], (name, lines)
        assert time.perf_counter() - t0 < 20, name  # absurd sizes are refused before anything is allocated
    # the library raises one exception type for all of them (FileNotFoundError for a missing path)
    from burstkern.models import CheckpointError, EBSRD
    with pytest.raises(CheckpointError, match="unet_ch"):
        EBSRD.from_checkpoint(tmp_path / "absurd_width.pt")


def test_demo_bad_arguments_exit_2(capsys):
    assert demo_main(["--random-weights", "--burst", "nope", "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("burstkern demo: error: --burst 'nope' is not in the held-out set; choose one of: "), err
    assert "deadleaves#" in err and len(err.strip().splitlines()) == 1
    assert demo_main(["--random-weights", "--teacher-steps", "-1", "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "burstkern demo: error: --teacher-steps must be an int >= 0, got -1", err


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "burstkern", "weights", "tiny.pt")),
                    reason="shipped weights not present")
def test_shipped_weights_load_weights_only_and_x_init_beats_the_baseline_by_1db_on_the_demo_burst():
    """The shipped 'tiny' weights: a small fp16 checkpoint that ``torch.load(weights_only=True)`` reads, loaded into
    the model bit for bit, with its validation-selected inference start noise (config inference_sigma_tau = 0.003,
    training sigma_tau 0.03), and on the demo's default held-out burst (``DEFAULT_BURST``) x_init is >= 1 dB above
    the aligned single-frame baseline with at least its SSIM (38.50 vs 37.17 dB, SSIM 0.919 vs 0.906 when written).

    Only x_init is compared with the baseline: one burst must not stand in for a claim about the one-step student
    (its set numbers are in the model card). No teacher, demo burst only: a few seconds on one CPU thread."""
    import io

    from burstkern import weights
    from burstkern.demo import DEFAULT_BURST

    path = weights.path("tiny")
    assert os.path.getsize(path) <= 4 * 2 ** 20
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    stored = {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}
    assert stored and all(v.dtype == torch.float16 for v in stored.values())
    model = EBSRD.from_pretrained("tiny")
    assert model.config.burst_size == ckpt["config"]["burst_size"] >= 2
    sel = ckpt["sigma_selection"]
    assert model.config.start_sigma == model.config.inference_sigma_tau == sel["selected"] == 0.003
    assert model.config.sigma_tau == sel["train_sigma_tau"] == 0.03
    assert sel["selected"] == max(sel["rows"], key=lambda r: r["psnr"])["sigma"] and sel["split"] == "validation"
    own = model.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in stored.items())  # the shipped weights, not an init

    out = io.StringIO()
    rows = {r["method"]: r for r in run_demo(out=None, teacher_steps=0, device="cpu", file=out)}
    text = out.getvalue()
    assert "shipped weights 'tiny'" in text and repr(DEFAULT_BURST) in text
    assert "held-out set (24 bursts)" in text  # the table recorded in the checkpoint is printed too
    assert set(rows) == {"baseline", "x_init", "one-step"}
    base, x_init = rows["baseline"], rows["x_init"]
    assert x_init["psnr"] >= base["psnr"] + 1.0, (x_init["psnr"], base["psnr"])
    assert x_init["ssim"] >= base["ssim"], (x_init["ssim"], base["ssim"])
    assert all(math.isfinite(r["psnr"]) and 0 <= r["ssim"] <= 1 for r in rows.values())
    with pytest.raises(ValueError, match="no shipped weights"):
        EBSRD.from_pretrained("enormous")


def test_script_help():
    res = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for opt in ("--preset", "--steps-initial", "--steps-denoiser", "--steps-student", "--out", "--amp"):
        assert opt in res.stdout


def test_script_trains_saves_and_evaluates(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_ebsrd", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "tiny.pt"
    backend_before = burstkern.get_backend()
    rc = script.main(["--steps-initial", "2", "--steps-denoiser", "2", "--steps-student", "1", "--crop", "80",
                      "--batch-size", "1", "--eval-teacher-steps", "1", "--skip-validation", "--no-progress",
                      "--no-select-sigma", "--backend", "reference", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    _, ckpt = T.load_checkpoint(out)
    assert [len(ckpt["losses"][k]) for k in ("initial", "denoiser", "student")] == [2, 2, 1]
    assert ckpt["preset"] == "tiny" and ckpt["args"]["crop"] == 80
    assert ckpt["heldout"]["bursts"] >= 24 and [r["method"] for r in ckpt["heldout"]["rows"]] == [
        "baseline", "x_init", "one-step", "teacher"]
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    for word in ("saved", "x_init", "one-step student", "teacher (1 Heun steps)", "PSNR", "heldout set"):
        assert word in text, word
    assert burstkern.get_backend() == backend_before  # --backend applied to the run only
    import json
    log = json.loads((tmp_path / "tiny.json").read_text())
    assert set(log["losses"]) == {"initial", "denoiser", "student"} and log["heldout"][0]["method"] == "baseline"
    assert (tmp_path / "tiny_curves.png").stat().st_size > 1000


def test_script_resumes_where_it_stopped(tmp_path, capsys):
    """A run interrupted mid-stage (its checkpoint written every step) and resumed gives the same weights as an
    uninterrupted run."""
    spec = importlib.util.spec_from_file_location("train_ebsrd", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    common = ["--steps-initial", "2", "--steps-denoiser", "3", "--steps-student", "0", "--crop", "80",
              "--batch-size", "1", "--no-eval", "--no-progress", "--checkpoint-every", "1", "--half", "0",
              "--no-select-sigma"]
    full = tmp_path / "full.pt"
    assert script.main(common + ["--out", str(full)]) == 0
    part = tmp_path / "part.pt"
    calls = {"n": 0}
    real = T.denoiser_loss

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    T.denoiser_loss = interrupt
    try:
        assert script.main(common + ["--out", str(part)]) == 130
    finally:
        T.denoiser_loss = real
    _, ck = T.load_checkpoint(part)
    assert ck["train_state"]["done"] == ["initial"] and ck["train_state"]["resume"]["step"] == 2
    assert script.main(["--resume", str(part)]) == 0
    capsys.readouterr()
    a, b = T.load_checkpoint(full)[1], T.load_checkpoint(part)[1]
    assert a["losses"]["denoiser"] == pytest.approx(b["losses"]["denoiser"], rel=1e-6)
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k


def _script():
    spec = importlib.util.spec_from_file_location("train_ebsrd", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_select_sigma_picks_the_validation_argmax():
    """The inference σ_τ is the grid level of the highest mean PSNR (ties: the first), the grid's PSNR / SSIM are
    all recorded, and levels not above the student's cm_sigma_min (the consistency sampler's floor) are skipped."""
    script = _script()
    model = micro_model()
    psnr = {0.003: 31.0, 0.005: 32.5, 0.01: 32.5, 0.02: 30.0, 0.03: 29.0}
    seen = []

    def score(m, bursts, sigma):
        seen.append(sigma)
        return {"psnr": psnr[sigma], "ssim": 0.8 - sigma, "hf_ratio": 0.1}

    sigma, rows = script.select_sigma(model, None, script.SIGMA_GRID, score=score)
    assert script.SIGMA_GRID == (0.002, 0.003, 0.005, 0.01, 0.02, 0.03)
    assert seen == [0.003, 0.005, 0.01, 0.02, 0.03]  # 0.002 = cm_sigma_min: skipped
    assert sigma == 0.005  # the max; the tie with 0.01 goes to the first
    assert [r["sigma"] for r in rows] == seen and [r["psnr"] for r in rows] == [psnr[s] for s in seen]
    assert rows[1]["ssim"] == pytest.approx(0.795)
    psnr[0.03] = 40.0
    assert script.select_sigma(model, None, (0.03, 0.005), score=score)[0] == 0.03
    with pytest.raises(ValueError, match="cm_sigma_min"):
        script.select_sigma(model, None, (0.001, 0.002), score=score)


def test_select_sigma_measures_the_one_step_student_at_each_level():
    """The default measurement is evaluate_set's one-step row with the model's inference σ set to the level (and
    restored afterwards)."""
    from burstkern.demo import evaluate_set

    script = _script()
    g = torch.Generator().manual_seed(0)
    bursts = {"burst": torch.rand(2, MICRO["burst_size"], 4, 16, 16, generator=g),
              "gt": torch.rand(2, 3, 128, 128, generator=g)}
    model = micro_model(perturb=("student",))
    sigma, rows = script.select_sigma(model, bursts, (0.005, 0.3), device="cpu")
    assert model.config.inference_sigma_tau is None  # restored
    model.config.inference_sigma_tau = 0.3
    at = next(x for x in evaluate_set(model, bursts, teacher_steps=0, device="cpu") if x["method"] == "one-step")
    assert rows[1]["psnr"] == at["psnr"] and rows[1]["ssim"] == at["ssim"]
    assert rows[0]["psnr"] != rows[1]["psnr"]
    assert sigma == max(rows, key=lambda r: r["psnr"])["sigma"]


def test_selected_sigma_is_the_inference_default_after_loading(tmp_path):
    """A checkpoint whose config holds inference_sigma_tau: after loading, one_step / teacher / forward start from
    it by default; training keeps sigma_tau; a checkpoint written before the field existed loads with None (σ_τ)."""
    model = micro_model(perturb=("student", "denoiser"))
    model.config.inference_sigma_tau = 0.005
    path = tmp_path / "sel.pt"
    ckpt = T.save_checkpoint(path, model)
    loaded = EBSRD.from_checkpoint(path)
    cfg = loaded.config
    assert cfg.inference_sigma_tau == 0.005 and cfg.start_sigma == 0.005 and cfg.sigma_tau == 0.03
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    b = torch.rand(1, MICRO["burst_size"], 4, 8, 8, generator=g())
    with torch.no_grad(), burstkern.backend("reference"):
        one = loaded.one_step(b, generator=g())
        assert torch.equal(one, loaded.one_step(b, generator=g(), sigmas=(0.005,)))
        assert not torch.equal(one, loaded.one_step(b, generator=g(), sigmas=(0.03,)))
        assert torch.equal(loaded(b, generator=g()), (one + 1) / 2)
        tea = loaded.teacher(b, num_steps=2, generator=g())
        assert torch.equal(tea, loaded.teacher(b, num_steps=2, generator=g(), sigma_tau=0.005))
        assert not torch.equal(tea, loaded.teacher(b, num_steps=2, generator=g(), sigma_tau=0.03))
    old = dict(ckpt, config={k: v for k, v in ckpt["config"].items() if k != "inference_sigma_tau"})
    torch.save(old, tmp_path / "old.pt")
    assert EBSRD.from_checkpoint(tmp_path / "old.pt").config.start_sigma == 0.03
    bad = dict(ckpt, config=dict(ckpt["config"], inference_sigma_tau=-1.0))
    torch.save(bad, tmp_path / "bad.pt")
    from burstkern.models import CheckpointError
    with pytest.raises(CheckpointError, match="inference_sigma_tau"):
        EBSRD.from_checkpoint(tmp_path / "bad.pt")


def test_script_selects_sigma_and_resume_of_a_finished_run_reselects_only(tmp_path, monkeypatch, capsys):
    """The recipe's last step (default on): the validation split's one-step PSNR at each grid level, the argmax
    stored as the config's inference σ and the grid in the checkpoint / JSON log. ``--resume`` of the finished
    checkpoint runs only this step again: same weights bit for bit, same selection, no training step."""
    import json

    import burstkern.data

    g = torch.Generator().manual_seed(0)
    small = {"burst": torch.rand(2, 4, 4, 16, 16, generator=g), "gt": torch.rand(2, 3, 128, 128, generator=g),
             "names": ["a", "b"]}
    calls = []

    def fake_validation(burst_size, crop):
        calls.append(burst_size)
        return {k: (v[:, :burst_size] if k == "burst" else v) for k, v in small.items()}

    monkeypatch.setattr(burstkern.data, "validation_bursts", fake_validation)
    script = _script()
    out = tmp_path / "run.pt"
    common = ["--steps-initial", "1", "--steps-denoiser", "1", "--steps-student", "1", "--crop", "80",
              "--batch-size", "1", "--no-eval", "--no-progress", "--sigma-grid", "0.002", "0.005", "0.03"]
    assert script.main(common + ["--out", str(out)]) == 0
    _, ck = T.load_checkpoint(out)
    sel = ck["sigma_selection"]
    assert calls == [4] and sel["split"] == "validation" and sel["skipped"] == [0.002]
    assert [r["sigma"] for r in sel["rows"]] == [0.005, 0.03]
    assert sel["selected"] == max(sel["rows"], key=lambda r: r["psnr"])["sigma"]
    assert ck["config"]["inference_sigma_tau"] == sel["selected"] and ck["config"]["sigma_tau"] == 0.03
    assert json.loads((tmp_path / "run.json").read_text())["sigma_selection"]["selected"] == sel["selected"]
    assert EBSRD.from_checkpoint(out).config.start_sigma == sel["selected"]

    again = tmp_path / "again.pt"
    losses_before = ck["losses"]
    assert script.main(["--resume", str(out), "--out", str(again)]) == 0
    assert "selected" in capsys.readouterr().out
    _, ck2 = T.load_checkpoint(again)
    assert calls == [4, 4] and ck2["sigma_selection"]["rows"] == sel["rows"]
    assert ck2["config"] == ck["config"] and ck2["losses"] == losses_before
    assert ck2["state_dict"].keys() == ck["state_dict"].keys()
    assert all(torch.equal(ck2["state_dict"][k], v) and ck2["state_dict"][k].dtype == v.dtype
               for k, v in ck["state_dict"].items())


@requires_cuda
def test_stages_on_gpu_with_bf16_autocast(batch):
    model = micro_model(perturb=("denoiser",)).cuda()
    for fn in (T.train_initial, T.train_denoiser, T.distill_student):
        kw = {} if fn is T.train_initial else {"amp": True}
        h = fn(model, [batch], 3, progress=False, **kw)
        assert_history(h, 3)
