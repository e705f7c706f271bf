"""The four RLHN techniques, applied from each query's FINAL decision.

- ``default``: every row unchanged;
- ``remove``: drop a row with any false negative;
- ``hn_remove``: drop the false negatives from the row's negatives;
- ``rlhn``: move the false negatives into the positives (after the labelled ones, in stored order).

Settings: ``max_flagged`` (default 8, ``None`` disables): a row with more false negatives
than this is dropped from ``hn_remove`` and ``rlhn`` (the reference rule). Subsets in
``rlhn.never_edit_subsets`` (ArguAna: its "positives" are counter-arguments; matched by
``builders.methods.base.never_edits``, as for every method) are copied unchanged into every
technique. Rows without a usable final verdict (unparseable answer, failed call)
are never read as "no false negative": ``unjudged="exclude"`` (default) leaves them out of
``remove``/``hn_remove``/``rlhn`` (they stay in ``default``); ``unjudged="keep"`` keeps them
unchanged. Every such row is counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

from builders.methods.base import never_edits
from builders.rows import QueryRow, md5

TECHNIQUES = ("default", "remove", "hn_remove", "rlhn")


@dataclass(frozen=True)
class Decision:
    """A query's final decision. ``status``: ``clean`` (judged, nothing flagged), ``flagged``
    (``false_negatives`` holds docids), ``unparsed`` (no parseable verdict), ``failed`` (the
    judge call failed for good), ``not_judged`` (no negatives, or an untouched subset)."""

    status: Literal["clean", "flagged", "unparsed", "failed", "not_judged"]
    false_negatives: tuple[str, ...] = ()  # docids, in stored order
    stage: str | None = None  # the stage whose verdict is final


@dataclass
class RefineSettings:
    techniques: list[str] = field(default_factory=lambda: list(TECHNIQUES))
    max_flagged: int | None = 8
    unjudged: Literal["exclude", "keep"] = "exclude"


def refine(rows: list[QueryRow], decisions: dict[str, Decision], settings: RefineSettings,
           never_edit_subsets: tuple[str, ...] = ("arguana",)) -> tuple[dict[str, list[QueryRow]], dict[str, Counter]]:
    """-> (technique -> rows, subset -> counters). ``decisions`` is keyed by ``row_key(row)``;
    rows of ``never_edit_subsets`` go into every technique as they are."""
    unknown = [t for t in settings.techniques if t not in TECHNIQUES]
    if unknown:
        raise ValueError(f"unknown technique(s) {unknown}; choose from {list(TECHNIQUES)}")
    out: dict[str, list[QueryRow]] = {t: [] for t in settings.techniques}
    stats: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        c = stats[row.subset]
        decision = decisions.get(row_key(row), Decision("not_judged"))
        untouched = never_edits(row.subset, never_edit_subsets)
        usable = decision.status in ("clean", "flagged", "not_judged")
        for always in ("rows_unparsed", "rows_failed", "rows_with_false_negatives", "rows_over_max_flagged"):
            c[always] += 0  # always shown in the card, 0 when none
        if not usable:
            c[f"rows_{decision.status}"] += 1
        fn = set(decision.false_negatives) if decision.status == "flagged" else set()
        too_many = settings.max_flagged is not None and len(fn) > settings.max_flagged
        if fn and not untouched:
            c["rows_with_false_negatives"] += 1
            c["false_negatives"] += len(fn)
            if too_many:
                c["rows_over_max_flagged"] += 1
        for tech in settings.techniques:
            new = _apply(tech, row, fn, untouched, usable, too_many, settings)
            if new is None:
                c[f"{tech}:rows_dropped"] += 1
                continue
            out[tech].append(new)
            c[f"{tech}:rows"] += 1
            c[f"{tech}:positives"] += len(new.positive_passages)
            c[f"{tech}:negatives"] += len(new.negative_passages)
    return out, stats


def _apply(tech: str, row: QueryRow, fn: set[str], untouched: bool, usable: bool, too_many: bool, s: RefineSettings) -> QueryRow | None:
    if tech == "default" or untouched:
        return row
    if not usable:
        return row if s.unjudged == "keep" else None
    if not fn:
        return row
    if tech == "remove":
        return None
    if too_many:
        return None
    kept = [p for p in row.negative_passages if p.docid not in fn]
    if tech == "hn_remove":
        return row.with_passages(negatives=kept)
    moved = [p for p in row.negative_passages if p.docid in fn]
    return row.with_passages(positives=list(row.positive_passages) + moved, negatives=kept)


def row_key(row: QueryRow) -> str:
    """Identity of a row for decisions: subset, query_id and a digest of its passages (the
    same query text can occur twice with different passages)."""
    ids = ",".join(p.docid for p in row.positive_passages) + "|" + ",".join(p.docid for p in row.negative_passages)
    return f"{row.subset}/{row.query_id}/{md5(ids)[:12]}"
