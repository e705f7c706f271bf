"""builders.judges.shorten: the rule on a word-level tokenizer (exact numbers), and end to end through
the TGI stand-in, whose /info states a small max_input_tokens and which answers 422 above it."""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest

from builders.judges.annotate import RetryPolicy
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Backend, EndpointError, GenerateRequest
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet import Fleet
from builders.judges.shorten import Fit, PromptFitter, ShortenError, ShortenRule, clip, water_level
from builders.judges.store import JudgmentStore, request_sha
from builders.methods.rlhn.cascade import run_rlhn_sync
from builders.methods.rlhn.stage import RlhnSettings, Stage, make_request, windows_of
from builders.methods.rlhn.verdict import format_verdict
from builders.rows import Passage, QueryRow
from tests.stand_ins.tgi_server import prompt_of, tokenize


class WordJudge(Backend):
    """A judge whose tokens are whitespace-separated words, with a stated input limit."""

    model_id = "word-judge"

    def __init__(self, limit: int | None, can_count: bool = True):
        self.limit, self.can_count, self.counted = limit, can_count, 0

    async def generate(self, request):  # pragma: no cover - never asked here
        raise AssertionError("not a generation test")

    async def input_limit(self, max_new_tokens: int) -> int | None:
        return self.limit

    def prompt_text(self, messages) -> str:
        return "\n".join(m["content"] for m in messages)

    async def token_spans(self, text: str):
        if not self.can_count:
            return None
        self.counted += 1
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


FIXED = "Instructions: judge these"  # 3 words


def build(texts):
    return ({"role": "user", "content": FIXED + "\n" + "\n".join(texts)},)


def fit(judge, passages, rule=None, **kw) -> Fit:
    return asyncio.run(PromptFitter(judge, rule).fit(build, passages, max_new_tokens=8, **kw))


def test_water_level_exact_and_equal_to_brute_force():
    assert water_level([10, 30, 50], 50, 1) == 19  # 10 + (19+1) + (19+1) = 50
    assert water_level([10, 30, 50], 90, 1) == 50  # everything fits: nothing cut
    assert water_level([5], 3, 1) == 2 and water_level([5, 5], 1, 1) is None
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(0, 40) for _ in range(rng.randint(0, 6))]
        available, marker = rng.randint(-2, 120), rng.randint(1, 4)
        cost = lambda c: sum(min(n, c) for n in lengths) + marker * sum(n > c for n in lengths)  # noqa: E731
        brute = max((c for c in range(max(lengths, default=0) + 1) if cost(c) <= available), default=None)
        assert water_level(lengths, available, marker) == brute, (lengths, available, marker)


def test_clip_at_a_token_boundary_with_the_marker():
    assert clip("a bb ccc dddd", [1, 4, 8, 13], 2) == "a bb [...]"
    assert clip("a bb", [1, 4], 2) == "a bb"  # not longer than the cap: untouched


def test_longest_passages_are_cut_first_to_the_water_level():
    a, b, c = words(10, "a"), words(30, "b"), words(50, "c")
    judge = WordJudge(limit=3 + 50)  # fixed 3 words + 50 for the passages
    out = fit(judge, [a, b, c])
    assert out.texts == (a, words(19, "b") + " [...]", words(19, "c") + " [...]")  # a (10) is below the cap: whole
    assert (out.limit, out.prompt_tokens, out.passages_cut, out.tokens_removed) == (53, 53, 2, 93 - 53)
    assert build(out.texts)[0]["content"].startswith(FIXED + "\n" + a + "\n")  # fixed parts untouched
    assert fit(judge, [a, b, c]) == out  # deterministic: the same request again
    assert request_sha(GenerateRequest(build(out.texts))) == request_sha(GenerateRequest(build(fit(judge, [a, b, c]).texts)))


def test_a_prompt_that_fits_is_not_counted_and_unknown_limits_send_as_is():
    judge = WordJudge(limit=10_000)
    out = fit(judge, [words(50, "x")])
    assert out.texts == (words(50, "x"),) and not out.shortened and judge.counted == 0  # the byte bound settles it
    assert fit(WordJudge(limit=None), [words(5000, "x")]).texts == (words(5000, "x"),)


