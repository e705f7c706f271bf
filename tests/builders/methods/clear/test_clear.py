"""CLEAR: PFN selection with a real MiniLM, cs values through the TGI stand-in's prefill
log-probabilities computed by hand, the three output configs, answer extraction, failures."""

import json
import math
import re

import pytest

from builders.judges.endpoints.base import Backend, Scored, TokenScore
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.endpoints.tgi import TGIBackend
from builders.judges.store import JudgmentStore
from builders.methods.clear import stages as clear
from builders.methods.clear.stages import ClearError, ClearSettings, decide
from builders.rows import Passage, QueryRow

EIFFEL = "How tall is the Eiffel Tower?"
POS = "The Eiffel Tower in Paris is 330 metres tall."
FN = "Standing in Paris, the Eiffel Tower is 330 metres tall."  # a false negative (paraphrase)
NEAR = "The Eiffel Tower was built for the 1889 World's Fair in Paris."
FAR = "Photosynthesis converts light energy into chemical energy in plants."


def P(text, score=None):
    return Passage.from_text(text, score=score)


def eiffel_row(answer="330 metres"):
    extra = {"answers": [answer]} if answer else {}
    return QueryRow.from_query(EIFFEL, [P(POS, 0.9)], [P(FAR, 0.1), P(FN, 0.8), P(NEAR, 0.7)], "nq", extra=extra)


# ---------------------------------------------------------------- decisions (pure)
def test_decide_three_configs_by_hand():
    row = QueryRow.from_query("q", [P("pos")], [P("a"), P("b"), P("c")], "s")
    a, b, extra = P("a"), P("b"), P("retrieved elsewhere")
    cs = {P("pos").docid: 0.6, a.docid: 0.9, b.docid: 0.2, extra.docid: 0.35}
    out = decide(row, [a, b, extra], cs, phi=0.3)
    llm, aug, thr = out["clear_llm"], out["clear_augment"], out["clear_threshold"]
    assert [(p.text, p.score) for p in llm.positive_passages] == [("a", 0.9)]
    assert [p.text for p in llm.negative_passages] == ["b", "c"]  # the human positive is not made a negative
    assert [(p.text, p.score) for p in aug.positive_passages] == [("pos", 0.6), ("a", 0.9)]
    assert [p.text for p in aug.negative_passages] == ["b", "c"]
    # threshold: a (0.9) and the retrieved passage (0.35) pass phi; b (0.2) stays a negative
    assert [(p.text, p.score) for p in thr.positive_passages] == [("pos", 0.6), ("a", 0.9), ("retrieved elsewhere", 0.35)]
    assert [p.text for p in thr.negative_passages] == ["b", "c"]
    assert all(p.score is None for p in thr.negative_passages)


def test_decide_human_wins_ties_and_unscored_pfns_stay():
    row = QueryRow.from_query("q", [P("pos")], [P("a"), P("b")], "s")
    cs = {P("pos").docid: 0.7, P("a").docid: 0.7}  # b was not scored (a failed call)
    out = decide(row, [P("a"), P("b")], cs, phi=0.75)
    assert [p.text for p in out["clear_llm"].positive_passages] == ["pos"]
    assert [p.text for p in out["clear_augment"].positive_passages] == ["pos"]
    assert [p.text for p in out["clear_threshold"].positive_passages] == ["pos"]
    assert [p.text for p in out["clear_threshold"].negative_passages] == ["a", "b"]


# ---------------------------------------------------------------- PFN selection (real MiniLM)
@pytest.fixture(scope="module")
def minilm():
    from builders.embedding import load_embedder

    return load_embedder(device="cpu")


def test_pfn_threshold_on_a_hand_made_pool(minilm):
    other = QueryRow.from_query("What do plants do with light?", [P(FAR)], [P("Plants need water.")], "nq")
    rows = [eiffel_row(), other]
    found = clear.find_pfns(rows, ClearSettings(top_n=10), minilm)
    s_plus, pfns = found[0]
    emb = minilm.encode([EIFFEL, POS, FN, NEAR, FAR, "Plants need water."], normalize_embeddings=True, convert_to_tensor=True)
    sim = {t: float(emb[0] @ emb[i]) for i, t in enumerate([POS, FN, NEAR, FAR, "Plants need water."], start=1)}
    assert s_plus == pytest.approx(sim[POS], abs=1e-5)
    expected = sorted((t for t in (FN, NEAR, FAR, "Plants need water.") if sim[t] > 0.95 * sim[POS]), key=lambda t: -sim[t])
    assert [p.text for p, _ in pfns] == expected
    assert FN in expected and FAR not in expected  # the paraphrase is a PFN, the unrelated passage is not
    # a lower tau lets the next one in; the row's own positive is never a candidate
    loose = clear.find_pfns(rows, ClearSettings(top_n=10, tau=0.5), minilm)[0][1]
    assert {p.text for p, _ in loose} == {t for t in (FN, NEAR, FAR, "Plants need water.") if sim[t] > 0.5 * sim[POS]}
    assert POS not in {p.text for p, _ in loose}
    # top_n bounds the candidates before the threshold
    assert len(clear.find_pfns(rows, ClearSettings(top_n=1, tau=0.1), minilm)[0][1]) == 1


