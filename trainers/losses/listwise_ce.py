"""Listwise softmax cross-entropy for rerankers: each group's positive against its hard negatives.

Scores come as ``[batch, group_size]`` with the positive in column 0 and a boolean ``mask`` of the
same shape that is False for the slots of a row with fewer than k negatives (``trainers.data``):
masked slots take no part in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cards.citations import bibtex

CITATION = bibtex("monobert", "lce")


class ListwiseCE:
    """Softmax cross-entropy over 1 positive + k negatives, the positive (column 0) as target
    (the "localized contrastive estimation" loss of Gao et al. 2021)."""

    name = "ListwiseCE"
    citation = CITATION

    def __init__(self) -> None:
        self.config: dict = {"target": "positive in column 0", "reduction": "mean over groups"}

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target)
