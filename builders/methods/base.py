"""What every refinement method (RLHN, ARHN, CLEAR, TopK-PercPos) hands to the output
writer and the dataset card. Methods differ in how they decide; they all end here, so the
writer, the card and the merge step stay method-agnostic.

The method contract. Every method is a module with the same names (``builders/methods/__init__.py``
lists them in ``METHODS``; ``tests/builders/methods/test_contract.py`` checks each):

- ``NAME``: its recipe key, ``MethodResult.name`` and stage prefix (``rlhn``); ``TITLE``: its name
  on cards (``RLHN``); ``CITATION``: its key in ``cards/citations.py``.
- ``Settings``: the dataclass of its recipe section (every one has ``never_edit_subsets``,
  matched by ``never_edits``); ``DEFAULT``: runs when a recipe names no method (RLHN only);
  ``STREAMS``: can judge a chunk of rows at a time (else the build takes the source whole).
- ``configs(settings)``: the configs it writes; ``JUDGMENTS``: its judgments config;
  ``judgments_table(rows)``: that config as an Arrow table.
- ``judges(settings, judges)``: recipe judge name -> endpoint(s) it asks (``judges`` is the
  recipe's ``judges:`` section).
- ``run(rows, settings, judges, store, progress)``: async -> ``MethodResult`` with ``ledgers``
  and ``stage_judges`` filled for every stage it asked.
- ``dry_run(rows, settings, specs, dry, result, out)``: the ``--dry-run`` prompts and counts
  -> ``StagePlan`` per stage (``dry``: the recipe's ``dry_run:`` section); no judge is called.
- ``card_settings(settings)``: the settings the dataset card states.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from builders.judges.annotate import Ledger
from builders.judges.endpoints.base import Backend
from builders.rows import QueryRow


@dataclass
class JudgeInfo:
    """One judge as the card names it: which stage, which model, which prompt version."""

    stage: str  # e.g. "rlhn/stage1", "arhn/extract", "clear/score"
    model: str
    prompt_version: str
    backend: str  # "tgi" | "openai" | "local"


class BuildError(RuntimeError):
    """A method cannot run as configured; the message says what to change."""


def judge_kind(backend) -> str:
    """``JudgeInfo.backend`` for a backend: its ``kind`` ("tgi", "openai", "local"; a fleet: its
    members' kinds joined by "+"; an object that is no ``Backend``: its class name)."""
    return backend.kind if isinstance(backend, Backend) else type(backend).__name__.lower()


def never_edits(subset: str, never_edit_subsets) -> bool:
    """The one rule every method's ``never_edit_subsets`` follows: a subset is left as it is when
    one of the names occurs in it, case-insensitively ("arguana" covers "ArguAna", "beir-arguana")."""
    subset = subset.lower()
    return any(name.lower() in subset for name in never_edit_subsets)


def subsets_tuple(value) -> tuple[str, ...]:
    """A ``never_edit_subsets`` value from YAML (one name or a list) as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value)


def ledger_of(groups: list[dict]) -> Ledger:
    """Sum annotator ledgers given as ``Ledger.as_dict()`` (RLHN keeps one per prompt group)."""
    total = Ledger()
    for g in groups:
        for name in ("items", "cached", "calls", "ok", "unparseable", "failed", "parse_retries", "prompt_tokens", "completion_tokens"):
            setattr(total, name, getattr(total, name) + g[name])
        total.retries.update(g["retries"])
        total.failures.update(g["failures"])
        total.prompt_token_sources.update(g.get("prompt_token_sources", {}))
        total.wall_s = max(total.wall_s, g["wall_s"])
    return total


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
    stage_judges: dict[str, str] = field(default_factory=dict)  # stage -> the recipe judge that served it
    # the build report's ``judge_runs`` for this method when it keeps more detail than ``ledgers``
    # (RLHN: stage -> prompt group -> ledger); None: ``ledgers`` as they are
    judge_runs: dict[str, dict] | None = None

    def count(self, subset: str, counter: str, n: float = 1) -> None:
        self.stats[subset][counter] += n
