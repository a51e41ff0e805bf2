"""Pure loss functions, one module per family, no state; coefficients are the papers' defaults.

Each function takes plain tensors, so it can be checked against values computed by hand.
Everything is re-exported here: ``from icone.losses import nt_xent``.
"""

from icone.losses.clustering import *  # noqa: F403  SwAV
from icone.losses.contrastive import *  # noqa: F403  SimCLR, MoCo
from icone.losses.distillation import *  # noqa: F403  BYOL, SimSiam, DINO
from icone.losses.excb import *  # noqa: F403  ExCB
from icone.losses.icone import *  # noqa: F403  IConE
from icone.losses.regularisation import *  # noqa: F403  VICReg, Barlow Twins
