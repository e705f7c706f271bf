"""One RLHN stage's prompt text."""

import random

from builders.methods.rlhn.stage import _clip


def test_passage_text_is_collapsed_as_split_and_join_collapse_it():
    """The prompt shows passages with whitespace collapsed (``_clip``); its fast path for text
    that is already collapsed must give what splitting and joining give, or every stored
    answer's request hash would change."""
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\n", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\xa0", "\u3000", "\u2028", "\x85", "é", " x "]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for max_words in (None, 0, 1, 2, 5):
            words = " ".join(text.split()).split(" ")
            expected = " ".join(words) if max_words is None or len(words) <= max_words else " ".join(words[:max_words]) + " …"
            assert _clip(text, max_words) == expected, (text, max_words)
