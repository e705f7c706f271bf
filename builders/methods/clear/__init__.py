"""CLEAR: answer extraction (``answers.py``), answer-token confidence scores of the positives
and the potential false negatives the retrieval finds (``pool.py``, ``scores.py``,
``confidence.py``), then relabel / augment / threshold decisions (``decide.py``); ``stages.py``
runs them, ``records.py`` writes the judgment rows. Below: the names every method exposes
(``builders.methods.base``)."""

from __future__ import annotations

import dataclasses

from builders.judges.ledger import StagePlan
from builders.methods.base import BuildError, MethodResult
from builders.methods.clear import dry_run as clear_dry_run
from builders.methods.clear import stages
from builders.methods.clear.settings import ClearError, ClearSettings
from builders.output.writers import method_judgments_table
from builders.rows import QueryRow

NAME = "clear"
TITLE = "CLEAR"
CITATION = "clear"
Settings = ClearSettings
DEFAULT = False
STREAMS = False  # it retrieves potential false negatives over the whole passage pool
JUDGMENTS = "judgments_clear"


def configs(settings: ClearSettings) -> tuple[str, ...]:
    return stages.CONFIGS


def judgments_table(rows: list[dict]):
    return method_judgments_table(rows)


def judges(settings: ClearSettings, judges) -> dict:
    """``stage1`` extracts the answers and scores them."""
    return {"stage1": judges.stage1}


async def run(rows: list[QueryRow], settings: ClearSettings, judges: dict, store, progress: bool = True) -> MethodResult:
    judge = judges["stage1"]
    try:
        result = await stages.run_async(rows, settings, backend=judge, store=store, progress=progress)
    except ClearError as error:
        raise BuildError(f"CLEAR cannot score with judges.stage1 ({judge.model_id}): {error}\n"
                         "A TGI judge must be started with --enable-prefill-logprobs (its /generate then returns "
                         "prompt log-probabilities); an OpenAI-compatible judge must return prompt logprobs "
                         "(vLLM /v1/completions with echo); or use {kind: local}.") from error
    result.stage_judges.update({stage: "stage1" for stage in result.ledgers})
    return result


def dry_run(rows: list[QueryRow], settings: ClearSettings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    return clear_dry_run.plans(rows, settings, specs["stage1"], dry, result, out)


def card_settings(settings: ClearSettings) -> dict:
    return dataclasses.asdict(settings)
