"""Distillation losses: BYOL, SimSiam and DINO (a student predicts a teacher or a stopped branch).

Notation: ``B`` the batch size, ``d`` the embedding width, ``K`` the number of DINO outputs,
``V`` the student's views, ``G`` the teacher's (global) views.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from icone.losses.common import check_pair, check_positive, other_view_pairs, pair_cross_entropies, stack_views


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL (Grill et al. 2020, arXiv 2006.07733, eq. 2): ``||p_n - sg(z_n)||^2 = 2 - 2 cos(p, z)``.

    Mean over the batch of one direction; the method adds the swapped term (``L + L~``, §3.1).
    ``p``: online predictions, ``z``: target projections (the gradient is stopped here).
    """
    check_pair(p, z, "p and z")
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam (Chen & He 2021, arXiv 2011.10566, eq. 1 with the stop-gradient of eq. 3): ``D(p, sg(z)) = -cos(p, z)``.

    Mean over the batch of one direction; the method symmetrises (eq. 4):
    ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``.
    """
    check_pair(p, z, "p and z")
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def dino_loss(
    student_logits: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO (Caron et al. 2021, arXiv 2104.14294, eq. 2-3 and the centering of §3.1).

    ``P_t = softmax((g_t - c) / tau_t)`` (detached), ``log P_s = log_softmax(g_s / tau_s)``;
    ``L = mean over pairs (t, s), s != t, of mean_batch sum_k -P_t log P_s``.
    ``student_logits``: ``V x B x K``, the first ``G`` views are the teacher's views in the same
    order (pairs of a view with itself are skipped); ``teacher_logits``: ``G x B x K``;
    ``center``: ``K``.
    """
    student = stack_views(student_logits, "student_logits")
    teacher = stack_views(teacher_logits, "teacher_logits")
    if student.shape[1:] != teacher.shape[1:] or center.shape != teacher.shape[-1:]:
        raise ValueError(
            f"student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and center {tuple(center.shape)} must share B and K"
        )
    check_positive(student_temp=student_temp, teacher_temp=teacher_temp)
    views, teachers = student.shape[0], teacher.shape[0]
    if teachers > views or (views == 1 and teachers == 1):
        raise ValueError(
            f"need at least one student view other than a teacher view; got {views} student and {teachers} teacher views"
        )
    targets = F.softmax((teacher.detach() - center.detach()) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    return pair_cross_entropies(targets, log_probs, other_view_pairs(teachers, views)).mean()
