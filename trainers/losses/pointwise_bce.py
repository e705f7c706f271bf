"""Pointwise binary cross-entropy for rerankers: every (query, passage) logit on its own.

Scores and ``mask`` have the layout of ``trainers.losses.listwise_ce`` (positive in column 0, masked
slots out of the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cards.citations import CITATIONS

CITATION = CITATIONS["monobert"]


class PointwiseBCE:
    """Binary cross-entropy on each (query, passage) logit: positive 1, negatives 0."""

    name = "PointwiseBCE"
    citation = CITATION

    def __init__(self, pos_weight: float = 1.0) -> None:
        self.pos_weight = pos_weight
        self.config: dict = {"pos_weight": pos_weight, "reduction": "mean over real pairs"}

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros_like(scores, dtype=torch.float32)
        labels[:, 0] = 1.0
        weight = torch.where(labels > 0, self.pos_weight, 1.0) * mask.float()
        loss = F.binary_cross_entropy_with_logits(scores.float(), labels, weight=weight, reduction="sum")
        return loss / mask.float().sum().clamp(min=1.0)
