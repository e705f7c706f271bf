"""TopK-PercPos (NV-Retriever) as a hardneg method: the teacher-model filter of
``teacher_filter.py``, with the names every method exposes (``builders.methods.base``)."""

from __future__ import annotations

import dataclasses

from builders.judges.ledger import StagePlan
from builders.methods.base import MethodResult
from builders.methods.percpos import teacher_filter
from builders.methods.percpos.teacher_filter import PercPosSettings
from builders.output.writers import method_judgments_table
from builders.rows import QueryRow

NAME = "percpos"
TITLE = "TopK-PercPos"
CITATION = "nv-retriever"
Settings = PercPosSettings
DEFAULT = False
STREAMS = False  # its judgments' columns are inferred from all its rows at once
JUDGMENTS = "judgments_percpos"


def configs(settings: PercPosSettings) -> tuple[str, ...]:
    return (settings.config_name,)


def judgments_table(rows: list[dict]):
    return method_judgments_table(rows)


def judges(settings: PercPosSettings, judges) -> dict:
    return {}  # a teacher model, no LLM judge


async def run(rows: list[QueryRow], settings: PercPosSettings, judges: dict, store, progress: bool = True) -> MethodResult:
    return teacher_filter.run(rows, settings)


def dry_run(rows: list[QueryRow], settings: PercPosSettings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    print("percpos: no judge calls (teacher scores)", file=out)
    return []


def card_settings(settings: PercPosSettings) -> dict:
    return dataclasses.asdict(settings)
