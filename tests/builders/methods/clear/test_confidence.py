"""CLEAR's confidence math and the offset rule, against values computed by hand."""

import math

import pytest

from builders.judges.endpoints.base import TokenScore
from builders.methods.clear.confidence import ConfidenceError, answer_confidence, answer_tokens, confidence


def ts(text, p, start):
    return TokenScore(text=text, logprob=math.log(p), start=start, end=start + len(text))


def test_confidence_by_hand():
    # p = 0.5, 0.8: mean (0.25 + 0.04) / 2 = 0.145, sqrt = 0.380789, cs = 0.619211
    assert confidence([0.5, 0.8]) == pytest.approx(1 - math.sqrt(0.145))
    assert confidence([0.5, 0.8]) == pytest.approx(0.619211, abs=1e-6)
    assert confidence([1.0, 1.0, 1.0]) == 1.0
    assert confidence([0.0]) == 0.0
    # one uncertain token among three certain ones: sqrt(0.81 / 4) = 0.45
    assert confidence([1.0, 1.0, 1.0, 0.1]) == pytest.approx(0.55)


def test_confidence_rejects_empty_and_invalid():
    with pytest.raises(ConfidenceError, match="no answer tokens"):
        confidence([])
    with pytest.raises(ConfidenceError, match="outside"):
        confidence([1.5])


def test_whole_continuation_is_the_answer():
    cont = "Paris, France"
    tokens = [ts("Paris", 0.5, 0), ts(",", 0.9, 5), ts(" France", 0.8, 6)]
    cs, used = answer_confidence(tokens, cont)
    assert [t.text for t in used] == ["Paris", ",", " France"]
    assert cs == pytest.approx(1 - math.sqrt((0.25 + 0.01 + 0.04) / 3))


def test_straddling_token_is_counted_once_with_its_full_probability():
    # continuation "The answer: Paris." with the answer span "Paris" = [12, 17);
    # the tokenizer made " Paris." one token covering [11, 18): it straddles both edges.
    cont = "The answer: Paris."
    tokens = [ts("The", 0.9, 0), ts(" answer", 0.9, 3), ts(":", 0.9, 10), ts(" Paris.", 0.4, 11)]
    cs, used = answer_confidence(tokens, cont, 12, 17)
    assert [t.text for t in used] == [" Paris."]
    assert cs == pytest.approx(0.4)  # 1 - sqrt((1 - 0.4)^2)


def test_token_merging_prompt_and_answer_start():
    # a token that starts before the continuation (start < 0) but covers its first char counts
    cont = "42 km"
    tokens = [TokenScore(">42", math.log(0.6), -1, 2), ts(" km", 0.9, 2)]
    cs, used = answer_confidence(tokens, cont)
    assert [t.text for t in used] == [">42", " km"]
    assert cs == pytest.approx(1 - math.sqrt((0.16 + 0.01) / 2))


def test_zero_width_tokens_are_not_answer_tokens():
    tokens = [TokenScore("<s>", math.log(0.01), 0, 0), ts("Yes", 0.5, 0)]
    assert [t.text for t in answer_tokens(tokens, 0, 3)] == ["Yes"]


def test_uncovered_answer_characters_fail_instead_of_guessing():
    cont = "Paris France"
    tokens = [ts("Paris", 0.5, 0)]  # " France" has no token
    with pytest.raises(ConfidenceError, match="not covered"):
        answer_confidence(tokens, cont)
    with pytest.raises(ConfidenceError, match="no scored tokens"):
        answer_confidence([], cont)
    # a whitespace gap is fine (some tokenizers drop the space from offsets)
    cs, _ = answer_confidence([ts("Paris", 1.0, 0), ts("France", 1.0, 6)], cont)
    assert cs == 1.0
