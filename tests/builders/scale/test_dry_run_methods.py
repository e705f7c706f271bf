"""``--dry-run``'s estimates for the stages whose prompts depend on earlier ones: CLEAR's
answers and scores (exact counts from the build's own retrieval; an upper bound without it)
and ARHN's ranking (stated shares and snippet length), checked against the cost ledger of the
same recipe built through the TGI stand-in. The dry run counts with a tokenizer that splits
text exactly as the stand-in does, so a prompt the dry run builds the same way as the build
has the same token count."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from builders.build import build, dry_run
from builders.recipe import load_recipe
from tests.builders.test_build_methods import ARHN, EIFFEL, HAMLET
from tests.builders.test_build_methods import respond as arhn_respond
from tests.stand_ins.tgi_server import TGIStandIn, prompt_of, tokenize

PRICES = {"stand-in/judge": {"prompt": 1.0, "completion": 2.0}}
PARIS = {
    "query": "What is the capital of France?",
    "pos": ["Paris is the capital and largest city of France. It lies on the Seine."],
    "neg": ["Lyon is a large city in France known for its food.",
            "The Seine flows through Paris before it reaches the sea.",
            "Berlin is the capital of Germany."],
}
ARGUANA = {"query": "Schools should ban homework.", "pos": ["Homework teaches discipline."], "neg": ["Uniforms cost money."]}
ANSWERS = {  # CLEAR's answer extraction copies the first sentence of the labelled positive
    r["query"]: r["pos"][0].split(". ")[0].rstrip(".") + "." for r in (EIFFEL, HAMLET, PARIS)
}


def clear_respond(request: dict) -> str:
    prompt = prompt_of(request)
    for query, answer in ANSWERS.items():
        if query in prompt:
            return f"[[[doc1]]]\n{answer}\n[[[/doc1]]]"
    raise AssertionError(f"unscripted prompt: {prompt[:300]}")


def stand_in_tokenizer(folder: Path) -> str:
    """A fast tokenizer that splits like the stand-in (``tokenize``) and adds its BOS."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tests.stand_ins.tgi_protocol import TOKEN_PATTERN

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN.pattern), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>").save_pretrained(folder)
    return str(folder)