def test_continuation_stays_whole_and_counts():
    judge = WordJudge(limit=3 + 20 + 5)
    out = fit(judge, [words(40, "d")], continuation=" " + words(5, "ans"))
    assert out.texts == (words(19, "d") + " [...]",) and out.prompt_tokens == 28


def test_too_long_even_at_the_floor_is_not_sent():
    judge = WordJudge(limit=3 + 20)
    out = fit(judge, [words(40, "a"), words(40, "b"), words(40, "c")], ShortenRule(min_passage_tokens=8))
    assert out.texts is None and "does not fit the input limit of 23" in out.error and "take 3" in out.error


def test_no_way_to_count_is_a_clear_error_only_when_a_prompt_might_not_fit():
    judge = WordJudge(limit=100, can_count=False)
    assert fit(judge, ["short"]).texts == ("short",)
    with pytest.raises(ShortenError, match="tokenizer:"):
        fit(judge, [words(200, "x")])


# ------------------------------------------------------------------ end to end (TGI stand-in)
def verdict_judge(request: dict) -> str:
    return "<thinking>read them</thinking>\n" + format_verdict([1], [])


def long_rows(n: int = 3) -> list[QueryRow]:
    rows = []
    for i in range(n):
        positive = Passage.from_text(f"The answer to question {i} is {i * 7}.")
        negatives = [Passage.from_text(" ".join(f"neg{i}x{k}w{j}" for j in range(40 + 30 * k))) for k in range(4)]
        rows.append(QueryRow.from_query(f"what is question {i}?", [positive], negatives, subset="toy"))
    return rows


LIMIT = 400  # stand-in tokens (\s?\w+ / punctuation); an unshortened window has ~600, its fixed parts ~260


