"""Contrastive losses for embedders: one per file, each with a ``config`` dict and a ``citation``."""

from __future__ import annotations

from trainers.losses.amp import AMP
from trainers.losses.cmp import CMP
from trainers.losses.infonce import InfoNCE


def loss_for(multi_positive: str, temperature: float, gather_across_processes: bool = True) -> InfoNCE:
    """The loss a config asks for: ``sample`` -> InfoNCE, ``amp`` -> AMP, ``cmp`` -> CMP."""
    if multi_positive == "sample":
        return InfoNCE(temperature, gather_across_processes)
    if multi_positive == "amp":
        return AMP(temperature, gather_across_processes)
    if multi_positive == "cmp":
        return CMP(temperature, gather_across_processes)
    raise ValueError(f"multi_positive must be sample, amp or cmp, got {multi_positive!r}")


__all__ = ["AMP", "CMP", "InfoNCE", "loss_for"]
