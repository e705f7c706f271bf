"""ARHN: verbatim answer snippets per passage (``arhn/extract``), then listwise ranking of the
negatives' snippets against the positive's (``arhn/rank``); PRHN (``prhn.py``) ranks the passages
themselves. ``stages.py`` runs them, ``settings.py``, ``prompts.py``, ``snippets.py``,
``ranking.py``, ``decide.py`` and ``retriever_cut.py`` hold the parts. Below: the names every
method exposes (``builders.methods.base``)."""

from __future__ import annotations

import dataclasses

from builders.judges.ledger import StagePlan
from builders.methods.arhn import dry_run as arhn_dry_run
from builders.methods.arhn import stages
from builders.methods.arhn.settings import ArhnSettings
from builders.methods.base import MethodResult
from builders.output.writers import method_judgments_table
from builders.rows import QueryRow

NAME = "arhn"
TITLE = "ARHN"
CITATION = "arhn"
Settings = ArhnSettings
DEFAULT = False
STREAMS = True
JUDGMENTS = "judgments_arhn"
VARIANTS = ("relabel", "filter", "rf")


def configs(settings: ArhnSettings) -> tuple[str, ...]:
    return tuple(f"{settings.prefix}_{v}" for v in VARIANTS)


def judgments_table(rows: list[dict]):
    return method_judgments_table(rows, stages.JUDGMENT_SCHEMA)


def judges(settings: ArhnSettings, judges) -> dict:
    """``arhn_extract`` (default: ``stage1``) copies snippets; ``arhn_rank`` (default: the
    extractor) ranks them."""
    extract = judges.arhn_extract if judges.arhn_extract is not None else judges.stage1
    return {"arhn_extract": extract, "arhn_rank": judges.arhn_rank if judges.arhn_rank is not None else extract}


async def run(rows: list[QueryRow], settings: ArhnSettings, judges: dict, store, progress: bool = True) -> MethodResult:
    result = await stages.arun(rows, settings, backend=judges["arhn_extract"], rank_backend=judges["arhn_rank"],
                               store=store, progress=progress)
    result.stage_judges.update({"arhn/extract": "arhn_extract", f"{settings.prefix}/rank": "arhn_rank"})
    return result


def dry_run(rows: list[QueryRow], settings: ArhnSettings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    return arhn_dry_run.plans(rows, settings, specs, dry, result, out)


def card_settings(settings: ArhnSettings) -> dict:
    return dataclasses.asdict(settings)
