"""Data-parallel training under torch.distributed: the pieces the one training loop uses
when it finds itself inside a process group, and the launcher of torchrun.

What stays the same as single-process training (so a distributed run computes the same
model, up to float summation order, and its checkpoints are interchangeable):

- every rank draws the same seeded permutation and flips per epoch; the positions of it a
  rank trains on come from ``torch.utils.data.DistributedSampler`` (shuffle off, since the
  loop's own permutation is what gets split), so step i's global batch, the union of the
  ranks' shares, is exactly single-process step i's batch;
- each rank takes batch_size / world_size images per step and DistributedDataParallel
  averages the gradients, so the global batch, the number of steps and therefore the lr
  schedule are unchanged;
- BatchNorm normalises with the statistics of the global batch: torch's SyncBatchNorm on
  CUDA, and on CPU (where torch's refuses to run) ``GlobalBatchNorm`` below, which does the
  same with two differentiable all-reduces. Without it every rank would normalise with its
  own half batch, a different model from single-process training.

Only rank 0 shows progress, writes checkpoints and reports epochs; the others wait on a
barrier so that nobody reads a checkpoint before it exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .device import pick_device

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group (see ``data_parallel()``)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, head: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """Global-batch BatchNorm inside ``model`` and ``head`` (in place: the parameters and
        buffers stay the same tensors), then a DDP wrapper around each for the forward
        passes. DDP broadcasts rank 0's weights at construction, so all ranks start equal."""
        for module in (model, head):
            sync_batchnorm(module, device)
        ids = [device.index] if device.type == "cuda" else None
        return (DistributedDataParallel(model, device_ids=ids),
                DistributedDataParallel(head, device_ids=ids))

    def positions(self, total: int) -> Tensor:
        """The positions in 0..total-1 of an epoch's permutation that this rank trains on,
        in order: every world_size-th from ``rank`` (DistributedSampler's split). With
        ``total`` a multiple of the global batch, slice k of length total / steps /
        world_size of this is this rank's share of global batch k."""
        if total % self.world_size:
            raise ValueError(f"{total} samples do not split evenly over {self.world_size} ranks")
        sampler = DistributedSampler(range(total), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=False, drop_last=True)
        return torch.tensor(list(sampler), dtype=torch.long)

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average gradients DDP does not see (parameters outside model and head)."""
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def barrier(self) -> None:
        dist.barrier()


def data_parallel() -> DataParallel | None:
    """The data-parallel group this process trains in, or None for single-process training
    (no process group, or a group of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size())


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def init_process_group(device: str = "auto") -> torch.device:
    """Join the group torchrun set up (env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK): NCCL with one GPU per local rank on CUDA, gloo on CPU.
    Returns this rank's device."""
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", init_method="env://", device_id=dev)
    else:
        dist.init_process_group(backend="gloo", init_method="env://")
    return dev


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks: each rank's input feeds
    every rank's output, so its gradient collects every rank's upstream gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm (any dimension) whose training statistics are those of the global batch
    across the process group, for CPU/gloo where ``nn.SyncBatchNorm`` raises. Mean and
    variance are two-pass (mean first, then the centred squares), as in single-process
    BatchNorm, rather than E[x^2] - E[x]^2, which loses digits. Outside training or outside
    a group it is plain BatchNorm."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / x.shape[1]])
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), f)
                self.running_var.lerp_(var.detach() * n / (n - 1), f)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm inside ``module`` (in place) for one with global-batch
    statistics, keeping its parameters and buffers: torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere. State dict keys do not change, so checkpoints and bundles
    load into plain BatchNorm models. Returns ``module`` (or its replacement if it is
    itself a BatchNorm)."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlobalBatchNorm)):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = sync_batchnorm(child, device)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m module args``:
    one node, a rendezvous on a free local port, N worker processes."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1 (got {nproc})")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(nproc), "-m", module, *args]


def run_streaming(cmd: Sequence[str], on_line: Callable[[str], None], env: dict | None = None,
                  cwd: str | Path | None = None, tail: int = 40) -> None:
    """Run ``cmd`` and hand every line of its merged stdout/stderr to ``on_line`` as it
    comes. A non-zero exit raises RuntimeError with the last ``tail`` lines; an exception
    in the caller (e.g. the run is cancelled) terminates the process (torchrun passes the
    signal on to its workers) before it propagates."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    last: list[str] = []
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1, env=env, cwd=str(cwd or PROJECT_ROOT))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            last = [*last[-(tail - 1):], line]
            on_line(line)
        rc = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... exited with status {rc}; last lines:\n" + "\n".join(last))


def worker_env(world_size: int, device: torch.device) -> dict:
    """The environment for torchrun's workers: CPU threads split between the ranks (torchrun
    would set 1 and warn), unless OMP_NUM_THREADS is already set."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        per_rank = (os.cpu_count() or 1) // world_size if device.type == "cpu" else 1
        env["OMP_NUM_THREADS"] = str(max(1, per_rank))
    return env


__all__ = ["DataParallel", "GlobalBatchNorm", "data_parallel", "init_process_group", "run_streaming",
           "sync_batchnorm", "torchrun_command", "unwrap", "worker_env"]
