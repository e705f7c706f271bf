"""ARHN stage 1 output: one answer snippet (or ``NO_ANSWER``) per document, in blocks

    [[[doc1]]]
    <verbatim snippet from doc1, or NO_ANSWER>
    [[[/doc1]]]

``parse_blocks`` reads that protocol the way small judges actually write it: prose before,
between or after the blocks, any casing and spacing inside the markers (``[[[ Doc 2 ]]]``),
duplicated blocks (the first one wins), blocks for documents that were never shown
(ignored), blocks that are opened but never closed (the text up to the next opener or the
end is taken) and missing blocks. Every deviation is named in ``BlockParse.issues``; none
raises.

``extract_regex`` writes the protocol as a regex for constrained decoding (tiny judges).

``verify_snippet`` checks that a snippet really occurs in the document the judge was shown.
Both sides are normalised first (``normalize_for_match``): Unicode NFKC (folds non-breaking
spaces, full-width forms, ligatures, ``…`` → ``...``), typographic quotes to ASCII
(‘ ’ ‚ ‛ ′ → ``'``; “ ” „ ‟ ″ « » → ``"``), dashes and minus signs to ``-``, zero-width
characters and soft hyphens removed, every whitespace run collapsed to one space, ends
stripped. Casing is NOT folded: the protocol asks for a verbatim copy. A snippet wrapped in
one pair of quotes that the document does not have is accepted when its inside is found
(judges often quote what they copy). Anything else that is not found is a hallucination.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

NO_ANSWER = "NO_ANSWER"

_OPEN = re.compile(r"\[\[\[\s*doc\s*(\d+)\s*\]\]\]", re.IGNORECASE)
_CLOSE = re.compile(r"\[\[\[\s*/\s*doc\s*(\d+)\s*\]\]\]", re.IGNORECASE)
_NO_ANSWER = re.compile(r"^[\s\"'`*_(\[]*no[\s_-]?answer[\s\"'`*_.)\]!]*$", re.IGNORECASE)

_QUOTES = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
        "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None, "\u00ad": None,
    }
)
_WS = re.compile(r"\s+")
_WRAPPING_QUOTES = (('"', '"'), ("'", "'"), ("`", "`"))


def normalize_for_match(text: str) -> str:
    """The normalisation both snippet and document go through before matching (see module doc)."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return _WS.sub(" ", text).strip()


