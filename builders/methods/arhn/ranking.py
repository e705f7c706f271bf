"""Listwise ranking answers ``[a] > [b] > …`` (ARHN stage 2, PRHN), read robustly.

Judges wrap the ranking in prose ("Ranking: [2] > [1] > [3]. Explanation: …"), repeat ids,
invent ids, skip ids or stop early. ``parse_ranking`` never raises:

- the ranking is the longest run of ``[id]`` tokens joined by ``>`` (ties written ``,``, ``=``
  or ``>>`` count as separators too); when no such run exists, every ``[id]`` in the text in
  order of appearance is taken (counted as ``no_chain``);
- unknown ids (outside 1..n) are ignored, duplicated ids keep their first position, missing
  ids are appended at the end in ascending order: each is counted in ``issues``;
- a text with no usable id at all is a failure (``ok`` false, ``no_ranking``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ID = r"\[\s*(?:id\s*)?(\d+)\s*\]"
_CHAIN = re.compile(_ID + r"(?:\s*(?:>+|,|=|→|->)\s*" + _ID + r")+", re.IGNORECASE)
_ANY_ID = re.compile(_ID, re.IGNORECASE)


@dataclass
class Ranking:
    order: list[int]  # every id 1..n exactly once, best first (missing ids appended)
    issues: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    ok: bool = True  # False only when the text holds no usable id at all

    def rank_of(self, item: int) -> int:
        """0-based position of ``item`` in ``order``."""
        return self.order.index(item)


def parse_ranking(text: str, n: int) -> Ranking:
    """Read a ranking of ids 1..``n`` from ``text`` (see module doc)."""
    text = text or ""
    issues: list[str] = []
    chains = [m.group(0) for m in _CHAIN.finditer(text)]
    if chains:
        ids_text = max(chains, key=lambda c: len(_ANY_ID.findall(c)))
        if len(chains) > 1:
            issues.append("several_chains")
    else:
        ids_text = text
        issues.append("no_chain")
    raw = [int(x) for x in _ANY_ID.findall(ids_text)]
    order: list[int] = []
    duplicates: list[int] = []
    unknown: list[int] = []
    for i in raw:
        if not 1 <= i <= n:
            unknown.append(i)
        elif i in order:
            duplicates.append(i)
        else:
            order.append(i)
    if not order:
        return Ranking(order=list(range(1, n + 1)), issues=issues + ["no_ranking"], missing=list(range(1, n + 1)),
                       unknown=unknown, ok=False)
    missing = [i for i in range(1, n + 1) if i not in order]
    issues += [f"unknown_id:{i}" for i in unknown]
    issues += [f"duplicate_id:{i}" for i in duplicates]
    issues += [f"missing_id:{i}" for i in missing]
    return Ranking(order=order + missing, issues=issues, missing=missing, duplicates=duplicates, unknown=unknown)


def ranking_regex(n: int, complete: bool = True) -> str:
    """A regex for constrained decoding: ``[a] > [b] > …`` with ids 1..n in which the anchor ``[1]``
    appears exactly once; ``complete``: exactly n entries, otherwise 1..n (PRHN lists only the
    passages that answer). Other ids may repeat (a regex cannot forbid that cheaply; the parser
    counts it). Ids are written without leading zeros."""
    other = r"\[(?:" + "|".join(str(i) for i in range(n, 1, -1)) + r")\]" if n > 1 else None
    choices = []
    for before in range(n):
        after = n - 1 - before
        head = f"(?:{other} > ){{{before}}}" if before else ""
        tail = (f"(?: > {other}){{{after}}}" if complete else f"(?: > {other}){{0,{after}}}") if after else ""
        choices.append(head + r"\[1\]" + tail)
    return "(?:" + "|".join(choices) + ")"
