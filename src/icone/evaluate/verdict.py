"""The verdict on collapse, in words, from the evaluation's RankMe and embedding std.

An encoder has **collapsed** when its RankMe (the effective rank of its features, Garrido et al.
2023) is below a tenth of its starting point's, or below 2, or when the per-dimension std of its
normalised features is below a tenth of that of features spread evenly on the sphere
(``0.1 / sqrt(width)``): all samples map to nearly one point. It has **partly collapsed** (lost
dimensions) when RankMe is below a fifth of its starting point's. Otherwise: no collapse.

The shares are low on purpose: an untrained encoder's features have a high rank from noise, and
encoders that learned well keep a fifth to a half of it (synthetic2d, 10 epochs, smallcnn: SimCLR
41%, IConE 23-35%, VICReg 24% of the untrained encoder's RankMe 34), while the runs that collapsed
kept 3-10% (docs/tuning.md).
"""

from __future__ import annotations

import math
from typing import Any

COLLAPSED_SHARE = 0.1  # RankMe below this share of the starting point's: collapsed
PARTIAL_SHARE = 0.2  # below this share: partly collapsed
MIN_RANK = 2.0
STD_SHARE = 0.1  # embedding std below this share of an even spread's (1 / sqrt(width)): collapsed
ADVICE = (
    "try a lower learning rate (optim.lr, e.g. a third of this run's), a larger train.batch_size, more epochs of "
    "warm-up (optim.warmup_epochs), or another method (icone methods)"
)


def collapse_verdict(result: dict[str, Any], width: int, start: str = "the untrained encoder") -> dict[str, Any]:
    """``{"verdict": "collapsed" | "partial" | "none", "text": one line, "rule": what was checked}``."""
    rank, std = float(result["rankme"]), float(result["embedding_std"])
    before = float(result.get("baseline", {}).get("rankme") or 0.0)
    even_std = 1 / math.sqrt(max(width, 1))
    numbers = f"RankMe {rank:.1f} of {width} dimensions ({start}: {before:.1f}), embedding std {std:.3f}"
    if rank < MIN_RANK or (before and rank < COLLAPSED_SHARE * before) or std < STD_SHARE * even_std:
        verdict, text = "collapsed", f"collapse: the features have collapsed ({numbers}); {ADVICE}"
    elif before and rank < PARTIAL_SHARE * before:
        verdict, text = "partial", f"partial collapse: the features lost dimensions ({numbers}); {ADVICE}"
    else:
        verdict, text = "none", f"no collapse: {numbers}"
    rule = (
        f"collapsed: RankMe < {COLLAPSED_SHARE:g} x the starting point's, or < {MIN_RANK:g}, or embedding std < "
        f"{STD_SHARE:g} / sqrt(width); partial: RankMe < {PARTIAL_SHARE:g} x the starting point's"
    )
    return {"verdict": verdict, "text": text, "rule": rule}
