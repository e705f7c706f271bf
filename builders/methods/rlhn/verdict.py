"""Parse the RLHN verdict protocol.

A judge answers with free reasoning and then one block::

    <verdict><better> … [Doc (i), …] </better>, <worse> … [Doc (j), …] </worse></verdict>

``<better>`` lists negatives that answer the query at least as well as the ground truth,
``<worse>`` negatives that are relevant but answer it less well; ``[]`` means none. Negatives
are numbered ``Doc (1)..Doc (N)`` in stored order. The reasoning before the block mentions
``Doc (i)`` too, so only the LAST ``<verdict>`` block is read.

``parse_verdict`` never guesses: anything it cannot read exactly is a ``ParseFailure`` with
a reason, so callers can count it and never mistake it for "no false negative".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERDICT_OPEN = re.compile(r"<\s*verdict\s*>", re.IGNORECASE)
_VERDICT_CLOSE = re.compile(r"<\s*/\s*verdict\s*>", re.IGNORECASE)
_SECTION = {
    name: re.compile(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", re.IGNORECASE | re.DOTALL)
    for name in ("better", "worse")
}
_DOC_REF = re.compile(r"Doc\s*\(\s*(\d+)\s*\)|Doc\s*#?\s*(\d+)", re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


@dataclass(frozen=True)
class Verdict:
    """Doc numbers named by the judge, 1-based in the order the negatives were shown."""

    better: tuple[int, ...]
    worse: tuple[int, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.better or self.worse)

    @property
    def false_negatives(self) -> tuple[int, ...]:
        """Every negative named in either list, sorted, each once (1-based)."""
        return tuple(sorted(set(self.better) | set(self.worse)))


@dataclass(frozen=True)
class ParseFailure:
    reason: str

    flagged = False


def _section_docs(body: str, name: str, n_negatives: int) -> tuple[int, ...] | ParseFailure:
    lists = _BRACKETS.findall(body)
    if len(lists) > 1:
        return ParseFailure(f"<{name}> holds {len(lists)} bracketed lists, expected one")
    text = lists[0] if lists else body
    numbers: list[int] = []
    for m in _DOC_REF.finditer(text):
        numbers.append(int(m.group(1) or m.group(2)))
    leftover = re.sub(r"[\s,;.]+", " ", _DOC_REF.sub("", text)).strip().lower()
    if lists and leftover not in ("", "none", "n/a", "and"):
        return ParseFailure(f"<{name}> list has text that is not a Doc reference: {lists[0][:60]!r}")
    if not lists and not numbers and re.search(r"\d", body):
        return ParseFailure(f"<{name}> names documents without the Doc (i) form: {body.strip()[:60]!r}")
    out: list[int] = []
    for n in numbers:
        if not 1 <= n <= n_negatives:
            return ParseFailure(f"<{name}> names Doc ({n}) but only Doc (1)..Doc ({n_negatives}) were shown")
        if n not in out:
            out.append(n)
    return tuple(out)


def parse_verdict(text: str | None, n_negatives: int) -> Verdict | ParseFailure:
    """Read the last verdict block of ``text``; indices are checked against ``n_negatives``."""
    if not text or not text.strip():
        return ParseFailure("empty response")
    opens = list(_VERDICT_OPEN.finditer(text))
    if not opens:
        return ParseFailure("no <verdict> block")
    start = opens[-1].end()
    close = _VERDICT_CLOSE.search(text, start)
    block = text[start : close.start()] if close else text[start:]
    if close is None and not re.search(r"<\s*/\s*worse\s*>", block, re.IGNORECASE):
        return ParseFailure("<verdict> block is not closed (truncated response?)")
    parts: dict[str, tuple[int, ...]] = {}
    for name, pattern in _SECTION.items():
        found = pattern.findall(block)
        if not found:
            return ParseFailure(f"no <{name}> … </{name}> section in the verdict")
        if len(found) > 1:
            return ParseFailure(f"{len(found)} <{name}> sections in the verdict")
        docs = _section_docs(found[0], name, n_negatives)
        if isinstance(docs, ParseFailure):
            return docs
        parts[name] = docs
    return Verdict(better=parts["better"], worse=parts["worse"])


def format_verdict(better: tuple[int, ...] | list[int], worse: tuple[int, ...] | list[int]) -> str:
    """The canonical verdict block (what stand-ins and constrained decoding produce)."""

    def docs(ids):
        return "[" + ", ".join(f"Doc ({i})" for i in ids) + "]"

    return f"<verdict><better> {docs(better)} </better>, <worse> {docs(worse)} </worse></verdict>"


def doc_number_pattern(n: int) -> str:
    """A regex matching exactly the integers 1..n (used by constrained decoding)."""
    if n < 1:
        raise ValueError("a verdict needs at least one negative to name")
    return "(" + "|".join(str(i) for i in range(n, 0, -1)) + ")"


def verdict_regex(n_negatives: int, reason_max_chars: int = 400) -> str:
    """Regex for constrained decoding: a short reasoning, then a verdict naming Doc (1..N).

    Every string it accepts parses with ``parse_verdict(text, n_negatives)``, and it is finite:
    a list names at most ``n_negatives`` documents, so a small model cannot loop on
    ``Doc (1), Doc (1), …`` until it runs out of tokens."""
    num = doc_number_pattern(n_negatives)
    doc = rf"Doc \({num}\)"
    docs = rf"\[({doc}(, {doc}){{0,{n_negatives - 1}}})?\]"
    return (
        rf"<thinking>[^<>\[\]]{{1,{reason_max_chars}}}</thinking>\n"
        rf"<verdict><better> {docs} </better>, <worse> {docs} </worse></verdict>"
    )
