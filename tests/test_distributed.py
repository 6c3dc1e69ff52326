"""Multi-process training (burstkern.distributed): 2 CPU processes with gloo run the three training stages for a
few steps on the tiny model; every stage's losses and weights equal one process at the same global batch (each
rank its slice of the batch and of the noise), the ranks stay bit-identical (gradients averaged, EMA target of the
distillation consistent), a stage resumes exactly from its checkpoint, and rank 0's checkpoint agrees with the
single process's. The ops run through burstkern's registry as everywhere (backend "auto").
File rendezvous (no ports), 1 thread per process; ~10-20 s on 2 cores."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

GLOBAL_BATCH = 4
STEPS = (3, 2, 3)   # initial, denoiser, student


def _dataset():
    from burstkern.data import SyntheticBurstDataset

    rng = np.random.default_rng(0)
    images = [(rng.random((96, 96, 3)) * 255).astype(np.uint8) for _ in range(3)]
    return SyntheticBurstDataset(images, crop=80, burst_size=4, seed=0, length=64)   # 32² gt, 4² RAW frames


def _worker(rank: int, world: int, rdzv: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import burstkern
    from burstkern import distributed as bd
    from burstkern.models import EBSRD
    from burstkern.train import distill_student, save_checkpoint, train_denoiser, train_initial

    env = bd.init("cpu", rank=rank, world_size=world, init_method=f"file://{rdzv}") if world > 1 else bd.env("cpu")
    assert env.world_size == world and env.rank == rank and env.backend == ("gloo" if world > 1 else None)
    torch.manual_seed(1234 + rank)          # deliberately different initial weights: broadcast_module fixes them
    model = EBSRD("tiny")
    bd.broadcast_module(model)
    if world == 1:
        torch.manual_seed(1234)
        model = EBSRD("tiny")
    loader = bd.step_batches(_dataset(), GLOBAL_BATCH)
    seed = 0    # the same on every rank: the noise is drawn for the global batch and sliced (global_draw)
    g = torch.Generator().manual_seed(5)
    out = {"backend": burstkern.get_backend(), "rank_seed": bd.rank_seed(0),
           "draw": bd.global_draw(lambda s: torch.randn(s, generator=g), (2, 3))}
    saved = []

    def keep(st):   # what python/train_ebsrd.py writes at a checkpoint: the model and the stage's state
        saved.append(copy.deepcopy({"model": model.state_dict(), "state": st}))

    out["h1"] = train_initial(model, loader, STEPS[0], seed=seed, progress=False, checkpoint=keep, checkpoint_every=2)
    out["state1"] = {k: v.clone() for k, v in model.state_dict().items()}
    # resume stage 1 from its step-2 checkpoint: the same weights as the uninterrupted run
    again = EBSRD("tiny")
    again.load_state_dict(saved[0]["model"])
    h = train_initial(again, loader, STEPS[0], seed=seed, progress=False, resume=saved[0]["state"])
    out["resumed_equal"] = h == out["h1"] and all(torch.equal(v, out["state1"][k])
                                                  for k, v in again.state_dict().items())
    # the sharded loader: disjoint shards that cover the data, reshuffled every pass
    dl = bd.make_loader(list(range(16)), GLOBAL_BATCH, seed=3)
    out["passes"] = [[b.tolist() for b in dl] for _ in range(2)]
    # gradient averaging: a gradient on one rank only is averaged with zeros; none anywhere stays None
    a, b_ = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    a.grad = torch.full((2,), 2.0) if rank == 0 else None
    bd.sync_gradients([a, b_])
    out["grads"] = (None if a.grad is None else a.grad.tolist(), b_.grad)
    # a diverged rank is detected, on every rank
    probe = torch.nn.Linear(2, 2)
    bd.broadcast_module(probe)
    bd.check_consistent(probe)
    with torch.no_grad():
        probe.weight[0, 0] += rank
    try:
        bd.check_consistent(probe, "probe")
        out["divergence_caught"] = False
    except RuntimeError as e:
        out["divergence_caught"] = "probe differs" in str(e)
    out["h2"] = train_denoiser(model, loader, STEPS[1], seed=seed, progress=False)
    emas = []
    out["h3"] = distill_student(model, loader, STEPS[2], target="cd", seed=seed, progress=False,
                                checkpoint=lambda s: emas.append(s["ema_state"]), checkpoint_every=1)
    out["ema"] = emas[-1]
    out["state"] = model.state_dict()
    bd.on_main(save_checkpoint, os.path.join(out_dir, f"ckpt_world{world}.pt"), model)
    torch.save(out, os.path.join(out_dir, f"world{world}_rank{rank}.pt"))
    bd.shutdown()


def _spawn(world: int, tmp_path) -> None:
    rdzv = str(tmp_path / f"rdzv{world}")
    mp.start_processes(_worker, args=(world, rdzv, str(tmp_path)), nprocs=world, join=True, start_method="spawn")


def test_two_gloo_processes_match_one_process(tmp_path):
    from burstkern.models import EBSRD

    _spawn(1, tmp_path)
    _spawn(2, tmp_path)
    one = torch.load(tmp_path / "world1_rank0.pt", weights_only=False)
    r0 = torch.load(tmp_path / "world2_rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "world2_rank1.pt", weights_only=False)
    assert one["backend"] == r0["backend"] == "auto"
    assert (r0["rank_seed"], one["rank_seed"]) == (0, 0) and r1["rank_seed"] != 0
    # each rank its own slice of the global draw: different noise per rank, together the 1-process draw
    full = torch.randn((4, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(r0["draw"], full[:2]) and torch.equal(r1["draw"], full[2:])
    # every stage: the same losses and weights as one process at the same global batch
    for h in ("h1", "h2", "h3"):
        np.testing.assert_allclose(r0[h], one[h], rtol=1e-4, atol=1e-6, err_msg=h)
    for k, v in one["state1"].items():
        torch.testing.assert_close(r0["state1"][k], v, rtol=1e-4, atol=1e-5, msg=f"stage-1 weight {k}")
    for k, v in one["state"].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-3, atol=1e-5, msg=f"final weight {k}")
    for k, v in one["ema"].items():
        torch.testing.assert_close(r0["ema"][k], v, rtol=1e-3, atol=1e-5, msg=f"EMA target {k}")
    # the ranks agree exactly through all stages: the same averaged gradients, the same EMA target, the same loss
    for h in ("h1", "h2", "h3"):
        assert r0[h] == r1[h] and all(np.isfinite(r0[h])) and len(r0[h]) == STEPS[int(h[1]) - 1]
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    for k in r0["ema"]:
        assert torch.equal(r0["ema"][k], r1["ema"][k]), f"EMA target differs between ranks in {k}"
    assert r0["grads"] == r1["grads"] == ([1.0, 1.0], None) and one["grads"] == ([2.0, 2.0], None)
    assert one["resumed_equal"] and r0["resumed_equal"] and r1["resumed_equal"]
    assert r0["divergence_caught"] and r1["divergence_caught"] and one["divergence_caught"] is False
    for p in range(2):
        shard0 = [i for b in r0["passes"][p] for i in b]
        shard1 = [i for b in r1["passes"][p] for i in b]
        assert sorted(shard0 + shard1) == list(range(16)) and len(r0["passes"][p][0]) == GLOBAL_BATCH // 2
    assert r0["passes"][0] != r0["passes"][1]                              # set_epoch: a new order each pass
    # rank 0 wrote the checkpoint, and it is the model
    model = EBSRD.from_checkpoint(str(tmp_path / "ckpt_world2.pt"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r0["state"][k].float())
    # and the two runs' checkpoints agree
    single = EBSRD.from_checkpoint(str(tmp_path / "ckpt_world1.pt"))
    for k, v in single.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-3, atol=1e-5, msg=f"checkpoint {k}")


def test_single_process_helpers_are_no_ops():
    from burstkern import distributed as bd

    assert not bd.is_distributed() and bd.rank() == 0 and bd.world_size() == 1 and bd.is_main()
    assert bd.rank_seed(7) == 7 and bd.local_batch_size(6) == 6
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    bd.sync_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    x = torch.tensor(3.0)
    assert bd.mean_across_ranks(x) is x
    assert bd.on_main(lambda: 5) == 5
    loader = bd.make_loader(list(range(10)), 4, seed=0)
    assert [len(b) for b in loader] == [4, 4]
    env = bd.init("cpu")
    assert env.world_size == 1 and env.backend is None and env.device.type == "cpu"
