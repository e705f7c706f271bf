"""CMP (CLEAR): per-positive InfoNCE weighted by the softmax of the positives' confidence scores."""

from __future__ import annotations

import torch

from trainers.losses.amp import CITATION as CLEAR_CITATION
from trainers.losses.infonce import InfoNCE


class CMP(InfoNCE):
    """loss_b = sum_j softmax(cs_b)_j * InfoNCE_bj over real positives (padded ones masked out)."""

    citation = CLEAR_CITATION + "\n" + InfoNCE.citation

    def reduce(self, losses: torch.Tensor, pos_mask: torch.Tensor, pos_scores: torch.Tensor) -> torch.Tensor:
        logits = pos_scores.float().masked_fill(~pos_mask, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        per_query = (weights * losses.masked_fill(~pos_mask, 0.0)).sum(dim=1)
        return per_query.mean()
