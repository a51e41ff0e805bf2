"""IConE: a learnable table of per-instance embeddings with an explicit diversity objective.

Almpanakis & Kreshuk, "IConE: Batch Independent Collapse Prevention for Self-Supervised
Representation Learning", arXiv 2603.15263; the objective as implemented is in docs/methods.md:
``L = w_vi L_vi + w_vv L_vv + w_div L_div``. No term uses batch statistics, so B = 1 is defined.
Where our defaults depart from the public reading, and why, is in docs/icone.md.

Two paths: ``dense`` (the table is an ordinary parameter; the diversity runs over the whole table
up to ``diversity_rows`` rows) and ``sparse`` (per-step cost independent of N: the batch's rows
against a sample of rows, or the exact ``frame`` term from a maintained ``d x d`` matrix; the
table's gradient holds only the rows used, and a row-sparse AdamW updates only those rows and
exchanges only those across processes). ``auto`` takes ``sparse`` above ``diversity_rows`` instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from icone import distributed, losses
from icone.methods.base import Method, split_decay
from icone.methods.parts import forward_by_shape
from icone.nets import MLP
from icone.options import option
from icone.stats import rankme

ALIGNMENTS = ("cosine", "infonce")
DIVERSITIES = ("hinge", "frame", "uniformity")
PROJECTORS = ("none", "linear", "mlp")
TABLE_INITS = ("normal", "features")
TABLE_PATHS = ("auto", "dense", "sparse")
TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TABLE_OPTIMIZERS = ("adamw", "sgd")
LOCAL_ALIGNMENTS = ("detached", "none")


# the values a preset gives the options left unset (None); docs/icone.md says why each differs
PRESETS: dict[str, dict[str, Any]] = {
    "icone": {"projector": "linear", "diversity": "frame", "table_lr_scale": 1.0, "table_init": "features", "w_div": 10.0,
              "alignment": "cosine", "temperature": 0.1, "negatives": 4096, "table_init_std": 0.02, "w_vv": 1.0,
              "table_optimizer": "sgd", "table_lr": 4.0},
    "paper": {"projector": "none", "diversity": "hinge", "table_lr_scale": 1.0, "table_init": "normal", "w_div": 1.0,
              "alignment": "cosine", "temperature": 0.1, "negatives": 4096, "table_init_std": 0.02, "w_vv": 1.0,
              "table_optimizer": "adamw", "table_lr": 4.0},
    # Cao et al. 2020 (PIC, github bl0/PIC): softmax of each view against every row, rows N(0, 0.01^2)
    # moved by SGD (theirs: lr 0.03 at batch 256, momentum 0.9, for encoder and table), no diversity or
    # view-view term; small crops scored against the detached table
    "pic": {"projector": "mlp", "diversity": "frame", "table_lr_scale": 1.0, "table_init": "normal", "w_div": 0.0,
            "alignment": "infonce", "temperature": 0.2, "negatives": 1 << 30, "table_init_std": 0.01, "w_vv": 0.0,
            "table_optimizer": "sgd", "table_lr": 0.0075},
}  # fmt: skip


@dataclass
class IConEOptions:
    preset: str = option("icone", choices=tuple(PRESETS))  # fills the options below that are left unset
    alignment: str | None = option(
        None, choices=ALIGNMENTS
    )  # cosine (icone) | infonce (own row positive, other rows negatives)
    diversity: str | None = option(None, choices=DIVERSITIES)
    projector: str | None = option(None, choices=PROJECTORS)  # none | linear | mlp (MLP with LayerNorm)
    projector_dim: int = option(128, low=1)
    projector_hidden: int = option(0, low=0)  # mlp only: hidden width (0: twice the backbone's feature width)
    table_init: str | None = option(
        None, choices=TABLE_INITS
    )  # features: rows = untrained encoder's embeddings (ours) | normal N(0, std^2)
    table_init_std: float | None = option(None, above=0)  # table_init=normal: std of the rows (0.02; pic 0.01)
    table_optimizer: str | None = option(None, choices=TABLE_OPTIMIZERS)  # sgd (icone, pic) | adamw (paper)
    table_lr_scale: float | None = option(None, above=0)  # adamw: table lr = encoder lr * this
    table_lr: float | None = option(
        None, above=0
    )  # sgd: the table's lr at batch 64, scaled linearly (icone 4; pic 0.0075)
    table_momentum: float = option(0.9, low=0, below=1)  # sgd: momentum of the table
    table_weight_decay: float | None = option(None, low=0)  # None: the encoder's (adamw), 0 (sgd)
    local_alignment: str = option("detached", choices=LOCAL_ALIGNMENTS)  # local crops vs their row: detached | none
    detach_table: bool = False  # stop-gradient of the alignment into the table (rows move by L_div only)
    w_vi: float = option(1.0, low=0)
    w_vv: float | None = option(None, low=0)  # 1 (icone, paper); 0 (pic)
    w_div: float | None = option(None, low=0)  # frame's value is ~1/d at its optimum, so icone's preset weighs it 10
    temperature: float | None = option(None, above=0)  # infonce only: 0.1 (pic 0.2)
    negatives: int | None = option(None, low=1)  # infonce: table rows sampled as negatives per step (4096; pic: all)
    diversity_rows: int = option(
        8192, low=1
    )  # full-table diversity up to this many rows; above it (and on the sparse path) the batch's rows vs a sample
    sample_rows: int = option(
        1024, low=1
    )  # rows in that sample (a uniform draw per step; the estimate is unbiased, its variance ~ 1 / this)
    uniformity_t: float = option(2.0, above=0)
    table_path: str = option(
        "auto", choices=TABLE_PATHS
    )  # auto (sparse above diversity_rows instances) | dense | sparse
    table_dtype: str = option("float32", choices=tuple(TABLE_DTYPES))  # the table and its optimizer moments
    frame_resync_every: int = option(
        1000, low=1
    )  # sparse path, frame diversity: recompute the d x d matrix every this many steps

    def validate(self) -> None:
        """Fill the unset options from ``preset``."""
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)


class IConE(Method):
    name = "icone"
    family = "instance-table"
    batch_needs = "nothing"
    paper = "Almpanakis & Kreshuk 2026, arXiv 2603.15263"
    min_batch_size = 1
    min_instances = 2  # one row has no pairs: the diversity is 0, and a constant encoder meets the objective
    default_lr = 2.8e-3  # at batch 64: 1e-3 at 8 and 3.5e-4 at 1 with the default sqrt scaling (docs/icone.md)
    default_weight_decay = 0.05
    default_norm = "group"
    default_order = "window"  # each row is pulled in bursts of visits: fresh targets (docs/icone.md)
    cost_grows_with_instances = True
    Options = IConEOptions

    def __init__(self, backbone: nn.Module, options: IConEOptions, num_instances: int, global_crops: int = 2) -> None:
        options.validate()  # options built by hand get the preset's values too
        super().__init__(backbone, options, num_instances, global_crops)
        if options.projector == "none":
            self.projector: nn.Module = nn.Identity()
            dim = self.feature_dim
        elif options.projector == "linear":
            self.projector = nn.Linear(self.feature_dim, options.projector_dim)
            dim = options.projector_dim
        else:
            hidden = options.projector_hidden or 2 * self.feature_dim
            self.projector = MLP(self.feature_dim, hidden, options.projector_dim, layers=2, norm="layer")
            dim = options.projector_dim
        self.embedding_dim = dim
        dtype = TABLE_DTYPES[options.table_dtype]
        self.table = nn.Parameter((torch.randn(num_instances, dim) * options.table_init_std).to(dtype))
        self.sparse = options.table_path == "sparse" or (
            options.table_path == "auto" and num_instances > options.diversity_rows
        )
        self.uses_gram = self.sparse and options.diversity == "frame"
        if self.uses_gram:  # G = E_n^T E_n of the normalised rows, kept in step with the table
            self.register_buffer("frame_gram", torch.zeros(dim, dim, dtype=torch.float64))
        self._touched: tuple[torch.Tensor, torch.Tensor] | None = None
        self.frame_gram_drift = 0.0

    @classmethod
    def order_for(cls, options: IConEOptions) -> str:
        """Rows pulled in bursts of visits (``window``); the ``paper`` preset keeps the public reading's epochs."""
        return "shuffle" if options.preset == "paper" else cls.default_order

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def describe(self) -> dict[str, str]:
        return {"table_path": "sparse" if self.sparse else "dense"}

    @torch.no_grad()
    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``table_init=features``: each row starts at its instance's untrained embedding."""
        if self.options.table_init == "features":
            was_training = self.training
            self.eval()
            for x, index in batches:
                self.table[index] = F.normalize(self.embed(x).float(), dim=-1).to(self.table.dtype)
            self.train(was_training)
        if self.uses_gram:
            self.resync_gram()

    @torch.no_grad()
    def resync_gram(self) -> float:
        """Recompute ``G = E_n^T E_n`` from the whole table (O(N d^2), in chunks); returns the relative drift it removed."""
        gram = torch.zeros_like(self.frame_gram)
        for chunk in self.table.split(65536):
            e = F.normalize(chunk.float(), dim=-1)
            gram += (e.t() @ e).double()
        drift = float((self.frame_gram - gram).norm() / gram.norm().clamp(min=1e-12))
        self.frame_gram.copy_(gram)
        return drift

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Table rows with a gradient: a sparse one (only these rows) on the sparse path."""
        return F.embedding(ids, self.table, sparse=self.sparse).float()

    def diversity(self, index: torch.Tensor, batch_rows: torch.Tensor) -> torch.Tensor:
        """``L_div`` over the whole table, or its N-independent estimate from the batch's rows."""
        opts, n = self.options, self.num_instances
        if opts.diversity == "frame":
            if self.uses_gram:
                return losses.icone_frame_diversity_from_gram(self.frame_gram, batch_rows, n)
            return losses.icone_frame_diversity(self.table.float())
        if not self.sparse and n <= opts.diversity_rows:
            table = self.table.float()
            return (
                losses.icone_hinge_diversity(table)
                if opts.diversity == "hinge"
                else losses.icone_uniformity(table, t=opts.uniformity_t)
            )
        sample = torch.randint(0, n, (opts.sample_rows,), device=index.device)
        others = self.table.detach()[sample].float()
        return losses.icone_batch_diversity(
            batch_rows, index, others, sample, diversity=opts.diversity, t=opts.uniformity_t
        )

    def _negatives(self, device: torch.device) -> torch.Tensor:
        """Rows scored as negatives: every row once when ``negatives`` covers the table, else a uniform draw."""
        n = self.num_instances
        if self.options.negatives >= n and not self.sparse:  # a draw with replacement repeats some, misses others
            return torch.arange(n, device=device)
        return torch.randint(0, n, (min(self.options.negatives, n),), device=device)

    def _alignment(
        self, z: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, negatives: torch.Tensor | None
    ) -> torch.Tensor:
        """``L_vi`` of the views ``z`` (``B x V x d``) against their rows ``rows`` (cosine) or the table (infonce)."""
        if self.options.alignment == "cosine":
            return losses.icone_view_instance_alignment(z, rows)
        table = self.table.detach() if not rows.requires_grad else self.table
        return losses.icone_infonce_alignment(
            z,
            table,
            index,
            negatives,
            temperature=self.options.temperature,
            sparse_grad=self.sparse and rows.requires_grad,
        )

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts = self.options
        b, g = views[0].shape[0], min(self.global_crops, len(views))
        local = len(views) - g if opts.local_alignment == "detached" else 0
        z = forward_by_shape(self.embed, views[: g + local]).float()  # (V*B) x d, one backbone pass per view size
        z = z.reshape(g + local, b, -1).transpose(0, 1)  # B x V x d
        batch_rows = self._rows(index)
        negatives = self._negatives(z.device) if opts.alignment == "infonce" else None
        aligned_rows = batch_rows.detach() if opts.detach_table else batch_rows
        l_vi = self._alignment(z[:, :g], index, aligned_rows, negatives)
        if local:  # small crops follow the row; they never move it
            l_local = self._alignment(z[:, g:], index, batch_rows.detach(), negatives)
            l_vi = (g * l_vi + local * l_local) / (g + local)
        touched = index if negatives is None else torch.cat([index, negatives])
        l_vv = losses.icone_view_view_alignment(z[:, :g]) if opts.w_vv > 0 else z.new_zeros(())
        # w_div = 0: not computed (the full-table hinge is O(N^2 d) a step, most of the step at N = 10^3)
        l_div = self.diversity(index, batch_rows) if opts.w_div > 0 else z.new_zeros(())
        if self.uses_gram:  # the rows this step changes on any process, as they are before it
            with torch.no_grad():
                touched = torch.unique(distributed.all_gather_cat(touched))
                self._touched = (touched, F.normalize(self.table[touched].float(), dim=-1))
        loss = opts.w_vi * l_vi + opts.w_vv * l_vv + opts.w_div * l_div
        return loss, {"loss_vi": l_vi.detach(), "loss_vv": l_vv.detach(), "loss_div": l_div.detach()}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Sparse ``frame`` path: ``G += E_new^T E_new - E_old^T E_old`` over the changed rows; a full resync every ``frame_resync_every`` steps."""
        if not self.uses_gram or self._touched is None:
            return
        touched, old = self._touched
        new = F.normalize(self.table[touched].float(), dim=-1)
        self.frame_gram += (new.t() @ new - old.t() @ old).double()
        self._touched = None
        if step % self.options.frame_resync_every == 0:
            self.frame_gram_drift = self.resync_gram()

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The encoder's groups, and the table's: AdamW at ``table_lr_scale`` x the encoder's lr, or SGD
        (``table_lr`` at batch 64, scaled linearly with the batch, as Cao et al. 2020 train theirs)."""
        opts = self.options
        encoder = [(n, p) for n, p in self.named_parameters() if n != "table"]
        table_group: dict[str, Any] = {"params": [self.table], "row_sparse": self.sparse}
        if opts.table_optimizer == "sgd":
            wd = 0.0 if opts.table_weight_decay is None else opts.table_weight_decay
            table_group.update(optimizer="sgd", reference_lr=opts.table_lr, momentum=opts.table_momentum, lr=lr)
        else:
            wd = weight_decay if opts.table_weight_decay is None else opts.table_weight_decay
            table_group.update(lr=lr * opts.table_lr_scale, lr_scale=opts.table_lr_scale)
        table_group["weight_decay"] = wd
        return split_decay(encoder, lr, weight_decay) + [table_group]

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        """Table health: mean/max off-diagonal cosine and RankMe of (up to 2048 sampled) rows."""
        rows = self.table.float()
        if len(rows) > 2048:
            rows = rows[torch.randperm(len(rows), device=rows.device)[:2048]]
        cos = F.normalize(rows, dim=-1) @ F.normalize(rows, dim=-1).t()
        off = cos[~torch.eye(len(rows), dtype=torch.bool, device=rows.device)]
        health = {
            "table_mean_cosine": float(off.mean()) if off.numel() else 0.0,
            "table_max_cosine": float(off.max()) if off.numel() else 0.0,
            "table_rankme": rankme(rows),
        }
        if self.uses_gram:
            health["frame_gram_drift"] = self.frame_gram_drift
        return health
