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
from icone.config import option
from icone.methods.base import Method, split_decay
from icone.methods.parts import forward_by_shape
from icone.nets import MLP
from icone.stats import rankme

ALIGNMENTS = ("cosine", "infonce")
DIVERSITIES = ("hinge", "frame", "uniformity")
PROJECTORS = ("none", "linear", "mlp")
TABLE_INITS = ("normal", "features")
TABLE_PATHS = ("auto", "dense", "sparse")
TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# the values a preset gives the options left unset (None); docs/icone.md says why each differs
PRESETS: dict[str, dict[str, Any]] = {
    "icone": {"projector": "linear", "diversity": "frame", "table_lr_scale": 1.0, "table_init": "features", "w_div": 10.0},
    "paper": {"projector": "none", "diversity": "hinge", "table_lr_scale": 1.0, "table_init": "normal", "w_div": 1.0},
}  # fmt: skip


@dataclass
class IConEOptions:
    preset: str = option("icone", choices=tuple(PRESETS))  # fills the options below that are left unset
    alignment: str = option("cosine", choices=ALIGNMENTS)  # cosine | infonce (own row positive, other rows negatives)
    diversity: str | None = option(None, choices=DIVERSITIES)
    projector: str | None = option(None, choices=PROJECTORS)  # none | linear | mlp (MLP with LayerNorm)
    projector_dim: int = option(128, low=1)
    projector_hidden: int = option(0, low=0)  # mlp only: hidden width (0: twice the backbone's feature width)
    table_init: str | None = option(
        None, choices=TABLE_INITS
    )  # features: rows = untrained encoder's embeddings (ours) | normal N(0, std^2)
    table_init_std: float = option(0.02, above=0)
    table_lr_scale: float | None = option(None, above=0)  # table lr = encoder lr * this
    table_weight_decay: float | None = option(None, low=0)  # None: the encoder's weight decay
    detach_table: bool = False  # stop-gradient of the alignment into the table (rows move by L_div only)
    w_vi: float = option(1.0, low=0)
    w_vv: float = option(1.0, low=0)
    w_div: float | None = option(None, low=0)  # frame's value is ~1/d at its optimum, so icone's preset weighs it 10
    temperature: float = option(0.1, above=0)  # infonce only
    negatives: int = option(4096, low=1)  # infonce: table rows sampled as negatives per step
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
    cost_grows_with_instances = True
    Options = IConEOptions

    def __init__(self, backbone: nn.Module, options: IConEOptions, num_instances: int) -> None:
        options.validate()  # options built by hand get the preset's values too
        super().__init__(backbone, options, num_instances)
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

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts = self.options
        b = views[0].shape[0]
        z = forward_by_shape(self.embed, views).float()  # (V*B) x d, one backbone pass per view size
        z = z.reshape(len(views), b, -1).transpose(0, 1)  # B x V x d
        batch_rows = self._rows(index)
        touched = index
        if opts.alignment == "cosine":
            l_vi = losses.icone_view_instance_alignment(z, batch_rows.detach() if opts.detach_table else batch_rows)
        else:
            n = self.num_instances
            if (
                opts.negatives >= n and not self.sparse
            ):  # every row once (a draw with replacement repeats some, misses others)
                negatives = torch.arange(n, device=z.device)
            else:
                negatives = torch.randint(0, n, (min(opts.negatives, n),), device=z.device)
            aligned_table = self.table.detach() if opts.detach_table else self.table
            l_vi = losses.icone_infonce_alignment(
                z, aligned_table, index, negatives, temperature=opts.temperature, sparse_grad=self.sparse
            )
            touched = torch.cat([index, negatives])
        l_vv = losses.icone_view_view_alignment(z)
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
        encoder = [(n, p) for n, p in self.named_parameters() if n != "table"]
        table_wd = weight_decay if self.options.table_weight_decay is None else self.options.table_weight_decay
        table_group = {
            "params": [self.table],
            "lr": lr * self.options.table_lr_scale,
            "weight_decay": table_wd,
            "lr_scale": self.options.table_lr_scale,
            "row_sparse": self.sparse,
        }
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
