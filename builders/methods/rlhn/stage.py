"""One stage of the RLHN cascade: the prompt, the windows of negatives a prompt shows, the
request, and ``judge_stage`` (every window of some rows through one judge, with the durable
``Annotator``), plus how a row's windows combine into its decision at that stage. The cascade
(``builders.methods.rlhn.cascade``) runs one or two of them."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Literal

from builders.judges.endpoints.base import Backend, Constraint, GenerateRequest
from builders.judges.shorten import PromptFitter, too_long_message
from builders.methods.base import never_edits, subsets_tuple
from builders.methods.rlhn.refine import Decision, RefineSettings, row_key
from builders.methods.rlhn.verdict import ParseFailure, Verdict, parse_verdict, verdict_regex
from builders.rows import Passage, QueryRow, md5

SYSTEM = (
    "You check search training data. You read a query, the passage(s) labelled as its answer, "
    "and candidate passages that were labelled as NOT answering it, and you find the candidates "
    "that were labelled wrongly."
)

PROMPT = """Query: {query}

Ground truth (passages known to answer the query):
{positives}

Candidates (labelled as not answering the query):
{negatives}

Go through the candidates one at a time. Inside <thinking> … </thinking> write a short note per candidate on whether it actually answers the query. Then close with exactly one verdict in this form:
<verdict><better> [Doc (i), …] </better>, <worse> [Doc (j), …] </worse></verdict>
- <better>: candidates that answer the query as well as the ground truth or better.
- <worse>: candidates that are relevant and partly answer the query, but less well than the ground truth.
- A candidate that does not answer the query goes in neither list. Write [] for an empty list."""

PROMPT_SCIDOCSRR = """Paper title (the query): {query}

Ground truth (papers known to be related to it, e.g. cited by it):
{positives}

Candidates (labelled as NOT related):
{negatives}

Go through the candidates one at a time. Inside <thinking> … </thinking> write a short note per candidate on whether it is as closely related to the titled paper as the ground truth papers (same problem, method or finding — not merely the same broad field). Then close with exactly one verdict in this form:
<verdict><better> [Doc (i), …] </better>, <worse> [Doc (j), …] </worse></verdict>
- <better>: candidates at least as closely related as the ground truth.
- <worse>: candidates that are related, but less closely than the ground truth.
- A candidate that is not related goes in neither list. Write [] for an empty list."""


def prompt_version(variant: str) -> str:
    text = SYSTEM + (PROMPT_SCIDOCSRR if variant == "scidocsrr" else PROMPT)
    return f"rlhn-{variant}-v1-{md5(text)[:8]}"


@dataclass
class RlhnSettings:
    negatives_per_prompt: int | None = None  # None: all negatives in one prompt (the paper)
    max_prompts_per_query: int | None = None  # None: every window is judged
    max_passage_words: int | None = None  # truncate passages in the prompt (None: full text)
    escalate_unparsed: bool = True  # stage 2 also judges queries stage 1 could not judge
    constrained: Literal["auto", "off"] = "auto"  # regex-constrained verdicts where the backend supports it
    reason_max_chars: int = 400  # cap on the reasoning under constrained decoding
    max_new_tokens: int = 2048
    temperature: float = 0.1
    parse_retries: int = 1  # extra calls when the answer does not parse
    concurrency: int | None = None  # None: the endpoint's own setting
    overlap_stages: bool = True  # stage 2 asks about a row as soon as stage 1 escalates it (another remote judge)
    scidocsrr_subsets: list[str] = field(default_factory=lambda: ["scidocsrr"])
    never_edit_subsets: tuple[str, ...] = ("arguana",)  # not judged, copied unchanged (``never_edits``)
    refine: RefineSettings = field(default_factory=RefineSettings)

    def __post_init__(self):
        if self.constrained not in ("auto", "off"):
            hint = " ('never' is now spelled 'off', as for arhn.constrained)" if self.constrained == "never" else ""
            raise ValueError(f"rlhn.constrained must be 'auto' or 'off', got {self.constrained!r}{hint}")
        self.never_edit_subsets = subsets_tuple(self.never_edit_subsets)

    def judges_row(self, row: QueryRow) -> bool:
        """Whether the cascade asks a judge about ``row``: it has negatives and may be edited."""
        return bool(row.negative_passages) and not never_edits(row.subset, self.never_edit_subsets)


@dataclass
class Window:
    """One prompt's worth of negatives of one row."""

    row: QueryRow
    start: int  # 0-based position of the window's first negative in the row
    negatives: tuple[Passage, ...]

    @cached_property
    def key(self) -> str:
        """Store key: the row and exactly what the judge is shown."""
        ids = ",".join(p.docid for p in self.row.positive_passages) + "|" + ",".join(p.docid for p in self.negatives)
        return f"{self.row.subset}/{self.row.query_id}/{self.start}/{md5(ids)[:12]}"


_SPACES_BUT_SPACE = tuple(c for c in map(chr, range(128)) if c.isspace() and c != " ")  # what str.split() also splits on