def test_beir_corpus_pool(tmp_path, minilm):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": str(i), "title": "", "text": t}) for i, t in enumerate([FN, FAR])) + "\n")
    found = clear.find_pfns([eiffel_row()], ClearSettings(corpus=str(corpus)), minilm)
    assert [p.text for p, _ in found[0][1]] == [FN]
    corpus.write_text('{"_id": "1", "title": "x"}\n')
    with pytest.raises(ClearError, match="line 1"):
        clear.find_pfns([eiffel_row()], ClearSettings(corpus=str(corpus)), minilm)


# ---------------------------------------------------------------- through the TGI stand-in
# The stand-in renders logprobs per token text; these are the answer tokens' probabilities.
PROBS = {"\n330": 0.5, " metres": 0.8}  # "\n330" straddles the prompt/answer boundary ("Assistant:\n" + "330")


@pytest.fixture(scope="module")
def cut():
    from builders.methods.arhn.stages import RetrieverCut

    return RetrieverCut()


def tgi(server):
    return TGIBackend(EndpointSpec(kind="tgi", url=server.url, concurrency=2, timeout_s=10))


def test_cs_from_prefill_logprobs_by_hand(tgi_stand_in, minilm, cut, tmp_path):
    server = tgi_stand_in(lambda req: "ok", logprob_fn=lambda text, pos: math.log(PROBS.get(text, 0.9)))
    rows = [eiffel_row()]
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        res = clear.run(rows, ClearSettings(top_n=3, phi=0.3), backend=tgi(server), store=store, embedder=minilm, cut=cut)
    expected = 1 - math.sqrt(((1 - 0.5) ** 2 + (1 - 0.8) ** 2) / 2)  # = 0.619211
    scored = {j["docid"]: j["confidence"] for j in res.judgments if j["stage"] == "clear/score"}
    assert scored[P(POS).docid] == pytest.approx(expected)
    assert scored[P(FN).docid] == pytest.approx(expected)
    thr = res.configs["clear_threshold"][0]
    assert [p.text for p in thr.positive_passages][:2] == [POS, FN]
    assert all(p.score == pytest.approx(expected) for p in thr.positive_passages)
    assert FN not in [p.text for p in thr.negative_passages]
    assert res.stats["nq"]["answers_from_dataset"] == 1
    assert res.stats["nq"]["positives_added"] == len(thr.positive_passages) - 1
    # every scoring request carried the answer after the (query, passage) prompt
    prompts = [r.prompt for r in server.requests if r.path != "/tokenize"]
    assert prompts and all(p.endswith("Assistant:\n330 metres") for p in prompts)
    assert all(r.body["parameters"]["decoder_input_details"] for r in server.requests if r.path != "/tokenize")


class ScriptedScorer(Backend):
    """A judge whose answer-token probabilities depend on the passage in the prompt: word
    tokens with exact offsets, probabilities from ``table[passage]`` (one per word)."""

    model_id, concurrency = "scripted/scorer", 1

    def __init__(self, table):
        self.table = table
        self.calls = 0

    async def generate(self, request):
        raise AssertionError("no generation expected")

    async def score(self, request):
        self.calls += 1
        prompt = request.messages[-1]["content"]
        probs = next(v for doc, v in self.table.items() if doc in prompt)
        words = [(m.group(0), m.start(), m.end()) for m in re.finditer(r"\S+", request.continuation)]
        return Scored([TokenScore(w, math.log(p), a, b) for (w, a, b), p in zip(words, probs, strict=True)],
                      prompt_tokens=len((prompt + request.continuation).split()), completion_tokens=0)


