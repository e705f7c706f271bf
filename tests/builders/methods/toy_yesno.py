"""A toy fifth method, written only against the method contract (``builders.methods.base``):
ask the recipe's ``stage1`` judge whether each row's first negative answers the query and drop
it when the judge says yes. ``test_contract.py`` adds it to ``builders.methods.METHODS`` (the one
line a real method adds in ``builders/methods/__init__.py``) and builds, dry-runs, shards and
merges with it, without touching any other file of the package."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from builders.judges.annotate import Annotator
from builders.judges.dry_counts import check_limit, prompt_counter
from builders.judges.endpoints.base import GenerateRequest
from builders.judges.ledger import StagePlan
from builders.methods.base import JudgeInfo, MethodResult, judge_kind, never_edits, subsets_tuple
from builders.output.writers import method_judgments_table

NAME = "yesno"
TITLE = "YesNo"
CITATION = "toy"
DEFAULT = False
STREAMS = True
JUDGMENTS = "judgments_yesno"
VERSION = "yesno-v1"


@dataclass
class Settings:
    never_edit_subsets: tuple[str, ...] = ("arguana",)
    max_new_tokens: int = 4

    def __post_init__(self):
        self.never_edit_subsets = subsets_tuple(self.never_edit_subsets)


def configs(settings: Settings) -> tuple[str, ...]:
    return ("yesno",)


def judgments_table(rows: list[dict]):
    return method_judgments_table(rows)


def judges(settings: Settings, judges) -> dict:
    return {"stage1": judges.stage1}


def _request(row, settings: Settings) -> GenerateRequest:
    text = f"Query: {row.query}\nPassage: {row.negative_passages[0].full_text}\nDoes the passage answer the query? Reply yes or no."
    return GenerateRequest(messages=({"role": "user", "content": text},), max_new_tokens=settings.max_new_tokens, temperature=0.0, seed=0)


def _asked(rows, settings: Settings):
    return [r for r in rows if r.negative_passages and not never_edits(r.subset, settings.never_edit_subsets)]


async def run(rows, settings: Settings, judges: dict, store, progress: bool = True) -> MethodResult:
    judge = judges["stage1"]
    result = MethodResult(name=NAME, configs={"yesno": []})
    result.judges.append(JudgeInfo(f"{NAME}/ask", judge.model_id, VERSION, judge_kind(judge)))
    annotator = Annotator(judge, store, stage=f"{NAME}/ask", prompt_version=VERSION, progress=progress,
                          check=lambda t: t.strip().lower().startswith(("yes", "no")))
    asked = _asked(rows, settings)
    answers = await annotator.run([(r.query_id, _request(r, settings)) for r in asked])
    result.ledgers[f"{NAME}/ask"] = answers.ledger
    result.stage_judges[f"{NAME}/ask"] = "stage1"
    for row in rows:
        outcome = answers.outcomes.get(row.query_id) if row in asked else None
        drop = outcome is not None and outcome.status == "ok" and outcome.text.strip().lower().startswith("yes")
        result.configs["yesno"].append(row.with_passages(negatives=row.negative_passages[1:]) if drop else row)
        result.count(row.subset, "negatives_removed", int(drop))
        if outcome is not None:
            j = outcome.judgment
            result.judgments.append({"stage": f"{NAME}/ask", "query_id": row.query_id, "subset": row.subset,
                                     "docid": row.negative_passages[0].docid, "judge_model": judge.model_id,
                                     "status": outcome.status, "answer": outcome.text, "attempts": j.attempts,
                                     "prompt_tokens": j.prompt_tokens, "completion_tokens": j.completion_tokens})
    return result


def dry_run(rows, settings: Settings, specs: dict, dry, result: dict, out) -> list[StagePlan]:
    spec = specs["stage1"][0]
    how, count = prompt_counter(dry, spec)
    check = check_limit(specs["stage1"], [count(_request(r, settings).messages) for r in _asked(rows, settings)], settings.max_new_tokens)
    print(f"{NAME}/ask [{spec.model_id}]: {len(check.sent)} prompts ({how})", file=out)
    result["stages"][f"{NAME}/ask"] = {"judge": spec.model_id, "prompts": len(check.sent)}
    return [StagePlan(f"{NAME}/ask", spec.model_id, check.sent, 1.0, dry.completion_tokens)]


def card_settings(settings: Settings) -> dict:
    return dataclasses.asdict(settings)
