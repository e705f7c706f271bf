"""Regex -> GBNF for llama.cpp: the verdict regex and the regex features it uses, and clear
errors for what a grammar cannot take. (The real llama.cpp server enforcing the result is
tests/integration/test_real_servers.py.)"""

import pytest

from builders.judges.endpoints.gbnf import regex_to_gbnf
from builders.methods.rlhn.verdict import verdict_regex


def test_verdict_regex_becomes_its_grammar():
    doc = '"Doc (" ("2" | "1") ")"'
    docs = f'({doc} (", Doc (" ("2" | "1") ")"){{0,1}})?'
    assert regex_to_gbnf(verdict_regex(2, 30)) == (
        'root ::= "<thinking>" [^<>\\[\\]]{1,30} "</thinking>\\n<verdict><better> [" '
        f'{docs} "] </better>, <worse> [" {docs} "] </worse></verdict>"'
    )


@pytest.mark.parametrize("regex,grammar", [
    (r"^(?:yes|no)$", 'root ::= ("yes" | "no")'),
    (r'a"b\\c', 'root ::= "a\\"b\\\\c"'),
    (r"[a-z0-9_-]+x?", 'root ::= [a-z0-9_\\-]+ "x"?'),
    (r"ab{2,}c*.", 'root ::= "a" "b"{2,} "c"* [^\\n]'),
    (r"(|x)", 'root ::= ("" | "x")'),
])
def test_features(regex, grammar):
    assert regex_to_gbnf(regex) == grammar


@pytest.mark.parametrize("regex,why", [
    (r"\d+", "not supported"), (r"(?=a)", "lookarounds"), (r"(ab", "unclosed group"), (r"ab)", "unbalanced"),
    (r"[ab", "unclosed character class"), (r"*a", "nothing to repeat"), (r"a{x}", "bad repetition"), (r"a^b", "anchors"),
])
def test_unsupported_regex_is_a_clear_error(regex, why):
    with pytest.raises(ValueError, match=why):
        regex_to_gbnf(regex)
