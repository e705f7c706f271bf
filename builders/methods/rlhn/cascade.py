"""RLHN: a cascade of LLM judges relabels false negatives among mined hard negatives.

Stage 1 (a cheap judge) sees every query: the question, its labelled positive(s) as ground
truth, and the hard negatives as ``Doc (1)..Doc (N)`` in stored order; it reasons and answers
in the published verdict protocol (``builders.methods.rlhn.verdict``). A query is flagged when its verdict
names any negative. Stage 2 (a strong judge) re-judges only the flagged queries (and, with
``escalate_unparsed``, the ones stage 1 could not judge); its verdict is final for them.
The final decisions feed the techniques in ``builders.methods.rlhn.refine``.

Long negative lists can be judged in windows of ``negatives_per_prompt`` (each window numbered
from ``Doc (1)`` again and mapped back to stored positions); ``max_prompts_per_query`` caps the
windows (the rest of the negatives stay as they are, counted as ``negatives_not_judged``).

When stage 2 is another remote judge, it runs while stage 1 still asks (``judge_overlapped``):
a row goes to stage 2 as soon as stage 1 escalates it; the result is that of the stages one after
the other. One stage's prompts, windows and runner are in ``builders.methods.rlhn.stage``.

Every call goes through ``builders.judges.annotate.Annotator`` (durable store, retries, parse-retries,
no call paid twice). A verdict that cannot be parsed is never "no false negative": the query
is marked ``unparsed`` and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

from builders.methods.base import JudgeInfo, MethodResult, judge_kind, ledger_of, never_edits
from builders.methods.rlhn.refine import Decision, refine, row_key
from builders.methods.rlhn.stage import (
    RlhnSettings,
    Stage,
    Window,
    breathe,
    combine,
    judge_stage,
    prompt_version,
    variant_of,
    windows_of,
)
from builders.methods.rlhn.verdict import ParseFailure
from builders.rows import QueryRow

# ---------------------------------------------------------------------------- stage 2 while stage 1 asks

STAGE2_BATCH_ROWS = 32  # escalated rows that start a stage-2 run at once
STAGE2_LINGER_S = 0.25  # else the rows waiting this long start one


def overlaps(stages: list[Stage], s: RlhnSettings) -> bool:
    """Whether stage 2 is asked while stage 1 still is: ``overlap_stages`` on and stage 2 a remote
    judge of its own (a ``Fleet`` queues every run's calls for its endpoints' slots, so several
    runs at once never exceed the servers' limits). On the same backend there is nothing to gain
    (the two stages share its slots) and the stages run one after the other."""
    from builders.judges.fleet import Fleet

    return s.overlap_stages and isinstance(stages[1].backend, Fleet) and stages[1].backend is not stages[0].backend


def _merge_ledgers(runs: list[dict[str, dict]], wall_s: float) -> dict[str, dict]:
    """Stage 2's ledgers by group over its runs (summed with ``ledger_of``; ``wall_s``: the span
    from the first run's start to the last one's end, the runs overlap)."""
    groups = dict.fromkeys(group for ledgers in runs for group in ledgers)
    merged = {group: ledger_of([ledgers[group] for ledgers in runs if group in ledgers]).as_dict() for group in groups}
    for led in merged.values():
        led["wall_s"] = round(wall_s, 3)
    return merged


async def judge_overlapped(stages: list[Stage], to_judge: list[QueryRow], s: RlhnSettings, store, escalate: tuple[str, ...],
                           retry=None, progress: bool = True) -> list[tuple[dict, list[dict], dict]]:
    """Both stages of the cascade at once: a row goes to stage 2 as soon as all its stage-1
    windows are answered and their decision escalates it (``escalate``), in runs of up to
    ``STAGE2_BATCH_ROWS`` rows (or whatever waited ``STAGE2_LINGER_S``), while stage 1 goes on.
    -> ``judge_stage``'s result for each stage, exactly what the stages one after the other give:
    the escalated rows, the answers and their store keys are the same, only the order in which
    the calls go out differs; per-row results and judgment rows are put back in row order. A
    killed build resumes from the store as before (both stages' answers are committed as they
    arrive; a resumed stage 1 reads its answers back and escalates the same rows)."""
    from tqdm.auto import tqdm

    first, second = stages
    representative: dict[str, QueryRow] = {}
    windows: dict[str, int] = {}  # row key -> its windows
    for row in to_judge:
        key = row_key(row)
        if key not in representative:
            representative[key] = row
            windows[key] = len(windows_of(row, s))
    waiting = dict(windows)  # row key -> stage-1 windows not answered yet
    answered: dict[str, list] = defaultdict(list)
    queue: list[QueryRow] = []
    queued_at = [0.0]
    wake = asyncio.Event()
    first_done = [False]
    bar = tqdm(total=0, desc=f"rlhn/{second.name} [{second.backend.model_id}]", unit="q", disable=not progress, dynamic_ncols=True)

    def stage1_window(window: Window, verdict, outcome) -> None:
        key = row_key(window.row)
        answered[key].append((window, verdict, outcome))
        waiting[key] -= 1
        if waiting[key]:
            return
        entries = sorted(answered.pop(key), key=lambda e: e[0].start)
        if combine(entries, first.name).status in escalate:
            if not queue:
                queued_at[0] = time.monotonic()
            queue.append(representative[key])
            bar.total += windows[key]
            bar.refresh()
            if len(queue) in (1, STAGE2_BATCH_ROWS):  # the first one starts the linger; a full batch goes at once
                wake.set()

    def stage2_window(window: Window, verdict, outcome) -> None:
        bar.update(1)

    runs: list[asyncio.Task] = []
    started = time.monotonic()

    async def feed() -> None:
        while True:
            wake.clear()
            lingered = time.monotonic() - queued_at[0] >= STAGE2_LINGER_S
            if queue and (first_done[0] or len(queue) >= STAGE2_BATCH_ROWS or lingered):
                batch = queue[:]
                queue.clear()
                runs.append(asyncio.create_task(judge_stage(second, batch, s, store, retry, False, stage2_window)))
                continue
            if first_done[0]:
                return
            timeout = STAGE2_LINGER_S - (time.monotonic() - queued_at[0]) if queue else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    feeder = asyncio.create_task(feed())
    try:
        try:
            one = await judge_stage(first, to_judge, s, store, retry, progress, stage1_window)
        finally:
            first_done[0] = True
            wake.set()
        await feeder
        done = await asyncio.gather(*runs)
    except BaseException:
        for task in [feeder, *runs]:
            task.cancel()
        await asyncio.gather(feeder, *runs, return_exceptions=True)
        raise
    finally:
        bar.close()
    per_row: dict[str, list] = defaultdict(list)
    judgments: list[dict] = []
    for rows_of, judged, _ in done:
        for key, entries in rows_of.items():
            per_row[key].extend(entries)
        judgments.extend(judged)
    judgments.sort(key=lambda j: (j["subset"], j["query_id"], j["window_start"]))
    two = (per_row, judgments, _merge_ledgers([led for _, _, led in done], time.monotonic() - started))
    return [one, two]


async def _count_stage(stats, rows: list[QueryRow], per_row: dict, decisions: dict[str, Decision], stage: str) -> None:
    paid: set[str] = set()
    for i, row in enumerate(rows):
        await breathe(i)
        c = stats[row.subset]
        for always in (f"flagged_{stage}", f"unparsed_{stage}", f"failed_{stage}", "parse_failures"):
            c[always] += 0  # shown as 0 in the card rather than missing
        c[f"judged_{stage}"] += 1
        key = row_key(row)
        status = decisions[key].status
        c[{"flagged": f"flagged_{stage}", "clean": f"clean_{stage}", "unparsed": f"unparsed_{stage}", "failed": f"failed_{stage}"}.get(status, f"not_judged_{stage}")] += 1
        if key in paid:  # a duplicate row: its judgment was counted once already
            continue
        paid.add(key)
        for _, verdict, outcome in per_row.get(key, []):
            c[f"judge_calls_{stage}"] += outcome.attempts if outcome else 0
            c[f"prompt_tokens_{stage}"] += (outcome.prompt_tokens or 0) if outcome else 0
            c[f"completion_tokens_{stage}"] += (outcome.completion_tokens or 0) if outcome else 0
            if isinstance(verdict, ParseFailure) and outcome is not None and outcome.text is not None:
                c["parse_failures"] += 1
            if outcome is not None and outcome.passages_cut:  # builders.judges.shorten: counted only when it happened
                c[f"prompts_shortened_{stage}"] += 1
                c[f"passages_shortened_{stage}"] += outcome.passages_cut
                c[f"prompt_tokens_removed_{stage}"] += outcome.tokens_removed
            if outcome is not None and outcome.too_long:
                c[f"prompts_too_long_{stage}"] += 1


async def run_rlhn(rows: list[QueryRow], stages: list[Stage], s: RlhnSettings, store, retry=None, progress: bool = True) -> tuple[MethodResult, dict]:
    """The whole cascade -> (MethodResult with configs default/remove/hn_remove/rlhn, ledgers)."""
    if not 1 <= len(stages) <= 2:
        raise ValueError("RLHN runs one or two judge stages")
    result = MethodResult(name="rlhn", configs={})
    stats = result.stats
    for i, row in enumerate(rows):
        await breathe(i)
        c = stats[row.subset]
        c["rows_in"] += 1
        c["positives_in"] += len(row.positive_passages)
        c["negatives_in"] += len(row.negative_passages)
        if not never_edits(row.subset, s.never_edit_subsets):
            judged = sum(len(w.negatives) for w in windows_of(row, s))
            c["negatives_not_judged"] += len(row.negative_passages) - judged
    to_judge = [r for r in rows if s.judges_row(r)]
    versions = sorted({prompt_version(variant_of(r, s)) for r in to_judge}) or [prompt_version("default")]
    final: dict[str, Decision] = {}
    ledgers: dict[str, dict] = {}
    judgments: list[dict] = []
    escalate = ("flagged", "unparsed", "failed") if s.escalate_unparsed else ("flagged",)
    for stage in stages:
        for v in versions:
            result.judges.append(JudgeInfo(stage=f"rlhn/{stage.name}", model=stage.backend.model_id, prompt_version=v, backend=judge_kind(stage.backend)))
    overlapped = None
    if len(stages) == 2 and overlaps(stages, s):
        overlapped = await judge_overlapped(stages, to_judge, s, store, escalate, retry, progress)
    current = to_judge
    for i, stage in enumerate(stages):
        if overlapped is not None:
            per_row, stage_judgments, stage_ledgers = overlapped[i]
        else:
            per_row, stage_judgments, stage_ledgers = await judge_stage(stage, current, s, store, retry, progress)
        judgments.extend(stage_judgments)
        ledgers[stage.name] = stage_ledgers
        decisions = {}
        for j, r in enumerate(current):
            await breathe(j)
            key = row_key(r)
            decisions[key] = combine(per_row.get(key, []), stage.name)
        await _count_stage(stats, current, per_row, decisions, stage.name)
        final.update(decisions)
        if i + 1 < len(stages):
            current = [r for r in current if decisions[row_key(r)].status in escalate]
    # on a worker thread: the event loop goes on sending the next chunk's calls meanwhile
    configs, refine_stats = await asyncio.to_thread(refine, rows, final, s.refine, s.never_edit_subsets)
    for subset, counters in refine_stats.items():
        stats[subset].update(counters)
    result.configs = configs
    result.judgments = judgments
    return result, ledgers


def run_rlhn_sync(rows, stages, s, store, retry=None, progress: bool = True):
    return asyncio.run(run_rlhn(rows, stages, s, store, retry, progress))
