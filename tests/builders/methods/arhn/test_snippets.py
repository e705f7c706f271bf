from builders.methods.arhn.snippets import NO_ANSWER, check_snippets, normalize_for_match, parse_blocks, verify_snippet

DOCS = [
    "The Eiffel Tower is 330 metres tall. It was built in 1889.",
    "Paris is the capital of France.\nIts population is about 2.1 million.",
    "Bananas are yellow.",
]


def test_clean_blocks():
    text = "[[[doc1]]]\nThe Eiffel Tower is 330 metres tall.\n[[[/doc1]]]\n\n[[[doc2]]]\nNO_ANSWER\n[[[/doc2]]]\n[[[doc3]]]\nBananas are yellow.\n[[[/doc3]]]"
    p = parse_blocks(text, 3)
    assert p.ok and p.issues == []
    assert p.snippets == {1: "The Eiffel Tower is 330 metres tall.", 2: NO_ANSWER, 3: "Bananas are yellow."}


def test_prose_case_spacing_duplicates_unknown_missing_unclosed():
    text = ("Sure! Here are the snippets:\n[[[ DOC1 ]]] first [[[/Doc1]]]\n[[[doc1]]] second [[[/doc1]]]\n"
            "[[[doc7]]] x [[[/doc7]]]\n[[[doc3]]] no answer.\nThanks")
    p = parse_blocks(text, 3)
    assert p.snippets == {1: "first", 3: NO_ANSWER}
    assert "duplicate_block:doc1" in p.issues
    assert "unknown_block:doc7" in p.issues
    assert "unclosed_block:doc3" in p.issues
    assert "prose_outside_blocks" in p.issues
    assert p.missing == [2] and "missing_block:doc2" in p.issues and not p.ok


def test_unclosed_block_takes_text_to_next_opener():
    p = parse_blocks("[[[doc1]]] Bananas are yellow.\n[[[doc2]]]NO_ANSWER[[[/doc2]]]", 2)
    assert p.snippets == {1: "Bananas are yellow.", 2: NO_ANSWER}
    assert p.issues == ["unclosed_block:doc1"]


def test_no_blocks_and_empty_block():
    p = parse_blocks("I cannot help with that.", 2)
    assert p.snippets == {} and p.missing == [1, 2] and "no_blocks" in p.issues
    p = parse_blocks("[[[doc1]]]   [[[/doc1]]]", 1)
    assert p.missing == [1] and "empty_block:doc1" in p.issues


def test_no_answer_variants():
    for body in ["NO_ANSWER", "no answer", "**NO_ANSWER**", "No-Answer.", '"NO_ANSWER"']:
        assert parse_blocks(f"[[[doc1]]]{body}[[[/doc1]]]", 1).snippets == {1: NO_ANSWER}, body
    assert parse_blocks("[[[doc1]]]No answer is given for Paris.[[[/doc1]]]", 1).snippets[1] != NO_ANSWER


def test_normalisation_whitespace_unicode_quotes():
    assert normalize_for_match("a\u00a0 b\n\tc \u201cq\u201d \u2019s \u2014 \u2026") == "a b c \"q\" 's - ..."
    doc = "He said \u201cit\u2019s fine\u201d \u2013 and left.\n\nThe end."
    assert verify_snippet("He said \"it's fine\" - and left. The end.", doc)
    assert verify_snippet("Paris is the capital of France. Its population", DOCS[1])  # newline vs space
    assert verify_snippet('"Bananas are yellow."', DOCS[2])  # wrapping quotes the document lacks
    assert not verify_snippet("bananas are yellow.", DOCS[2])  # casing is not folded
    assert not verify_snippet("Bananas are blue.", DOCS[2])
    assert not verify_snippet("   ", DOCS[2])


def test_check_snippets_hallucination_flags():
    text = ("[[[doc1]]]The Eiffel Tower is 330 metres tall.[[[/doc1]]]"
            "[[[doc2]]]Paris has 12 million people.[[[/doc2]]]")
    parse = parse_blocks(text, 3)
    checked = check_snippets(parse, DOCS)
    assert [c.hallucinated for c in checked] == [False, True, False]
    assert [c.missing for c in checked] == [False, False, True]
    assert [c.answer for c in checked] == ["The Eiffel Tower is 330 metres tall.", None, None]
    kept = check_snippets(parse, DOCS, hallucination_as_no_answer=False)
    assert kept[1].answer == "Paris has 12 million people." and kept[1].hallucinated


def test_random_text_never_crashes():
    import random

    pieces = ["[[[doc1]]]", "[[[/doc1]]]", "[[[doc2]]]", "[[[/doc2]]]", "[[[ DOC 3 ]]]", "[[[/doc3]]]", "NO_ANSWER",
              "Bananas are yellow.", "\n", "[[[doc9]]]", "[[[", "]]]", "x"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        parse = parse_blocks(text, 3)
        checked = check_snippets(parse, DOCS)
        assert len(checked) == 3
        assert set(parse.snippets) | set(parse.missing) == {1, 2, 3}
