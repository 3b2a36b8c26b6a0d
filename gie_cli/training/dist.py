"""Data-parallel training on torch.distributed (``torchrun ... -m gie_cli train``): the process group from the
launcher's environment, gradients averaged before every optimizer step, BatchNorm statistics over the global batch.

Trainers stay single-process code (they call their modules and optimizers directly, so nothing is wrapped in
``DistributedDataParallel``): :class:`Replicas` starts every rank from rank 0's weights, registers one step pre-hook
per optimizer that all-reduces (averages) the gradients of its parameters, and makes training-mode BatchNorm layers
of the trained modules normalise with the statistics of the whole global batch. With equal shares of a global batch
and batch-mean losses, a step then equals the single-process step on that batch (up to float rounding).
"""

from __future__ import annotations

import hashlib
import logging
import os
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from gie_cli.errors import UsageError

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BUCKET = 1 << 25  # gradient elements per all-reduce (128 MiB of fp32)


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group (1 outside one)."""
    return tdist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group a launcher describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``): NCCL on CUDA, gloo on CPU. Returns the device to train on: ``cuda:LOCAL_RANK`` for ``cuda``
    without an index, else ``device``.

    Raises:
        UsageError: incomplete environment, a device other than CPU or CUDA, or too few CUDA devices.
    """
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UsageError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not",
            hint="launch with torchrun --nproc-per-node N -m gie_cli train ...",
        )
    if device.type == "cuda":
        if device.index is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UsageError(
                    f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible",
                    hint="start at most one process per GPU",
                )
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        tdist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        tdist.init_process_group("gloo")
    else:
        raise UsageError(f"distributed training runs on cpu or cuda, not {device.type}", param="device", value=device)
    log.info("rank %d of %d on %s (%s)", rank(), world_size(), device, tdist.get_backend())
    return device


def shutdown() -> None:
    """Leave the process group (if any)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        tdist.barrier()


def reseed_rank() -> None:
    """Ranks > 0 get their own torch random stream (noise, augmentation draws), derived from the current state and
    the rank; rank 0 keeps its stream (a single-process run's)."""
    r = rank()
    if r == 0:
        return
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes() + r.to_bytes(4, "little")).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _comm_device() -> torch.device:
    """Where small collective tensors live: the current CUDA device under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params: list[Tensor]) -> None:
    """Average the ``.grad`` of ``params`` over the ranks, in place (bucketed all-reduces).

    A parameter with a gradient on some ranks only counts zero where it has none; one with none anywhere is left
    alone (the optimizer skips it, as in a single process).
    """
    world = world_size()
    if world == 1 or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_comm_device())
    tdist.all_reduce(has)
    grads: dict[tuple, list[Tensor]] = {}
    for p, n in zip(params, has.tolist(), strict=True):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for group in grads.values():
        start = 0
        while start < len(group):
            end, size = start, 0
            while end < len(group) and (end == start or size + group[end].numel() <= _BUCKET):
                size += group[end].numel()
                end += 1
            bucket = group[start:end]
            flat = torch.cat([g.reshape(-1) for g in bucket])
            tdist.all_reduce(flat)
            flat.div_(world)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))
            start = end


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (each rank's loss depends on every rank's
    input)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        tdist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad


def _synced_batch_norm(bn: nn.Module, x: Tensor) -> Tensor:
    """``bn``'s forward with batch statistics over all ranks in training mode (two-pass mean and variance, the
    running statistics updated as ``F.batch_norm`` does); its own forward otherwise."""
    if not (bn.training and is_distributed()):
        return type(bn).forward(bn, x)
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    sums = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), x.numel() // x.shape[1])]))
    count = sums[-1].detach()
    mean = sums[:-1] / count
    xc = x - mean.view(shape)
    var = _AllReduceSum.apply(xc.square().sum(dims)) / count
    y = xc * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp(min=1), alpha=m)
    return y


def _torch_optimizer(opt: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside wrappers such as :class:`~gie_cli.training.optim.Lookahead`."""
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "inner"):
        opt = opt.inner
    return opt


class Replicas:
    """Make a trainer's modules and optimizers data-parallel for a run (undone by :meth:`close`).

    Args:
        modules: the trained modules (rank 0's parameters and buffers are broadcast to every rank; their
            BatchNorm layers, called as modules, use global batch statistics in training mode).
        optimizers: their optimizers (each averages its parameters' gradients before stepping).
    """

    def __init__(self, modules: list[nn.Module], optimizers: list[Any]) -> None:
        self._handles: list[Any] = []
        self._batchnorms: list[nn.Module] = []
        with torch.no_grad():
            for m in modules:
                for t in [*m.parameters(), *m.buffers()]:
                    tdist.broadcast(t.data, src=0)
        for m in modules:
            for sub in m.modules():
                if isinstance(sub, _BATCHNORMS) and "forward" not in vars(sub):
                    sub.forward = types.MethodType(_synced_batch_norm, sub)
                    self._batchnorms.append(sub)
        for opt in optimizers:
            inner = _torch_optimizer(opt)
            if isinstance(inner, torch.optim.Optimizer):
                self._handles.append(inner.register_step_pre_hook(_pre_step))
            else:  # an optimizer-like object: wrap its step
                self._handles.append(_StepWrap(opt))
        log.info(
            "data-parallel over %d ranks: %d optimizer(s), %d BatchNorm layer(s) synchronised",
            world_size(), len(self._handles), len(self._batchnorms),
        )  # fmt: skip

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` averaged over the ranks (every rank reports the same names)."""
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_comm_device())
        tdist.all_reduce(t)
        return dict(zip(keys, (t / world_size()).tolist(), strict=True))

    def close(self) -> None:
        """Remove the hooks and restore the BatchNorm layers."""
        for h in self._handles:
            h.remove()
        for bn in self._batchnorms:
            del bn.forward
        self._handles, self._batchnorms = [], []


def _pre_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    average_gradients([p for group in opt.param_groups for p in group["params"]])


class _StepWrap:
    """Removable ``step`` wrapper of an optimizer-like object without step hooks."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        step: Callable = opt.step

        def averaged_step(*args: Any, **kwargs: Any) -> Any:
            average_gradients([p for group in opt.param_groups for p in group["params"]])
            return step(*args, **kwargs)

        opt.step = averaged_step

    def remove(self) -> None:
        del self.opt.step