def _collapsed(text: str) -> bool:
    """``text`` is already what ``" ".join(text.split())`` makes of it: checked with a few
    substring scans (ASCII text only), ~5x cheaper than splitting and joining a passage."""
    return (text.isascii() and "  " not in text and text[:1] != " " and text[-1:] != " "
            and not any(c in text for c in _SPACES_BUT_SPACE))


def _clip(text: str, max_words: int | None) -> str:
    """Whitespace collapsed to single spaces; at most ``max_words`` words, then " …"."""
    if max_words is None:
        return text if _collapsed(text) else " ".join(text.split())
    words = text.split() or [""]  # (an empty text is one empty word, as before)
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def variant_of(row: QueryRow, s: RlhnSettings) -> str:
    return "scidocsrr" if row.subset in s.scidocsrr_subsets else "default"


def shown_negatives(window: Window, s: RlhnSettings) -> tuple[str, ...]:
    """The negatives' text as the prompt shows it (whitespace collapsed, ``max_passage_words``)."""
    return tuple(_clip(p.full_text, s.max_passage_words) for p in window.negatives)


def render_messages(window: Window, s: RlhnSettings, negatives: tuple[str, ...] | None = None) -> tuple[dict, ...]:
    """The prompt of ``window``; ``negatives``: their text as shown (default ``shown_negatives``;
    ``builders.judges.shorten`` passes them cut to fit the judge), inserted verbatim."""
    template = PROMPT_SCIDOCSRR if variant_of(window.row, s) == "scidocsrr" else PROMPT
    positives = "\n".join(f"Ground truth ({i}): {_clip(p.full_text, s.max_passage_words)}" for i, p in enumerate(window.row.positive_passages, 1))
    shown = shown_negatives(window, s) if negatives is None else negatives
    negatives = "\n".join(f"Doc ({i}): {text}" for i, text in enumerate(shown, 1))
    user = template.format(query=" ".join(window.row.query.split()), positives=positives, negatives=negatives)
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": user})


def windows_of(row: QueryRow, s: RlhnSettings) -> list[Window]:
    negs = row.negative_passages
    if not negs:
        return []
    size = s.negatives_per_prompt or len(negs)
    out = [Window(row, i, negs[i : i + size]) for i in range(0, len(negs), size)]
    return out if s.max_prompts_per_query is None else out[: s.max_prompts_per_query]


def make_request(window: Window, backend: Backend, s: RlhnSettings, negatives: tuple[str, ...] | None = None) -> GenerateRequest:
    constraint = None
    if s.constrained == "auto" and "regex" in backend.supports_constraint:
        constraint = Constraint(kind="regex", value=verdict_regex(len(window.negatives), s.reason_max_chars))
    return GenerateRequest(
        messages=render_messages(window, s, negatives),
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        seed=0,
        constraint=constraint,
    )


YIELD_EVERY = 64  # rows or windows handled between two turns of the event loop


async def breathe(i: int) -> None:
    """Let the event loop run every ``YIELD_EVERY`` items of a long loop: in a streamed build the
    next chunk's calls are in flight meanwhile, and an answer that waits for the loop idles its slot."""
    if i % YIELD_EVERY == YIELD_EVERY - 1:
        await asyncio.sleep(0)


@dataclass
class CallOutcome:
    """What the stage runner hands back per window (from the Annotator/store)."""

    text: str | None
    error: str | None = None  # the final error when the call never succeeded
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    passages_cut: int = 0  # negatives shortened to fit the judge's input limit (builders.judges.shorten)
    tokens_removed: int = 0
    too_long: bool = False  # not sent: does not fit even with its negatives cut to the floor


@dataclass
class Stage:
    name: str  # "stage1" | "stage2"
    backend: Backend


def _window_result(window: Window, outcome: CallOutcome | None) -> Verdict | ParseFailure:
    if outcome is None or outcome.text is None:
        return ParseFailure(f"judge call failed: {outcome.error if outcome else 'no outcome'}")
    return parse_verdict(outcome.text, len(window.negatives))


def judgment_row(window: Window, stage: Stage, version: str, outcome: CallOutcome | None, result) -> dict:
    ok = isinstance(result, Verdict)
    status = "ok" if ok else ("call_failed" if outcome is None or outcome.text is None else "parse_failure")
    better = list(result.better) if ok else []
    worse = list(result.worse) if ok else []
    return {
        "query_id": window.row.query_id,
        "subset": window.row.subset,
        "stage": stage.name,
        "judge_model": stage.backend.model_id,
        "prompt_version": version,
        "window_start": window.start,
        "window_docids": [p.docid for p in window.negatives],
        "status": status,
        "reason": None if ok else result.reason,
        "raw_response": outcome.text if outcome else None,
        "better": better,
        "worse": worse,
        "better_docids": [window.negatives[i - 1].docid for i in better],
        "worse_docids": [window.negatives[i - 1].docid for i in worse],
        "finish_reason": outcome.finish_reason if outcome else None,
        "prompt_tokens": outcome.prompt_tokens if outcome else None,
        "completion_tokens": outcome.completion_tokens if outcome else None,
        "attempts": outcome.attempts if outcome else 0,
        "passages_shortened": outcome.passages_cut if outcome else 0,
        "prompt_tokens_removed": outcome.tokens_removed if outcome else 0,
    }


