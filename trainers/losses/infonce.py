"""InfoNCE over in-batch negatives plus each query's hard negatives (group = positives + k negatives).

Inputs follow ``trainers.data.EmbedderCollator``'s slot layout: ``q`` is ``[B, d]``, ``p`` is
``[B * S, d]`` where query ``b`` owns slots ``b*S .. b*S+S-1`` (its ``P`` positive slots first,
then its negatives), ``slot_mask`` marks real passages, ``pos_mask`` ``[B, P]`` marks real
positives. Every query is scored against every passage of the (gathered) batch.

For positive ``j`` of query ``b`` the per-positive loss is
``-log( e^{s_bj} / (e^{s_bj} + sum_{n not a positive of b} e^{s_bn}) )`` with ``s = q.p / tau``:
the other positives of the same query are never counted as its negatives (CLEAR's "InfoNCE of
d+_i vs the negatives"). With one positive this is the usual cross-entropy over the row.

Across processes (DDP / DeepSpeed) queries and passages are all-gathered, the local shard keeping
its autograd graph, so each process computes the loss of the whole global batch. The gradient of
that loss reaches each process only through its local shard; DDP then AVERAGES gradients over
processes, so the trainer backpropagates ``loss * world_size`` (as Tevatron does) to get exactly
the gradient of the global-batch loss. ``tests/trainers/test_gather.py`` checks this.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cards.citations import bibtex

CITATION = bibtex("infonce", "dpr")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_keep_local_grad(t: torch.Tensor) -> torch.Tensor:
    """All-gather ``t`` from every process (same shape on each); the local part keeps its grad."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """All-gather a mask or score tensor (no gradient); bools travel as uint8."""
    if world_size() == 1:
        return t
    as_bool = t.dtype == torch.bool
    src = t.to(torch.uint8) if as_bool else t
    parts = [torch.empty_like(src) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, src.contiguous())
    out = torch.cat(parts)
    return out.bool() if as_bool else out


def per_positive_infonce(q: torch.Tensor, p: torch.Tensor, slot_mask: torch.Tensor,
                         pos_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B, P]`` InfoNCE of every (query, positive) pair; padded positives hold garbage (mask them)."""
    batch, n_pos = pos_mask.shape
    slots = p.shape[0] // batch
    scores = (q.float() @ p.float().T) / temperature  # [B, B*S]
    very_negative = torch.finfo(scores.dtype).min
    scores = scores.masked_fill(~slot_mask[None, :], very_negative)
    cols = torch.arange(batch, device=q.device)[:, None] * slots + torch.arange(n_pos, device=q.device)[None]
    positive = scores.gather(1, cols)  # [B, P]
    own_positive = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, cols, True)
    negatives_lse = scores.masked_fill(own_positive, very_negative).logsumexp(dim=1, keepdim=True)
    return torch.logaddexp(positive, negatives_lse) - positive


class InfoNCE:
    """One positive per query (``multi_positive: sample``): mean InfoNCE over the batch."""

    citation = CITATION

    def __init__(self, temperature: float = 0.05, gather_across_processes: bool = True):
        self.temperature = temperature
        self.gather_across_processes = gather_across_processes

    @property
    def config(self) -> dict:
        return {"temperature": self.temperature, "gather_across_processes": self.gather_across_processes}

    @property
    def name(self) -> str:
        return type(self).__name__

    def gathered(self, q, p, batch: dict):
        """(q, p, slot_mask, pos_mask, pos_scores) of the global batch when gathering is on."""
        fields = (batch["slot_mask"], batch["pos_mask"], batch["pos_scores"])
        if not self.gather_across_processes:
            return (q, p, *fields)
        return (gather_keep_local_grad(q), gather_keep_local_grad(p), *(gather_no_grad(t) for t in fields))

    def reduce(self, losses: torch.Tensor, pos_mask: torch.Tensor, pos_scores: torch.Tensor) -> torch.Tensor:
        return losses[:, 0].mean()

    def __call__(self, q: torch.Tensor, p: torch.Tensor, batch: dict) -> torch.Tensor:
        q, p, slot_mask, pos_mask, pos_scores = self.gathered(q, p, batch)
        losses = per_positive_infonce(q, p, slot_mask, pos_mask, self.temperature)
        return self.reduce(losses, pos_mask, pos_scores)
