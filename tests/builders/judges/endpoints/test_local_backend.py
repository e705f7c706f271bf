"""Local backend and regex-constrained decoding on a tiny random Qwen2 model built here."""

import asyncio
import sys
from pathlib import Path

import pytest
import regex
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_model  # noqa: E402

from builders.judges.endpoints import make_backend  # noqa: E402
from builders.judges.endpoints.base import Constraint, GenerateRequest, ScoreRequest  # noqa: E402
from builders.judges.endpoints.constrained import candidate_scores, generate_with_regex  # noqa: E402
from builders.judges.endpoints.spec import EndpointSpec  # noqa: E402

VERDICT = (r"<verdict><better>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</better>"
           r"<worse>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</worse></verdict>")
MESSAGES = ({"role": "system", "content": "You judge passages."}, {"role": "user", "content": "Is Doc (1) relevant?"})


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))
    return make_backend(EndpointSpec(kind="local", model=str(folder)))


def run(coroutine):
    return asyncio.run(coroutine)


def test_model_loads_on_first_use_not_when_the_backend_is_made(tmp_path):
    folder = build_tiny_model(tmp_path / "lazy", seed=1)
    backend = make_backend(EndpointSpec(kind="local", model=str(folder)))
    assert not backend.loaded and backend.model_id == str(folder)  # a fully stored rerun needs nothing more
    out = run(backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=2, temperature=0)))
    assert backend.loaded and out.completion_tokens >= 1
    twin = make_backend(EndpointSpec(kind="local", model=str(folder)))  # e.g. RLHN stage 2 on the same weights
    assert twin.model is backend.model  # one loaded copy per process


def test_unconstrained_generation_counts_tokens(backend):
    out = run(backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=7, temperature=0)))
    prompt = backend.render(MESSAGES)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert out.prompt_tokens == backend.count_tokens(prompt)
    assert out.finish_reason in ("length", "eos_token") and 1 <= out.completion_tokens <= 7
    assert backend.concurrency == 8 and backend.supports_constraint == frozenset({"regex"})


@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (0.8, 1), (0.8, 2)])
def test_regex_constraint_gives_a_full_match_ending_on_eos(backend, temperature, seed):
    request = GenerateRequest(messages=MESSAGES, max_new_tokens=200, temperature=temperature, seed=seed,
                              constraint=Constraint("regex", VERDICT))
    out = run(backend.generate(request))
    assert regex.fullmatch(VERDICT, out.text), out.text
    assert out.finish_reason == "eos_token" and out.meta["constraint"] == "enforced"
    assert run(backend.generate(request)).text == out.text  # seeded: reproducible


def test_step_cap_ends_with_length_and_a_partial_match(backend):
    out = run(backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=3, temperature=0,
                                               constraint=Constraint("regex", VERDICT))))
    assert out.finish_reason == "length" and out.completion_tokens == 3
    assert regex.fullmatch(VERDICT, out.text, partial=True) and not regex.fullmatch(VERDICT, out.text)


def test_permissive_regex_equals_plain_greedy_decoding(backend):
    """Equivalence: with a regex that accepts everything, constrained greedy == model.generate greedy."""
    model, tokenizer = backend.model, backend.tokenizer
    input_ids = tokenizer(backend.render(MESSAGES), add_special_tokens=False, return_tensors="pt").input_ids
    constrained = generate_with_regex(model, tokenizer, input_ids, r".*", max_new_tokens=12, temperature=0)
    with torch.no_grad():
        plain = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, input_ids.shape[1]:].tolist()
    assert plain[: len(constrained.token_ids)] == constrained.token_ids
    assert constrained.finish_reason == ("length" if len(constrained.token_ids) == 12 else "eos_token")


def test_gumbel_first_acceptable_samples_the_restricted_softmax():
    """Equivalence: first acceptable token in Gumbel-perturbed order ~ softmax(logits / T) over acceptable tokens."""
    logits, temperature, acceptable = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0]), 0.7, [1, 2, 4]
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = torch.zeros(6)
    for _ in range(draws):
        order = torch.argsort(candidate_scores(logits, temperature, generator), descending=True).tolist()
        counts[next(i for i in order if i in acceptable)] += 1
    expected = torch.zeros(6)
    expected[acceptable] = torch.softmax(logits[acceptable] / temperature, dim=0)
    assert torch.allclose(counts / draws, expected, atol=0.015)
    assert torch.equal(candidate_scores(logits, 0.0, generator), logits)  # greedy: plain logits


def test_score_is_the_exact_log_softmax(backend):
    continuation = "Doc (1), Doc (2)"
    scored = run(backend.score(ScoreRequest(messages=MESSAGES, continuation=continuation)))
    scores = scored.tokens
    assert "".join(s.text for s in scores) == continuation
    assert [continuation[s.start:s.end] for s in scores] == [s.text for s in scores]
    # independent path: the model's own cross-entropy over the continuation tokens
    tokenizer, model = backend.tokenizer, backend.model
    prompt = backend.render(MESSAGES)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    all_ids = tokenizer(prompt + continuation, add_special_tokens=False).input_ids
    assert all_ids[: len(prompt_ids)] == prompt_ids  # the template ends on a token boundary
    labels = torch.tensor([[-100] * len(prompt_ids) + all_ids[len(prompt_ids):]])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([all_ids]), labels=labels).loss.item()
    n = len(all_ids) - len(prompt_ids)
    assert len(scores) == n
    assert sum(s.logprob for s in scores) == pytest.approx(-loss * n, abs=1e-4)
    assert (scored.prompt_tokens, scored.completion_tokens) == (len(all_ids), 0)  # one forward pass, nothing generated


def test_regex_constraint_on_a_tiny_llama(tmp_path):
    backend = make_backend(EndpointSpec(kind="local", model=str(build_tiny_model(tmp_path / "llama", arch="llama", seed=3))))
    assert type(backend.model).__name__ == "LlamaForCausalLM"
    out = run(backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=200, temperature=0,
                                               constraint=Constraint("regex", VERDICT))))
    assert regex.fullmatch(VERDICT, out.text) and out.finish_reason == "eos_token"


@pytest.mark.slow
def test_bundled_smollm2_gguf_follows_the_verdict_regex():
    backend = make_backend(EndpointSpec(kind="local"))
    messages = ({"role": "user", "content": "Query: capital of France. Doc (1): Paris is the capital of France. "
                 "Doc (2): Bananas are yellow. Which docs answer the query better than the positive?"},)
    out = run(backend.generate(GenerateRequest(messages=messages, max_new_tokens=60, temperature=0,
                                               constraint=Constraint("regex", VERDICT))))
    assert regex.fullmatch(VERDICT, out.text), out.text
    plain = run(backend.generate(GenerateRequest(messages=({"role": "user", "content": "What is the capital of France?"},),
                                                 max_new_tokens=20, temperature=0)))
    assert "Paris" in plain.text
