"""What every refinement method (RLHN, ARHN, CLEAR, TopK-PercPos) hands to the output
writer and the dataset card. Methods differ in how they decide; they all end here, so the
writer, the card and the merge step stay method-agnostic.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from builders.judges.annotate import Ledger
from builders.rows import QueryRow


@dataclass
class JudgeInfo:
    """One judge as the card names it: which stage, which model, which prompt version."""

    stage: str  # e.g. "rlhn/stage1", "arhn/extract", "clear/score"
    model: str
    prompt_version: str
    backend: str  # "tgi" | "openai" | "local"


def judge_kind(backend) -> str:
    """``JudgeInfo.backend`` for a backend: "tgi", "openai" or "local" (else its class name)."""
    name = type(backend).__name__.lower()
    return next((k for k in ("tgi", "openai", "local") if k in name), name)


@dataclass
class MethodResult:
    name: str  # "rlhn", "arhn", "clear", "percpos"
    configs: dict[str, list[QueryRow]]  # output config name -> refined rows (e.g. "rlhn", "hn_remove")
    judgments: list[dict] = field(default_factory=list)  # rows of the `judgments` config (flat, JSON-able values)
    judges: list[JudgeInfo] = field(default_factory=list)
    # subset -> counter -> value; counters are free-form but named plainly, e.g. rows_in,
    # flagged_stage1, flagged_stage2, parse_failures, positives_added, negatives_removed,
    # hallucinated_snippets, judge_calls, prompt_tokens, completion_tokens
    stats: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    # stage -> what THIS run asked the judge (``builders.judges.annotate.Ledger``: calls made, answers
    # read from the store, tokens, retries, wall time), for the run's cost ledger and the CLI's
    # tally. ARHN/PRHN and CLEAR fill it (RLHN hands its ledgers back by prompt group; PercPos
    # asks no judge). ``stats`` and ``judgments`` describe the stored answers instead, the same
    # for a resumed run as for an uninterrupted one.
    ledgers: dict[str, Ledger] = field(default_factory=dict)

    def count(self, subset: str, counter: str, n: float = 1) -> None:
        self.stats[subset][counter] += n
