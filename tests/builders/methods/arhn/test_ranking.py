import re

from builders.methods.arhn.ranking import parse_ranking, ranking_regex


def test_clean():
    r = parse_ranking("[2] > [1] > [3]", 3)
    assert r.ok and r.order == [2, 1, 3] and r.issues == []


def test_prose_spacing_and_ties():
    r = parse_ranking("Final ranking: [ 3 ] >[1], [2]\nBecause doc [2] is vague.", 3)
    assert r.order == [3, 1, 2] and r.issues == []


def test_missing_ranked_last_in_id_order():
    r = parse_ranking("[4] > [1]", 4)
    assert r.order == [4, 1, 2, 3] and r.missing == [2, 3]
    assert r.issues == ["missing_id:2", "missing_id:3"]


def test_duplicates_first_wins_and_unknown_ignored():
    r = parse_ranking("[2] > [9] > [1] > [2] > [0] > [3]", 3)
    assert r.order == [2, 1, 3]
    assert r.duplicates == [2] and r.unknown == [9, 0]
    assert r.issues == ["unknown_id:9", "unknown_id:0", "duplicate_id:2"]


def test_longest_chain_wins_over_ids_in_prose():
    r = parse_ranking("Snippet [3] is off-topic. Ranking: [1] > [2] > [3]", 3)
    assert r.order == [1, 2, 3] and r.issues == []


def test_no_chain_falls_back_to_ids_in_order():
    r = parse_ranking("Best is [2]. Then [1].", 3)
    assert r.order == [2, 1, 3] and "no_chain" in r.issues and r.missing == [3]


def test_garbage_never_crashes():
    for text in ["", None, "no idea", "[a] > [b]", "[[[doc1]]]", "[99999999999999999999]"]:
        r = parse_ranking(text, 3)
        assert not r.ok and r.order == [1, 2, 3] and "no_ranking" in r.issues


def test_regex_accepts_rankings_with_exactly_one_anchor():
    rx = re.compile(ranking_regex(10))
    assert rx.fullmatch("[2] > [10] > [3] > [1] > [4] > [5] > [6] > [7] > [8] > [9]")
    assert rx.fullmatch("[1] > [10] > [3] > [2] > [4] > [5] > [6] > [7] > [8] > [9]")
    assert not rx.fullmatch("[1] > [11] > [3] > [2] > [4] > [5] > [6] > [7] > [8] > [9]")
    assert not rx.fullmatch("[2] > [10] > [3] > [3] > [4] > [5] > [6] > [7] > [8] > [9]")  # no [1]
    assert not rx.fullmatch("[1] > [1] > [3] > [2] > [4] > [5] > [6] > [7] > [8] > [9]")  # [1] twice
    assert not rx.fullmatch("[1] > [2]")  # too short
    assert re.compile(ranking_regex(1)).fullmatch("[1]")
    partial = re.compile(ranking_regex(4, complete=False))
    assert partial.fullmatch("[1]") and partial.fullmatch("[3] > [1] > [2]") and partial.fullmatch("[4] > [3] > [2] > [1]")
    assert not partial.fullmatch("[3] > [2]") and not partial.fullmatch("[1] > [2] > [3] > [4] > [2]")


def test_random_text_never_crashes_and_always_gives_a_full_order():
    import random

    pieces = ["[1]", "[2]", "[3]", " > ", "[99]", "[0]", "[", "]", ">", ",", "x", "\n", "[ 2 ]", "[id 3]"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        r = parse_ranking(text, 3)
        assert sorted(r.order) == [1, 2, 3], text