def test_rlhn_windows_that_earned_422_now_get_answers(tgi_stand_in, tmp_path):
    server = tgi_stand_in(verdict_judge, max_input_tokens=LIMIT)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge"))
    rows, settings = long_rows(), RlhnSettings(max_new_tokens=64, concurrency=4)
    before = make_request(windows_of(rows[0], settings)[0], backend, settings)  # as it was built before
    with pytest.raises(EndpointError) as error:
        asyncio.run(backend.generate(before))
    assert error.value.status == 422
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, parse_retries=0)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, _ = run_rlhn_sync(rows, [Stage("stage1", backend)], settings, store, retry, progress=False)
        stats = result.stats["toy"]
        assert stats["flagged_stage1"] == 3 and stats["failed_stage1"] == 0
        assert stats["prompts_shortened_stage1"] == 3 and stats["passages_shortened_stage1"] >= 6
        assert stats["prompt_tokens_removed_stage1"] >= 3 * 150
        assert all(j["status"] == "ok" and j["passages_shortened"] >= 2 for j in result.judgments)
        generated = [r for r in server.requests if r.path == "/generate"]
        assert len(generated) == 4 and [r.status for r in generated] == [422, 200, 200, 200]
        for r in generated[1:]:
            assert len(tokenize(prompt_of(r.body))) + 1 <= LIMIT and " [...]" in prompt_of(r.body)
            row = next(x for x in rows if x.query in prompt_of(r.body))
            assert row.positive_passages[0].text in prompt_of(r.body)  # the ground truth is never cut
        assert any(r.path == "/tokenize" for r in server.requests)  # no tokenizer named: the server counted
        assert [r.path for r in server.reads] == ["/info"]  # read once
        # a rerun rebuilds exactly the same requests: everything from the store, no call made
        calls = len(server.requests)
        again, _ = run_rlhn_sync(rows, [Stage("stage1", make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge")))],
                                 settings, store, retry, progress=False)
        assert not [r for r in server.requests[calls:] if r.path == "/generate"]
        assert again.stats["toy"]["prompts_shortened_stage1"] == 3


def test_rlhn_window_too_long_even_cut_is_a_failed_judgment(tgi_stand_in, tmp_path):
    server = tgi_stand_in(verdict_judge, max_input_tokens=LIMIT)
    row = long_rows(1)[0]
    row = row.with_passages(positives=[Passage.from_text(" ".join(f"pos{j}" for j in range(400)))])  # never cut
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, _ = run_rlhn_sync([row], [Stage("stage1", backend)], RlhnSettings(max_new_tokens=64), store, progress=False)
    (judgment,) = result.judgments
    assert judgment["status"] == "call_failed" and judgment["reason"].startswith("judge call failed: validation: prompt of")
    assert result.stats["toy"]["failed_stage1"] == 1 and result.stats["toy"]["prompts_too_long_stage1"] == 1
    assert result.stats["toy"]["clean_stage1"] == 0  # never read as "no false negative"
    assert not [r for r in server.requests if r.path == "/generate"]  # not sent


def test_input_limits_from_info_spec_and_fleet(tgi_stand_in):
    small = tgi_stand_in(max_input_tokens=300, max_total_tokens=8192)
    tight_total = tgi_stand_in(max_input_tokens=4000, max_total_tokens=350)
    limit = lambda backend, new=100: asyncio.run(backend.input_limit(new))  # noqa: E731
    assert limit(make_backend(EndpointSpec(kind="tgi", url=small.url))) == 300
    assert limit(make_backend(EndpointSpec(kind="tgi", url=tight_total.url))) == 250  # max_total_tokens - max_new_tokens
    assert limit(make_backend(EndpointSpec(kind="tgi", url=small.url, max_input_tokens=120))) == 120  # the recipe wins
    fleet = Fleet.from_specs([EndpointSpec(kind="tgi", url=small.url), EndpointSpec(kind="tgi", url=tight_total.url)])
    assert limit(fleet) == 250 and limit(fleet, 10) == 300  # the smallest member's
    vllm = tgi_stand_in(max_model_len=1000)
    assert limit(make_backend(EndpointSpec(kind="openai", url=vllm.url, model="m"))) == 900  # max_model_len - new
    assert limit(make_backend(EndpointSpec(kind="openai", url=small.url, model="m"))) is None  # none offered
    down = make_backend(EndpointSpec(kind="tgi", url="http://127.0.0.1:9"))  # nothing listens on the discard port
    assert limit(down) is None  # a server that does not answer: unknown (prompts go as they are), asked again later


def test_local_limit_is_the_model_context_without_loading_weights(tmp_path):
    from tests.builders.judges.endpoints.tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    backend = make_backend(EndpointSpec(kind="local", model=str(folder)))
    assert asyncio.run(backend.input_limit(100)) == 4096 - 100 and not backend.loaded
    spans = asyncio.run(backend.token_spans("Query: what is a cat?"))
    assert len(spans) == backend.count_tokens("Query: what is a cat?")


def test_local_limit_is_read_once_for_many_concurrent_prompts():
    """Every prompt being fitted asks for the limit at once: one read, shared (concurrent reads in
    threads raced through transformers' lazy imports and broke the demo)."""
    from builders.judges.endpoints.local import LocalBackend

    reads = []

    def reader():
        reads.append(1)
        time.sleep(0.05)
        return 2048

    backend = LocalBackend(loader=lambda: (None, None), model_id="m", context_reader=reader)

    async def many():
        return await asyncio.gather(*(backend.input_limit(48) for _ in range(20)))

    assert asyncio.run(many()) == [2000] * 20 and len(reads) == 1


def test_arhn_snippets_are_verified_against_the_text_the_judge_was_shown(tgi_stand_in, tmp_path):
    from builders.methods.arhn.stages import ArhnSettings, RetrieverCut
    from builders.methods.arhn.stages import run as run_arhn

    filler = lambda tag, n: " ".join(f"{tag}{j}" for j in range(n))  # noqa: E731
    seen = "Gustave Eiffel's company built the tower."
    unseen = "Stephen Sauvestre drew the tower's arches."  # at the end of doc3: cut away before the judge sees it
    row = QueryRow.from_query("Who designed the Eiffel Tower?", [Passage.from_text("The tower was designed by Eiffel.")],
                              [Passage.from_text(seen + " " + filler("a", 150)), Passage.from_text(filler("b", 150) + " " + unseen),
                               Passage.from_text(filler("c", 150))], subset="nq")

    def judge(request: dict) -> str:
        prompt = prompt_of(request)
        if "Reply with exactly" in prompt:
            return (f"[[[doc1]]]\nThe tower was designed by Eiffel.\n[[[/doc1]]]\n[[[doc2]]]\n{seen}\n[[[/doc2]]]\n"
                    f"[[[doc3]]]\n{unseen}\n[[[/doc3]]]\n[[[doc4]]]\nNO_ANSWER\n[[[/doc4]]]")
        return "[2] > [1]"

    server = tgi_stand_in(judge, max_input_tokens=600)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = run_arhn([row], ArhnSettings(max_negatives=3), backend=backend, store=store,
                          cut=RetrieverCut(max_length=512), retry=RetryPolicy(max_attempts=1, parse_retries=0))
    nq = result.stats["nq"]
    assert nq["extract_prompts_shortened"] == 1 and nq["extract_passages_shortened"] == 3
    assert nq["hallucinated_snippets"] == 1  # the sentence from the part it never saw
    extract = next(j for j in result.judgments if j["stage"] == "arhn/extract")
    assert extract["hallucinated"] == [False, False, True, False]
    decisions = {d["docid"]: d["decision"] for d in next(j for j in result.judgments if j["stage"] == "arhn/rank")["decisions"]}
    assert [decisions[p.docid] for p in row.negative_passages] == ["relabel", "keep", "keep"]
    sent = [prompt_of(r.body) for r in server.requests if r.path == "/generate"]
    assert len(sent) == 2 and all(len(tokenize(p)) + 1 <= 600 for p in sent)
    assert sent[0].count(" [...]") == 3 and unseen not in sent[0] and seen in sent[0]


def test_dry_run_shows_how_many_prompts_would_be_shortened(tgi_stand_in, tmp_path):
    import io
    import json

    from builders.build import dry_run
    from builders.recipe import load_recipe

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r.to_tevatron()) + "\n" for r in long_rows()), encoding="utf-8")
    server = tgi_stand_in(verdict_judge, max_input_tokens=LIMIT)
    recipe = load_recipe(None, [("sources", f"[{{path: '{source}', subset: toy}}]"),
                                ("judges.stage1", f"{{kind: tgi, url: '{server.url}', model: judge}}")])
    printed = io.StringIO()
    result = dry_run(recipe, progress=False, out=printed)
    assert result["stages"]["stage1"]["input_limit"] == LIMIT and result["stages"]["stage1"]["prompts_over_limit"] == 3
    assert f"input limit {LIMIT} tokens: 3 of 3 prompts over it would be shortened" in printed.getvalue()
    assert not server.requests  # the dry run read /info and asked nothing


def test_clear_score_prompt_cut_keeps_the_answer_whole_and_scores(tgi_stand_in):
    from builders.methods.clear.stages import score_request

    server = tgi_stand_in(max_input_tokens=120)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge"))
    answer = " Paris is the capital of France."
    document = "Paris is the capital of France. " + " ".join(f"w{j}" for j in range(300))
    fitter = PromptFitter(backend)
    build = lambda texts: score_request("What is the capital of France?", texts[0], answer).messages  # noqa: E731
    out = asyncio.run(fitter.fit(build, [document], max_new_tokens=1, continuation=answer))
    assert out.shortened and out.texts[0].startswith("Paris is the capital of France. w0") and out.texts[0].endswith(" [...]")
    tokens = asyncio.run(backend.score(score_request("What is the capital of France?", out.texts[0], answer))).tokens
    assert "".join(t.text for t in tokens).strip() == answer.strip() and tokens[-1].end == len(answer)  # scored whole
    assert out.prompt_tokens <= 120 and [r.status for r in server.requests if r.path == "/generate"] == [200]
