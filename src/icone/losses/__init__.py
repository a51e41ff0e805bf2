"""Pure loss functions, one module per family, no state; coefficients are the papers' defaults.

Each function takes plain tensors, so it can be checked against values computed by hand. Every loss a
method takes is re-exported here: ``from icone.losses import nt_xent``.
"""

from icone.losses.clustering import (  # SwAV
    sinkhorn,
    swav_loss,
)
from icone.losses.contrastive import (  # SimCLR, MoCo
    moco_infonce,
    nt_xent,
)
from icone.losses.distillation import (  # BYOL, SimSiam, DINO
    byol_loss,
    dino_loss,
    simsiam_loss,
)
from icone.losses.excb import (  # ExCB
    excb_argmax_boost,
    excb_assignment_counts,
    excb_balance,
    excb_balance_factors,
    excb_pair_cross_entropies,
    excb_pairs,
    excb_teacher_targets,
    excb_update_sizes,
)
from icone.losses.icone import (  # IConE
    icone_batch_diversity,
    icone_frame_diversity,
    icone_frame_diversity_from_gram,
    icone_hinge_diversity,
    icone_infonce_alignment,
    icone_uniformity,
    icone_view_instance_alignment,
    icone_view_view_alignment,
)
from icone.losses.regularisation import (  # VICReg, Barlow Twins
    barlow_twins_loss,
    off_diagonal_square_sum,
    vicreg_covariance,
    vicreg_loss,
    vicreg_terms,
    vicreg_variance,
)

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "excb_argmax_boost",
    "excb_assignment_counts",
    "excb_balance",
    "excb_balance_factors",
    "excb_pair_cross_entropies",
    "excb_pairs",
    "excb_teacher_targets",
    "excb_update_sizes",
    "icone_batch_diversity",
    "icone_frame_diversity",
    "icone_frame_diversity_from_gram",
    "icone_hinge_diversity",
    "icone_infonce_alignment",
    "icone_uniformity",
    "icone_view_instance_alignment",
    "icone_view_view_alignment",
    "moco_infonce",
    "nt_xent",
    "off_diagonal_square_sum",
    "simsiam_loss",
    "sinkhorn",
    "swav_loss",
    "vicreg_covariance",
    "vicreg_loss",
    "vicreg_terms",
    "vicreg_variance",
]
