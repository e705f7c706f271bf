"""CLEAR's confidence score, as pure functions.

Given the log-probabilities a judge assigns to the tokens of a GIVEN continuation (the
gold answer written after a (query, document) prompt), CLEAR scores the document by how
well it lets the model reproduce the answer::

    cs = 1 - sqrt( mean_h (1 - p_h)^2 )        p_h = exp(logprob of the h-th answer token)

i.e. one minus the length-normalised L2 distance between the model's probabilities of the
answer tokens and the all-ones "ground truth" vector. cs is 1 when every answer token is
certain, 0 when every one has probability 0.

Which tokens are answer tokens is decided by CHARACTER OFFSETS, never by counting tokens:
every ``TokenScore`` carries ``start``/``end`` inside the continuation, and the answer is the
span ``[answer_start, answer_end)`` of that continuation. The rule:

* a token is an answer token when it covers at least one character of the answer span
  (``start < answer_end and end > answer_start``). A token that straddles the span's edge
  (e.g. ``" Paris."`` when the answer is ``"Paris"``, or a token merging the last prompt
  character with the first answer character, reported with ``start < 0``) is counted, once,
  with its full probability: the model emitted those answer characters only through it, and a
  token's probability cannot be split by characters;
* zero-width tokens (BOS, special tokens at ``start == end``) cover no character and are
  never answer tokens;
* every non-whitespace character of the answer must be covered by some token, otherwise the
  offsets do not describe this answer and a ``ConfidenceError`` is raised instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from builders.judges.endpoints.base import TokenScore


class ConfidenceError(ValueError):
    """The scored tokens cannot be mapped onto the answer (missing or inconsistent offsets)."""


def answer_tokens(tokens: Sequence[TokenScore], answer_start: int, answer_end: int) -> list[TokenScore]:
    """The tokens that cover at least one character of ``[answer_start, answer_end)``."""
    if answer_end <= answer_start:
        raise ConfidenceError(f"empty answer span [{answer_start}, {answer_end})")
    return [t for t in tokens if t.end > t.start and t.start < answer_end and t.end > answer_start]


def check_coverage(tokens: Sequence[TokenScore], continuation: str, answer_start: int, answer_end: int) -> None:
    """Raise unless every non-whitespace answer character lies inside some token's offsets."""
    covered = [False] * (answer_end - answer_start)
    for t in tokens:
        for i in range(max(t.start, answer_start), min(t.end, answer_end)):
            covered[i - answer_start] = True
    missing = [answer_start + i for i, ok in enumerate(covered) if not ok and not continuation[answer_start + i].isspace()]
    if missing:
        first = missing[0]
        raise ConfidenceError(
            f"{len(missing)} answer character(s) not covered by any scored token (first at offset {first}: "
            f"{continuation[first]!r}); the backend's token offsets do not match the continuation {continuation!r}"
        )


def confidence(probabilities: Sequence[float]) -> float:
    """``1 - sqrt(mean((1 - p)^2))`` over the answer tokens' probabilities."""
    if not probabilities:
        raise ConfidenceError("no answer tokens to score")
    for p in probabilities:
        if not (0.0 <= p <= 1.0 + 1e-9) or math.isnan(p):
            raise ConfidenceError(f"token probability {p!r} is outside [0, 1]")
    mean_sq = sum((1.0 - min(p, 1.0)) ** 2 for p in probabilities) / len(probabilities)
    return 1.0 - math.sqrt(mean_sq)


def probability(logprob: float) -> float:
    if logprob is None or math.isnan(logprob) or logprob > 1e-6:
        raise ConfidenceError(f"invalid token log-probability {logprob!r}")
    return math.exp(min(logprob, 0.0))


def answer_confidence(
    tokens: Sequence[TokenScore],
    continuation: str,
    answer_start: int = 0,
    answer_end: int | None = None,
) -> tuple[float, list[TokenScore]]:
    """The confidence of the answer span of ``continuation`` and the tokens it was computed
    from. ``answer_end`` defaults to the end of the continuation (the usual case: the
    continuation IS the answer)."""
    answer_end = len(continuation) if answer_end is None else answer_end
    if not 0 <= answer_start < answer_end <= len(continuation):
        raise ConfidenceError(f"answer span [{answer_start}, {answer_end}) is outside the continuation ({len(continuation)} chars)")
    if not tokens:
        raise ConfidenceError("the backend returned no scored tokens for the continuation")
    chosen = answer_tokens(tokens, answer_start, answer_end)
    check_coverage(chosen, continuation, answer_start, answer_end)
    return confidence([probability(t.logprob) for t in chosen]), chosen
