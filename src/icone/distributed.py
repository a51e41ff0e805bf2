"""Cross-process helpers (torchrun + DDP); every function is a no-op in a single process."""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("icone")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``), known before the group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resume_command(run_dir: Any, extra: str = "") -> str:
    """The command that continues the run in ``run_dir`` with as many processes as this launch has
    (``torchrun`` with its process counts under ``torchrun``); ``extra``: options added at its end."""
    world = launched_world_size()
    if world <= 1:
        return f"icone train --resume --out {run_dir}{extra}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = max(1, world // max(1, local))
    launch = "--standalone" if nodes == 1 else f"--nnodes={nodes}"
    rendezvous = "" if nodes == 1 else " [your rendezvous options]"
    return f"torchrun {launch} --nproc_per_node={local}{rendezvous} -m icone train --resume --out {run_dir}{extra}"


def is_main_process() -> bool:
    """Rank 0 of the process group; before the group is joined, rank 0 of the ``torchrun`` launch (``RANK``)."""
    if is_distributed():
        return dist.get_rank() == 0
    return launched_world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0


def process_device(device: torch.device) -> torch.device:
    """This process's device: under ``torchrun`` on CUDA, GPU ``LOCAL_RANK`` (one GPU per process)."""
    if device.type != "cuda" or launched_world_size() <= 1:
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def init_from_env(device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on CUDA, gloo on CPU).

    ``timeout_minutes``: how long a collective waits for a peer that stopped answering before it fails.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        return is_distributed()
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
    )
    return True


def barrier() -> None:
    """Wait until every process gets here (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of a run that joined it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` (any picklable object: a config, a checkpoint) on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def first_error(message: str | None) -> str | None:
    """The error of the lowest-ranked process that has one (``None`` if none has), on every process.

    Lets all processes fail together with one message, where one failing alone would leave the
    others waiting at their next collective.
    """
    if not is_distributed():
        return message
    messages: list[str | None] = [None] * world_size()
    dist.all_gather_object(messages, message)
    for source, text in enumerate(messages):
        if text is not None:
            return text if source == 0 else f"process {source}: {text}"
    return None


def sync_batch_norm(module: ModuleT, device: torch.device) -> ModuleT:
    """Batch norm with statistics over all processes: ``SyncBatchNorm`` on CUDA (the same module
    object back unless ``module`` is itself a batch norm; parameters and buffers are shared).

    On CPU (gloo) PyTorch has no ``SyncBatchNorm``: each process normalises with the statistics of
    its own batch (running statistics: rank 0's, which DDP broadcasts each step). Said once, by rank 0.
    """
    if not is_distributed() or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if is_main_process():
        log.warning(
            "batch norm on CPU: each of the %d processes normalises with its own batch's statistics (PyTorch's "
            "SyncBatchNorm needs CUDA), so a step differs from one process with the whole batch; see docs/distributed.md",
            world_size(),
        )
    return module


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (returns a new tensor; the input is untouched)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over processes along dim 0, keeping the gradient of the local part."""
    if not is_distributed():
        return tensor
    parts = [torch.zeros_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank()] = tensor
    return torch.cat(parts)


def all_reduce_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse gradient averaged over processes: ``(rows, values)`` of every process, summed
    per row and divided by the number of processes (as DDP averages dense gradients).

    Only the touched rows travel: each process sends its ``k_r`` rows (padded to the largest
    ``k``), never the whole table. The result is sorted by row and identical on every process.
    """
    if not is_distributed():
        return rows, values
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded_rows = torch.full((most,), -1, dtype=rows.dtype, device=rows.device)
    padded_rows[: len(rows)] = rows
    padded_values = values.new_zeros((most, *values.shape[1:]))
    padded_values[: len(values)] = values
    all_rows = [torch.empty_like(padded_rows) for _ in counts]
    all_values = [torch.empty_like(padded_values) for _ in counts]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    rows_cat, values_cat = torch.cat(all_rows), torch.cat(all_values)
    keep = rows_cat >= 0
    unique, inverse = torch.unique(rows_cat[keep], return_inverse=True)
    summed = values.new_zeros((len(unique), *values.shape[1:])).index_add_(0, inverse, values_cat[keep])
    return unique, summed / world_size()


def ddp_ignore(module: nn.Module, names: list[str]) -> None:
    """Tell DDP (before wrapping ``module``) not to reduce these parameters' gradients.

    Each name is also given with a leading dot: for parameters of the root module DDP's reducer
    looks up ``f"{module_name}.{param_name}"`` with ``module_name == ""`` (torch 2.x).
    """
    if names:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, names + [f".{n}" for n in names if "." not in n]
        )
