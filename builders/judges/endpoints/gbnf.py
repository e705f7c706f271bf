"""Regular expressions as llama.cpp GBNF grammars, so a llama.cpp server (which takes a GBNF
``grammar`` but no regex) can enforce the same constraint vLLM, SGLang and TGI get as a regex.

Covers the regex subset the judges' constraints use (``builders.methods.rlhn.verdict.verdict_regex`` and
friends): literals and escapes (``\\(``, ``\\n``, ...), character classes (``[a-z]``,
``[^<>\\[\\]]``), groups (``(...)``, ``(?:...)``), alternation and the quantifiers ``?``,
``*``, ``+``, ``{m}``, ``{m,}``, ``{m,n}``. Anchors (``^`` at the start, ``$`` at the end) are
dropped (a grammar always matches the whole output); anything else (backreferences,
lookarounds, ``\\d``-style classes) raises ``ValueError`` naming the position.

    >>> regex_to_gbnf(r"Doc \\((1|2)\\)")
    'root ::= "Doc (" ("1" | "2") ")"'
"""

from __future__ import annotations

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def _class_char(c: str) -> str:
    return {"\\": "\\\\", "]": "\\]", "[": "\\[", "\n": "\\n", "\t": "\\t", "\r": "\\r", "^": "\\^", "-": "\\-"}.get(c, c)


class _Parser:
    def __init__(self, regex: str):
        self.s = regex
        self.i = 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"regex_to_gbnf: {what} at position {self.i} of {self.s!r}")

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def alternation(self) -> str:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return " | ".join(branches)

    def sequence(self) -> str:
        parts: list[str] = []
        pending = ""  # consecutive literal characters become one string
        while (c := self.peek()) is not None and c not in "|)":
            atom, is_char = self.atom()
            quantifier = self.quantifier()
            if is_char and not quantifier:
                pending += atom
                continue
            if pending:
                parts.append(_literal(pending))
                pending = ""
            parts.append((_literal(atom) if is_char else atom) + quantifier)
        if pending:
            parts.append(_literal(pending))
        return " ".join(parts) if parts else '""'

    def atom(self) -> tuple[str, bool]:
        """-> (a literal character, True) or (a GBNF expression, False)."""
        c = self.s[self.i]
        if c == "(":
            self.i += 1
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.error("lookarounds and named groups are not supported")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("unclosed group")
            self.i += 1
            return f"({inner})", False
        if c == "[":
            return self.char_class(), False
        if c == "\\":
            return self.escape(), True
        if c == ".":
            self.i += 1
            return "[^\\n]", False
        if c in "*+?{":
            raise self.error(f"quantifier {c!r} with nothing to repeat")
        if c == "^" and self.i == 0:
            self.i += 1
            return "", True
        if c == "$" and self.i == len(self.s) - 1:
            self.i += 1
            return "", True
        if c in "^$":
            raise self.error("anchors inside the pattern are not supported")
        self.i += 1
        return c, True

    def escape(self) -> str:
        self.i += 1
        c = self.peek()
        if c is None:
            raise self.error("trailing backslash")
        self.i += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c.isalnum():
            raise self.error(f"escape \\{c} is not supported (write the class out, e.g. [0-9])")
        return c

    def char_class(self) -> str:
        self.i += 1
        out = "["
        if self.peek() == "^":
            out += "^"
            self.i += 1
        first = True
        while (c := self.peek()) != "]" or first:
            if c is None:
                raise self.error("unclosed character class")
            first = False
            if c == "\\":
                out += _class_char(self.escape())
            elif c == "-" and out[-1] not in "[^" and self.s[self.i + 1 : self.i + 2] != "]":
                out += "-"
                self.i += 1
            else:
                out += _class_char(c)
                self.i += 1
        self.i += 1
        return out + "]"

    def quantifier(self) -> str:
        c = self.peek()
        if c in ("?", "*", "+"):
            self.i += 1
            return c
        if c == "{":
            end = self.s.find("}", self.i)
            body = self.s[self.i + 1 : end] if end > 0 else ""
            low, _, high = body.partition(",")
            if not low.isdigit() or (high and not high.isdigit()):
                raise self.error(f"bad repetition {{{body}}}")
            self.i = end + 1
            return "{" + body + "}"
        return ""


def regex_to_gbnf(regex: str, rule: str = "root") -> str:
    """A GBNF grammar whose ``rule`` matches exactly the strings ``regex`` fully matches."""
    parser = _Parser(regex)
    body = parser.alternation()
    if parser.i != len(regex):
        raise parser.error("unbalanced ')'")
    return f"{rule} ::= {body}"