def write_recipe(folder: Path, url: str, method: dict, dry: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k in ("query", "pos", "neg")} for r in (EIFFEL, HAMLET, PARIS)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "arguana.jsonl").write_text(json.dumps(ARGUANA) + "\n", encoding="utf-8")
    recipe = {
        "name": "dry", "sources": [{"path": str(folder / "rows.jsonl"), "subset": "nq"},
                                   {"path": str(folder / "arguana.jsonl"), "subset": "arguana"}],
        "judges": {"stage1": {"kind": "tgi", "url": url, "model": "stand-in/judge", "concurrency": 2}},
        "output": {"folder": str(folder / "out"), "store": str(folder / "j.sqlite")},
        "card": {"license": "mit"}, "prices": PRICES, "dry_run": {"tokenizer": stand_in_tokenizer(folder / "tok"), **dry},
        **method,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def stages(ledger: dict) -> dict[str, dict]:
    return {row["stage"]: row for row in ledger["stages"]}


# the extracted answers are 9 to 13 of the stand-in's tokens: the stated assumption for the dry run
CLEAR = {"clear": {"tau": 0.5, "max_pfn": 3, "extract_answers": True}}
CLEAR_DRY = {"answer_tokens": 11}


@pytest.fixture(scope="module")
def clear_run(tmp_path_factory):
    """One CLEAR build through the stand-in and the dry run of the same recipe."""
    with TGIStandIn(clear_respond) as server:
        path = write_recipe(tmp_path_factory.mktemp("clear"), server.url, CLEAR, CLEAR_DRY)
        printed = io.StringIO()
        estimate = dry_run(load_recipe(path), progress=False, out=printed)
        assert not server.requests  # the dry run asked the judge nothing (it read /info)
        report = build(load_recipe(path), "cmd", progress=False, out=io.StringIO())
        calls = [r for r in server.requests if r.path in ("/generate", "/")]
        scored = [r for r in calls if (r.body.get("parameters") or {}).get("decoder_input_details")]
        yield {"path": path, "estimate": estimate, "printed": printed.getvalue(), "report": report,
               "answer_calls": len(calls) - len(scored), "score_calls": len(scored)}


def test_clear_dry_run_counts_the_calls_the_build_makes(clear_run):
    estimate, report = clear_run["estimate"], clear_run["report"]
    answer, score = estimate["stages"]["clear/answer"], estimate["stages"]["clear/score"]
    # the three editable queries (ArguAna is never edited) each need an answer from the judge
    assert answer["prompts"] == clear_run["answer_calls"] == 3
    assert score["prompts"] == clear_run["score_calls"] == score["positives"] + score["pfns"]
    assert score["positives"] == 3 and score["pfns_exact"] and 0 < score["pfns"] <= 3 * 3
    clear_stats = report["method_stats"]["clear"]["nq"]
    assert score["pfns"] == clear_stats["pfn_candidates"]  # the dry run's retrieval found the build's PFNs
    printed = clear_run["printed"]
    assert "PFNs from the retrieval: exact" in printed and "counted as 11 tokens (dry_run.answer_tokens)" in printed
    assert "not estimated" not in printed
    assert re.search(r"clear/score\s+stand-in/judge\s+\(estimate\)\s+" + str(score["prompts"]), printed)


def test_clear_dry_run_estimate_is_within_10_percent_of_the_ledger(clear_run):
    guess, real = stages(clear_run["estimate"]["estimate"]), stages(clear_run["report"]["ledger"])
    for stage in ("clear/answer", "clear/score"):
        assert guess[stage]["requests"] == real[stage]["requests"] > 0, stage
        assert guess[stage]["prompt_tokens"] == pytest.approx(real[stage]["prompt_tokens"], rel=0.10), stage
    # the answer prompts are built exactly as the build sends them: the same tokens
    assert guess["clear/answer"]["prompt_tokens"] == real["clear/answer"]["prompt_tokens"]
    # a score call generates one token on TGI: the dry run counts what the ledger counts
    assert guess["clear/score"]["completion_tokens"] == real["clear/score"]["completion_tokens"] == real["clear/score"]["requests"]
    assert guess["clear/score"]["usd"] == pytest.approx(real["clear/score"]["usd"], rel=0.10)  # so is its cost


def test_clear_dry_run_without_retrieval_is_an_upper_bound(clear_run, monkeypatch):
    def no_embedder(*args, **kwargs):
        raise AssertionError("dry_run.clear_retrieval: false must not load the retriever")
    monkeypatch.setattr("builders.methods.clear.pool.load_embedder", no_embedder)
    recipe = load_recipe(clear_run["path"], [("dry_run.clear_retrieval", "false")])
    printed = io.StringIO()
    result = dry_run(recipe, progress=False, out=printed)
    score = result["stages"]["clear/score"]
    # pool: the editable rows' 3 positives + 9 negatives; per query min(top_n 20, max_pfn 3, 12 - 1 own positive)
    assert (score["positives"], score["pfns"], score["pfns_exact"]) == (3, 3 * 3, False)
    assert score["prompts"] >= clear_run["score_calls"]
    assert score["prompt_tokens"] >= clear_run["estimate"]["stages"]["clear/score"]["prompt_tokens"]
    assert "upper bound" in printed.getvalue() and "dry_run.clear_retrieval: false" in printed.getvalue()
    assert result["stages"]["clear/answer"] == clear_run["estimate"]["stages"]["clear/answer"]  # needs no retrieval


def test_clear_dry_run_with_dataset_answers_counts_score_tokens_exactly(tmp_path, tgi_stand_in):
    """Answers from a dataset column: no answer stage, and the score prompts (with their answer
    continuation) are counted exactly as the stand-in counts them."""
    from builders.judges.endpoints import make_backend
    from builders.methods.clear.dry_run import plans as clear_plans
    from builders.methods.clear.stages import run
    from builders.recipe import judge_plan
    from builders.rows import Passage, QueryRow

    server = tgi_stand_in(clear_respond)
    recipe = load_recipe(write_recipe(tmp_path, server.url, CLEAR, {}))
    rows = [QueryRow.from_query(r["query"], [Passage.from_text(t) for t in r["pos"]], [Passage.from_text(t) for t in r["neg"]],
                                "nq", extra={"answer": ANSWERS[r["query"]]}) for r in (EIFFEL, HAMLET, PARIS)]
    printed, result = io.StringIO(), {"stages": {}}
    (plan,) = clear_plans(rows, recipe.methods["clear"], judge_plan(recipe)["stage1"], recipe.dry_run, result, printed)
    backend = make_backend(judge_plan(recipe)["stage1"][0])
    actual = run(rows, recipe.methods["clear"], backend=backend, progress=False).ledgers
    assert "clear/answer" not in actual and "clear/answer" not in result["stages"]
    assert (plan.stage, len(plan.prompt_tokens)) == ("clear/score", actual["clear/score"].calls)
    received = sum(1 + len(tokenize(r.body["inputs"])) for r in server.requests if r.path == "/generate")
    assert sum(plan.prompt_tokens) == actual["clear/score"].prompt_tokens == received
    assert "dry_run.answer_tokens" not in printed.getvalue()


def test_arhn_rank_estimate_states_its_assumptions_and_meets_the_ledger(tmp_path, tgi_stand_in):
    """With the shares of the fixture (every query ranked, half its negatives answering) and its
    snippet length, the ranking estimate meets the build's ledger within 10 %."""
    server = tgi_stand_in(arhn_respond)
    # Eiffel: 2 of 4 negatives answer (one snippet is a hallucination), Hamlet 1 of 2 (ARGUANA is never edited)
    dry = {"arhn_rank_share": 1.0, "arhn_answering_share": 0.5, "snippet_tokens": 10}
    path = write_recipe(tmp_path, server.url, {"arhn": ARHN}, dry)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")  # Eiffel, Hamlet
    printed = io.StringIO()
    estimate = dry_run(load_recipe(path), progress=False, out=printed)
    assert not server.requests
    report = build(load_recipe(path), "cmd", progress=False, out=io.StringIO())
    guess, real = stages(estimate["estimate"]), stages(report["ledger"])
    assert guess["arhn/rank"]["requests"] == real["arhn/rank"]["requests"] == 2
    assert guess["arhn/rank"]["prompt_tokens"] == pytest.approx(real["arhn/rank"]["prompt_tokens"], rel=0.10)
    assert guess["arhn/extract"]["prompt_tokens"] == real["arhn/extract"]["prompt_tokens"]  # built as sent
    text = printed.getvalue()
    assert "arhn/rank [stand-in/judge]: ~2 prompts" in text and "not estimated" not in text
    for setting in ("dry_run.arhn_rank_share", "dry_run.arhn_answering_share", "dry_run.snippet_tokens"):
        assert setting in text

    # the default share: fewer ranking calls than queries, said as an estimate
    default = dry_run(load_recipe(path, [("dry_run", "{tokenizer: " + str(tmp_path / "tok") + "}")]), progress=False, out=io.StringIO())
    assert default["stages"]["arhn/rank"]["estimated"] and default["stages"]["arhn/rank"]["prompts"] == round(0.9 * 2)


def test_prompts_over_the_input_limit_count_at_the_limit(clear_run):
    """The build shortens a prompt over the judge's input limit (``builders.judges.shorten``): the
    estimate counts it at the limit, and says how many are over it."""
    answers = clear_run["estimate"]["stages"]["clear/answer"]
    limit = answers["prompt_tokens"] // answers["prompts"]  # the mean: at least one prompt is over it
    recipe = load_recipe(clear_run["path"], [("judges.stage1.max_input_tokens", str(limit)), ("dry_run.clear_retrieval", "false")])
    printed = io.StringIO()
    result = dry_run(recipe, progress=False, out=printed)
    capped = result["stages"]["clear/answer"]
    over = capped["prompts_over_limit"]
    assert capped["input_limit"] == limit and over >= 1
    assert capped["tokens_over_limit"] == answers["prompt_tokens"] - capped["prompt_tokens"] > 0
    assert f"input limit {limit} tokens: {over} of 3 prompts over it would be shortened" in printed.getvalue()
    assert stages(result["estimate"])["clear/answer"]["prompt_tokens"] == capped["prompt_tokens"] <= 3 * limit
