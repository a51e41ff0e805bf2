"""Optimizers: AdamW or SGD for the dense parameters, a row-sparse AdamW for per-instance tables.

A parameter group that a method marks ``row_sparse`` holds a table whose gradient is a sparse
COO tensor touching a few rows per step (``F.embedding(..., sparse=True)``). Such tables are
updated by :class:`RowSparseAdamW`, which costs O(rows touched x d) per step, not O(N x d), and
keeps them identical on every process by exchanging only the touched rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from icone import distributed


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019, Alg. 2) applied lazily, row by row.

    Only the rows present in a step's gradient change in that step, as in "lazy Adam": their
    moments ``m, v`` are updated and each row keeps its own step count for the bias correction.
    The decoupled weight decay ``p <- p (1 - lr_t wd)`` of the steps a row missed is applied
    exactly when the row is next touched, from a running sum of ``log(1 - lr_t wd)``. Rows that
    are not touched keep their moments (plain AdamW would keep moving them by momentum).

    Across processes, :func:`all_reduce_row_gradients` (called after the backward pass, before
    clipping) averages the touched rows' gradients as DDP averages dense ones, so every process
    applies the same update to the same rows.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            moments_dtype = p.dtype if p.dtype in (torch.bfloat16, torch.float16) else torch.float32
            state["exp_avg"] = torch.zeros_like(p, dtype=moments_dtype)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments_dtype)
            state["row_step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
            state["row_decay_mark"] = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
            state["log_decay"] = torch.zeros((), dtype=torch.float64, device=p.device)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the state keeps its saved dtypes (torch casts it to the parameter's,
        which would round the float64 decay marks of a float32 table, or all of a bfloat16 one's)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                self.state[p][key] = value.to(device=p.device, copy=True)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self._state(p)
                state["log_decay"] += math.log1p(-lr * wd)  # every row owes this step's decay
                if p.grad is None:
                    continue
                rows, grad = sparse_rows(p.grad)
                if rows.numel() == 0:
                    continue
                decay = torch.exp(state["log_decay"] - state["row_decay_mark"][rows]).float()
                values = p[rows].float() * decay[:, None]
                m = state["exp_avg"][rows].float().mul_(beta1).add_(grad, alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = state["row_step"][rows] + 1
                bias1 = 1 - beta1 ** t.double()
                bias2 = 1 - beta2 ** t.double()
                denom = (v.sqrt() / bias2.sqrt().float()[:, None]).add_(eps)
                values.sub_(m / denom * (lr / bias1).float()[:, None])
                p[rows] = values.to(p.dtype)
                state["exp_avg"][rows] = m.to(state["exp_avg"].dtype)
                state["exp_avg_sq"][rows] = v.to(state["exp_avg_sq"].dtype)
                state["row_step"][rows] = t
                state["row_decay_mark"][rows] = state["log_decay"]


class RowSparseSGD(torch.optim.Optimizer):
    """SGD with momentum applied lazily, row by row, to a table with row-sparse gradients.

    ``buf[r] <- momentum buf[r] + g[r]; p[r] <- p[r] - lr buf[r]`` for the rows ``r`` a step touched
    (plain SGD's update of those rows with no weight decay); rows not touched neither move nor decay
    their momentum, unlike dense SGD, whose momentum keeps moving a row after its visit.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), float(group["momentum"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, grad = sparse_rows(p.grad)
                if rows.numel() == 0:
                    continue
                state = self.state[p]
                if (
                    "momentum_buffer" not in state
                ):  # in the table's precision where that is a half one, as AdamW's moments
                    half = p.dtype in (torch.bfloat16, torch.float16)
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=p.dtype if half else torch.float32)
                buf = state["momentum_buffer"][rows].float().mul_(momentum).add_(grad)
                state["momentum_buffer"][rows] = buf.to(state["momentum_buffer"].dtype)
                p[rows] = (p[rows].float() - lr * buf).to(p.dtype)


def sparse_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and row gradients of a gradient (sparse COO, summed over duplicates; or dense)."""
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values().float()
    rows = grad.flatten(1).abs().sum(1).nonzero().flatten()
    return rows, grad[rows].float()


def all_reduce_row_gradients(optimizer: torch.optim.Optimizer | OptimizerSet) -> None:
    """Average the gradients of ``row_sparse`` parameters over processes, in place (only the touched rows travel).

    Call it on every process after the backward pass and before clipping, so that the clipping
    norm and the update are the same everywhere. A no-op in one process.
    """
    if not distributed.is_distributed():
        return
    for group in optimizer.param_groups:
        if not group.get("row_sparse"):
            continue
        for p in group["params"]:
            grad = (
                p.grad
                if p.grad is not None
                else torch.sparse_coo_tensor(
                    torch.zeros(1, 0, dtype=torch.long, device=p.device), p.new_zeros((0, *p.shape[1:])), p.shape
                )
            )
            rows, values = distributed.all_reduce_rows(*sparse_rows(grad))
            p.grad = torch.sparse_coo_tensor(rows[None], values.to(p.dtype), p.shape, is_coalesced=True)


class OptimizerSet:
    """Several optimizers stepped as one (the trainer sees one ``param_groups`` list)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(
                "the checkpoint's optimizer state has another set of optimizers (icone.table_path changed?)"
            )
        for optimizer, item in zip(self.optimizers, saved):
            optimizer.load_state_dict(item)


REFERENCE_BATCH = 64  # the batch size a method's default lr (and optim.base_lr, a group's reference_lr) is stated for


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """``lr`` (stated for :data:`REFERENCE_BATCH`) at ``batch_size``: ``sqrt`` (Adam-type), ``linear`` (SGD) or ``none``."""
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / REFERENCE_BATCH)
    if rule == "linear":
        return lr * batch_size / REFERENCE_BATCH
    return lr


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer of a run: ``name`` (``adamw`` or ``sgd``) at ``lr`` with ``weight_decay``; SGD's
    ``momentum``; AdamW's ``fused`` kernel where torch has one; ``batch_size``: the whole batch (all
    processes), to which a group's ``reference_lr`` is scaled."""

    lr: float
    weight_decay: float
    name: str = "adamw"
    momentum: float = 0.9
    fused: bool = True
    batch_size: int = REFERENCE_BATCH


