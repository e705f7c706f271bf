"""ARHN/PRHN decisions: a ranking -> relabel / filter / keep / unjudged per judged negative,
and a row under one output config (``relabel``, ``filter``, ``rf``)."""

from __future__ import annotations

from builders.methods.arhn.ranking import Ranking
from builders.rows import QueryRow


def decide(has_snippet: list[bool], ranking: Ranking | None, listed_only: bool = False) -> list[str]:
    """Decisions for the negatives behind entry ``[1]`` (the positive).

    ``has_snippet[i]`` is whether negative i has a verified snippet (ARHN) — only those were
    ranked, as entries 2.. in order. ``ranking`` None means the ranking call gave nothing usable:
    every negative with a snippet is ``unjudged``. ``listed_only`` (PRHN): an entry missing from
    the ranking did not answer, so it is kept."""
    entry_of = {}
    for i, flag in enumerate(has_snippet):
        if flag:
            entry_of[i] = len(entry_of) + 2
    if ranking is None:
        return ["unjudged" if flag else "keep" for flag in has_snippet]
    listed = [e for e in ranking.order if e not in ranking.missing] if listed_only else ranking.order
    anchor = listed.index(1)
    out = []
    for i, flag in enumerate(has_snippet):
        if not flag:
            out.append("keep")
        elif entry_of[i] not in listed:
            out.append("keep")
        else:
            out.append("relabel" if listed.index(entry_of[i]) < anchor else "filter")
    return out


def apply(row: QueryRow, decisions: dict[str, str], variant: str) -> QueryRow:
    """The row under one variant: ``relabel``, ``filter`` or ``rf``."""
    moving = {"relabel": {"relabel"}, "filter": set(), "rf": {"relabel"}}[variant]
    dropping = {"relabel": set(), "filter": {"filter"}, "rf": {"filter"}}[variant]
    promoted = [p for p in row.negative_passages if decisions.get(p.docid) in moving]
    kept = [p for p in row.negative_passages if decisions.get(p.docid) not in moving | dropping]
    return row.with_passages(positives=list(row.positive_passages) + promoted, negatives=kept)
