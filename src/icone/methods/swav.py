"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes between views.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020, arXiv 2006.09882. The codes of a batch are equipartitioned over the prototypes
together with a queue of recent embeddings, so B = 1 is defined once the queue holds entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icone import distributed, losses
from icone.methods.base import Method, ViewRequirements
from icone.methods.parts import TWO_OR_MORE_VIEWS, RingBuffer, forward_by_shape, scaled_to_data
from icone.nets import HEAD_NORMS, MLP, CentroidLayer
from icone.options import option

MAX_PROTOTYPES = 3000  # the paper's K (ImageNet)
MAX_QUEUE = 3840  # the paper's queue length for small batches (ImageNet)


def default_num_prototypes(num_instances: int) -> int:
    """``K = clip(N // 4, 8, 3000)`` (ours)."""
    return scaled_to_data(num_instances, divisor=4, low=8, high=MAX_PROTOTYPES)


def default_queue_size(num_instances: int) -> int:
    """``min(3840, N)`` (ours): at least four queued embeddings per prototype below the cap."""
    return min(MAX_QUEUE, max(int(num_instances), 1))


@dataclass
class SwAVOptions:
    num_prototypes: int | None = option(None, low=1)  # K; None: clip(N // 4, 8, 3000)
    queue_size: int | None = option(
        None, low=0
    )  # embeddings kept for Sinkhorn (all processes); None: min(3840, N); 0: no queue
    queue_start: float = option(
        0.0, low=0, high=1
    )  # share of training after which the queue is used (ours: at once; paper: epoch 15)
    queue_max_batch: int = option(
        1, low=0
    )  # the queue is used only while B x processes <= this (ours; the paper: up to 256)
    hidden_dim: int = option(2048, low=1)  # projector feature -> 2048 -> 128 (paper)
    out_dim: int = option(128, low=1)
    norm: str = option("layer", choices=HEAD_NORMS)  # head norm; ours (the paper's BatchNorm needs a batch)
    temperature: float = option(0.1, above=0)
    epsilon: float = option(0.05, above=0)  # Sinkhorn regularisation
    sinkhorn_iterations: int = option(3, low=1)


class SwAV(Method):
    """Backbone + projector + K prototypes; codes of the global views by Sinkhorn over batch + queue.

    The queue holds the most recent normalised embeddings of the global views (both views, all
    processes, one FIFO, filled from the first step); their scores are recomputed with the
    current prototypes. It enters Sinkhorn only where the batch alone cannot be equipartitioned:
    by default at B = 1 over all processes (where Sinkhorn over one sample gives a uniform code),
    from the second step on, once ``queue_start`` of training has passed; ``swav.queue_max_batch``
    extends its use to larger batches (the paper: <= 256; why ours is 1: docs/methods.md).
    ``default_lr`` is for AdamW (ours); the paper uses LARS, lr 4.8 at batch 4096, wd 1e-6.
    Local crops: 2 by default (ours; the paper uses 6).
    """

    name = "swav"
    family = "clustering"
    batch_needs = "nothing (Sinkhorn runs over the batch plus a queue)"
    paper = "Caron et al. 2020, arXiv 2006.09882"
    min_batch_size = 1
    default_lr = 1e-3
    default_weight_decay = 0.05
    default_norm = "group"
    default_local_crops = 2
    Options = SwAVOptions

    def __init__(self, backbone: nn.Module, options: SwAVOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        self.num_prototypes = options.num_prototypes or default_num_prototypes(num_instances)
        self.projector = MLP(self.feature_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)
        self.prototypes = CentroidLayer(options.out_dim, self.num_prototypes)
        size = default_queue_size(num_instances) if options.queue_size is None else options.queue_size
        self.queue = RingBuffer(size, options.out_dim)
        self._use_queue = options.queue_start <= 0
        self._pending: torch.Tensor | None = None

    @classmethod
    def view_requirements(cls, options: SwAVOptions) -> ViewRequirements:
        return TWO_OR_MORE_VIEWS

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)).float(), dim=-1)

    @torch.no_grad()
    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes (``B x K``) of this process's batch scores.

        Sinkhorn runs over the queue and the batches of all processes (gathered), the same
        computation on every process; each keeps the rows of its own batch.
        """
        opts, b = self.options, scores.shape[0]
        everyone = distributed.all_gather_cat(scores)
        use_queue = self._use_queue and self.queue.filled and len(everyone) <= opts.queue_max_batch
        queued = self.prototypes(self.queue.rows[: self.queue.filled]).float() if use_queue else everyone[:0]
        q = losses.sinkhorn(torch.cat([queued, everyone]), epsilon=opts.epsilon, iterations=opts.sinkhorn_iterations)
        start = len(queued) + distributed.rank() * b
        return q[start : start + b]

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        globals_ = min(self.global_crops, len(views))
        b = views[0].shape[0]
        z = forward_by_shape(self.embed, views)  # (V * B) x d, view-major
        scores = self.prototypes(z).float().reshape(len(views), b, -1)
        codes = torch.stack([self.codes(scores[i].detach()) for i in range(globals_)])
        loss = losses.swav_loss(scores, codes, temperature=self.options.temperature)
        # global-view embeddings of all processes, view-major as one process with the whole batch holds them
        own = z[: globals_ * b].detach().reshape(globals_, b, -1).transpose(0, 1).contiguous()  # B x G x d
        self._pending = distributed.all_gather_cat(own).transpose(0, 1).reshape(-1, z.shape[-1])
        with torch.no_grad():
            used = torch.zeros(self.num_prototypes, device=z.device).index_fill_(0, codes.argmax(-1).flatten(), 1.0)
        return loss, {"distinct_codes": used.sum()}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self._use_queue = step / max(total_steps, 1) >= self.options.queue_start
        if self._pending is not None:
            self.queue.push(self._pending)  # the newest embeddings overwrite the oldest
        self._pending = None
