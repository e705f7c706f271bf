"""AMP (CLEAR): the average over a query's positives of their InfoNCE against the negatives."""

from __future__ import annotations

import torch

from cards.citations import CITATIONS
from trainers.losses.infonce import InfoNCE

CITATION = CITATIONS["clear"]  # the entry the cards cite too (cards/citations.py)


class AMP(InfoNCE):
    """loss_b = mean_{j in positives(b)} InfoNCE(q_b, d+_bj vs negatives); mean over queries."""

    citation = CITATION + "\n" + InfoNCE.citation

    def reduce(self, losses: torch.Tensor, pos_mask: torch.Tensor, pos_scores: torch.Tensor) -> torch.Tensor:
        mask = pos_mask.to(losses.dtype)
        per_query = (losses * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        return per_query.mean()