def test_confidence_picks_the_llm_positive(minilm, cut):
    # answer "330 metres": 2 tokens. POS: p = 0.5, 0.5 -> cs 0.5; FN: 0.9, 1.0 -> cs 1 - sqrt(0.01/2)
    judge = ScriptedScorer({POS: [0.5, 0.5], FN: [0.9, 1.0], NEAR: [0.1, 0.2], FAR: [0.0, 0.0]})
    row = eiffel_row()
    res = clear.run([row], ClearSettings(top_n=3, tau=0.5, phi=0.3), backend=judge, embedder=minilm, cut=cut)
    cs_fn = 1 - math.sqrt(0.01 / 2)
    cs_near = 1 - math.sqrt((0.81 + 0.64) / 2)  # 0.1485: below phi
    scored = {j["docid"]: j["confidence"] for j in res.judgments}
    assert scored[P(POS).docid] == pytest.approx(0.5) and scored[P(FN).docid] == pytest.approx(cs_fn)
    assert scored[P(NEAR).docid] == pytest.approx(cs_near)
    llm, aug, thr = (res.configs[n][0] for n in ("clear_llm", "clear_augment", "clear_threshold"))
    assert [(p.text, round(p.score, 6)) for p in llm.positive_passages] == [(FN, round(cs_fn, 6))]
    assert [p.text for p in aug.positive_passages] == [POS, FN]
    assert [p.text for p in thr.positive_passages] == [POS, FN]
    assert [p.text for p in thr.negative_passages] == [FAR, NEAR]  # NEAR (cs 0.15 <= phi) stays a negative
    st = res.stats["nq"]
    assert (st["positives_added"], st["negatives_removed"], st["llm_positive_changed"], st["augment_positives_added"]) == (1, 1, 1, 1)
    assert judge.calls == st["judge_calls"] == 1 + st["pfn_candidates"]


def test_offsets_that_do_not_fit_the_answer_stop_the_run(minilm, cut):
    class Broken(ScriptedScorer):
        async def score(self, request):
            return Scored([TokenScore("330", 0.0, 0, 3)])  # " metres" is not covered

    with pytest.raises(ClearError, match="not covered"):
        clear.run([eiffel_row()], ClearSettings(top_n=3), backend=Broken({}), embedder=minilm, cut=cut)


def test_empty_prefill_fails_fast_with_the_flag_named(tgi_stand_in, minilm, cut):
    server = tgi_stand_in(lambda req: "ok", prefill_logprobs=False)
    with pytest.raises(ClearError, match="--enable-prefill-logprobs"):
        clear.run([eiffel_row()], ClearSettings(top_n=3), backend=tgi(server), embedder=minilm, cut=cut)
    assert len([r for r in server.requests if r.path != "/tokenize"]) <= 2  # stopped at once (2 in flight at most)


def test_answer_extracted_from_the_positive_by_arhn_stage1(tgi_stand_in, minilm, cut, tmp_path):
    snippet = "330 metres tall"

    def responder(req):
        prompt = req["inputs"]
        if "NO_ANSWER" in prompt:  # the extraction prompt
            return f"[[[doc1]]]\n{snippet}\n[[[/doc1]]]" if "Eiffel" in prompt else "[[[doc1]]]\nthe roots drink water\n[[[/doc1]]]"
        return "ok"

    server = tgi_stand_in(responder, logprob_fn=lambda text, pos: math.log(PROBS.get(text, 0.9)))
    plants = QueryRow.from_query("What do plants do with light?", [P(FAR)], [P("Plants need water.")], "nq")
    rows = [eiffel_row(answer=None), plants]
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        res = clear.run(rows, ClearSettings(top_n=3), backend=tgi(server), store=store, embedder=minilm, cut=cut)
        st = res.stats["nq"]
        assert st["answers_extracted"] == 1
        assert st["hallucinated_snippets"] == 1  # "the roots drink water" is not in the passage
        assert st["rows_without_answer"] == 1
        assert res.configs["clear_threshold"][1] == plants  # no answer: left as it is
        scoring = [r.prompt for r in server.requests if r.path != "/tokenize" and "NO_ANSWER" not in r.prompt]
        assert scoring and all(p.endswith("Assistant:\n" + snippet) for p in scoring)
        assert any(j["stage"] == "clear/answer" and j["hallucinated"] for j in res.judgments)
        assert [j.stage for j in res.judges] == ["clear/answer", "clear/score"]
        # a rerun on the same store pays for nothing
        before = len(server.requests)
        again = clear.run(rows, ClearSettings(top_n=3), backend=tgi(server), store=store, embedder=minilm, cut=cut)
        assert len(server.requests) == before
        assert again.configs == res.configs
        assert again.stats == res.stats  # the stats describe the stored answers: the same on a rerun
        assert {k: v.calls for k, v in again.ledgers.items()} == {"clear/answer": 0, "clear/score": 0}
        assert {k: v.cached for k, v in again.ledgers.items()} == {k: v.items for k, v in res.ledgers.items()}
        assert sum(v.calls for v in res.ledgers.values()) == len([r for r in server.requests if r.path in ("/generate", "/")])


