"""Reranker losses over groups of scores: one class each, with a ``config`` and a ``citation``.

Scores come as ``[batch, group_size]`` with the positive in column 0 and a boolean ``mask`` of
the same shape that is False for the slots of a row that has fewer than k negatives (see
``trainers.data``): masked slots take no part in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cards.citations import CITATIONS, bibtex

LISTWISE_CITATION = bibtex("monobert", "lce")
POINTWISE_CITATION = CITATIONS["monobert"]


class ListwiseCE:
    """Softmax cross-entropy over 1 positive + k negatives, the positive (column 0) as target
    (the "localized contrastive estimation" loss of Gao et al. 2021)."""

    name = "ListwiseCE"
    citation = LISTWISE_CITATION

    def __init__(self) -> None:
        self.config: dict = {"target": "positive in column 0", "reduction": "mean over groups"}

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target)


class PointwiseBCE:
    """Binary cross-entropy on each (query, passage) logit: positive 1, negatives 0."""

    name = "PointwiseBCE"
    citation = POINTWISE_CITATION

    def __init__(self, pos_weight: float = 1.0) -> None:
        self.pos_weight = pos_weight
        self.config: dict = {"pos_weight": pos_weight, "reduction": "mean over real pairs"}

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros_like(scores, dtype=torch.float32)
        labels[:, 0] = 1.0
        weight = torch.where(labels > 0, self.pos_weight, 1.0) * mask.float()
        loss = F.binary_cross_entropy_with_logits(scores.float(), labels, weight=weight, reduction="sum")
        return loss / mask.float().sum().clamp(min=1.0)


def reranker_loss(name: str) -> ListwiseCE | PointwiseBCE:
    if name == "listwise":
        return ListwiseCE()
    if name == "pointwise":
        return PointwiseBCE()
    raise ValueError(f"unknown reranker loss {name!r}; use listwise or pointwise")
