"""What a build costs: one row per (stage, judge, endpoint), actual or estimated.

Columns (the same for an actual run and a ``--dry-run`` estimate):

- ``requests``: calls sent to the endpoint (every one may be billed or hold a GPU slot);
- ``answered``: calls that came back with an answer;
- ``prompt_tokens`` / ``completion_tokens``: as the responses report them;
- ``retries``: calls that repeated an earlier one (moved inside the fleet, backed off by the
  annotator, or re-asked because the answer did not parse);
- ``failures``: calls that failed (429, 5xx, timeouts, dropped connections, 422);
- ``lost``: questions left without an answer (the store keeps them as ``failed``);
- ``wall_s``: the stage's wall time; ``usd``: tokens x the price table (None: the judge has no
  price).

Feeding it: ``add_annotation(stage, judge, run_ledger, fleet_before, fleet_after)`` takes the
``Annotator``'s run ledger (``builders.judges.annotate.Ledger``) and, when the backend is a ``Fleet``,
its per-endpoint stats before and after the stage: one row per endpoint, plus an
``(annotator)`` row with the annotator's own retries and the lost questions (so the columns
sum). Without a fleet the whole stage is one row. A build feeds a fleet's stages apart instead:
``add_annotator_row`` per run, and ``add_fleet_stage`` once at the end with the fleet's
per-stage counts (``Fleet.stage_stats``: every attempt is counted under the stage that made it,
so stages sharing a fleet and runs that overlap are accounted exactly). ``estimate(plans, prices)`` builds the same
rows from tokenizer counts of the real prompts before any call.

Prices come from the recipe: ``{model id: {prompt: USD per 1M tokens, completion: USD per 1M
tokens}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields

from builders.judges.fleet import EndpointStats

ANNOTATOR_ROW = "(annotator)"
ESTIMATE_ROW = "(estimate)"


@dataclass(frozen=True)
class Price:
    prompt: float  # USD per 1M prompt tokens
    completion: float  # USD per 1M completion tokens

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


def load_prices(table: dict | None, where: str = "prices") -> dict[str, Price]:
    """``{model: {prompt: x, completion: y}}`` (USD per 1M tokens) from a recipe, checked."""
    prices = {}
    for model, entry in (table or {}).items():
        if not isinstance(entry, dict) or set(entry) != {"prompt", "completion"}:
            raise ValueError(f"{where}.{model} must be {{prompt: <USD per 1M prompt tokens>, completion: <USD per 1M "
                             f"completion tokens>}}, got {entry!r}")
        values = {}
        for key in ("prompt", "completion"):
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}.{model}.{key} must be a number >= 0 (USD per 1M tokens), got {value!r}")
            values[key] = float(value)
        prices[str(model)] = Price(**values)
    return prices


@dataclass
class LedgerRow:
    stage: str
    judge: str
    endpoint: str
    requests: int = 0
    answered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    lost: int = 0
    wall_s: float = 0.0

    def add(self, other: LedgerRow) -> None:
        for name in ("requests", "answered", "prompt_tokens", "completion_tokens", "retries", "failures", "lost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


COUNTS = tuple(f.name for f in fields(LedgerRow) if f.name not in ("stage", "judge", "endpoint"))


@dataclass
class StagePlan:
    """What ``--dry-run`` knows about a stage before any call."""

    stage: str
    judge: str
    prompt_tokens: list[int]  # tokenizer counts of the real prompts, one per call if every row reached the stage
    share: float = 1.0  # share of those calls made (stage 2: the recipe's dry_run.stage2_share)
    completion_tokens: float = 0.0  # expected completion tokens per call
    requests_per_s: float | None = None  # the judge's capacity, for a wall-time estimate


@dataclass
class CostLedger:
    prices: dict[str, Price] = field(default_factory=dict)
    estimated: bool = False
    rows: dict[tuple[str, str, str], LedgerRow] = field(default_factory=dict)

    # --- feeding ----------------------------------------------------------------------------
    def row(self, stage: str, judge: str, endpoint: str) -> LedgerRow:
        key = (stage, judge, endpoint)
        if key not in self.rows:
            self.rows[key] = LedgerRow(stage, judge, endpoint)
        return self.rows[key]

    def add(self, stage: str, judge: str, endpoint: str, **counts) -> LedgerRow:
        """Add counts (``requests=..., prompt_tokens=...``) to a row; ``wall_s`` is set, not summed."""
        row = self.row(stage, judge, endpoint)
        unknown = set(counts) - set(COUNTS)
        if unknown:
            raise ValueError(f"unknown ledger column(s) {sorted(unknown)}; known: {list(COUNTS)}")
        for name, value in counts.items():
            setattr(row, name, value if name == "wall_s" else getattr(row, name) + value)
        return row

    def add_annotation(self, stage: str, judge: str, run, fleet_before: list[EndpointStats] | None = None,
                       fleet_after: list[EndpointStats] | None = None, endpoint: str | None = None) -> None:
        """One annotator run (``builders.judges.annotate.Ledger``) of ``stage``; with the fleet's stats
        before and after it, one row per endpoint plus the annotator's row."""
        backoff_retries = sum(run.retries.values())
        if fleet_after is None:
            self.add(stage, judge, endpoint or judge, requests=run.calls, answered=run.ok + run.unparseable + run.parse_retries,
                     prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                     retries=backoff_retries + run.parse_retries, failures=backoff_retries + run.failed,
                     lost=run.failed, wall_s=run.wall_s)
            return
        before = {s.name: s for s in fleet_before or []}
        for now in fleet_after:
            was = before.get(now.name)
            delta = {name: getattr(now, name) - (getattr(was, name) if was else 0)
                     for name in ("attempts", "succeeded", "prompt_tokens", "completion_tokens", "moved", "overloaded", "failed")}
            if not delta["attempts"]:
                continue
            self.add(stage, judge, now.name, requests=delta["attempts"], answered=delta["succeeded"],
                     prompt_tokens=delta["prompt_tokens"], completion_tokens=delta["completion_tokens"],
                     retries=delta["moved"], failures=delta["overloaded"] + delta["failed"], wall_s=run.wall_s)
        self.add_annotator_row(stage, judge, run)

    def add_annotator_row(self, stage: str, judge: str, run) -> None:
        """The ``(annotator)`` row of a fleet-backed stage: its backoff and parse retries, the
        questions it lost (the fleet's rows hold the requests)."""
        self.add(stage, judge, ANNOTATOR_ROW, retries=sum(run.retries.values()) + run.parse_retries, lost=run.failed,
                 wall_s=run.wall_s)

    def add_fleet_stage(self, stage: str, judge: str, counts: dict[str, dict[str, int]], wall_s: float) -> None:
        """One row per endpoint from a fleet's counts for ``stage`` (``Fleet.stage_stats()[stage]``,
        minus what it held before, when it served earlier runs)."""
        for endpoint, c in counts.items():
            if c["attempts"]:
                self.add(stage, judge, endpoint, requests=c["attempts"], answered=c["succeeded"],
                         prompt_tokens=c["prompt_tokens"], completion_tokens=c["completion_tokens"], retries=c["moved"],
                         failures=c["overloaded"] + c["failed"], wall_s=wall_s)

    # --- dry run ----------------------------------------------------------------------------
    @classmethod
    def estimate(cls, plans: Iterable[StagePlan], prices: dict[str, Price] | None = None) -> CostLedger:
        """The same rows before any call: requests = share x prompts, tokens = share x the counted
        prompt tokens and requests x the expected completion length, no retries or failures."""
        ledger = cls(prices=dict(prices or {}), estimated=True)
        for plan in plans:
            if not 0.0 <= plan.share <= 1.0:
                raise ValueError(f"stage {plan.stage}: share must be within [0, 1], got {plan.share}")
            requests = round(plan.share * len(plan.prompt_tokens))
            ledger.add(plan.stage, plan.judge, ESTIMATE_ROW, requests=requests, answered=requests,
                       prompt_tokens=round(plan.share * sum(plan.prompt_tokens)),
                       completion_tokens=round(requests * plan.completion_tokens),
                       wall_s=requests / plan.requests_per_s if plan.requests_per_s else 0.0)
        return ledger

    # --- reading ----------------------------------------------------------------------------
    def usd(self, row: LedgerRow) -> float | None:
        price = self.prices.get(row.judge)
        return price.usd(row.prompt_tokens, row.completion_tokens) if price is not None else None

    def stage_totals(self) -> list[LedgerRow]:
        """One row per (stage, judge): counts summed over endpoints, the stage's wall time."""
        totals: dict[tuple[str, str], LedgerRow] = {}
        for row in self.rows.values():
            total = totals.setdefault((row.stage, row.judge), LedgerRow(row.stage, row.judge, "all"))
            total.add(row)
            total.wall_s = max(total.wall_s, row.wall_s)
        return list(totals.values())

    def total(self) -> LedgerRow:
        total = LedgerRow("all", "all", "all")
        for row in self.stage_totals():
            total.add(row)
            total.wall_s += row.wall_s
        return total

    def total_usd(self) -> float | None:
        """Money over every row; None when no judge has a price."""
        priced = [self.usd(row) for row in self.rows.values()]
        known = [usd for usd in priced if usd is not None]
        return sum(known) if known else None

    def unpriced(self) -> list[str]:
        return sorted({row.judge for row in self.rows.values() if row.judge not in self.prices and row.prompt_tokens})

    def as_dict(self) -> dict:
        def with_usd(row: LedgerRow) -> dict:
            return {**asdict(row), "wall_s": round(row.wall_s, 3), "usd": _round(self.usd(row))}
        return {
            "estimated": self.estimated,
            "rows": [with_usd(row) for row in self.rows.values()],
            "stages": [with_usd(row) for row in self.stage_totals()],
            "total": {**asdict(self.total()), "wall_s": round(self.total().wall_s, 3), "usd": _round(self.total_usd())},
            "prices": {model: asdict(price) for model, price in sorted(self.prices.items())},
            "unpriced_judges": self.unpriced(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)

    def render(self) -> str:
        """A plain-text table: rows, a subtotal per stage, the total, judges without a price."""
        header = ("stage", "judge", "endpoint", "requests", "answered", "prompt tok", "completion tok",
                  "retries", "failures", "lost", "wall s", "USD")
        lines = []
        for stage in self.stage_totals():
            for row in self.rows.values():
                if (row.stage, row.judge) == (stage.stage, stage.judge):
                    lines.append(self._cells(row))
            if sum(1 for row in self.rows.values() if (row.stage, row.judge) == (stage.stage, stage.judge)) > 1:
                lines.append(self._cells(stage))
        total = self.total()
        lines.append(self._cells(total, usd=self.total_usd()))
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
        left = 3  # text columns

        def fmt(cells):
            return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [("Estimated cost (dry run, before any call)" if self.estimated else "Cost ledger"), fmt(header),
               "  ".join("-" * w for w in widths)]
        out += [fmt(line) for line in lines[:-1]] + ["  ".join("-" * w for w in widths), fmt(lines[-1])]
        if self.unpriced():
            out.append(f"no price for: {', '.join(self.unpriced())} (add them under `prices` in the recipe)")
        return "\n".join(out)

    def _cells(self, row: LedgerRow, usd: float | None | str = "row") -> tuple[str, ...]:
        money = self.usd(row) if usd == "row" else usd
        return (row.stage, row.judge, row.endpoint, f"{row.requests:,}", f"{row.answered:,}", f"{row.prompt_tokens:,}",
                f"{row.completion_tokens:,}", f"{row.retries:,}", f"{row.failures:,}", f"{row.lost:,}",
                f"{row.wall_s:.1f}", "n/a" if money is None else f"{money:,.4f}")


def chat_token_counter(tokenizer) -> Callable[..., int]:
    """``(messages, continuation="") -> prompt tokens`` with the judge's tokenizer: its chat
    template with the generation prompt when it has one (the plain ``Role: content`` rendering
    otherwise), followed by ``continuation`` (a scored answer, which is prefilled: prompt tokens)."""
    from builders.judges.endpoints.chat import render_chat_prompt

    def count(messages, continuation: str = "") -> int:
        text = render_chat_prompt(list(messages), tokenizer) + continuation
        return len(tokenizer(text, add_special_tokens=not tokenizer.chat_template).input_ids)
    return count


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
