"""PRHN: ARHN's ranking on the passages themselves (no snippet extraction), from the recipe's
``prhn:`` section (``ArhnSettings``; ``rank_on`` is always ``passages``). Configs ``prhn_*``,
judgments ``judgments_prhn``; the names every method exposes (``builders.methods.base``)."""

from __future__ import annotations

import dataclasses

from builders.judges.ledger import StagePlan
from builders.methods import arhn
from builders.methods.arhn.settings import ArhnSettings
from builders.methods.base import MethodResult
from builders.rows import QueryRow

NAME = "prhn"
TITLE = "PRHN"
CITATION = "arhn"  # PRHN is the ARHN paper's passage-ranking variant
Settings = ArhnSettings
DEFAULT = False
STREAMS = True
JUDGMENTS = "judgments_prhn"
judges = arhn.judges
judgments_table = arhn.judgments_table
card_settings = arhn.card_settings


def as_prhn(settings: ArhnSettings) -> ArhnSettings:
    return dataclasses.replace(settings, rank_on="passages")


def configs(settings: ArhnSettings) -> tuple[str, ...]:
    return arhn.configs(as_prhn(settings))


async def run(rows: list[QueryRow], settings: ArhnSettings, judges: dict, store, progress: bool = True) -> MethodResult:
    return await arhn.run(rows, as_prhn(settings), judges, store, progress)


def dry_run(rows: list[QueryRow], settings: ArhnSettings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    return arhn.dry_run(rows, as_prhn(settings), specs, dry, result, out)
