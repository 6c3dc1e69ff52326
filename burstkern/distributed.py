"""Multi-process (data-parallel) training on ``torch.distributed``: the helpers the training stages call.

Launch with ``torchrun`` (one process per GPU, NCCL; or per CPU worker, gloo)::

    # one node, 8 GPUs
    torchrun --standalone --nproc-per-node 8 python/train_ebsrd.py --preset paper --crop 432 --batch-size 16
    # two nodes x 8 GPUs (run on each node; node-rank 0 and 1)
    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK --rdzv-backend c10d \\
        --rdzv-endpoint $MASTER_HOST:29500 --rdzv-id ebsrd1 python/train_ebsrd.py --preset paper --batch-size 32
    # CPU, 2 processes (gloo)
    torchrun --standalone --nproc-per-node 2 python/train_ebsrd.py --device cpu --preset tiny

What each piece does (every function is a no-op in a single process, so the same code runs everywhere):

- :func:`init` joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; NCCL for CUDA
  devices, gloo for the CPU) and pins each process to ``cuda:LOCAL_RANK``.
- Data: :func:`make_loader` shards a dataset with a :class:`~torch.utils.data.DistributedSampler` (reshuffled every
  pass through :class:`EpochLoader`); :func:`step_batches` gives each rank its slice of global batch ``s`` of an
  index-addressed dataset, so 2 ranks x B/2 see exactly the items of 1 process x B (and resume mid-stage).
  The batch size given is the *global* one; :func:`local_batch_size` divides it.
- Noise and seeds: the training stages draw their per-step noise (σ, ε, schedule indices) through
  :func:`global_draw` from a generator seeded identically on every rank: each rank keeps its own slice of the
  global batch's draw, so the ranks' noise differs and together equals one process's — every stage then
  computes the same losses and updates as one process with the global batch. :func:`rank_seed` gives a
  distinct seed per rank for anything rank-local (rank 0 keeps the single-process seed).
- Gradients: :func:`sync_gradients` averages the gradients of the trained parameters over the ranks after every
  backward, before clipping and the optimizer step (bucketed all-reduce, ``BUCKET_BYTES`` each), so every rank
  applies the same update — the arithmetic of ``DistributedDataParallel`` (which averages gradients the same
  way). The wrapper itself is not used because the stages train submodules of one model (encoder + head, the
  teacher, the student) and the distillation stage deep-copies the student for its EMA target; the cost is that
  communication does not overlap the backward pass.
- Consistency: :func:`broadcast_module` copies rank 0's weights to all ranks (start of training, the EMA target
  when it is created); :func:`check_consistent` verifies that a module is bit-identical on all ranks (used on
  the EMA target at checkpoints); losses are averaged with :func:`mean_across_ranks` so every rank logs the loss
  of the global batch.
- Checkpoints and logs: :func:`is_main` / :func:`on_main` (rank 0 writes, the others wait at a barrier).

Ops inside these processes go through burstkern's backend registry like any other call; nothing here touches it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistEnv", "init", "shutdown", "env", "is_distributed", "rank", "world_size", "is_main", "barrier",
           "rank_seed", "local_batch_size", "make_loader", "EpochLoader", "step_batches", "global_draw",
           "sync_gradients",
           "mean_across_ranks", "broadcast_module", "check_consistent", "on_main", "print0", "process_group",
           "BUCKET_BYTES"]

BUCKET_BYTES = 32 * 2 ** 20     # gradient all-reduce bucket (bounded extra memory per step)
_STATE = {"owned": False}


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device`` and the
    process-group ``backend`` (``None`` in a single process)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def env(device=None) -> DistEnv:
    """The current :class:`DistEnv` (after :func:`init`, or a single process)."""
    local = int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0
    dev = _device(device, local)
    return DistEnv(rank(), world_size(), local, dev, dist.get_backend() if is_distributed() else None)


def _device(device, local_rank: int) -> torch.device:
    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return torch.device(f"cuda:{local_rank}")
    return d


def init(device=None, backend: Optional[str] = None, *, rank: Optional[int] = None,
         world_size: Optional[int] = None, init_method: Optional[str] = None,
         timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group described by torchrun's environment (or by ``rank`` / ``world_size`` /
    ``init_method``, e.g. ``"file:///tmp/rdzv"`` in tests). Single process (``WORLD_SIZE`` unset or 1): nothing
    is initialised. ``backend`` defaults to NCCL for CUDA devices and gloo otherwise; each CUDA process is pinned
    to ``cuda:LOCAL_RANK``. Returns the :class:`DistEnv`."""
    ws = int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", "1"))
    rk = int(rank if rank is not None else os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rk if rank is not None else 0)))
    dev = _device(device, local)
    if ws <= 1:
        return DistEnv(0, 1, 0, dev, None)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kw = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        if init_method is not None or rank is not None:
            kw.update(init_method=init_method or "env://", rank=rk, world_size=ws)
        if backend == "nccl":
            kw["device_id"] = dev
        dist.init_process_group(**kw)
        _STATE["owned"] = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend())


def shutdown() -> None:
    """Leave the process group if :func:`init` created it."""
    if _STATE["owned"] and dist.is_initialized():
        dist.destroy_process_group()
        _STATE["owned"] = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """A per-rank seed: rank 0 keeps ``seed`` (a single process is rank 0), rank r gets ``seed + 1_000_003·r``
    (the training stages hash it with the step index, so streams of different ranks do not overlap)."""
    return (int(seed) + 1_000_003 * rank()) % 2 ** 31


def local_batch_size(global_batch: int) -> int:
    """The per-rank batch of a global batch: ``global_batch / world_size`` (it must divide)."""
    w = world_size()
    if global_batch % w:
        raise ValueError(f"the global batch size {global_batch} is not divisible by the {w} processes")
    return global_batch // w


