"""Losses, one per file, each with a ``config`` dict and a ``citation`` (from ``cards/citations.py``)
that the model card prints: InfoNCE, AMP and CMP for embedders; ListwiseCE and PointwiseBCE for rerankers."""

from __future__ import annotations

from trainers.losses.amp import AMP
from trainers.losses.cmp import CMP
from trainers.losses.infonce import InfoNCE
from trainers.losses.listwise_ce import ListwiseCE
from trainers.losses.pointwise_bce import PointwiseBCE


def loss_for(multi_positive: str, temperature: float, gather_across_processes: bool = True) -> InfoNCE:
    """The embedder loss a config asks for: ``sample`` -> InfoNCE, ``amp`` -> AMP, ``cmp`` -> CMP."""
    if multi_positive == "sample":
        return InfoNCE(temperature, gather_across_processes)
    if multi_positive == "amp":
        return AMP(temperature, gather_across_processes)
    if multi_positive == "cmp":
        return CMP(temperature, gather_across_processes)
    raise ValueError(f"multi_positive must be sample, amp or cmp, got {multi_positive!r}")


def reranker_loss(name: str) -> ListwiseCE | PointwiseBCE:
    """The reranker loss a config asks for: ``listwise`` -> ListwiseCE, ``pointwise`` -> PointwiseBCE."""
    if name == "listwise":
        return ListwiseCE()
    if name == "pointwise":
        return PointwiseBCE()
    raise ValueError(f"unknown reranker loss {name!r}; use listwise or pointwise")


__all__ = ["AMP", "CMP", "InfoNCE", "ListwiseCE", "PointwiseBCE", "loss_for", "reranker_loss"]