def combine(window_results: list[tuple[Window, Verdict | ParseFailure, CallOutcome | None]], stage: str) -> Decision:
    """A row's decision at one stage from its windows: any failed window makes the row unjudged
    (its false negatives might sit exactly there)."""
    if not window_results:
        return Decision("not_judged", stage=stage)
    fns: list[str] = []
    for window, result, outcome in window_results:
        if isinstance(result, ParseFailure):
            return Decision("failed" if outcome is None or outcome.text is None else "unparsed", stage=stage)
        fns.extend(window.negatives[i - 1].docid for i in result.false_negatives)
    order = {p.docid: i for i, p in enumerate(window_results[0][0].row.negative_passages)}
    fns = sorted(set(fns), key=lambda d: order[d])
    return Decision("flagged" if fns else "clean", tuple(fns), stage=stage)


# ---------------------------------------------------------------------------- the cascade


def _outcome_of(judgment) -> CallOutcome:
    if judgment.status == "failed":
        return CallOutcome(None, error=f"{judgment.error_kind}: {judgment.error_message}", attempts=judgment.attempts)
    return CallOutcome(judgment.text, None, judgment.finish_reason, judgment.prompt_tokens, judgment.completion_tokens, judgment.attempts)


async def judge_stage(stage: Stage, rows: list[QueryRow], s: RlhnSettings, store, retry=None, progress: bool = True,
                      on_window=None) -> tuple[dict[str, list], list[dict], dict]:
    """Ask ``stage``'s judge about every window of ``rows``.

    -> (row_key -> [(window, Verdict | ParseFailure, CallOutcome)], judgment rows, ledgers by group).
    One ``Annotator`` per (prompt version, window size): its ``check`` is "the verdict parses
    for that many negatives". ``on_window(window, verdict, outcome)``: called for each window as
    soon as its outcome is final (the overlapped cascade starts stage 2 from it)."""
    from builders.judges.annotate import Annotator, RetryPolicy

    retry = retry or RetryPolicy(parse_retries=s.parse_retries)
    fitter = PromptFitter(stage.backend)
    groups: dict[tuple[str, int], list[Window]] = defaultdict(list)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        await breathe(i)
        if row_key(row) in seen:  # an exact duplicate row shares the first one's judgment
            continue
        seen.add(row_key(row))
        for w in windows_of(row, s):
            groups[(prompt_version(variant_of(row, s)), len(w.negatives))].append(w)
    per_row: dict[str, list] = defaultdict(list)
    judgments: list[dict] = []
    ledgers: dict[str, dict] = {}
    for (version, n), windows in sorted(groups.items()):
        annotator = Annotator(
            stage.backend,
            store,
            stage=f"rlhn/{stage.name}",
            prompt_version=version,
            concurrency=s.concurrency,
            retry=retry,
            check=lambda text, n=n: isinstance(parse_verdict(text, n), Verdict),
            progress=progress,
        )
        fits = await fitter.fit_all(
            (lambda w=w: fitter.fit(lambda texts: render_messages(w, s, texts), shown_negatives(w, s),
                                    max_new_tokens=s.max_new_tokens)) for w in windows)
        finished: dict[str, tuple[Verdict | ParseFailure, CallOutcome]] = {}  # window key -> its result
        sent = []
        for w, fit in zip(windows, fits):
            if fit.texts is None:  # too long even cut to the floor: not sent, a failed judgment
                outcome = CallOutcome(None, error=too_long_message(fit), attempts=0, too_long=True)
                finished[w.key] = (_window_result(w, outcome), outcome)
                if on_window is not None:
                    on_window(w, *finished[w.key])
            else:
                sent.append((w, fit))
        by_key = {w.key: (w, fit) for w, fit in sent}

        def answered(o, by_key=by_key, finished=finished) -> None:
            w, fit = by_key[o.key]
            outcome = _outcome_of(o.judgment)
            outcome.passages_cut, outcome.tokens_removed = fit.passages_cut, fit.tokens_removed
            finished[o.key] = (_window_result(w, outcome), outcome)
            if on_window is not None:
                on_window(w, *finished[o.key])

        # requests are made when a worker takes them (the prompt is rendered just before it is sent)
        result = await annotator.run([(w.key, partial(make_request, w, stage.backend, s, fit.texts)) for w, fit in sent],
                                     on_outcome=answered)
        ledgers[f"{version}/n={n}"] = result.ledger.as_dict()
        for i, w in enumerate(windows):
            await breathe(i)
            verdict, outcome = finished[w.key]
            per_row[row_key(w.row)].append((w, verdict, outcome))
            judgments.append(judgment_row(w, stage, version, outcome, verdict))
    for entries in per_row.values():
        entries.sort(key=lambda e: e[0].start)
    judgments.sort(key=lambda j: (j["subset"], j["query_id"], j["window_start"]))
    return per_row, judgments, ledgers