@dataclass
class BlockParse:
    """What one stage-1 answer says, per 1-based document index.

    ``snippets[k]`` is the raw snippet text (stripped) or ``NO_ANSWER``; a document with no
    block is absent from ``snippets`` and listed in ``missing``."""

    snippets: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every expected document has a block (prose or extra blocks are tolerated)."""
        return not self.missing


def is_no_answer(snippet: str) -> bool:
    return bool(_NO_ANSWER.match(snippet))


def parse_blocks(text: str, n_docs: int) -> BlockParse:
    """Parse ``[[[docK]]] … [[[/docK]]]`` blocks for documents 1..``n_docs``."""
    out = BlockParse()
    text = text or ""
    openers = list(_OPEN.finditer(text))
    if not openers:
        out.issues.append("no_blocks")
    covered_until = 0
    prose = text[: openers[0].start()] if openers else text
    for i, opener in enumerate(openers):
        k = int(opener.group(1))
        if opener.start() < covered_until:
            continue  # an opener inside a block already read (e.g. the judge echoed a marker)
        next_open = openers[i + 1].start() if i + 1 < len(openers) else len(text)
        closer = None
        for c in _CLOSE.finditer(text, opener.end(), next_open):
            closer = c
            break
        if closer is None:
            body, end = text[opener.end() : next_open], next_open
            out.issues.append(f"unclosed_block:doc{k}")
            first_line, _, rest = body.strip().partition("\n")
            if is_no_answer(first_line) and rest.strip():  # "NO_ANSWER" then chatter, never closed
                body = first_line
                prose += rest
        else:
            body, end = text[opener.end() : closer.start()], closer.end()
            if int(closer.group(1)) != k:
                out.issues.append(f"mismatched_close:doc{k}/doc{closer.group(1)}")
        covered_until = end
        if end < next_open:
            prose += text[end:next_open]
        body = body.strip()
        if not 1 <= k <= n_docs:
            out.issues.append(f"unknown_block:doc{k}")
            continue
        if k in out.snippets:
            out.issues.append(f"duplicate_block:doc{k}")
            continue
        if not body:
            out.issues.append(f"empty_block:doc{k}")
            continue
        out.snippets[k] = NO_ANSWER if is_no_answer(body) else body
    if openers and prose.strip():
        out.issues.append("prose_outside_blocks")
    out.missing = [k for k in range(1, n_docs + 1) if k not in out.snippets]
    out.issues.extend(f"missing_block:doc{k}" for k in out.missing)
    return out


def verify_snippet(snippet: str, document: str) -> bool:
    """True when ``snippet`` occurs in ``document`` after ``normalize_for_match`` on both."""
    needle = normalize_for_match(snippet)
    if not needle:
        return False
    haystack = normalize_for_match(document)
    if needle in haystack:
        return True
    for left, right in _WRAPPING_QUOTES:
        if len(needle) > 2 and needle.startswith(left) and needle.endswith(right):
            inner = needle[1:-1].strip()
            if inner and inner in haystack:
                return True
    return False


@dataclass
class CheckedSnippet:
    """A stage-1 answer for one document after verification.

    ``answer`` is what the decisions use: the snippet, or ``None`` for NO_ANSWER (including
    a hallucination under the default policy, and a missing block)."""

    raw: str | None  # the judge's text for this document (None: no block)
    answer: str | None
    hallucinated: bool = False
    missing: bool = False


def check_snippets(
    parse: BlockParse, documents: list[str], hallucination_as_no_answer: bool = True
) -> list[CheckedSnippet]:
    """Verify each parsed snippet against the text the judge was shown (1-based order of
    ``documents``). A hallucinated snippet becomes NO_ANSWER unless the setting says keep it."""
    checked = []
    for k, document in enumerate(documents, start=1):
        raw = parse.snippets.get(k)
        if raw is None:
            checked.append(CheckedSnippet(raw=None, answer=None, missing=True))
        elif raw == NO_ANSWER:
            checked.append(CheckedSnippet(raw=raw, answer=None))
        elif verify_snippet(raw, document):
            checked.append(CheckedSnippet(raw=raw, answer=raw))
        else:
            checked.append(CheckedSnippet(raw=raw, answer=None if hallucination_as_no_answer else raw, hallucinated=True))
    return checked


_SENTENCE = re.compile(r"\S(?:.*?(?:[.!?](?=\s|$)|$))", re.DOTALL)  # a sentence: up to . ! ? before a space
_REGEX_SPECIAL = re.compile(r"([.^$*+?{}\[\]\\|()])")


def regex_literal(text: str) -> str:
    """``text`` as a regex literal that TGI's grammar engine and the ``regex`` package both read:
    only metacharacters escaped, newlines and tabs written as ``\\n`` / ``\\t``."""
    return _REGEX_SPECIAL.sub(r"\\\1", text).replace("\n", r"\n").replace("\t", r"\t").replace("\r", r"\r")


def extract_regex(documents: list[str], copy_sentences: bool = False) -> str:
    """The block protocol as a regex. ``copy_sentences`` (for tiny judges) also fixes the content:
    NO_ANSWER or 1-3 consecutive sentences of that document exactly, so a constrained judge cannot
    hallucinate a snippet; otherwise up to 1,000 characters without square brackets."""
    parts = []
    for k, doc in enumerate(documents, start=1):
        if copy_sentences:
            bounds = [(m.start(), m.end()) for m in _SENTENCE.finditer(doc)]
            spans = {doc[bounds[i][0] : bounds[i + w - 1][1]] for w in (1, 2, 3) for i in range(len(bounds) - w + 1)}
            content = "(" + "|".join(["NO_ANSWER"] + [regex_literal(x) for x in sorted(spans, key=len, reverse=True)]) + ")"
        else:
            content = r"[^\[\]]{1,1000}"  # bounded, so a rambling judge still closes its blocks
        parts.append(rf"\[\[\[doc{k}\]\]\]\n{content}\n\[\[\[/doc{k}\]\]\]")
    return r"\n\n".join(parts)
