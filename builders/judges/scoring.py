"""Many ``Backend.score`` calls (log-probabilities of GIVEN continuations) with the same
guarantees ``builders.judges.annotate.Annotator`` gives generations: a durable store, no call paid
twice, bounded retries with backoff, a concurrency cap, a progress bar.

    scored = await score_all(backend, store, {key: ScoreRequest(...)}, stage="clear/score",
                             prompt_version="clear-score-v1", concurrency=8, retry=RetryPolicy())
    scored.outcomes[key].tokens  # list[TokenScore], or None when the call failed (.judgment says why)
    scored.ledger  # builders.judges.annotate.Ledger: calls made in this run, answers read from the store, wall time

The ledger counts like the Annotator's: ``calls`` is every backend attempt (retries included),
``cached`` the keys answered from the store, ``prompt_tokens`` / ``completion_tokens`` what the
calls of THIS run cost (``Backend.score``'s ``Scored``: the whole prompt is prefilled). The
stored judgment keeps its call's token counts (and the backend's ``meta``), so the card's
ledger, read from the store, counts them on a resume too.

The stored ``text`` of a scored key is the token list as JSON ``[[text, logprob, start, end], ...]``.

An ``EndpointError`` that the client raised itself (no HTTP status) and that is not
retryable says the backend cannot score at all (a TGI server without
``--enable-prefill-logprobs``, llama.cpp's shifted echo logprobs, a backend without
``score``): ``CannotScore`` is raised at once and the remaining calls are cancelled, instead
of paying for a run that can only fail. Other failures are stored per key and returned.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from builders.judges.annotate import Ledger, RetryPolicy, call_with_retries
from builders.judges.clocks import stage_clock
from builders.judges.endpoints.base import Backend, EndpointError, Scored, ScoreRequest, TokenScore
from builders.judges.store import Judgment, JudgmentStore, request_sha


class CannotScore(RuntimeError):
    """The backend cannot give log-probabilities of given continuations."""


@dataclass
class ScoreOutcome:
    key: str
    tokens: list[TokenScore] | None  # None: failed (see judgment.error_kind / error_message)
    judgment: Judgment
    paid: bool  # False: read from the store, no call made in this run


@dataclass
class ScoreResult:
    outcomes: dict[str, ScoreOutcome]  # in the order of the items
    ledger: Ledger


def tokens_to_json(tokens: list[TokenScore]) -> str:
    return json.dumps([[t.text, t.logprob, t.start, t.end] for t in tokens])


def tokens_from_json(text: str) -> list[TokenScore]:
    return [TokenScore(t, float(lp), int(a), int(b)) for t, lp, a, b in json.loads(text)]


async def _score_one(backend: Backend, request: ScoreRequest, retry: RetryPolicy, rng: random.Random, ledger: Ledger,
                     stage: str) -> tuple[Scored | EndpointError, int]:
    tally = [0]
    try:
        return await call_with_retries(lambda: backend.score(request), retry, rng, ledger, tally, stage=stage), tally[0]
    except EndpointError as error:
        if error.status is None and not error.retryable:
            raise CannotScore(f"judge {backend.model_id} cannot score given answers: {error.message}") from error
        return error, tally[0]


async def score_all(backend: Backend, store: JudgmentStore, items: dict[str, ScoreRequest], *, stage: str,
                    prompt_version: str, concurrency: int | None = None, retry: RetryPolicy | None = None,
                    seed: int | None = 0, progress: bool = True) -> ScoreResult:
    """Score every item; answers already final in the store (same request) are not asked again."""
    with stage_clock(stage):
        return await _score_all(backend, store, items, stage=stage, prompt_version=prompt_version,
                                concurrency=concurrency, retry=retry, seed=seed, progress=progress)


async def _score_all(backend: Backend, store: JudgmentStore, items: dict[str, ScoreRequest], *, stage: str,
                     prompt_version: str, concurrency: int | None, retry: RetryPolicy | None, seed: int | None,
                     progress: bool) -> ScoreResult:
    started = time.monotonic()
    retry = retry or RetryPolicy()
    rng = random.Random(seed)
    model = backend.model_id
    ledger = Ledger(items=len(items))
    out: dict[str, ScoreOutcome] = {}
    todo = []
    for key, request in items.items():
        stored = store.get(stage, model, prompt_version, key)
        if stored is not None and stored.is_final and stored.request_sha == request_sha(request):
            out[key] = ScoreOutcome(key, tokens_from_json(stored.text) if stored.status == "ok" else None, stored, paid=False)
            ledger.cached += 1
        else:
            todo.append(key)
    semaphore = asyncio.Semaphore(concurrency or backend.concurrency)
    stopped = asyncio.Event()  # set on CannotScore: queued calls are not sent

    async def one(key: str) -> None:
        async with semaphore:
            if stopped.is_set():
                return
            try:
                answer, attempts = await _score_one(backend, items[key], retry, rng, ledger, stage)
            except CannotScore:
                stopped.set()
                raise
        base = dict(stage=stage, judge_model=model, prompt_version=prompt_version, key=key,
                    request_sha=request_sha(items[key]), attempts=attempts)
        if isinstance(answer, EndpointError):
            judgment = Judgment(**base, status="failed", error_kind=answer.kind, error_message=answer.message[:2000],
                                retryable=answer.retryable, meta={"status": answer.status})
            tokens = None
        else:
            judgment = Judgment(**base, status="ok", text=tokens_to_json(answer.tokens), prompt_tokens=answer.prompt_tokens,
                                completion_tokens=answer.completion_tokens, meta=dict(answer.meta))
            tokens = answer.tokens
        store.put(judgment)  # durable before it counts as done
        out[key] = ScoreOutcome(key, tokens, judgment, paid=True)
        if tokens is None:
            ledger.failed += 1
            ledger.failures[judgment.error_kind] += 1
        else:
            ledger.ok += 1

    tasks = [asyncio.ensure_future(one(key)) for key in todo]
    bar = tqdm(total=len(items), initial=ledger.cached, desc=f"{stage} [{model}]", unit="q",
               disable=not progress or not tasks, dynamic_ncols=True)
    try:
        for task in asyncio.as_completed(tasks):
            await task
            bar.update(1)
    finally:
        bar.close()
        for task in tasks:
            task.cancel()
        ledger.wall_s = time.monotonic() - started
    return ScoreResult({key: out[key] for key in items}, ledger)
