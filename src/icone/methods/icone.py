"""IConE: a learnable table of per-instance embeddings with an explicit diversity objective.

Almpanakis & Kreshuk, "IConE: Batch Independent Collapse Prevention for Self-Supervised
Representation Learning", arXiv 2603.15263. METHODS.md gives the objective implemented here:
``L = w_vi L_vi + w_vv L_vv + w_div L_div``. No term uses batch statistics, so B = 1 is defined.

Two defaults are ours, chosen by measurement (docs/icone.md, BENCHMARKS.md): table rows start at
the untrained encoder's normalised embeddings (``table_init=features``) and the table learns 10x
faster than the encoder (``table_lr_scale=10``). ``icone.table_init=normal icone.table_lr_scale=1``
gives the public reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from icone import losses
from icone.errors import UserError
from icone.methods.base import Method, split_decay
from icone.nets.heads import MLP

ALIGNMENTS = ("cosine", "infonce")
DIVERSITIES = ("hinge", "frame", "uniformity")
PROJECTORS = ("none", "linear", "mlp")
TABLE_INITS = ("normal", "features")


@dataclass
class IConEOptions:
    alignment: str = "cosine"  # cosine | infonce (own row positive, sampled rows negatives)
    diversity: str = "hinge"  # hinge | frame | uniformity
    projector: str = "none"  # none | linear | mlp (MLP with LayerNorm)
    projector_dim: int = 128
    table_init: str = "features"  # features (rows = untrained encoder's embeddings; ours) | normal N(0, std^2) (paper)
    table_init_std: float = 0.02
    table_lr_scale: float = 10.0  # table lr = encoder lr * this (ours: 10; the public reading: 1)
    table_weight_decay: float | None = None  # None: the encoder's weight decay
    detach_table: bool = False  # stop-gradient of the alignment into the table (rows move by L_div only)
    w_vi: float = 1.0
    w_vv: float = 1.0
    w_div: float = 1.0
    temperature: float = 0.1  # infonce only
    negatives: int = 4096  # infonce: table rows sampled as negatives per step
    diversity_rows: int = 8192  # full-table diversity up to this many rows; above it, batch rows vs a sample
    uniformity_t: float = 2.0

    def validate(self) -> None:
        for key, choices in (("alignment", ALIGNMENTS), ("diversity", DIVERSITIES), ("projector", PROJECTORS), ("table_init", TABLE_INITS)):
            if getattr(self, key) not in choices:
                raise UserError(f"icone.{key}={getattr(self, key)!r} is not valid; choose one of: {', '.join(choices)}")
        if self.temperature <= 0:
            raise UserError(f"icone.temperature must be positive, got {self.temperature}")


class IConE(Method):
    name = "icone"
    family = "instance-table"
    batch_needs = "nothing"
    paper = "Almpanakis & Kreshuk 2026, arXiv 2603.15263"
    min_batch_size = 1
    default_lr = 2e-4  # at batch 64: 1e-4 at 16 and 2.5e-5 at 1 with the default sqrt scaling
    default_weight_decay = 0.05
    default_norm = "group"
    Options = IConEOptions

    def __init__(self, backbone: nn.Module, options: IConEOptions, num_instances: int) -> None:
        super().__init__(backbone, options, num_instances)
        if options.projector == "none":
            self.projector: nn.Module = nn.Identity()
            dim = self.feature_dim
        elif options.projector == "linear":
            self.projector = nn.Linear(self.feature_dim, options.projector_dim)
            dim = options.projector_dim
        else:
            self.projector = MLP(self.feature_dim, 2 * self.feature_dim, options.projector_dim, layers=2, norm="layer")
            dim = options.projector_dim
        self.embedding_dim = dim
        self.table = nn.Parameter(torch.randn(num_instances, dim) * options.table_init_std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``table_init=features``: each row starts at its instance's untrained embedding."""
        if self.options.table_init != "features":
            return
        was_training = self.training
        self.eval()
        for x, index in batches:
            self.table[index] = F.normalize(self.embed(x).float(), dim=-1).to(self.table.dtype)
        self.train(was_training)

    def diversity(self, index: torch.Tensor) -> torch.Tensor:
        opts, table = self.options, self.table
        if opts.diversity == "frame":
            return losses.icone_frame_diversity(table)
        if opts.diversity == "uniformity":
            if len(table) > opts.diversity_rows:
                table = table[torch.randint(0, len(table), (opts.diversity_rows,), device=table.device)]
            return losses.icone_uniformity(table, t=opts.uniformity_t)
        if len(table) <= opts.diversity_rows:
            return losses.icone_hinge_diversity(table)
        sample = torch.randint(0, len(table), (opts.diversity_rows,), device=table.device)
        return losses.icone_hinge_diversity(table[sample], rows=table[index], rows_index=index, table_index=sample)

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts = self.options
        b = views[0].shape[0]
        z = self.embed(torch.cat(views)).float()  # (V*B) x d, one backbone pass for all views
        z = z.reshape(len(views), b, -1).transpose(0, 1)  # B x V x d
        table = self.table.float()
        aligned_table = table.detach() if opts.detach_table else table
        if opts.alignment == "cosine":
            l_vi = losses.icone_view_instance_alignment(z, aligned_table[index])
        else:
            negatives = torch.randint(0, len(table), (min(opts.negatives, len(table)),), device=z.device)
            l_vi = losses.icone_infonce_alignment(z, aligned_table, index, negatives, temperature=opts.temperature)
        l_vv = losses.icone_view_view_alignment(z)
        l_div = self.diversity(index)
        loss = opts.w_vi * l_vi + opts.w_vv * l_vv + opts.w_div * l_div
        return loss, {"loss_vi": l_vi.detach(), "loss_vv": l_vv.detach(), "loss_div": l_div.detach()}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        encoder = [(n, p) for n, p in self.named_parameters() if n != "table"]
        table_wd = weight_decay if self.options.table_weight_decay is None else self.options.table_weight_decay
        table_group = {"params": [self.table], "lr": lr * self.options.table_lr_scale, "weight_decay": table_wd, "lr_scale": self.options.table_lr_scale}
        return split_decay(encoder, lr, weight_decay) + [table_group]

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        """Table health: mean/max off-diagonal cosine and RankMe of (up to 2048 sampled) rows."""
        from icone.evaluate.metrics import rankme

        rows = self.table.float()
        if len(rows) > 2048:
            rows = rows[torch.randperm(len(rows), device=rows.device)[:2048]]
        cos = F.normalize(rows, dim=-1) @ F.normalize(rows, dim=-1).t()
        off = cos[~torch.eye(len(rows), dtype=torch.bool, device=rows.device)]
        return {
            "table_mean_cosine": float(off.mean()) if off.numel() else 0.0,
            "table_max_cosine": float(off.max()) if off.numel() else 0.0,
            "table_rankme": rankme(rows),
        }

