"""The judgment rows and counts CLEAR's judge stages (answers, scores) write."""

from __future__ import annotations

from builders.judges.endpoints.base import Backend
from builders.judges.shorten import Fit, too_long_message
from builders.judges.store import Judgment
from builders.methods.clear.settings import ClearQuery


def judgment_row(q: ClearQuery, stage: str, backend: Backend, version: str, judgment: Judgment, **fields) -> dict:
    return {
        "method": "clear", "query_id": q.row.query_id, "subset": q.row.subset, "stage": stage,
        "judge_model": backend.model_id, "prompt_version": version, "status": judgment.status,
        "raw_response": judgment.text if stage == "clear/answer" else None,
        "reason": judgment.error_message, "finish_reason": judgment.finish_reason,
        "prompt_tokens": judgment.prompt_tokens, "completion_tokens": judgment.completion_tokens,
        "attempts": judgment.attempts, "answer": q.answer, "answer_source": q.answer_source,
        "positive_similarity": q.positive_similarity, **fields,
    }


def not_sent(key: str, stage: str, backend: Backend, version: str, fit: Fit) -> Judgment:
    """The failed judgment of a prompt ``builders.judges.shorten`` could not fit (never sent, not stored)."""
    return Judgment(stage=stage, judge_model=backend.model_id, prompt_version=version, key=key, status="failed",
                    error_kind="validation", error_message=too_long_message(fit), attempts=0)