def test_unparseable_extraction_is_counted_not_read_as_an_answer(tgi_stand_in, minilm, cut):
    server = tgi_stand_in(lambda req: "I think it is tall." if "NO_ANSWER" in req["inputs"] else "ok")
    res = clear.run([eiffel_row(answer=None)], ClearSettings(top_n=3), backend=tgi(server), embedder=minilm, cut=cut)
    st = res.stats["nq"]
    assert st["parse_failures"] == 1 and st["rows_without_answer"] == 1 and st["passages_scored"] == 0
    assert res.configs["clear_llm"][0] == eiffel_row(answer=None)


def test_arguana_and_rows_without_positive_are_not_edited(minilm, cut):
    class NoCalls:  # any call would fail the test
        model_id, concurrency, supports_constraint = "none", 1, frozenset()

    rows = [QueryRow.from_query("q", [P("a")], [P("b")], "ArguAna"), QueryRow.from_query("r", [], [P("b")], "nq")]
    res = clear.run(rows, ClearSettings(), backend=NoCalls(), embedder=minilm, cut=cut)
    assert res.configs["clear_threshold"] == rows
    assert res.stats["ArguAna"]["rows_not_edited"] == 1 and res.stats["nq"]["rows_not_edited"] == 1


def test_the_same_query_twice_is_decided_per_row_and_paid_once(minilm, cut):
    judge = ScriptedScorer({POS: [0.5, 0.5], FN: [0.9, 1.0], NEAR: [0.1, 0.2], FAR: [0.0, 0.0]})
    first = eiffel_row()
    second = QueryRow.from_query(EIFFEL, [P(POS)], [P(NEAR)], "msmarco", extra={"answer": "330 metres"})
    res = clear.run([first, second], ClearSettings(top_n=3, tau=0.5), backend=judge, embedder=minilm, cut=cut)
    thr = res.configs["clear_threshold"]
    assert [p.text for p in thr[0].negative_passages] == [FAR, NEAR]
    assert [p.text for p in thr[1].positive_passages] == [POS, FN]  # FN came from the pool, not its negatives
    assert [p.text for p in thr[1].negative_passages] == [NEAR]
    scored = {(j["subset"], j["docid"]) for j in res.judgments}
    assert judge.calls == len({docid for _, docid in scored})  # one call per distinct (query, answer, passage)


def test_local_backend_confidence_equals_a_direct_forward_pass(tmp_path, minilm, cut):
    """Equivalence: CLEAR's cs with the local backend (exact log-softmax, tokens by offsets)
    equals cs computed from one forward pass over prompt ids + answer ids tokenized apart."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parents[2] / "judges" / "endpoints"))
    from tiny_models import build_tiny_model

    from builders.judges.endpoints import make_backend

    backend = make_backend(EndpointSpec(kind="local", model=str(build_tiny_model(tmp_path / "tiny")), device="cpu"))
    answer = " Paris is the capital"
    row = QueryRow.from_query("What is the capital of France?", [P("The capital of France is Paris.")],
                              [P("Paris is the capital and largest city of France.")], "nq", extra={"answer": answer.strip()})
    res = clear.run([row], ClearSettings(top_n=2, tau=0.1), backend=backend, embedder=minilm, cut=cut)
    got = {j["docid"]: j["confidence"] for j in res.judgments}
    tok, model = backend.tokenizer, backend.model
    for passage in (row.positive_passages[0], row.negative_passages[0]):
        request = clear.score_request(row.query, cut(passage.full_text), answer.strip())
        prompt = backend.render(request.messages)
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        answer_ids = tok(request.continuation, add_special_tokens=False).input_ids
        assert tok(prompt + request.continuation, add_special_tokens=False).input_ids == prompt_ids + answer_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        probs = [logprobs[len(prompt_ids) + h - 1, t].exp().item() for h, t in enumerate(answer_ids)]
        expected = 1 - math.sqrt(sum((1 - p) ** 2 for p in probs) / len(probs))
        assert got[passage.docid] == pytest.approx(expected, abs=1e-5)


def test_recipe_yaml_loads_into_settings():
    import yaml

    data = yaml.safe_load(open("recipes/clear-sample.yaml"))["clear"]
    s = ClearSettings(**data)
    assert s.answer_fields == ("answer", "answers") and s.never_edit_subsets == ("arguana",)
    assert (s.tau, s.phi, s.top_n, s.max_pfn) == (0.95, 0.3, 20, 5)
    from builders.methods.percpos.teacher_filter import PercPosSettings

    p = PercPosSettings(**yaml.safe_load(open("recipes/percpos-sample.yaml"))["percpos"])
    assert (p.teacher, p.margin, p.top_k) == ("bi-encoder", 0.95, 15)
    with pytest.raises(ValueError, match="tau"):
        ClearSettings(tau=0)
