"""RLHN: a cheap judge on every query, a strong judge on what it flags, then the refined configs
(``cascade.py`` runs the stages, ``stage.py`` is one stage, ``verdict.py`` parses, ``refine.py``
writes the techniques). Below: the names every method exposes (``builders.methods.base``)."""

from __future__ import annotations

from builders.judges.ledger import StagePlan
from builders.methods.base import MethodResult, ledger_of
from builders.methods.rlhn import dry_run as rlhn_dry_run
from builders.methods.rlhn.cascade import run_rlhn
from builders.methods.rlhn.refine import TECHNIQUES
from builders.methods.rlhn.stage import RlhnSettings, Stage
from builders.output.writers import judgments_table as rlhn_judgments_table
from builders.rows import QueryRow

NAME = "rlhn"
TITLE = "RLHN"
CITATION = "rlhn"
Settings = RlhnSettings
DEFAULT = True  # a recipe that names no method runs RLHN with its defaults
STREAMS = True
JUDGMENTS = "judgments"


def configs(settings: RlhnSettings) -> tuple[str, ...]:
    return tuple(t for t in TECHNIQUES if t in settings.refine.techniques)


def judgments_table(rows: list[dict]):
    return rlhn_judgments_table(rows)


def judges(settings: RlhnSettings, judges) -> dict:
    """``stage1`` on every query; ``stage2`` (when the recipe names one) on what stage 1 flags."""
    return {"stage1": judges.stage1, **({"stage2": judges.stage2} if judges.stage2 is not None else {})}


async def run(rows: list[QueryRow], settings: RlhnSettings, judges: dict, store, progress: bool = True) -> MethodResult:
    stages = [Stage(name, judges[name]) for name in ("stage1", "stage2") if name in judges]
    result, ledgers = await run_rlhn(rows, stages, settings, store, progress=progress)
    result.judge_runs = ledgers  # "stage1", "stage2": by prompt group
    for st in stages:
        result.ledgers[f"rlhn/{st.name}"] = ledger_of(list(ledgers.get(st.name, {}).values()))
        result.stage_judges[f"rlhn/{st.name}"] = st.name
    return result


def dry_run(rows: list[QueryRow], settings: RlhnSettings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    return rlhn_dry_run.plans(rows, settings, specs, dry, result, out)


def card_settings(s: RlhnSettings) -> dict:
    return {
        "max_flagged": s.refine.max_flagged,
        "never_edit_subsets": ",".join(s.never_edit_subsets),
        "unjudged": s.refine.unjudged,
        "negatives_per_prompt": s.negatives_per_prompt,
        "max_prompts_per_query": s.max_prompts_per_query,
        "max_passage_words": s.max_passage_words,
        "escalate_unparsed": s.escalate_unparsed,
        "temperature": s.temperature,
    }