def build_optimizer(method: torch.nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer | OptimizerSet:
    """The optimizer (``spec.name``) over the method's dense groups; a group with ``optimizer: "sgd"``
    gets SGD of its own (``momentum`` from the group); :class:`RowSparseAdamW` (or
    :class:`RowSparseSGD`) over its ``row_sparse`` groups.

    Every group gets ``lr_scale`` (its lr = scheduled lr x this; its lr now: ``spec.lr`` x this) and
    ``base_weight_decay``. A group with ``reference_lr`` (its own lr at :data:`REFERENCE_BATCH`) is
    scaled linearly to ``spec.batch_size``, as SGD's lr is: its ``lr_scale`` is that lr over ``spec.lr``.
    """
    lr = float(spec.lr)
    groups = method.param_groups(lr, float(spec.weight_decay))
    for group in groups:
        if "reference_lr" in group:
            group["lr_scale"] = scaled_lr(float(group.pop("reference_lr")), spec.batch_size, "linear") / lr
        group.setdefault("lr_scale", 1.0)
        group["lr"] = lr * group["lr_scale"]
        group["base_weight_decay"] = group["weight_decay"]
    own_sgd = [g for g in groups if g.get("optimizer") == "sgd"]
    dense = [g for g in groups if not g.get("row_sparse") and g.get("optimizer") != "sgd"]
    optimizers: list[torch.optim.Optimizer] = []
    if dense and spec.name == "sgd":
        optimizers.append(torch.optim.SGD(dense, lr=lr, momentum=spec.momentum))
    elif dense:
        optimizers.append(adamw(dense, lr, fused=spec.fused))
    if [g for g in own_sgd if not g.get("row_sparse")]:
        optimizers.append(torch.optim.SGD([g for g in own_sgd if not g.get("row_sparse")], lr=lr))
    if [g for g in own_sgd if g.get("row_sparse")]:
        optimizers.append(RowSparseSGD([g for g in own_sgd if g.get("row_sparse")], lr=lr))
    sparse_adamw = [g for g in groups if g.get("row_sparse") and g.get("optimizer") != "sgd"]
    if sparse_adamw:
        optimizers.append(RowSparseAdamW(sparse_adamw, lr=lr))
    return optimizers[0] if len(optimizers) == 1 else OptimizerSet(*optimizers)


def adamw(groups: list[dict[str, Any]], lr: float, fused: bool = True) -> torch.optim.Optimizer:
    """torch's AdamW; with ``fused``, its fused kernel where torch has one for these parameters (CUDA, and
    CPU since torch 2.4: about 5x faster than the per-parameter loop for a ResNet-18 on one core)."""
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError, TypeError):  # a device or dtype without the fused kernel
            pass
    return torch.optim.AdamW(groups, lr=lr)


def row_sparse_parameter_names(method: torch.nn.Module, optimizer: torch.optim.Optimizer | OptimizerSet) -> list[str]:
    """Names of the parameters that their optimizer keeps in sync across processes (DDP must skip them)."""
    ids = {id(p) for g in optimizer.param_groups if g.get("row_sparse") for p in g["params"]}
    return [name for name, p in method.named_parameters() if id(p) in ids]


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse (row) gradients; returns the total norm."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):  # the common case: torch's own (fused) clipping
        return torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # a sparse gradient's norm is that of its values once duplicates are summed
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).double() for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total.float()
