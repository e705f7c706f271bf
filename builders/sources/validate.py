"""Row validation: every bad row is reported with file, line and query_id, never dropped silently.

Policies:
- ``skip``: a bad row is left out and listed in the report;
- ``fail``: the first bad row stops the build with an error naming file:line, query_id, what
  is wrong and what to do;
- ``repair``: fix what has one obvious fix (duplicate passages, a positive repeated among the
  negatives, empty passages next to usable ones) and skip the rest; every fix is reported.

Problems: ``malformed_json``, ``missing_query``, ``non_string_text``, ``no_positive``,
``empty_passage``, ``duplicate_passage``, ``positive_in_negatives``, ``bad_scores``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from builders.rows import Passage, QueryRow, md5
from builders.sources.readers import RawRecord

Policy = Literal["skip", "fail", "repair"]

_HOW_TO_FIX = {
    "malformed_json": "fix or delete that line",
    "missing_query": "give the row a non-empty string `query` or delete it",
    "non_string_text": "make every passage a string",
    "no_positive": "give the row at least one non-empty positive or delete it",
    "empty_passage": "remove empty passages",
    "duplicate_passage": "remove the repeated passage",
    "positive_in_negatives": "remove the positive from the negatives",
    "bad_scores": "give one numeric score per passage or drop the score columns",
}


@dataclass
class Problem:
    origin: str
    line: int
    query_id: str | None
    kind: str
    detail: str
    action: str  # "skipped" | "repaired" | "failed"

    def where(self) -> str:
        qid = f" (query_id {self.query_id})" if self.query_id else ""
        return f"{self.origin}:{self.line}{qid}"

    def to_dict(self) -> dict:
        return {"origin": self.origin, "line": self.line, "query_id": self.query_id, "kind": self.kind, "detail": self.detail, "action": self.action}


class InvalidRowError(ValueError):
    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(
            f"{problem.where()}: {problem.kind}: {problem.detail}. "
            f"To fix: {_HOW_TO_FIX.get(problem.kind, 'fix the row')}, or rerun with "
            f"`--set validation.policy=skip` to leave bad rows out (they are listed in the report)."
        )


@dataclass
class ValidationReport:
    policy: str = "skip"
    rows_read: int = 0
    rows_kept: int = 0
    rows_skipped: int = 0
    rows_repaired: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(f"{p.kind}:{p.action}" for p in self.problems)

    def to_dict(self, max_listed: int = 200) -> dict:
        return {
            "policy": self.policy,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "rows_repaired": self.rows_repaired,
            "problem_counts": dict(sorted(self.counts.items())),
            "problems": [p.to_dict() for p in self.problems[:max_listed]],
            "problems_not_listed": max(0, len(self.problems) - max_listed),
        }


_SCHEMA_COLUMNS = {  # what the row itself holds; the rest of a record goes to ``QueryRow.extra``
    "bge": frozenset({"query", "query_id", "pos", "neg", "pos_scores", "neg_scores", "subset", "prompt", "type"}),
    "tevatron": frozenset({"query", "query_id", "positive_passages", "negative_passages", "positive_scores",
                           "negative_scores", "subset"}),
}


def _texts(d: dict, layout: str, which: str) -> tuple[list, list | None, list | None]:
    """(passage texts as found, titles or None, given docids or None) for ``which`` in {"pos", "neg"}."""
    if layout == "bge":
        items = d.get(which)
        return (list(items) if isinstance(items, (list, tuple)) else ([] if items is None else [items])), None, None
    key = "positive_passages" if which == "pos" else "negative_passages"
    items = d.get(key) or []
    texts, titles, docids = [], [], []
    for p in items:
        texts.append(p.get("text") if isinstance(p, dict) else p)
        titles.append((p.get("title") or "") if isinstance(p, dict) else "")
        docids.append(p.get("docid") if isinstance(p, dict) else None)
    return texts, titles, docids


def _scores(d: dict, layout: str, which: str, n: int) -> tuple[list | None, str | None]:
    key = {("bge", "pos"): "pos_scores", ("bge", "neg"): "neg_scores", ("tevatron", "pos"): "positive_scores", ("tevatron", "neg"): "negative_scores"}[(layout, which)]
    s = d.get(key)
    if s is None:
        return None, None
    s = list(s)
    if len(s) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s):
        return None, f"`{key}` has {len(s)} values for {n} passages or a non-number"
    return [float(x) for x in s], None


def check_record(rec: RawRecord, policy: Policy = "skip") -> tuple[QueryRow | None, list[Problem]]:
    """One record -> (row or None, problems). Never raises; ``validate`` applies ``fail``."""
    problems: list[Problem] = []

    def problem(kind: str, detail: str, action: str, qid: str | None) -> None:
        problems.append(Problem(rec.origin, rec.line, qid, kind, detail, action))

    if rec.data is None:
        problem("malformed_json", rec.error or "unreadable", "skipped", None)
        return None, problems
    d = rec.data
    query = d.get("query")
    if not isinstance(query, str) or not query.strip():
        problem("missing_query", f"`query` is {query!r}"[:120], "skipped", d.get("query_id"))
        return None, problems
    qid = d.get("query_id") or md5(query)
    pos, pos_titles, pos_ids_given = _texts(d, rec.layout, "pos")
    neg, neg_titles, neg_ids_given = _texts(d, rec.layout, "neg")
    bad = [t for t in pos + neg if not isinstance(t, str)]
    if bad:
        problem("non_string_text", f"{len(bad)} passage(s) are not strings, e.g. {bad[0]!r}"[:120], "skipped", qid)
        return None, problems
    pos_scores, err = _scores(d, rec.layout, "pos", len(pos))
    neg_scores, err2 = _scores(d, rec.layout, "neg", len(neg))
    if err or err2:
        action = "repaired" if policy == "repair" else "skipped"
        problem("bad_scores", err or err2, action, qid)
        if action == "skipped":
            return None, problems
        pos_scores = neg_scores = None

    def build(texts, titles, docids, scores):
        return [
            Passage(
                docid=(docids[i] if docids and docids[i] else md5(t)),
                text=t,
                title=(titles[i] if titles else ""),
                score=scores[i] if scores else None,
            )
            for i, t in enumerate(texts)
        ]

    positives = build(pos, pos_titles, pos_ids_given, pos_scores)
    negatives = build(neg, neg_titles, neg_ids_given, neg_scores)
    fixable: list[tuple[str, str]] = []
    kept_pos: list[Passage] = []
    pos_ids: set[str] = set()
    for p in positives:
        if not p.text.strip():
            fixable.append(("empty_passage", "an empty positive"))
        elif p.docid in pos_ids:
            fixable.append(("duplicate_passage", f"positive docid {p.docid} appears twice"))
        else:
            kept_pos.append(p)
            pos_ids.add(p.docid)
    if not kept_pos:
        problem("no_positive", "no non-empty positive passage", "skipped", qid)
        return None, problems
    kept_neg: list[Passage] = []
    neg_ids: set[str] = set()
    for i, p in enumerate(negatives, start=1):
        if not p.text.strip():
            fixable.append(("empty_passage", f"negative #{i} is empty"))
        elif p.docid in pos_ids:
            fixable.append(("positive_in_negatives", f"negative #{i} (docid {p.docid}) is also a positive"))
        elif p.docid in neg_ids:
            fixable.append(("duplicate_passage", f"negative #{i} (docid {p.docid}) repeats an earlier negative"))
        else:
            kept_neg.append(p)
            neg_ids.add(p.docid)
    if fixable:
        action = "repaired" if policy == "repair" else "skipped"
        for kind, detail in fixable:
            problem(kind, detail, action, qid)
        if action == "skipped":
            return None, problems
    # every other source column travels with the row (an ``answer`` column for CLEAR, ``category``, ...)
    extra = {k: v for k, v in d.items() if k not in _SCHEMA_COLUMNS[rec.layout]}
    row = QueryRow(
        query_id=qid,
        query=query,
        positive_passages=tuple(kept_pos),
        negative_passages=tuple(kept_neg),
        subset=(d.get("subset") if rec.layout == "tevatron" and d.get("subset") else rec.subset),
        prompt=d.get("prompt") if isinstance(d.get("prompt"), str) else None,
        type=d.get("type") if isinstance(d.get("type"), str) else None,
        extra=extra,
    )
    return row, problems


def validate(records: Iterable[RawRecord], policy: Policy = "skip", report: ValidationReport | None = None) -> Iterator[QueryRow]:
    """Yield good rows; record every problem in ``report``; raise ``InvalidRowError`` under ``fail``."""
    if policy not in ("skip", "fail", "repair"):
        raise ValueError(f"validation policy {policy!r} is not one of skip, fail, repair")
    report = report if report is not None else ValidationReport()
    report.policy = policy
    for rec in records:
        report.rows_read += 1
        row, problems = check_record(rec, policy)
        if problems and policy == "fail":
            first = problems[0]
            first.action = "failed"
            report.problems.append(first)
            raise InvalidRowError(first)
        report.problems.extend(problems)
        if row is None:
            report.rows_skipped += 1
            continue
        if problems:
            report.rows_repaired += 1
        report.rows_kept += 1
        yield row