class EpochLoader:
    """A DataLoader with a DistributedSampler that reshuffles every pass (``sampler.set_epoch``)."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def make_loader(dataset, global_batch: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                **loader_kw):
    """A loader of ``global_batch / world_size`` items per rank: DataLoader + DistributedSampler (seeded with
    ``seed``, the same on all ranks so the shards are disjoint) under torchrun, a plain shuffled DataLoader in a
    single process. Extra keyword arguments go to the DataLoader (``num_workers``, ``pin_memory``, ...)."""
    b = local_batch_size(global_batch)
    if not is_distributed():
        return torch.utils.data.DataLoader(dataset, batch_size=b, shuffle=shuffle, drop_last=drop_last,
                                           generator=torch.Generator().manual_seed(seed), **loader_kw)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                                                  seed=seed, drop_last=drop_last)
    return EpochLoader(torch.utils.data.DataLoader(dataset, batch_size=b, sampler=sampler, drop_last=drop_last,
                                                   **loader_kw))


def step_batches(dataset, global_batch: int):
    """A :class:`burstkern.train.StepBatches` whose batch ``s`` is this rank's slice of global batch ``s``:
    items ``[s·B + r·b, s·B + (r+1)·b)`` (B global, b = B / world_size, r the rank) — what a single process with
    batch B reads, split across the ranks, and addressable by step (resume)."""
    from .train import StepBatches

    b, r = local_batch_size(global_batch), rank()

    class RankStepBatches(StepBatches):
        def batch(self, step: int) -> dict:
            n = len(self.dataset)
            items = [self.dataset[(step * global_batch + r * b + i) % n] for i in range(b)]
            return torch.utils.data.default_collate(items)

    return RankStepBatches(dataset, b)


def global_draw(draw: Callable[[tuple], Tensor], local_shape) -> Tensor:
    """This rank's rows of a random draw made for the whole global batch: ``draw((world·b, ...))[r·b:(r+1)·b]``
    for a local ``[b, ...]``; ``draw(local_shape)`` in a single process.

    With the same generator seed on every rank, the ranks draw different noise (their own slices) that together
    is exactly what one process with the global batch draws — so a multi-process stage computes the losses and
    updates of the single-process one. The cost: every rank generates the global batch's noise."""
    shape = tuple(local_shape)
    if not is_distributed():
        return draw(shape)
    b, r = shape[0], rank()
    return draw((b * world_size(),) + shape[1:])[r * b:(r + 1) * b]


@torch.no_grad()
def sync_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks (in place), bucketed; no-op in a single process.

    Call it after ``loss.backward()`` and before clipping / ``optimizer.step()``. Parameters without a gradient
    on this rank take part with zeros (so no rank waits forever) and receive the average."""
    if not is_distributed():
        return
    ps = [p for p in params if p.requires_grad]
    w = float(world_size())
    buckets: List[List[nn.Parameter]] = []
    size, key = 0, None
    for p in ps:
        k = (p.device, p.dtype)
        nbytes = p.numel() * p.element_size()
        if not buckets or k != key or size + nbytes > BUCKET_BYTES:
            buckets.append([])
            size, key = 0, k
        buckets[-1].append(p)
        size += nbytes
    for bucket in buckets:
        # the gradients, then one flag per parameter (had a gradient here), in one collective
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
                         + [torch.tensor([float(p.grad is not None) for p in bucket], dtype=bucket[0].dtype,
                                         device=bucket[0].device)])
        dist.all_reduce(flat)
        flags = flat[-len(bucket):]
        flat = flat[:-len(bucket)].div_(w)
        off = 0
        for p, f in zip(bucket, flags.tolist()):
            g = flat[off:off + p.numel()].view_as(p)
            off += p.numel()
            if p.grad is not None:
                p.grad.copy_(g)
            elif f > 0:             # another rank had a gradient: take the average (zeros from this rank)
                p.grad = g.clone()
            # no rank had one: stays None, as in one process (the optimizer skips it)


def mean_across_ranks(x: Tensor) -> Tensor:
    """The mean of ``x`` over the ranks (a new tensor); ``x`` itself in a single process."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers to every rank (in place); returns ``module``."""
    if is_distributed():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)
    return module


@torch.no_grad()
def check_consistent(module: nn.Module, what: str = "module") -> None:
    """Raise RuntimeError unless ``module``'s parameters and buffers are bit-identical on all ranks (compared by
    an exact fp64 checksum of every tensor, one all-gather)."""
    if not is_distributed():
        return
    ts = list(module.parameters()) + list(module.buffers())
    if not ts:
        return
    dev = ts[0].device
    mine = torch.stack([torch.stack((t.double().sum(), (t.double() * torch.arange(1, t.numel() + 1, device=t.device,
                        dtype=torch.float64).view_as(t)).sum())) for t in ts]).to(dev)
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    for r, g in enumerate(gathered):
        if not torch.equal(g, gathered[0]):
            raise RuntimeError(f"{what} differs between rank 0 and rank {r} (distributed training diverged)")


def on_main(fn: Callable, *args, **kwargs):
    """Run ``fn`` on rank 0 only (checkpoints, logs, figures), then a barrier; returns its result on rank 0."""
    out = fn(*args, **kwargs) if is_main() else None
    barrier()
    return out


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


@contextlib.contextmanager
def process_group(device=None, backend: Optional[str] = None, **kw):
    """``with process_group(...) as env:`` — :func:`init` then :func:`shutdown`."""
    e = init(device, backend, **kw)
    try:
        yield e
    finally:
        shutdown()
